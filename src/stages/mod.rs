//! Stages: what a pipeline does to each released trace between assembly and its sinks.
//!
//! A pipeline's `stages:` list runs in order on every trace revision after it was assembled
//! and normalized into an MLflow trace, before the fan-out to the sinks:
//!
//! - [`filter`]: keep or drop whole traces, remove spans, by [conditions](condition);
//! - [`sample`]: keep a consistent fraction of traces, always keep some, cap the rate;
//! - [`redact`]: drop, hash or truncate attribute values by key pattern;
//! - [`enrich`]: add tags and metadata.
//!
//! A dropped trace goes to no sink; its revision counts as done, so the ingest log lets go of
//! it. Stages run again on revisions replayed after a crash, with the stages configured then.

pub mod condition;
pub mod enrich;
pub mod filter;
pub mod redact;
pub mod sample;

use std::time::Instant;

use serde::de::MapAccess;
use serde::{Deserialize, Deserializer};

use crate::config::tagged::{self, Tagged};
use crate::model::AssembledTrace;
use crate::telemetry::metrics::{Metrics, StageMetrics};

/// A stage, chosen by `type:`.
#[derive(Clone, Debug)]
pub enum StageConfig {
    /// See [`filter`].
    Filter(filter::FilterConfig),
    /// See [`sample`].
    Sample(sample::SampleConfig),
    /// See [`redact`].
    Redact(redact::RedactConfig),
    /// See [`enrich`].
    Enrich(enrich::EnrichConfig),
}

impl Tagged for StageConfig {
    const FAMILY: &'static str = "stage";
    const KINDS: &'static [&'static str] = &["filter", "sample", "redact", "enrich"];

    fn from_rest<'de, A: MapAccess<'de>>(kind: &str, rest: A) -> Result<Self, A::Error> {
        match kind {
            "filter" => tagged::settings(rest).map(StageConfig::Filter),
            "sample" => tagged::settings(rest).map(StageConfig::Sample),
            "redact" => tagged::settings(rest).map(StageConfig::Redact),
            _ => tagged::settings(rest).map(StageConfig::Enrich),
        }
    }
}

impl<'de> Deserialize<'de> for StageConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl StageConfig {
    /// The `type:` of the stage.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Filter(_) => "filter",
            StageConfig::Sample(_) => "sample",
            StageConfig::Redact(_) => "redact",
            StageConfig::Enrich(_) => "enrich",
        }
    }

    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        match self {
            StageConfig::Filter(c) => c.problems(),
            StageConfig::Sample(c) => c.problems(),
            StageConfig::Redact(c) => c.problems(),
            StageConfig::Enrich(c) => c.problems(),
        }
    }
}

/// What a stage decided about a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Goes on to the next stage.
    Keep,
    /// Goes nowhere; the reason labels the drop metric.
    Drop(&'static str),
}

/// A built stage.
#[derive(Clone, Debug)]
enum Stage {
    Filter(filter::FilterConfig),
    Sample(sample::Sampler),
    Redact(redact::Redactor),
    Enrich(enrich::EnrichConfig),
}

impl Stage {
    fn new(config: StageConfig, now: Instant) -> Self {
        match config {
            StageConfig::Filter(c) => Stage::Filter(c),
            StageConfig::Sample(c) => Stage::Sample(sample::Sampler::new(c, now)),
            StageConfig::Redact(c) => Stage::Redact(redact::Redactor::new(c)),
            StageConfig::Enrich(c) => Stage::Enrich(c),
        }
    }

    fn apply(&self, trace: &mut AssembledTrace, now: Instant, m: &StageMetrics) -> Verdict {
        match self {
            Stage::Filter(f) => {
                let before = trace.span_count();
                let verdict = f.apply(trace);
                m.spans_removed.inc_by((before - trace.span_count()) as u64);
                verdict
            }
            Stage::Sample(s) => s.apply(trace, now),
            Stage::Redact(r) => {
                m.values_redacted.inc_by(r.apply(trace) as u64);
                Verdict::Keep
            }
            Stage::Enrich(e) => {
                e.apply(trace);
                Verdict::Keep
            }
        }
    }
}

/// A pipeline's stages, in order, with their metrics. Each of a pipeline's workers runs its own
/// copy; copies share the sampler's rate cap, so a cap is one cap however many workers run.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    stages: Vec<(Stage, StageMetrics)>,
}

impl Chain {
    /// Builds the stages of pipeline `pipeline`, labelled `<index>-<type>` in metrics.
    pub fn new(pipeline: &str, configs: Vec<StageConfig>, metrics: &Metrics) -> Self {
        let now = Instant::now();
        let stages = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let m = metrics.stage(pipeline, &format!("{i}-{}", c.kind()));
                (Stage::new(c, now), m)
            })
            .collect();
        Self { stages }
    }

    /// Runs every stage on `trace`; `false` when one dropped it.
    pub fn run(&self, trace: &mut AssembledTrace) -> bool {
        let now = Instant::now();
        for (stage, m) in &self.stages {
            let started = Instant::now();
            m.traces_in.inc();
            let verdict = stage.apply(trace, now, m);
            m.seconds.observe(started.elapsed().as_secs_f64());
            if let Verdict::Drop(reason) = verdict {
                m.dropped(reason, trace.span_count());
                return false;
            }
        }
        true
    }

    /// The number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Whether there are no stages.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Builders of small assembled traces for the stages' tests.

    use crate::assemble::ReleaseReason;
    use crate::model::{AssembledTrace, TraceId};
    use crate::otlp::{self, Event, Status};
    use crate::testkit::{kv, kv_int, resource_spans};

    const TRACE: [u8; 16] = [7; 16];

    /// A span under construction; `index` gives its id, `parent` its parent's index.
    pub(crate) struct SpanBuilder(otlp::Span);

    pub(crate) fn span(name: &str, index: u8, parent: Option<u8>) -> SpanBuilder {
        let parent = parent.map(|p| [p + 1; 8]);
        SpanBuilder(crate::testkit::span(
            TRACE,
            [index + 1; 8],
            parent.as_ref().map_or(&[][..], |p| &p[..]),
            name,
        ))
    }

    impl SpanBuilder {
        pub(crate) fn attr(mut self, key: &str, value: &str) -> Self {
            self.0.attributes.push(kv(key, value));
            self
        }

        pub(crate) fn int(mut self, key: &str, value: i64) -> Self {
            self.0.attributes.push(kv_int(key, value));
            self
        }

        pub(crate) fn kind(self, span_type: &str) -> Self {
            self.attr("mlflow.spanType", span_type)
        }

        pub(crate) fn llm(self, model: &str) -> Self {
            self.kind("LLM").attr("gen_ai.request.model", model)
        }

        pub(crate) fn error(mut self) -> Self {
            self.0.status = Some(Status {
                code: 2,
                ..Status::default()
            });
            self
        }

        pub(crate) fn ms(mut self, duration: u64) -> Self {
            self.0.end_time_unix_nano = self.0.start_time_unix_nano + duration * 1_000_000;
            self
        }

        pub(crate) fn event(mut self, name: &str, key: &str, value: &str) -> Self {
            self.0.events.push(Event {
                name: name.to_string().into(),
                attributes: vec![kv(key, value)],
                ..Event::default()
            });
            self
        }
    }

    pub(crate) fn assembled(spans: Vec<SpanBuilder>) -> AssembledTrace {
        assembled_with_id(TraceId(TRACE), 1, spans)
    }

    pub(crate) fn assembled_with_id(
        id: TraceId,
        revision: u32,
        spans: Vec<SpanBuilder>,
    ) -> AssembledTrace {
        let spans: Vec<otlp::Span> = spans
            .into_iter()
            .map(|mut s| {
                s.0.trace_id = id.0.to_vec().into();
                s.0
            })
            .collect();
        let groups = if spans.is_empty() {
            Vec::new()
        } else {
            vec![resource_spans("test-service", spans)]
        };
        crate::testkit::assembled(id, groups, revision, ReleaseReason::Complete)
    }
}

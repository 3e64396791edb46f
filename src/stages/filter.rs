//! `filter`: keeps or drops whole traces, and removes spans, by [conditions](super::condition).
//!
//! ```yaml
//! - type: filter
//!   drop_traces: [{service: "synthetic-*"}]   # a trace with any matching span is dropped
//!   keep_traces: [{experiment: "12"}]         # only traces with a matching span are kept
//!   drop_spans: [{name: "health*"}]           # matching spans are removed
//!   keep_spans: [{span_type: "LLM"}]          # spans not matching are removed
//! ```
//!
//! Trace rules run first, then span rules. Span rules never remove the root span: MLflow reads
//! the trace's request, response and state from it. Trace-level metadata (token totals, previews)
//! keeps describing the trace as it ran.

use std::collections::HashSet;

use serde::Deserialize;

use super::Verdict;
use super::condition::{Conditions, Subject};
use crate::model::{AssembledTrace, SpanId};

/// `type: filter` settings; at least one rule must be given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Keep only traces with a span matching one of these.
    pub keep_traces: Option<Conditions>,
    /// Drop traces with a span matching one of these.
    #[serde(default)]
    pub drop_traces: Conditions,
    /// Remove spans not matching one of these (the root stays).
    pub keep_spans: Option<Conditions>,
    /// Remove spans matching one of these (the root stays).
    #[serde(default)]
    pub drop_spans: Conditions,
}

impl FilterConfig {
    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        let none = self.keep_traces.is_none()
            && self.drop_traces.is_empty()
            && self.keep_spans.is_none()
            && self.drop_spans.is_empty();
        if none {
            vec![
                "a filter needs at least one of keep_traces, drop_traces, keep_spans, drop_spans"
                    .into(),
            ]
        } else {
            Vec::new()
        }
    }

    /// Applies the filter to `trace`.
    pub fn apply(&self, trace: &mut AssembledTrace) -> Verdict {
        if let Some(keep) = &self.keep_traces
            && !keep.any_span(trace)
        {
            return Verdict::Drop("not_kept");
        }
        if self.drop_traces.any_span(trace) {
            return Verdict::Drop("dropped");
        }
        if self.keep_spans.is_some() || !self.drop_spans.is_empty() {
            self.filter_spans(trace);
        }
        Verdict::Keep
    }

    fn filter_spans(&self, trace: &mut AssembledTrace) {
        let removed: HashSet<SpanId> = trace
            .trace
            .data
            .spans
            .iter()
            .filter(|span| span.parent_span_id.is_some())
            .filter(|span| {
                let s = Subject {
                    trace: &trace.trace,
                    span,
                    services: &trace.services,
                };
                self.keep_spans.as_ref().is_some_and(|k| !k.any_holds(s))
                    || self.drop_spans.any_holds(s)
            })
            .map(|span| span.span_id)
            .collect();
        if !removed.is_empty() {
            trace.remove_spans(&removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests::{assembled, span};

    fn filter(yaml: &str) -> FilterConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn names(t: &AssembledTrace) -> Vec<&str> {
        t.trace.data.spans.iter().map(|s| s.name.as_str()).collect()
    }

    fn sample() -> AssembledTrace {
        assembled(vec![
            span("root", 0, None).ms(100),
            span("healthz", 1, Some(0)),
            span("llm", 2, Some(0)).llm("gpt-4o"),
            span("tool", 3, Some(2)).kind("TOOL").error(),
        ])
    }

    #[test]
    fn trace_rules_keep_or_drop_whole_traces() {
        let mut t = sample();
        assert_eq!(
            filter("drop_traces: [{status: ERROR}]").apply(&mut t),
            Verdict::Drop("dropped")
        );
        assert_eq!(
            filter("keep_traces: [{span_type: RETRIEVER}]").apply(&mut t),
            Verdict::Drop("not_kept")
        );
        assert_eq!(
            filter("keep_traces: [{span_type: LLM}]").apply(&mut t),
            Verdict::Keep
        );
        assert_eq!(names(&t).len(), 4, "trace rules remove no span");
    }

    #[test]
    fn span_rules_remove_spans_from_both_views_but_never_the_root() {
        let mut t = sample();
        let verdict = filter("drop_spans: [{name: \"health*\"}, {root: true}]").apply(&mut t);
        assert_eq!(verdict, Verdict::Keep);
        assert_eq!(names(&t), ["root", "llm", "tool"]);
        assert_eq!(t.span_count(), 3, "the OTLP spans follow");

        let mut t = sample();
        filter("keep_spans: [{span_type: LLM}]").apply(&mut t);
        assert_eq!(names(&t), ["root", "llm"]);
    }

    #[test]
    fn an_empty_trace_passes_and_a_filter_without_rules_is_refused() {
        let mut t = assembled(vec![]);
        assert_eq!(filter("drop_spans: [{}]").apply(&mut t), Verdict::Keep);
        assert_eq!(
            filter("keep_traces: [{}]").apply(&mut t),
            Verdict::Drop("not_kept")
        );
        assert!(filter("{}").problems()[0].contains("at least one"));
    }
}

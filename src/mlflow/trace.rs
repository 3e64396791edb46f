//! MLflow's trace (`Trace.to_dict()`: `info` + `data.spans`) and the derivation of its
//! `TraceInfo` from the spans alone, so that it can run again whenever a late span arrives.
//!
//! Rules follow MLflow's server (`_log_spans_once`; reference §4 and §5.4), computed over the
//! whole trace rather than merged request by request: state from the root, time range over all
//! spans, previews from the root, session and user from the first span carrying them, tree-aware
//! token usage, resource attributes as tags. Where MLflow rejects a whole batch (a session id
//! over 250 characters) only that field is dropped, and counted.

use std::time::{Duration, UNIX_EPOCH};

use indexmap::IndexMap;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use super::attributes;
use super::conventions::{INPUTS, OUTPUTS, TOKEN_USAGE};
use super::json::PyValue;
use super::preview::{preview, truncate};
use super::span::{Span, StatusCode, mlflow_trace_id, request_id_attribute};
use super::usage::{self, TokenCounts};
use crate::model::{EncodedGroup, Origin, Services, SpanId, TraceId};
use crate::otlp::text;
use crate::otlp::view::{SpanView, ValueRef};

/// Longest tag key MLflow accepts.
pub const MAX_TAG_KEY: usize = 250;
/// Longest tag value MLflow keeps (server side).
pub const MAX_TAG_VALUE: usize = 8000;
/// Longest metadata value MLflow keeps.
pub const MAX_METADATA_VALUE: usize = 250;
/// Longest session id MLflow accepts.
pub const MAX_SESSION_ID: usize = 250;

/// A whole MLflow trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    /// Trace-level information.
    pub info: TraceInfo,
    /// The spans.
    pub data: TraceData,
}

/// `data`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceData {
    /// Spans ordered by start time.
    pub spans: Vec<Span>,
}

/// `TraceInfo` V3, serialized with proto3 JSON rules (empty maps and unset fields omitted).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceInfo {
    /// `tr-<32 hex>`.
    pub trace_id: String,
    /// Never known from OTLP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// The MLflow experiment.
    pub trace_location: TraceLocation,
    /// Start of the earliest span, RFC 3339 UTC with millisecond precision.
    pub request_time: String,
    /// `OK`, `ERROR` or `IN_PROGRESS`.
    pub state: TraceState,
    /// Immutable key/values.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub trace_metadata: IndexMap<String, String>,
    /// Mutable key/values.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub tags: IndexMap<String, String>,
    /// Preview of the root's inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_preview: Option<String>,
    /// Preview of the root's outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_preview: Option<String>,
    /// From the earliest start to the latest end, in milliseconds.
    pub execution_duration_ms: i64,
    /// `request_time` as milliseconds since the Unix epoch (not part of MLflow's JSON).
    #[serde(skip)]
    pub request_time_ms: u64,
}

/// `trace_location` of type `MLFLOW_EXPERIMENT`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceLocation {
    /// Always `MLFLOW_EXPERIMENT`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The experiment.
    pub mlflow_experiment: Experiment,
}

/// `mlflow_experiment`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    /// MLflow experiment id (a string of digits in OSS MLflow).
    pub experiment_id: String,
}

/// Trace state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TraceState {
    /// The root ended OK or UNSET.
    Ok,
    /// The root ended in error.
    Error,
    /// No root span yet.
    InProgress,
}

impl TraceState {
    /// The name MLflow writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Error => "ERROR",
            Self::InProgress => "IN_PROGRESS",
        }
    }
}

/// What the derivation had to change to respect MLflow's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitReport {
    /// Session id longer than 250 characters, left out (MLflow refuses the whole batch).
    pub session_rejected: bool,
    /// Tags dropped for a key over 250 characters.
    pub tags_dropped: usize,
    /// Tag values cut to 8000 characters.
    pub tags_truncated: usize,
    /// Metadata values cut to 250 characters.
    pub metadata_truncated: usize,
}

/// What [`build`] makes of a trace's spans.
#[derive(Debug)]
pub struct Built {
    /// The MLflow trace.
    pub trace: Trace,
    /// What had to change to respect MLflow's limits.
    pub report: LimitReport,
    /// Each span's service, from its resource.
    pub services: Services,
}

/// Where the experiment id comes from when no header names it.
pub const EXPERIMENT_RESOURCE_ATTRIBUTE: &str = "mlflow.experimentId";

/// Builds the MLflow trace of `trace_id` from its spans (any order, one entry per span id).
///
/// `experiment` is the `x-mlflow-experiment-id` header if one came with the spans; else the
/// resource attribute `mlflow.experimentId`; else `default_experiment`.
pub fn build(
    trace_id: TraceId,
    groups: &[EncodedGroup],
    experiment: Option<&str>,
    default_experiment: &str,
) -> Built {
    let request_id = request_id_attribute(&trace_id);
    let mut spans: Vec<(&Origin, Span)> = groups
        .iter()
        .flat_map(|g| {
            let request_id = &request_id;
            g.spans.iter().map(move |s| {
                let span = Span::from_otlp(trace_id, request_id, &SpanView::new(s));
                (&*g.origin, span)
            })
        })
        .collect();
    // A total order (start, roots first, span id) so that the same spans give the same trace
    // whatever order they arrived in.
    spans.sort_by_key(|(_, s)| {
        (
            s.start_time_unix_nano,
            s.parent_span_id.is_some(),
            s.span_id,
        )
    });
    let services = Services::of(spans.iter().map(|(o, s)| (*o, s.span_id)));
    let mut report = LimitReport::default();
    let root = spans.iter().position(|(_, s)| s.parent_span_id.is_none());
    let start_ms = spans
        .iter()
        .map(|(_, s)| s.start_time_unix_nano)
        .min()
        .unwrap_or(0)
        / 1_000_000;
    let end_ms = spans
        .iter()
        .map(|(_, s)| s.end_time_unix_nano)
        .max()
        .unwrap_or(0)
        / 1_000_000;
    let state = match root.map(|i| spans[i].1.status.code) {
        None => TraceState::InProgress,
        Some(StatusCode::Error) => TraceState::Error,
        Some(_) => TraceState::Ok,
    };
    let root_span = root.map(|i| &spans[i].1);
    let experiment_id = experiment
        .map(str::to_string)
        .or_else(|| {
            spans
                .iter()
                .find_map(|(o, _)| o.resource_str(EXPERIMENT_RESOURCE_ATTRIBUTE))
        })
        .unwrap_or_else(|| default_experiment.to_string());
    let info = TraceInfo {
        trace_id: mlflow_trace_id(&trace_id),
        client_request_id: None,
        trace_location: TraceLocation {
            kind: "MLFLOW_EXPERIMENT",
            mlflow_experiment: Experiment { experiment_id },
        },
        request_time: timestamp(start_ms),
        state,
        trace_metadata: metadata(&spans, root_span, &mut report),
        tags: tags(&spans, root, services.names(), &mut report),
        request_preview: root_preview(root_span, INPUTS, "user"),
        response_preview: root_preview(root_span, OUTPUTS, "assistant"),
        execution_duration_ms: end_ms.saturating_sub(start_ms) as i64,
        request_time_ms: start_ms,
    };
    let spans = spans.into_iter().map(|(_, s)| s).collect();
    Built {
        trace: Trace {
            info,
            data: TraceData { spans },
        },
        report,
        services,
    }
}

impl Trace {
    /// Recomputes the request and response previews from the root span, after a stage changed
    /// its inputs or outputs.
    pub fn refresh_previews(&mut self) {
        let root = self.data.spans.iter().find(|s| s.parent_span_id.is_none());
        self.info.request_preview = root_preview(root, INPUTS, "user");
        self.info.response_preview = root_preview(root, OUTPUTS, "assistant");
    }
}

/// The preview of the root's stored `key` (inputs or outputs) for `role`.
fn root_preview(root: Option<&Span>, key: &str, role: &str) -> Option<String> {
    root.and_then(|r| r.attributes.get(key))
        .map(|s| preview(s, role))
}

/// Protobuf `Timestamp` JSON: no fraction for whole seconds, else milliseconds.
fn timestamp(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// A span attribute as a plain string: JSON strings unwrapped, anything else its JSON text.
fn attribute_text(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .get(key)
        .map(|stored| match attributes::read(stored) {
            PyValue::Str(s) => s,
            other => other.dumps(),
        })
}

fn metadata(
    spans: &[(&Origin, Span)],
    root: Option<&Span>,
    report: &mut LimitReport,
) -> IndexMap<String, String> {
    let mut md = IndexMap::new();
    md.insert("mlflow.trace_schema.version".to_string(), "3".to_string());
    // `session.id` on any span wins over `gen_ai.conversation.id`, MLflow's fallback; taking it
    // from the trace rather than from the first request keeps the result independent of arrival
    // order.
    let session = spans
        .iter()
        .find_map(|(_, s)| attribute_text(s, "session.id"))
        .or_else(|| {
            spans
                .iter()
                .find_map(|(_, s)| attribute_text(s, "gen_ai.conversation.id"))
        });
    match session {
        Some(s) if s.chars().count() > MAX_SESSION_ID => report.session_rejected = true,
        Some(s) => {
            md.insert("mlflow.trace.session".into(), s);
        }
        None => {}
    }
    if let Some(user) = spans.iter().find_map(|(_, s)| attribute_text(s, "user.id")) {
        md.insert("mlflow.trace.user".into(), user);
    }
    if let Some(usage) = token_usage(spans.iter().map(|(_, s)| s)) {
        md.insert("mlflow.trace.tokenUsage".into(), usage.dumps());
    }
    if let Some(root) = root {
        for (key, attr) in [
            ("mlflow.traceInputs", INPUTS),
            ("mlflow.traceOutputs", OUTPUTS),
        ] {
            let value = root
                .attributes
                .get(attr)
                .map(|v| v.to_string())
                .unwrap_or_default();
            md.insert(key.into(), value);
        }
    }
    for value in md.values_mut() {
        if value.chars().count() > MAX_METADATA_VALUE {
            *value = truncate(value, MAX_METADATA_VALUE);
            report.metadata_truncated += 1;
        }
    }
    md
}

fn tags(
    spans: &[(&Origin, Span)],
    root: Option<usize>,
    services: &[String],
    report: &mut LimitReport,
) -> IndexMap<String, String> {
    let mut tags = IndexMap::new();
    // Resource attributes of every distinct origin; the root's are applied last, so they win.
    // A trace has few origins: a list, compared by address, finds them.
    let root_origin = root.map(|i| spans[i].0);
    let mut origins: Vec<&Origin> = Vec::new();
    for (origin, _) in spans {
        let is_root = root_origin.is_some_and(|r| std::ptr::eq(r, *origin));
        if !is_root && !origins.iter().any(|o| std::ptr::eq(*o, *origin)) {
            origins.push(origin);
        }
    }
    origins.extend(root_origin);
    for origin in origins {
        for kv in origin.resource.iter().flat_map(|r| &r.attributes) {
            let key = text(&kv.key);
            if key.starts_with("telemetry.sdk.") || key.starts_with("mlflow.") {
                continue;
            }
            let value = match attributes::decode(ValueRef::of(kv.value.as_ref())) {
                PyValue::Str(s) => s,
                other => other.dumps(),
            };
            tags.insert(key.into_owned(), value);
        }
    }
    if let Some(root) = root.map(|i| &spans[i].1) {
        for (key, _) in root.attributes.iter() {
            if let Some(tag) = key.strip_prefix("mlflow.traceTag.") {
                let value = attribute_text(root, key).unwrap_or_default();
                tags.insert(tag.to_string(), value);
            }
        }
        tags.insert("mlflow.traceName".into(), root.name.clone());
    }
    if !services.is_empty() {
        let list = PyValue::List(services.iter().cloned().map(PyValue::Str).collect());
        tags.insert("traceloom.services".into(), list.dumps());
    }
    tags.retain(|k, _| {
        let keep = k.chars().count() <= MAX_TAG_KEY;
        report.tags_dropped += usize::from(!keep);
        keep
    });
    for value in tags.values_mut() {
        if value.chars().count() > MAX_TAG_VALUE {
            *value = truncate(value, MAX_TAG_VALUE);
            report.tags_truncated += 1;
        }
    }
    tags
}

/// Trace token usage: every span's `mlflow.chat.tokenUsage`, skipping spans whose ancestor already
/// carries usage (so rollup parents are not counted twice). `input_tokens`, `output_tokens` and
/// `total_tokens` are always present; cache keys only when seen.
pub fn token_usage<'a>(spans: impl Iterator<Item = &'a Span>) -> Option<TokenCounts> {
    let spans: Vec<&Span> = spans.collect();
    let ids: FxHashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut children: FxHashMap<SpanId, Vec<usize>> = FxHashMap::default();
    let mut stack: Vec<(usize, bool)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id.filter(|p| ids.contains(p)) {
            Some(p) => children.entry(p).or_default().push(i),
            None => stack.push((i, false)),
        }
    }
    let mut totals = [0i64; 3];
    let mut cache: [Option<i64>; 2] = [None, None];
    let mut found = false;
    while let Some((i, covered)) = stack.pop() {
        let usage = (!covered)
            .then(|| spans[i].attributes.get(TOKEN_USAGE))
            .flatten()
            .and_then(usage::read);
        if let Some(u) = usage {
            found = true;
            for (total, n) in totals.iter_mut().zip([u.input, u.output, u.total]) {
                *total += n.unwrap_or(0);
            }
            for (sum, n) in cache.iter_mut().zip([u.cache_read, u.cache_creation]) {
                if let Some(n) = n {
                    *sum.get_or_insert(0) += n;
                }
            }
        }
        for &c in children.get(&spans[i].span_id).into_iter().flatten() {
            stack.push((c, covered || usage.is_some()));
        }
    }
    found.then(|| TokenCounts {
        input: Some(totals[0]),
        output: Some(totals[1]),
        total: Some(totals[2]),
        cache_read: cache[0],
        cache_creation: cache[1],
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::otlp::{self, Resource};
    use crate::testkit::{kv, span};

    const T: [u8; 16] = [7; 16];

    fn origin(service: &str, extra: Vec<otlp::KeyValue>) -> Arc<Origin> {
        let mut attributes = vec![kv("service.name", service), kv("telemetry.sdk.name", "x")];
        attributes.extend(extra);
        Arc::new(Origin {
            resource: Some(Resource {
                attributes,
                ..Resource::default()
            }),
            ..Origin::default()
        })
    }

    fn group(origin: &Arc<Origin>, spans: Vec<otlp::Span>) -> EncodedGroup {
        use prost::Message;
        EncodedGroup {
            origin: Arc::clone(origin),
            spans: spans.iter().map(|s| s.encode_to_vec().into()).collect(),
        }
    }

    fn with(mut s: otlp::Span, attrs: Vec<otlp::KeyValue>, code: i32) -> otlp::Span {
        s.attributes = attrs;
        s.status = Some(otlp::Status {
            message: Bytes::new(),
            code,
        });
        s
    }

    #[test]
    fn state_follows_the_root() {
        let o = origin("svc", vec![]);
        let child = span(T, [2; 8], &[1; 8], "child");
        let t = build(TraceId(T), &[group(&o, vec![child.clone()])], None, "0").trace;
        assert_eq!(t.info.state, TraceState::InProgress);
        assert_eq!(t.info.request_preview, None);
        let root_error = with(span(T, [1; 8], &[], "root"), vec![], 2);
        let t = build(
            TraceId(T),
            &[group(&o, vec![child.clone(), root_error])],
            None,
            "0",
        )
        .trace;
        assert_eq!(t.info.state, TraceState::Error);
        let root_unset = with(span(T, [1; 8], &[], "root"), vec![], 0);
        let t = build(TraceId(T), &[group(&o, vec![child, root_unset])], None, "0").trace;
        assert_eq!(t.info.state, TraceState::Ok);
        assert_eq!(
            t.data.spans[0].name, "root",
            "spans ordered by start, root first on ties"
        );
    }

    #[test]
    fn experiment_comes_from_header_then_resource_then_default() {
        let plain = origin("svc", vec![]);
        let tagged = origin("svc", vec![kv("mlflow.experimentId", "12")]);
        let root = span(T, [1; 8], &[], "root");
        let id = |groups: &[EncodedGroup], header| {
            build(TraceId(T), groups, header, "0")
                .trace
                .info
                .trace_location
                .mlflow_experiment
                .experiment_id
        };
        assert_eq!(id(&[group(&tagged, vec![root.clone()])], Some("5")), "5");
        assert_eq!(id(&[group(&tagged, vec![root.clone()])], None), "12");
        assert_eq!(id(&[group(&plain, vec![root])], None), "0");
    }

    #[test]
    fn tags_come_from_resources_root_last_and_list_the_services() {
        let front = origin("frontend", vec![kv("deployment.environment", "prod")]);
        let back = origin(
            "backend",
            vec![
                kv("deployment.environment", "dev"),
                kv("mlflow.internal", "x"),
            ],
        );
        let root = with(
            span(T, [1; 8], &[], "client-root"),
            vec![kv("mlflow.traceTag.team", "search")],
            0,
        );
        // A span of the root's service before the other service's: the root's resource still
        // comes last.
        let mut prep = span(T, [3; 8], &[1; 8], "client-prep");
        prep.start_time_unix_nano += 1;
        let mut child = span(T, [2; 8], &[1; 8], "server-handler");
        child.start_time_unix_nano += 2;
        let t = build(
            TraceId(T),
            &[group(&back, vec![child]), group(&front, vec![root, prep])],
            None,
            "0",
        )
        .trace;
        let tags = &t.info.tags;
        assert_eq!(tags["service.name"], "frontend", "the root's resource wins");
        assert_eq!(tags["deployment.environment"], "prod");
        assert_eq!(tags["team"], "search");
        assert_eq!(tags["mlflow.traceName"], "client-root");
        assert_eq!(tags["traceloom.services"], r#"["frontend", "backend"]"#);
        assert!(!tags.contains_key("telemetry.sdk.name") && !tags.contains_key("mlflow.internal"));
    }

    #[test]
    fn mlflow_limits_are_applied_and_reported() {
        let long_key = format!("k{}", "x".repeat(300));
        let o = origin(
            "svc",
            vec![kv(&long_key, "v"), kv("big", &"y".repeat(9000))],
        );
        let root = with(
            span(T, [1; 8], &[], "root"),
            vec![
                kv("session.id", &"s".repeat(251)),
                kv("user.id", "u"),
                kv("mlflow.spanInputs", &format!("\"{}\"", "i".repeat(300))),
            ],
            1,
        );
        let Built {
            trace: t, report, ..
        } = build(TraceId(T), &[group(&o, vec![root])], None, "0");
        assert_eq!(
            report,
            LimitReport {
                session_rejected: true,
                tags_dropped: 1,
                tags_truncated: 1,
                metadata_truncated: 1,
            }
        );
        assert!(!t.info.trace_metadata.contains_key("mlflow.trace.session"));
        assert_eq!(t.info.trace_metadata["mlflow.trace.user"], "u");
        assert_eq!(t.info.tags["big"].chars().count(), MAX_TAG_VALUE);
        assert_eq!(
            t.info.trace_metadata["mlflow.traceInputs"].chars().count(),
            MAX_METADATA_VALUE
        );
    }

    #[test]
    fn token_usage_skips_spans_under_a_span_with_usage() {
        let o = origin("svc", vec![]);
        let usage = |i: i64, o: i64| {
            kv(
                "mlflow.chat.tokenUsage",
                &format!(
                    r#"{{"input_tokens": {i}, "output_tokens": {o}, "total_tokens": {}}}"#,
                    i + o
                ),
            )
        };
        let root = span(T, [1; 8], &[], "agent");
        let rollup = with(span(T, [2; 8], &[1; 8], "rollup"), vec![usage(10, 5)], 0);
        let under = with(span(T, [3; 8], &[2; 8], "llm"), vec![usage(10, 5)], 0);
        let sibling = with(span(T, [4; 8], &[1; 8], "llm2"), vec![usage(1, 1)], 0);
        let t = build(
            TraceId(T),
            &[group(&o, vec![root, rollup, under, sibling])],
            None,
            "0",
        )
        .trace;
        assert_eq!(
            t.info.trace_metadata["mlflow.trace.tokenUsage"],
            r#"{"input_tokens": 11, "output_tokens": 6, "total_tokens": 17}"#
        );
    }

    #[test]
    fn request_time_is_protobuf_timestamp_json() {
        assert_eq!(timestamp(1_760_000_000_000), "2025-10-09T08:53:20Z");
        assert_eq!(timestamp(1_795_254_233_848), "2026-11-21T09:43:53.848Z");
    }
}

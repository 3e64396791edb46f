//! A trace's `Trace.to_dict()` JSON, written straight into a string: the Kafka `mlflow-json`
//! value, the Parquet `trace_json` column and the debug sink's lines.
//!
//! The `Serialize` derives on [`Trace`] define the format; this writer produces the same bytes
//! (the tests hold it to `serde_json::to_string`) without serde_json's byte-at-a-time string escaping,
//! which took a tenth of the Kafka pipeline's CPU: a GenAI span's chat messages are JSON inside
//! JSON, kilobytes escaped per span.

use base64::Engine as _;
use indexmap::IndexMap;

use super::json::write_str;
use super::span::{Span, SpanEvent, SpanLink};
use super::trace::{Trace, TraceInfo};

/// The JSON of `trace`, as `serde_json::to_string(trace)` writes it.
pub fn to_string(trace: &Trace) -> String {
    let mut out = String::with_capacity(estimate(trace));
    write(trace, &mut out);
    out
}

/// Appends the JSON of `trace` to `out`.
pub fn write(trace: &Trace, out: &mut String) {
    out.push_str("{\"info\":");
    info(&trace.info, out);
    out.push_str(",\"data\":{\"spans\":[");
    for (i, span) in trace.data.spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_span(span, out);
    }
    out.push_str("]}}");
}

/// Room for the whole trace, so the buffer rarely grows: attributes dominate, and escaping
/// adds a little to them.
fn estimate(trace: &Trace) -> usize {
    let spans: usize = trace
        .data
        .spans
        .iter()
        .map(|s| {
            let attributes: usize = s.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
            attributes + attributes / 8 + 400
        })
        .sum();
    spans + 1024
}

/// `{` and an object's first field name.
fn open(name: &str, out: &mut String) {
    out.push('{');
    key(name, true, out);
}

/// A field name and its colon, after a comma unless it is the first.
fn key(name: &str, first: bool, out: &mut String) {
    if !first {
        out.push(',');
    }
    write_str(name, out);
    out.push(':');
}

fn number(n: impl itoa::Integer, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn info(info: &TraceInfo, out: &mut String) {
    open("trace_id", out);
    write_str(&info.trace_id, out);
    if let Some(id) = &info.client_request_id {
        key("client_request_id", false, out);
        write_str(id, out);
    }
    key("trace_location", false, out);
    open("type", out);
    write_str(info.trace_location.kind, out);
    key("mlflow_experiment", false, out);
    open("experiment_id", out);
    write_str(&info.trace_location.mlflow_experiment.experiment_id, out);
    out.push_str("}}");
    key("request_time", false, out);
    write_str(&info.request_time, out);
    key("state", false, out);
    write_str(info.state.as_str(), out);
    for (name, map) in [
        ("trace_metadata", &info.trace_metadata),
        ("tags", &info.tags),
    ] {
        if !map.is_empty() {
            key(name, false, out);
            string_map(map.iter().map(|(k, v)| (k.as_str(), v.as_str())), out);
        }
    }
    for (name, preview) in [
        ("request_preview", &info.request_preview),
        ("response_preview", &info.response_preview),
    ] {
        if let Some(text) = preview {
            key(name, false, out);
            write_str(text, out);
        }
    }
    key("execution_duration_ms", false, out);
    number(info.execution_duration_ms, out);
    out.push('}');
}

/// `{"k":"v",...}`.
fn string_map<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        key(k, i == 0, out);
        write_str(v, out);
    }
    out.push('}');
}

fn write_span(span: &Span, out: &mut String) {
    open("trace_id", out);
    base64(&span.trace_id.0, out);
    key("span_id", false, out);
    base64(&span.span_id.0, out);
    key("parent_span_id", false, out);
    match &span.parent_span_id {
        Some(parent) => base64(&parent.0, out),
        None => out.push_str("null"),
    }
    key("name", false, out);
    write_str(&span.name, out);
    key("start_time_unix_nano", false, out);
    number(span.start_time_unix_nano, out);
    key("end_time_unix_nano", false, out);
    number(span.end_time_unix_nano, out);
    key("events", false, out);
    list(&span.events, event, out);
    key("status", false, out);
    open("code", out);
    write_str(span.status.code.as_str(), out);
    key("message", false, out);
    write_str(&span.status.message, out);
    out.push('}');
    key("attributes", false, out);
    string_map(span.attributes.iter(), out);
    key("links", false, out);
    list(&span.links, link, out);
    out.push('}');
}

fn list<T>(items: &[T], item: fn(&T, &mut String), out: &mut String) {
    out.push('[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(x, out);
    }
    out.push(']');
}

fn event(event: &SpanEvent, out: &mut String) {
    open("name", out);
    write_str(&event.name, out);
    key("time_unix_nano", false, out);
    number(event.time_unix_nano, out);
    key("attributes", false, out);
    raw_values(&event.attributes, out);
    out.push('}');
}

fn link(link: &SpanLink, out: &mut String) {
    open("trace_id", out);
    write_str(&link.trace_id, out);
    key("span_id", false, out);
    write_str(&link.span_id, out);
    key("attributes", false, out);
    match &link.attributes {
        Some(attributes) => raw_values(attributes, out),
        None => out.push_str("null"),
    }
    out.push('}');
}

/// Event and link attributes keep raw values: rare and small, so serde_json writes them.
fn raw_values(map: &IndexMap<String, serde_json::Value>, out: &mut String) {
    out.push_str(&serde_json::to_string(map).expect("JSON values serialize into memory"));
}

/// Base64 of an id, quoted.
fn base64(id: &[u8], out: &mut String) {
    out.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(id, out);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mlflow::span::StatusCode;
    use crate::model::SpanId;

    fn genai_trace() -> Trace {
        crate::testkit::genai_traces(1, 8, 1000).remove(0).trace
    }

    #[test]
    fn writes_what_serde_writes_for_genai_traces() {
        for assembled in crate::testkit::genai_traces(4, 8, 1000) {
            let expected = serde_json::to_vec(&assembled.trace).unwrap();
            assert_eq!(
                to_string(&assembled.trace),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    /// Text that exercises every escape, multi-byte characters and the 16-byte blocks.
    fn text() -> impl Strategy<Value = String> {
        "[a-z \"\\\\\\x00-\\x1f\\x7fé✓🚀]{0,40}"
    }

    fn raw_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            text().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ]
    }

    proptest! {
        #[test]
        fn writes_what_serde_writes_for_any_text(
            name in text(),
            values in proptest::collection::vec(text(), 1..6),
            tags in proptest::collection::vec((text(), text()), 0..3),
            preview in proptest::option::of(text()),
            client_request_id in proptest::option::of(text()),
            event_attributes in proptest::collection::vec((text(), raw_value()), 0..3),
            link_attributes in proptest::option::of(proptest::collection::vec((text(), raw_value()), 0..3)),
            duration in any::<i64>(),
        ) {
            let mut trace = genai_trace();
            trace.info.client_request_id = client_request_id;
            trace.info.tags = tags.iter().cloned().collect();
            trace.info.trace_metadata = tags.into_iter().rev().collect();
            trace.info.request_preview = preview.clone();
            trace.info.response_preview = preview;
            trace.info.execution_duration_ms = duration;
            let span = &mut trace.data.spans[0];
            span.name = name.clone();
            span.parent_span_id = span.parent_span_id.is_none().then_some(SpanId([7; 8]));
            span.status.code = StatusCode::Error;
            span.status.message = name.clone();
            for (i, value) in values.iter().enumerate() {
                span.attributes.insert(&format!("{name}{i}"), value);
            }
            span.events.push(SpanEvent {
                name: name.clone(),
                time_unix_nano: u64::MAX,
                attributes: event_attributes.into_iter().collect(),
            });
            span.links.push(SpanLink {
                trace_id: name.clone(),
                span_id: name,
                attributes: link_attributes.map(|kvs| kvs.into_iter().collect()),
            });
            let expected = String::from_utf8(serde_json::to_vec(&trace).unwrap()).unwrap();
            prop_assert_eq!(to_string(&trace), expected);
        }
    }
}

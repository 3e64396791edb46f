//! A trace's `Trace.to_dict()` JSON, written straight into bytes: the Kafka `mlflow-json` value,
//! the Parquet `trace_json` column and the debug sink's lines.
//!
//! The `Serialize` derives on [`Trace`] define the format; this writer produces the same bytes
//! (the tests hold it to `serde_json::to_vec`) without serde_json's byte-at-a-time string escaping,
//! which took a tenth of the Kafka pipeline's CPU: a GenAI span's chat messages are JSON inside
//! JSON, kilobytes escaped per span.

use base64::Engine as _;
use indexmap::IndexMap;

use super::json::write_str_bytes;
use super::span::{Span, SpanEvent, SpanLink, StatusCode};
use super::trace::{Trace, TraceInfo};

/// The JSON of `trace`, as `serde_json::to_vec(trace)` writes it.
pub fn to_vec(trace: &Trace) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(trace));
    write(trace, &mut out);
    out
}

/// The JSON of `trace` as a string.
pub fn to_string(trace: &Trace) -> String {
    String::from_utf8(to_vec(trace)).expect("the writer writes UTF-8")
}

/// Appends the JSON of `trace` to `out`.
pub fn write(trace: &Trace, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"info\":");
    info(&trace.info, out);
    out.extend_from_slice(b",\"data\":{\"spans\":[");
    for (i, span) in trace.data.spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_span(span, out);
    }
    out.extend_from_slice(b"]}}");
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
fn open(name: &str, out: &mut Vec<u8>) {
    out.push(b'{');
    key(name, true, out);
}

/// A field name and its colon, after a comma unless it is the first.
fn key(name: &str, first: bool, out: &mut Vec<u8>) {
    if !first {
        out.push(b',');
    }
    write_str_bytes(name, out);
    out.push(b':');
}

fn number(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn info(info: &TraceInfo, out: &mut Vec<u8>) {
    open("trace_id", out);
    write_str_bytes(&info.trace_id, out);
    if let Some(id) = &info.client_request_id {
        key("client_request_id", false, out);
        write_str_bytes(id, out);
    }
    key("trace_location", false, out);
    open("type", out);
    write_str_bytes(info.trace_location.kind, out);
    key("mlflow_experiment", false, out);
    open("experiment_id", out);
    write_str_bytes(&info.trace_location.mlflow_experiment.experiment_id, out);
    out.extend_from_slice(b"}}");
    key("request_time", false, out);
    write_str_bytes(&info.request_time, out);
    key("state", false, out);
    write_str_bytes(info.state.as_str(), out);
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
            write_str_bytes(text, out);
        }
    }
    key("execution_duration_ms", false, out);
    number(info.execution_duration_ms, out);
    out.push(b'}');
}

/// `{"k":"v",...}`.
fn string_map<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        key(k, i == 0, out);
        write_str_bytes(v, out);
    }
    out.push(b'}');
}

fn write_span(span: &Span, out: &mut Vec<u8>) {
    open("trace_id", out);
    base64(&span.trace_id.0, out);
    key("span_id", false, out);
    base64(&span.span_id.0, out);
    key("parent_span_id", false, out);
    match &span.parent_span_id {
        Some(parent) => base64(&parent.0, out),
        None => out.extend_from_slice(b"null"),
    }
    key("name", false, out);
    write_str_bytes(&span.name, out);
    key("start_time_unix_nano", false, out);
    number(span.start_time_unix_nano, out);
    key("end_time_unix_nano", false, out);
    number(span.end_time_unix_nano, out);
    key("events", false, out);
    list(&span.events, event, out);
    key("status", false, out);
    open("code", out);
    write_str_bytes(status_code(span.status.code), out);
    key("message", false, out);
    write_str_bytes(&span.status.message, out);
    out.push(b'}');
    key("attributes", false, out);
    string_map(
        span.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        out,
    );
    key("links", false, out);
    list(&span.links, link, out);
    out.push(b'}');
}

fn status_code(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Unset => "STATUS_CODE_UNSET",
        StatusCode::Ok => "STATUS_CODE_OK",
        StatusCode::Error => "STATUS_CODE_ERROR",
    }
}

fn list<T>(items: &[T], item: fn(&T, &mut Vec<u8>), out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(x, out);
    }
    out.push(b']');
}

fn event(event: &SpanEvent, out: &mut Vec<u8>) {
    open("name", out);
    write_str_bytes(&event.name, out);
    key("time_unix_nano", false, out);
    number(event.time_unix_nano, out);
    key("attributes", false, out);
    raw_values(&event.attributes, out);
    out.push(b'}');
}

fn link(link: &SpanLink, out: &mut Vec<u8>) {
    open("trace_id", out);
    write_str_bytes(&link.trace_id, out);
    key("span_id", false, out);
    write_str_bytes(&link.span_id, out);
    key("attributes", false, out);
    match &link.attributes {
        Some(attributes) => raw_values(attributes, out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// Event and link attributes keep raw values: rare and small, so serde_json writes them.
fn raw_values(map: &IndexMap<String, serde_json::Value>, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, map).expect("JSON values serialize into memory");
}

/// Base64 of an id, quoted.
fn base64(id: &[u8], out: &mut Vec<u8>) {
    let mut text = [0u8; 24];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(id, &mut text)
        .expect("ids are at most 16 bytes");
    out.push(b'"');
    out.extend_from_slice(&text[..n]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
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
                span.attributes.insert(format!("{name}{i}").into(), value.into());
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

//! OTLP trace messages as traceloom holds them.
//!
//! These are the messages of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`,
//! field for field and tag for tag (so they are wire-compatible with every OTLP peer), with one
//! difference from the usual generated types: every `string` and `bytes` field is a
//! [`Bytes`] slice of the received buffer instead of an owned `String`/`Vec<u8>`.
//!
//! Why: decoding into owned strings allocates, copies and UTF-8-checks every attribute key and
//! value, which was most of the receive path's CPU. Slices cost a reference count. UTF-8 is
//! checked where text is read, with [`text`]; an invalid sequence becomes U+FFFD there instead of
//! refusing the whole request, as a strict decoder would.
//!
//! Fields a trace collector has no use for are still carried (`entity_refs` as raw bytes), so
//! re-encoding a message loses nothing but the profiles-only `key_strindex`.

use std::borrow::Cow;

use bytes::Bytes;

pub mod view;
pub mod wire;

/// Reads an OTLP string field; invalid UTF-8 is replaced by U+FFFD.
pub fn text(field: &[u8]) -> Cow<'_, str> {
    // The strict check is much faster than the lossy scan, and almost every field passes it;
    // simdutf8's is std's, vectorized (the same answer; it was 5% of a loaded pipeline's CPU).
    match simdutf8::basic::from_utf8(field) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(field),
    }
}

/// `ExportTraceServiceRequest`: what OTLP exporters send.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    /// Spans grouped by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// Spans of one resource.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    /// The entity that produced the spans.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Spans grouped by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    /// Schema URL of the resource.
    #[prost(bytes = "bytes", tag = "3")]
    pub schema_url: Bytes,
}

/// `Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Resource attributes, e.g. `service.name`.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    /// Attributes the producer dropped.
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
    /// `EntityRef` messages, kept encoded (in development in OTLP, unused here).
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub entity_refs: Vec<Bytes>,
}

/// Spans of one instrumentation scope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    /// The instrumentation library.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
    /// Schema URL of the scope.
    #[prost(bytes = "bytes", tag = "3")]
    pub schema_url: Bytes,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    /// Scope name.
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    /// Scope version.
    #[prost(bytes = "bytes", tag = "2")]
    pub version: Bytes,
    /// Scope attributes.
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
    /// Attributes the producer dropped.
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

/// `Span`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    /// 16 bytes once validated.
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    /// 8 bytes once validated.
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    /// W3C `tracestate`.
    #[prost(bytes = "bytes", tag = "3")]
    pub trace_state: Bytes,
    /// Empty for a root, else 8 bytes.
    #[prost(bytes = "bytes", tag = "4")]
    pub parent_span_id: Bytes,
    /// W3C trace flags and OTLP `SpanFlags`.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
    /// Span name.
    #[prost(bytes = "bytes", tag = "5")]
    pub name: Bytes,
    /// `SpanKind` (0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// Start, nanoseconds since the Unix epoch.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// Span attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// Attributes the producer dropped.
    #[prost(uint32, tag = "10")]
    pub dropped_attributes_count: u32,
    /// Timed events, e.g. `exception`.
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
    /// Events the producer dropped.
    #[prost(uint32, tag = "12")]
    pub dropped_events_count: u32,
    /// Links to other spans.
    #[prost(message, repeated, tag = "13")]
    pub links: Vec<Link>,
    /// Links the producer dropped.
    #[prost(uint32, tag = "14")]
    pub dropped_links_count: u32,
    /// Outcome.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Span.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// When, nanoseconds since the Unix epoch.
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// Event name.
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    /// Event attributes.
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
    /// Attributes the producer dropped.
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

/// `Span.Link`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Link {
    /// Linked trace.
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    /// Linked span.
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    /// W3C `tracestate` of the link.
    #[prost(bytes = "bytes", tag = "3")]
    pub trace_state: Bytes,
    /// Link attributes.
    #[prost(message, repeated, tag = "4")]
    pub attributes: Vec<KeyValue>,
    /// Attributes the producer dropped.
    #[prost(uint32, tag = "5")]
    pub dropped_attributes_count: u32,
    /// W3C trace flags.
    #[prost(fixed32, tag = "6")]
    pub flags: u32,
}

/// `Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// Description, usually set with an error.
    #[prost(bytes = "bytes", tag = "2")]
    pub message: Bytes,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Attribute key.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// Attribute value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// The value; `None` for an empty `AnyValue`.
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

/// The `AnyValue.value` oneof.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// `string_value`.
    #[prost(bytes = "bytes", tag = "1")]
    StringValue(Bytes),
    /// `bool_value`.
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    /// `int_value`.
    #[prost(int64, tag = "3")]
    IntValue(i64),
    /// `double_value`.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// `array_value`.
    #[prost(message, tag = "5")]
    ArrayValue(ArrayValue),
    /// `kvlist_value`.
    #[prost(message, tag = "6")]
    KvlistValue(KeyValueList),
    /// `bytes_value`.
    #[prost(bytes = "bytes", tag = "7")]
    BytesValue(Bytes),
}

/// `ArrayValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    /// Elements.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `KeyValueList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    /// Entries.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1 as upstream;
    use prost::Message;

    #[test]
    fn wire_compatible_with_opentelemetry_proto_in_both_directions() {
        for capture in [
            "tests/fixtures/mlflow-captures/01_sdk_otlp_only/request.pb",
            "tests/fixtures/mlflow-captures/03_sdk_to_mlflow_server/v1_traces.request.pb",
            "tests/fixtures/mlflow-captures/04_genai_semconv_split_trace/req1_children.pb",
        ] {
            let body =
                std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + capture)
                    .unwrap();
            let ours = ExportTraceServiceRequest::decode(Bytes::from(body.clone())).unwrap();
            let theirs = upstream::ExportTraceServiceRequest::decode(&body[..]).unwrap();
            assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec(), "{capture}");
            assert_eq!(
                ours.encoded_len(),
                body.len(),
                "{capture}: nothing lost on re-encode"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_read_lossily_not_refused() {
        let span = Span {
            name: Bytes::from_static(b"ok \xff name"),
            ..Span::default()
        };
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec();
        assert!(
            upstream::ExportTraceServiceRequest::decode(&body[..]).is_err(),
            "a strict decoder refuses it"
        );
        let ours = ExportTraceServiceRequest::decode(Bytes::from(body)).unwrap();
        assert_eq!(
            text(&ours.resource_spans[0].scope_spans[0].spans[0].name),
            "ok \u{fffd} name"
        );
    }
}

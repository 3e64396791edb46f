//! Types every stage shares: typed ids, receive metadata and the span batch that flows from the
//! receivers into a pipeline.
//!
//! Stages talk through these types only, never through each other's internals. A [`SpanBatch`]
//! is one OTLP request after validation, already split by trace id so that later stages (the
//! ingest log, the assembler) can work per trace without walking the request again.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

/// A W3C/OTLP trace id: 16 bytes, never all zero once validated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A W3C/OTLP span id: 8 bytes, never all zero once validated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Reads a trace id from OTLP bytes; `None` unless exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl SpanId {
    /// Reads a span id from OTLP bytes; `None` unless exactly 8 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// Lowercase hex, as OTLP/JSON and W3C `traceparent` write ids.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// Lowercase hex, as OTLP/JSON and W3C `traceparent` write ids.
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The transport a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with an OTLP/JSON body.
    HttpJson,
}

impl Protocol {
    /// The label used in metrics and in the debug sink.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http_protobuf",
            Protocol::HttpJson => "http_json",
        }
    }
}

/// What the receiver knew about a request besides its spans.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiveMeta {
    /// The name of the receiver in the pipeline file.
    pub receiver: Arc<str>,
    /// The transport the request used.
    pub protocol: Protocol,
    /// When the request was accepted.
    pub received_at: SystemTime,
    /// The `x-mlflow-experiment-id` header, MLflow's own `/v1/traces` contract for choosing the
    /// experiment of the traces.
    pub experiment_id: Option<Arc<str>>,
}

/// The valid spans of one trace from one request, with their resources and scopes.
///
/// Each `ResourceSpans` holds only this trace's spans; resource and scope are copied from the
/// request so the group stands alone (the shape of the Collector's Kafka exporter with
/// `partition_traces_by_id`).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpans {
    /// The trace every span in `resource_spans` belongs to.
    pub trace_id: TraceId,
    /// The spans, grouped by resource and scope as they arrived.
    pub resource_spans: Vec<ResourceSpans>,
}

impl TraceSpans {
    /// The number of spans in the group.
    pub fn span_count(&self) -> usize {
        count_spans(&self.resource_spans)
    }
}

/// One accepted OTLP request: its metadata and its valid spans, split by trace id.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanBatch {
    /// Where and when the request arrived.
    pub meta: ReceiveMeta,
    /// One entry per trace id, in order of first appearance in the request.
    pub traces: Vec<TraceSpans>,
    /// The size of the decoded request body in bytes, used to bound queues by bytes.
    pub encoded_bytes: usize,
}

impl SpanBatch {
    /// The number of spans in the batch.
    pub fn span_count(&self) -> usize {
        self.traces.iter().map(TraceSpans::span_count).sum()
    }
}

/// Counts the spans in OTLP resource spans.
pub fn count_spans(resource_spans: &[ResourceSpans]) -> usize {
    resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_as_lowercase_hex() {
        let t = TraceId([0xAB; 16]);
        assert_eq!(t.to_string(), "ab".repeat(16));
        let s = SpanId([0, 1, 2, 3, 4, 5, 6, 0xFF]);
        assert_eq!(s.to_string(), "00010203040506ff");
    }

    #[test]
    fn ids_from_slice_require_exact_length() {
        assert!(TraceId::from_slice(&[1; 15]).is_none());
        assert!(TraceId::from_slice(&[1; 17]).is_none());
        assert_eq!(TraceId::from_slice(&[1; 16]), Some(TraceId([1; 16])));
        assert!(SpanId::from_slice(&[]).is_none());
        assert_eq!(SpanId::from_slice(&[2; 8]), Some(SpanId([2; 8])));
    }
}

//! Types every stage shares: typed ids, receive metadata and the span batch that flows from the
//! receivers into a pipeline.
//!
//! Stages talk through these types only, never through each other's internals. A [`SpanBatch`]
//! is one OTLP request after validation, already split by trace id so that later stages (the
//! ingest log, the assembler) can work per trace without walking the request again.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;

use crate::otlp::view::SpanView;
use crate::otlp::{InstrumentationScope, Resource, ResourceSpans, ScopeSpans, Span};

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

/// Where spans came from: the resource and instrumentation scope of one `ScopeSpans` of a
/// request. Shared (behind an `Arc`) by every span of that scope, whichever trace it belongs to,
/// so splitting a request by trace copies no resource.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    /// The `ResourceSpans.resource`.
    pub resource: Option<Resource>,
    /// The `ResourceSpans.schema_url`.
    pub resource_schema_url: Bytes,
    /// The `ScopeSpans.scope`.
    pub scope: Option<InstrumentationScope>,
    /// The `ScopeSpans.schema_url`.
    pub scope_schema_url: Bytes,
}

impl Origin {
    /// A copy whose fields own their bytes, so that holding it does not keep the whole request
    /// it came from in memory.
    pub fn detached(&self) -> Self {
        use prost::Message;
        fn own<M: Message + Default>(m: &Option<M>) -> Option<M> {
            m.as_ref().map(|m| {
                M::decode(Bytes::from(m.encode_to_vec()))
                    .expect("re-decoding a message just encoded")
            })
        }
        Self {
            resource: own(&self.resource),
            resource_schema_url: Bytes::copy_from_slice(&self.resource_schema_url),
            scope: own(&self.scope),
            scope_schema_url: Bytes::copy_from_slice(&self.scope_schema_url),
        }
    }

    /// A string resource attribute (`service.name`, `mlflow.experimentId`), if present.
    pub fn resource_str(&self, key: &str) -> Option<String> {
        self.resource
            .as_ref()?
            .attributes
            .iter()
            .find(|kv| &kv.key[..] == key.as_bytes())
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                crate::otlp::Value::StringValue(s) => Some(crate::otlp::text(s).into_owned()),
                _ => None,
            })
    }
}

/// Spans of one trace that share an origin, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanGroup {
    /// Their resource and scope.
    pub origin: Arc<Origin>,
    /// The spans, in request order.
    pub spans: Vec<Span>,
}

/// `groups` in OTLP shape: one `ResourceSpans` with one `ScopeSpans` per group (the shape of the
/// Collector's Kafka exporter with `partition_traces_by_id`).
pub fn resource_spans(groups: &[SpanGroup]) -> Vec<ResourceSpans> {
    groups
        .iter()
        .map(|g| ResourceSpans {
            resource: g.origin.resource.clone(),
            scope_spans: vec![ScopeSpans {
                scope: g.origin.scope.clone(),
                spans: g.spans.clone(),
                schema_url: g.origin.scope_schema_url.clone(),
            }],
            schema_url: g.origin.resource_schema_url.clone(),
        })
        .collect()
}

/// Spans of one trace that share an origin, each an encoded OTLP `Span` (checked on arrival, so
/// it decodes, and canonical, so [`crate::otlp::view`] reads it as decoding would).
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedGroup {
    /// Their resource and scope.
    pub origin: Arc<Origin>,
    /// The spans, encoded.
    pub spans: Vec<Bytes>,
}

impl EncodedGroup {
    /// The spans decoded; checked on arrival ([`crate::otlp::wire`]), they always decode.
    pub fn decode(&self) -> SpanGroup {
        use prost::Message;
        let decode = |b: &Bytes| Span::decode(b.clone()).expect("spans are checked on arrival");
        SpanGroup {
            origin: Arc::clone(&self.origin),
            spans: self.spans.iter().map(decode).collect(),
        }
    }
}

/// A valid span as it arrived: the ids that assembly reads, and the `Span` message still
/// encoded. Receiving reads no more than ids and times; MLflow normalization reads the encoding
/// in place, and a span is decoded only for a stage or sink that asks for OTLP spans.
#[derive(Clone, Debug, PartialEq)]
pub struct ArrivedSpan {
    /// `span_id`.
    pub span_id: SpanId,
    /// `parent_span_id`; `None` for a root.
    pub parent_span_id: Option<SpanId>,
    /// The `Span` message, as the request encoded it.
    pub encoded: Bytes,
}

/// Spans of one trace from one request that share an origin, as they arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct ArrivedGroup {
    /// Their resource and scope.
    pub origin: Arc<Origin>,
    /// The spans, in request order.
    pub spans: Vec<ArrivedSpan>,
}

impl ArrivedGroup {
    /// The spans, encoded.
    pub fn encoded(&self) -> EncodedGroup {
        EncodedGroup {
            origin: Arc::clone(&self.origin),
            spans: self.spans.iter().map(|s| s.encoded.clone()).collect(),
        }
    }

    /// The spans decoded.
    pub fn decode(&self) -> SpanGroup {
        self.encoded().decode()
    }
}

/// The valid spans of one trace from one request, grouped by origin.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpans {
    /// The trace every span belongs to.
    pub trace_id: TraceId,
    /// The spans, by origin, in order of first appearance.
    pub groups: Vec<ArrivedGroup>,
}

impl TraceSpans {
    /// The number of spans.
    pub fn span_count(&self) -> usize {
        self.groups.iter().map(|g| g.spans.len()).sum()
    }

    /// The spans, encoded, grouped by origin.
    pub fn encoded(&self) -> Vec<EncodedGroup> {
        self.groups.iter().map(ArrivedGroup::encoded).collect()
    }

    /// The spans decoded, grouped by origin.
    pub fn decode(&self) -> Vec<SpanGroup> {
        self.groups.iter().map(ArrivedGroup::decode).collect()
    }
}

/// Where one trace of a batch sits in the ingest log: its record's position, and each span's
/// [`span_digest`] (in the order of the trace's groups and spans). The batch's spans are slices
/// of that record ([`crate::log::record::rebase`]; replay reads them out of it), so the
/// assembler holds them without pinning the whole request.
#[derive(Clone, Debug)]
pub struct LoggedTrace {
    /// The record's position in the log.
    pub position: u64,
    /// Each span's [`span_digest`].
    pub digests: Vec<u64>,
}

impl LoggedTrace {
    /// `trace`, read back from its record at `position` (replay) rather than written.
    pub fn of(position: u64, trace: &TraceSpans) -> Self {
        let spans = trace.groups.iter().flat_map(|g| &g.spans);
        let digests = spans.map(|s| span_digest(&s.encoded)).collect();
        Self { position, digests }
    }
}

/// A digest of a span's encoding, by which the assembler tells a re-sent identical copy of a
/// released span (equal) from a changed one (different, but for a 2^-64 chance) without keeping
/// the span.
pub fn span_digest(encoded: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(encoded)
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

/// A released trace revision on its way to the sinks: the MLflow trace, and the OTLP spans it
/// was built from.
///
/// The OTLP spans are decoded only when a stage or sink asks for them ([`Self::groups`]): MLflow
/// normalization reads the encoded spans in place, and most pipelines need nothing else.
#[derive(Debug)]
pub struct AssembledTrace {
    /// The revision as the assembler released it (spans encoded; spans that stages removed are
    /// removed here too).
    pub release: crate::assemble::Release,
    /// The spans of `release`, decoded on first use.
    decoded: OnceLock<Vec<SpanGroup>>,
    /// The MLflow trace, with `traceloom.revision` metadata and, when partial, the
    /// `traceloom.partial` and `traceloom.partial_reason` tags.
    pub trace: crate::mlflow::Trace,
    /// The `service.name` of each span's resource.
    pub services: Services,
    /// Approximate size in memory, charged to sink queues.
    pub bytes: usize,
    /// The position of the revision's release decision in the ingest log's journal: its
    /// identity in sink manifests and on replay.
    pub position: u64,
}

impl AssembledTrace {
    /// A revision and the MLflow trace built from it.
    pub fn new(release: crate::assemble::Release, built: crate::mlflow::Built) -> Self {
        let bytes = release.encoded_bytes() * 2;
        Self {
            release,
            decoded: OnceLock::new(),
            trace: built.trace,
            services: built.services,
            bytes,
            position: 0,
        }
    }

    /// The OTLP spans, decoded, grouped by origin.
    pub fn groups(&self) -> &[SpanGroup] {
        self.decoded.get_or_init(|| self.release.decode())
    }

    /// The OTLP spans, decoded, for a stage to change.
    pub fn groups_mut(&mut self) -> &mut Vec<SpanGroup> {
        self.groups();
        self.decoded.get_mut().expect("initialized above")
    }

    /// The number of spans (after any stage removed some).
    pub fn span_count(&self) -> usize {
        self.release.span_count()
    }

    /// Removes spans from every view: the MLflow trace, the encoded and the decoded OTLP spans.
    pub fn remove_spans(&mut self, ids: &std::collections::HashSet<SpanId>) {
        let keep = |id: &[u8]| SpanId::from_slice(id).is_none_or(|id| !ids.contains(&id));
        self.trace.data.spans.retain(|s| !ids.contains(&s.span_id));
        for group in &mut self.release.groups {
            group.spans.retain(|s| keep(SpanView::new(s).span_id));
        }
        self.release.groups.retain(|g| !g.spans.is_empty());
        if let Some(decoded) = self.decoded.get_mut() {
            for group in decoded.iter_mut() {
                group.spans.retain(|s| keep(&s.span_id));
            }
            decoded.retain(|g| !g.spans.is_empty());
        }
    }
}

/// The `service.name` of each span of a trace: distinct names, and each span's index into them.
#[derive(Debug, Default)]
pub struct Services {
    names: Vec<String>,
    by_span: rustc_hash::FxHashMap<SpanId, usize>,
}

impl Services {
    /// The service of each span, from its origin's resource; names in order of first appearance.
    pub fn of<'a>(spans: impl IntoIterator<Item = (&'a Origin, SpanId)>) -> Self {
        let mut services = Self::default();
        // Each origin's service index, looked up once: a trace has few origins.
        let mut origins: Vec<(*const Origin, Option<usize>)> = Vec::new();
        for (origin, id) in spans {
            let index = match origins.iter().find(|(o, _)| std::ptr::eq(*o, origin)) {
                Some(&(_, index)) => index,
                None => {
                    let index = origin
                        .resource_str("service.name")
                        .map(|name| services.index(name));
                    origins.push((origin, index));
                    index
                }
            };
            if let Some(index) = index {
                services.by_span.insert(id, index);
            }
        }
        services
    }

    fn index(&mut self, name: String) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| {
                self.names.push(name);
                self.names.len() - 1
            })
    }

    /// The distinct service names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The service of span `id`, if its resource names one.
    pub fn of_span(&self, id: &SpanId) -> Option<&str> {
        self.by_span.get(id).map(|&i| &self.names[i][..])
    }
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

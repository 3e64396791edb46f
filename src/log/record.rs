//! Span records: one trace's spans from one request, as the ingest log stores them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use prost::encoding;

use super::proto::{self, SpanRecordHead};
use crate::model::{
    ArrivedGroup, Origin, Protocol, ReceiveMeta, SpanBatch, TraceId, TraceSpans, span_digest,
};
use crate::otlp::wire::{self, WireError};
use crate::receive::validate::{self, SpanError};

/// One trace's record as the ingest log stores it, and where each span's encoding lies in it
/// (in the order of the trace's groups and spans). [`rebase`] points the batch's spans there, so
/// a span is copied once on its way in, not once for the log and again for the assembler.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The `SpanRecord` message.
    pub bytes: Bytes,
    /// Where each span's `Span` message lies in `bytes`.
    span_ranges: Vec<Range<usize>>,
    /// Each span's [`span_digest`], taken while its bytes are in the caches.
    pub digests: Vec<u64>,
}

/// The encoded records of `batch`, one per trace, in the batch's order.
///
/// Written field by field, byte for byte what prost writes for the equivalent `SpanRecord`,
/// without first cloning the spans into OTLP `ResourceSpans`.
pub fn encode(batch: &SpanBatch) -> Vec<Encoded> {
    let meta = &batch.meta;
    let received = meta
        .received_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let received = u64::try_from(received.as_nanos()).unwrap_or(u64::MAX);
    let protocol = protocol_to_proto(meta.protocol) as i32;
    let experiment = meta.experiment_id.as_deref().map(str::as_bytes);
    batch
        .traces
        .iter()
        .map(|trace| {
            let lens: Vec<GroupLens> = trace.groups.iter().map(GroupLens::of).collect();
            let capacity = 64
                + meta.receiver.len()
                + experiment.map_or(0, <[u8]>::len)
                + lens
                    .iter()
                    .map(|l| delimited_len(l.resource))
                    .sum::<usize>();
            let mut buf = Vec::with_capacity(capacity);
            put_bytes(1, &trace.trace_id.0, &mut buf);
            let mut ranges = Vec::with_capacity(trace.span_count());
            let mut digests = Vec::with_capacity(trace.span_count());
            for (group, lens) in trace.groups.iter().zip(&lens) {
                encode_group(group, lens, &mut buf, &mut ranges);
                digests.extend(group.spans.iter().map(|s| span_digest(&s.encoded)));
            }
            put_bytes(3, meta.receiver.as_bytes(), &mut buf);
            encoding::int32::encode(4, &protocol, &mut buf);
            if received != 0 {
                encoding::fixed64::encode(5, &received, &mut buf);
            }
            if let Some(experiment) = experiment {
                delimit(6, experiment.len(), &mut buf);
                buf.extend_from_slice(experiment);
            }
            Encoded {
                bytes: Bytes::from(buf),
                span_ranges: ranges,
                digests,
            }
        })
        .collect()
}

impl Encoded {
    /// Each span's `Span` message, a slice of the record.
    pub fn spans(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.span_ranges.iter().map(|r| self.bytes.slice(r.clone()))
    }
}

/// Re-points `batch`'s spans at their copies in `records` (its [`encode`]d records) and gives it
/// private copies of its origins: nothing in it slices the request body any more, so the body is
/// freed as soon as the receiver is done with it instead of staying pinned, beside the records,
/// in the log's and the pipeline's queues.
pub fn rebase(batch: &mut SpanBatch, records: &[Encoded]) {
    // The request's origins, old and detached: the old ones are kept until the end so that no
    // address in the map is freed and reused meanwhile.
    let mut origins: HashMap<*const Origin, (Arc<Origin>, Arc<Origin>)> = HashMap::new();
    for (trace, record) in batch.traces.iter_mut().zip(records) {
        let mut copies = record.spans();
        for group in &mut trace.groups {
            let (_, detached) = origins
                .entry(Arc::as_ptr(&group.origin))
                .or_insert_with(|| (Arc::clone(&group.origin), Arc::new(group.origin.detached())));
            group.origin = Arc::clone(detached);
            for span in &mut group.spans {
                span.encoded = copies.next().expect("one copy per span");
            }
        }
    }
}

/// Encoded lengths of a group as one `ResourceSpans` holding one `ScopeSpans`.
struct GroupLens {
    spans: Vec<usize>,
    scope: usize,
    resource: usize,
}

impl GroupLens {
    fn of(group: &ArrivedGroup) -> Self {
        let origin = &group.origin;
        let spans: Vec<usize> = group.spans.iter().map(|s| s.encoded.len()).collect();
        let scope = origin
            .scope
            .as_ref()
            .map_or(0, |s| encoding::message::encoded_len(1, s))
            + spans.iter().map(|&len| delimited_len(len)).sum::<usize>()
            + bytes_len(&origin.scope_schema_url);
        let resource = origin
            .resource
            .as_ref()
            .map_or(0, |r| encoding::message::encoded_len(1, r))
            + delimited_len(scope)
            + bytes_len(&origin.resource_schema_url);
        Self {
            spans,
            scope,
            resource,
        }
    }
}

/// `group` as record field 2; notes where each span's message lands in `buf`.
fn encode_group(
    group: &ArrivedGroup,
    lens: &GroupLens,
    buf: &mut Vec<u8>,
    ranges: &mut Vec<Range<usize>>,
) {
    let origin = &group.origin;
    delimit(2, lens.resource, buf);
    if let Some(resource) = &origin.resource {
        encoding::message::encode(1, resource, buf);
    }
    delimit(2, lens.scope, buf);
    if let Some(scope) = &origin.scope {
        encoding::message::encode(1, scope, buf);
    }
    for (span, &len) in group.spans.iter().zip(&lens.spans) {
        delimit(2, len, buf);
        let start = buf.len();
        buf.extend_from_slice(&span.encoded);
        ranges.push(start..buf.len());
    }
    put_bytes(3, &origin.scope_schema_url, buf);
    put_bytes(3, &origin.resource_schema_url, buf);
}

/// A length-delimited field's key and length (every field written here has a tag below 16,
/// so its key is one byte).
fn delimit(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encoding::encode_key(tag, encoding::WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
}

/// The encoded size of a length-delimited field of `len` bytes with a one-byte key.
fn delimited_len(len: usize) -> usize {
    1 + encoding::encoded_len_varint(len as u64) + len
}

/// A proto3 `bytes`/`string` field; omitted when empty, as prost does.
fn put_bytes(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    if !value.is_empty() {
        delimit(tag, value.len(), buf);
        buf.extend_from_slice(value);
    }
}

fn bytes_len(value: &Bytes) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(value.len())
    }
}

/// Why a stored record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not a `SpanRecord` message.
    #[error("not a span record: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A span in it is not well-formed.
    #[error("not a span record: {0}")]
    Spans(#[from] WireError),
    /// The trace id is not 16 bytes.
    #[error("trace_id has {0} bytes, expected 16")]
    TraceId(usize),
    /// A span breaks the rules receiving checks.
    #[error("invalid span: {0}")]
    Span(#[from] SpanError),
    /// A span belongs to another trace than the record's.
    #[error("a span of trace {0} in the record of another trace")]
    OtherTrace(TraceId),
}

/// A stored record as a one-trace batch, ready for the assembler.
///
/// # Errors
///
/// [`RecordError`] when the bytes are not a valid record.
pub fn decode(payload: &[u8]) -> Result<SpanBatch, RecordError> {
    // One copy, which every field and span then slices, so that replay holds the very bytes the
    // running process held.
    let payload = Bytes::copy_from_slice(payload);
    let head = SpanRecordHead::decode(payload.clone())?;
    let trace_id =
        TraceId::from_slice(&head.trace_id).ok_or(RecordError::TraceId(head.trace_id.len()))?;
    let mut groups = Vec::new();
    for mut resource in wire::read_resource_spans(&payload, 2)? {
        for mut scope in std::mem::take(&mut resource.scopes) {
            let origin = validate::origin(&resource, &mut scope);
            let spans = scope
                .spans
                .into_iter()
                .map(|span| match validate::check_span(span)? {
                    (id, span) if id == trace_id => Ok(span),
                    (id, _) => Err(RecordError::OtherTrace(id)),
                })
                .collect::<Result<_, RecordError>>()?;
            groups.push(ArrivedGroup { origin, spans });
        }
    }
    Ok(SpanBatch {
        meta: ReceiveMeta {
            receiver: Arc::from(head.receiver),
            protocol: protocol_from_proto(head.protocol),
            received_at: UNIX_EPOCH + Duration::from_nanos(head.received_at_unix_nano),
            experiment_id: head.experiment_id.map(Arc::from),
        },
        traces: vec![TraceSpans { trace_id, groups }],
        encoded_bytes: payload.len(),
    })
}

fn protocol_to_proto(p: Protocol) -> proto::Protocol {
    match p {
        Protocol::Grpc => proto::Protocol::Grpc,
        Protocol::HttpProtobuf => proto::Protocol::HttpProtobuf,
        Protocol::HttpJson => proto::Protocol::HttpJson,
    }
}

fn protocol_from_proto(p: i32) -> Protocol {
    match proto::Protocol::try_from(p) {
        Ok(proto::Protocol::HttpProtobuf) => Protocol::HttpProtobuf,
        Ok(proto::Protocol::HttpJson) => Protocol::HttpJson,
        _ => Protocol::Grpc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::proto::SpanRecord;
    use crate::model::Origin;
    use crate::otlp::Span;
    use crate::testkit;

    #[test]
    fn a_rebased_batch_slices_its_records_not_the_request() {
        let body = Bytes::from(testkit::request(1, 3, 4, 100).encode_to_vec());
        let blocks = crate::receive::decode::decode_protobuf(&body).unwrap();
        let mut batch = SpanBatch {
            traces: crate::receive::validate::split_by_trace(blocks, Vec::new()).traces,
            ..testkit::batch(1, 1, 1, 0)
        };
        let within = |b: &[u8], of: &[u8]| of.as_ptr_range().contains(&b.as_ptr());
        let key = |o: &Origin| o.resource.as_ref().unwrap().attributes[0].key.clone();
        let first = &batch.traces[0].groups[0];
        assert!(within(&first.spans[0].encoded, &body) && within(&key(&first.origin), &body));

        let records = encode(&batch);
        let before = batch.clone();
        rebase(&mut batch, &records);
        assert_eq!(batch, before, "the same spans and origins");
        for (trace, record) in batch.traces.iter().zip(&records) {
            for group in &trace.groups {
                assert!(!within(&key(&group.origin), &body));
                for span in &group.spans {
                    assert!(within(&span.encoded, &record.bytes));
                }
            }
        }
        let origin = |t: usize| &batch.traces[t].groups[0].origin;
        assert!(
            Arc::ptr_eq(origin(0), origin(2)),
            "the traces of a request still share its origin"
        );
    }

    #[test]
    fn a_batch_round_trips_one_record_per_trace() {
        let mut batch = testkit::batch(1, 3, 4, 10);
        batch.meta.experiment_id = Some(Arc::from("42"));
        batch.meta.protocol = Protocol::HttpJson;
        let records = encode(&batch);
        assert_eq!(records.len(), 3);
        for (record, trace) in records.iter().zip(&batch.traces) {
            let back = decode(&record.bytes).unwrap();
            assert_eq!(back.traces, vec![trace.clone()]);
            assert_eq!(back.meta.experiment_id.as_deref(), Some("42"));
            assert_eq!(back.meta.protocol, Protocol::HttpJson);
            assert_eq!(back.meta.receiver, batch.meta.receiver);
            let skew = batch.meta.received_at.duration_since(back.meta.received_at);
            assert!(skew.unwrap_or_default() < Duration::from_micros(1));
        }
        let err = decode(&SpanRecord::default().encode_to_vec()).unwrap_err();
        assert_eq!(err.to_string(), "trace_id has 0 bytes, expected 16");
    }

    #[test]
    fn records_hold_each_span_as_it_arrived() {
        let mut batch = testkit::batch(3, 1, 2, 10);
        let span = &mut batch.traces[0].groups[0].spans[1];
        // A field this version of OTLP does not know: kept in the copy, dropped by decoding.
        let mut arrived = span.encoded.to_vec();
        arrived.extend_from_slice(&[0x98, 0x06, 0x01]);
        span.encoded = Bytes::from(arrived.clone());
        let records = encode(&batch);
        assert_eq!(records[0].spans().nth(1).unwrap(), arrived);
        let back = decode(&records[0].bytes).unwrap();
        assert_eq!(
            back.traces[0].groups[0].spans[1].encoded, arrived,
            "replay holds the same bytes"
        );
        assert_eq!(back.traces, batch.traces);
    }

    #[test]
    fn unreadable_records_are_refused_with_the_reason() {
        let batch = testkit::batch(4, 2, 2, 10);
        let records = encode(&batch);
        let cut = &records[0].bytes[..records[0].bytes.len() - 40];
        let err = decode(cut).unwrap_err().to_string();
        assert!(err.starts_with("not a span record: "), "{err}");
        // A record whose span belongs to another trace (never written, but checked).
        let mut mixed = batch.clone();
        let stray = mixed.traces[1].groups[0].spans[0].clone();
        mixed.traces[0].groups[0].spans.push(stray);
        let err = decode(&encode(&mixed)[0].bytes).unwrap_err();
        assert!(matches!(err, RecordError::OtherTrace(id) if id == batch.traces[1].trace_id));
    }

    /// What prost writes for the record `encode` writes by hand.
    fn prost_record(batch: &SpanBatch, trace: &TraceSpans) -> Vec<u8> {
        let received = batch.meta.received_at.duration_since(UNIX_EPOCH).unwrap();
        SpanRecord {
            trace_id: Bytes::copy_from_slice(&trace.trace_id.0),
            resource_spans: crate::model::resource_spans(&trace.decode()),
            receiver: batch.meta.receiver.to_string(),
            protocol: protocol_to_proto(batch.meta.protocol) as i32,
            received_at_unix_nano: received.as_nanos() as u64,
            experiment_id: batch.meta.experiment_id.as_deref().map(str::to_string),
        }
        .encode_to_vec()
    }

    #[test]
    fn records_are_byte_for_byte_prosts_and_span_slices_are_the_spans() {
        let mut batch = testkit::batch(2, 3, 5, 300);
        // Origins without resource or scope, and with schema URLs and an empty experiment.
        batch.traces[1].groups[0].origin = Arc::new(Origin {
            resource: None,
            resource_schema_url: Bytes::from_static(b"https://opentelemetry.io/schemas/1.26.0"),
            scope: None,
            scope_schema_url: Bytes::from_static(b"https://example.com/scope"),
        });
        batch.meta.experiment_id = Some(Arc::from(""));
        for (record, trace) in encode(&batch).iter().zip(&batch.traces) {
            assert_eq!(record.bytes[..], prost_record(&batch, trace)[..]);
            let spans: Vec<Span> = trace.decode().into_iter().flat_map(|g| g.spans).collect();
            assert_eq!(record.spans().count(), spans.len());
            for (slice, span) in record.spans().zip(spans) {
                assert_eq!(Span::decode(slice).unwrap(), span);
            }
        }
    }
}

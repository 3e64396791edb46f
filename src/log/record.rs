//! Span records: one trace's spans from one request, as the ingest log stores them.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use std::ops::Range;

use bytes::Bytes;
use prost::Message;
use prost::encoding;

use super::proto::{self, SpanRecord};
use crate::model::{Origin, Protocol, ReceiveMeta, SpanBatch, SpanGroup, TraceId, TraceSpans};

/// One trace's record as the ingest log stores it, and each span's encoding sliced out of it
/// (in the order of the trace's groups and spans). The assembler holds those slices, so a span
/// is encoded once on its way in, not once for the log and again for the assembler.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The `SpanRecord` message.
    pub bytes: Bytes,
    /// Each span's `Span` message, a slice of `bytes`.
    pub spans: Vec<Bytes>,
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
            for (group, lens) in trace.groups.iter().zip(&lens) {
                encode_group(group, lens, &mut buf, &mut ranges);
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
            let bytes = Bytes::from(buf);
            let spans = ranges.into_iter().map(|r| bytes.slice(r)).collect();
            Encoded { bytes, spans }
        })
        .collect()
}

/// Encoded lengths of a group as one `ResourceSpans` holding one `ScopeSpans`.
struct GroupLens {
    spans: Vec<usize>,
    scope: usize,
    resource: usize,
}

impl GroupLens {
    fn of(group: &SpanGroup) -> Self {
        let origin = &group.origin;
        let spans: Vec<usize> = match group.raw() {
            Some(raw) => raw.iter().map(Bytes::len).collect(),
            None => group.spans.iter().map(Message::encoded_len).collect(),
        };
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
    group: &SpanGroup,
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
    let raw = group.raw();
    for (i, (span, &len)) in group.spans.iter().zip(&lens.spans).enumerate() {
        delimit(2, len, buf);
        let start = buf.len();
        match raw {
            Some(raw) => buf.extend_from_slice(&raw[i]),
            None => span.encode_raw(buf),
        }
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
    /// The trace id is not 16 bytes.
    #[error("trace_id has {0} bytes, expected 16")]
    TraceId(usize),
}

/// A stored record as a one-trace batch, ready for the assembler.
///
/// # Errors
///
/// [`RecordError`] when the bytes are not a valid record.
pub fn decode(payload: &[u8]) -> Result<SpanBatch, RecordError> {
    // One copy, which every field and span then slices.
    let payload = Bytes::copy_from_slice(payload);
    let record = SpanRecord::decode(payload.clone())?;
    // The spans as recorded, so that replay holds the very bytes the running process held.
    let mut raw = crate::otlp::raw_spans(&payload, 2)
        .unwrap_or_default()
        .into_iter()
        .flatten();
    let trace_id =
        TraceId::from_slice(&record.trace_id).ok_or(RecordError::TraceId(record.trace_id.len()))?;
    let mut groups = Vec::new();
    for rs in record.resource_spans {
        for ss in rs.scope_spans {
            groups.push(SpanGroup {
                origin: Arc::new(Origin {
                    resource: rs.resource.clone(),
                    resource_schema_url: rs.schema_url.clone(),
                    scope: ss.scope,
                    scope_schema_url: ss.schema_url,
                }),
                raw: raw.next().unwrap_or_default(),
                spans: ss.spans,
            });
        }
    }
    Ok(SpanBatch {
        meta: ReceiveMeta {
            receiver: Arc::from(record.receiver),
            protocol: protocol_from_proto(record.protocol),
            received_at: UNIX_EPOCH + Duration::from_nanos(record.received_at_unix_nano),
            experiment_id: record.experiment_id.map(Arc::from),
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
    use crate::otlp::Span;
    use crate::testkit;

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
        let group = &mut batch.traces[0].groups[0];
        // A field this version of OTLP does not know: kept in the copy, dropped by decoding.
        let mut arrived = group.spans[1].encode_to_vec();
        arrived.extend_from_slice(&[0x98, 0x06, 0x01]);
        group.raw[1] = Bytes::from(arrived.clone());
        let records = encode(&batch);
        assert_eq!(records[0].spans[1], arrived);
        let back = decode(&records[0].bytes).unwrap();
        assert_eq!(
            back.traces[0].groups[0].raw[1], arrived,
            "replay holds the same bytes"
        );
        assert_eq!(
            back.traces[0].groups[0].spans,
            batch.traces[0].groups[0].spans
        );
        // Without the encodings (OTLP/JSON), the decoded spans are encoded.
        batch.traces[0].groups[0].raw.clear();
        let records = encode(&batch);
        assert_eq!(
            records[0].spans[1],
            batch.traces[0].groups[0].spans[1].encode_to_vec()
        );
    }

    /// What prost writes for the record `encode` writes by hand.
    fn prost_record(batch: &SpanBatch, trace: &TraceSpans) -> Vec<u8> {
        let received = batch.meta.received_at.duration_since(UNIX_EPOCH).unwrap();
        SpanRecord {
            trace_id: Bytes::copy_from_slice(&trace.trace_id.0),
            resource_spans: trace.to_resource_spans(),
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
            let spans: Vec<&Span> = trace.groups.iter().flat_map(|g| &g.spans).collect();
            assert_eq!(record.spans.len(), spans.len());
            for (slice, span) in record.spans.iter().zip(spans) {
                assert_eq!(&Span::decode(slice.clone()).unwrap(), span);
            }
        }
    }
}

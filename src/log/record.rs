//! Span records: one trace's spans from one request, as the ingest log stores them.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;

use super::proto::{self, SpanRecord};
use crate::model::{Origin, Protocol, ReceiveMeta, SpanBatch, SpanGroup, TraceId, TraceSpans};

/// The encoded records of `batch`, one per trace, in the batch's order.
pub fn encode(batch: &SpanBatch) -> Vec<Bytes> {
    let meta = &batch.meta;
    let received = meta
        .received_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    batch
        .traces
        .iter()
        .map(|trace| {
            let record = SpanRecord {
                trace_id: Bytes::copy_from_slice(&trace.trace_id.0),
                resource_spans: trace.to_resource_spans(),
                receiver: meta.receiver.to_string(),
                protocol: protocol_to_proto(meta.protocol) as i32,
                received_at_unix_nano: u64::try_from(received.as_nanos()).unwrap_or(u64::MAX),
                experiment_id: meta.experiment_id.as_deref().map(str::to_string),
            };
            Bytes::from(record.encode_to_vec())
        })
        .collect()
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
    let record = SpanRecord::decode(payload)?;
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
    use crate::testkit;

    #[test]
    fn a_batch_round_trips_one_record_per_trace() {
        let mut batch = testkit::batch(1, 3, 4, 10);
        batch.meta.experiment_id = Some(Arc::from("42"));
        batch.meta.protocol = Protocol::HttpJson;
        let records = encode(&batch);
        assert_eq!(records.len(), 3);
        for (record, trace) in records.iter().zip(&batch.traces) {
            let back = decode(record).unwrap();
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
}

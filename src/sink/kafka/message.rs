//! One trace revision as a Kafka message: key, value, headers, and the parts of a value larger
//! than the broker takes.
//!
//! The key is the MLflow trace id (`tr-…`), so every revision of a trace lands in one partition,
//! in order, and a compacted topic keeps the newest. A value larger than the part size is cut
//! into numbered parts, each a message with the same key and headers plus `part` (1-based) and
//! `parts`; concatenating the values of parts 1..=parts of one (`trace_id`, `revision`) gives
//! the value an unsplit message would have had.

use bytes::Bytes;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};

use crate::model::{AssembledTrace, resource_spans};
use crate::otlp::ExportTraceServiceRequest;
use crate::receive::json::JsonResourceSpans;

/// Bytes a message takes beyond its key, value and header text: the record batch header, the
/// record's varints, the `part`/`parts` headers, with room to spare.
const RECORD_OVERHEAD: usize = 512;

/// The smallest part, so that a tiny `max_message_size` cannot produce millions of parts.
const MIN_PART: usize = 1024;

/// `encoding`: what a message value holds.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The MLflow trace exactly as `Trace.to_dict()` writes it, as JSON.
    #[default]
    MlflowJson,
    /// An OTLP `ExportTraceServiceRequest` with the trace's spans and their resources.
    OtlpProto,
    /// The same request in OTLP/JSON.
    OtlpJson,
}

impl Encoding {
    /// The `encoding` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MlflowJson => "mlflow-json",
            Self::OtlpProto => "otlp-proto",
            Self::OtlpJson => "otlp-json",
        }
    }

    /// The `content-type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::MlflowJson | Self::OtlpJson => "application/json",
            Self::OtlpProto => "application/x-protobuf",
        }
    }
}

/// A trace revision ready to send.
#[derive(Debug)]
pub struct Message {
    /// The MLflow trace id.
    pub key: String,
    /// Headers every part carries, `(name, value)`.
    pub headers: Vec<(&'static str, String)>,
    /// The value, in parts of at most the part size (one part when it fits).
    pub parts: Vec<Bytes>,
    /// The revision's identity in the ingest log, reported once every part is durable.
    pub position: u64,
}

#[derive(Serialize)]
struct OtlpJsonRequest<'a> {
    #[serde(rename = "resourceSpans")]
    resource_spans: JsonResourceSpans<'a>,
}

impl Message {
    /// Encodes `trace`; a value that would make a message larger than `max_message_size` is
    /// cut into parts.
    pub fn new(trace: &AssembledTrace, encoding: Encoding, max_message_size: usize) -> Self {
        let info = &trace.trace.info;
        let headers = vec![
            ("content-type", encoding.content_type().to_string()),
            ("encoding", encoding.as_str().to_string()),
            ("trace_id", info.trace_id.clone()),
            ("revision", trace.release.revision.to_string()),
            (
                "experiment_id",
                info.trace_location.mlflow_experiment.experiment_id.clone(),
            ),
            ("span_count", trace.span_count().to_string()),
            ("partial", trace.release.partial().to_string()),
        ];
        let overhead = RECORD_OVERHEAD
            + info.trace_id.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let part_size = max_message_size.saturating_sub(overhead).max(MIN_PART);
        Self {
            key: info.trace_id.clone(),
            headers,
            parts: split(Bytes::from(value(trace, encoding)), part_size),
            position: trace.position,
        }
    }

    /// The value's size.
    pub fn value_len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// The headers of part `index` (0-based): the common ones, plus `part`/`parts` when split.
    pub fn part_headers(&self, index: usize) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let numbering = (self.parts.len() > 1).then(|| {
            [
                ("part", (index + 1).to_string()),
                ("parts", self.parts.len().to_string()),
            ]
        });
        self.headers
            .iter()
            .cloned()
            .chain(numbering.into_iter().flatten())
    }
}

/// librdkafka headers holding `(name, value)` pairs, in order.
pub fn kafka_headers(pairs: impl IntoIterator<Item = (&'static str, String)>) -> OwnedHeaders {
    pairs.into_iter().fold(
        OwnedHeaders::new_with_capacity(10),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

/// The value of `trace` in `encoding`.
pub fn value(trace: &AssembledTrace, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::MlflowJson => Ok(crate::mlflow::trace_json::to_string(&trace.trace).into_bytes()),
        Encoding::OtlpProto => Ok(ExportTraceServiceRequest {
            resource_spans: resource_spans(trace.groups()),
        }
        .encode_to_vec()),
        Encoding::OtlpJson => serde_json::to_vec(&OtlpJsonRequest {
            resource_spans: JsonResourceSpans(&resource_spans(trace.groups())),
        }),
    }
    .expect("traces serialize: every map key is a string")
}

/// `value` in consecutive slices of at most `part_size` bytes (at least one, even when empty).
pub fn split(value: Bytes, part_size: usize) -> Vec<Bytes> {
    if value.len() <= part_size {
        return vec![value];
    }
    (0..value.len())
        .step_by(part_size)
        .map(|start| value.slice(start..value.len().min(start + part_size)))
        .collect()
}

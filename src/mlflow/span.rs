//! MLflow's span, as `Span.to_dict()` writes it, built from an OTLP span as MLflow's server builds
//! it (`Span.from_otel_proto`, `sanitize_attributes`, `translate_span_when_storing`).

use base64::Engine as _;
use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use super::attributes;
use super::conventions;
use crate::model::{SpanId, TraceId};
use crate::otlp::text;
use crate::otlp::view::{KeyValues, SpanView};

pub use super::attribute_map::Attributes;

/// `mlflow.traceRequestId`, always set from the OTLP trace id.
pub const REQUEST_ID: &str = "mlflow.traceRequestId";

/// An MLflow span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    /// Base64 of the 16 id bytes.
    #[serde(serialize_with = "trace_id_b64")]
    pub trace_id: TraceId,
    /// Base64 of the 8 id bytes.
    #[serde(serialize_with = "span_id_b64")]
    pub span_id: SpanId,
    /// Base64 of the parent's id; `null` for a root.
    #[serde(serialize_with = "parent_b64")]
    pub parent_span_id: Option<SpanId>,
    /// Span name.
    pub name: String,
    /// Start, ns since the epoch.
    pub start_time_unix_nano: u64,
    /// End, ns since the epoch.
    pub end_time_unix_nano: u64,
    /// Events; their attributes keep raw (not JSON-encoded) values.
    pub events: Vec<SpanEvent>,
    /// Outcome.
    pub status: SpanStatus,
    /// Attributes, each value JSON-encoded.
    pub attributes: Attributes,
    /// Links to other spans.
    pub links: Vec<SpanLink>,
}

/// A span event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpanEvent {
    /// Event name.
    pub name: String,
    /// When, ns since the epoch.
    pub time_unix_nano: u64,
    /// Raw attribute values.
    pub attributes: IndexMap<String, serde_json::Value>,
}

/// A span's status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpanStatus {
    /// `STATUS_CODE_UNSET` | `STATUS_CODE_OK` | `STATUS_CODE_ERROR`.
    pub code: StatusCode,
    /// Description; MLflow (through the OpenTelemetry SDK) keeps it only for errors.
    pub message: String,
}

/// The status code as MLflow names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StatusCode {
    /// Not set.
    #[serde(rename = "STATUS_CODE_UNSET")]
    Unset,
    /// Succeeded.
    #[serde(rename = "STATUS_CODE_OK")]
    Ok,
    /// Failed.
    #[serde(rename = "STATUS_CODE_ERROR")]
    Error,
}

impl StatusCode {
    /// The name MLflow writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "STATUS_CODE_UNSET",
            Self::Ok => "STATUS_CODE_OK",
            Self::Error => "STATUS_CODE_ERROR",
        }
    }
}

/// A link to another span, with MLflow ids (`tr-<hex>`, 16 hex).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpanLink {
    /// `tr-<32 hex>`.
    pub trace_id: String,
    /// 16 lowercase hex.
    pub span_id: String,
    /// Raw attribute values; `null` when there are none.
    pub attributes: Option<IndexMap<String, serde_json::Value>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn trace_id_b64<S: Serializer>(id: &TraceId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b64(&id.0))
}

fn span_id_b64<S: Serializer>(id: &SpanId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b64(&id.0))
}

fn parent_b64<S: Serializer>(id: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&b64(&id.0)),
        None => s.serialize_none(),
    }
}

/// The stored `mlflow.traceRequestId` of a trace: its MLflow id, JSON-encoded.
pub fn request_id_attribute(id: &TraceId) -> String {
    super::json::dumps_str(&mlflow_trace_id(id))
}

/// The MLflow trace id of an OTLP trace id: `tr-` and 32 lowercase hex digits.
pub fn mlflow_trace_id(id: &TraceId) -> String {
    format!("tr-{id}")
}

fn raw_attributes(kvs: KeyValues<'_>) -> IndexMap<String, serde_json::Value> {
    kvs.map(|(key, value)| (text(key).into_owned(), attributes::decode(value).to_json()))
        .collect()
}

impl Span {
    /// Converts a validated OTLP span of trace `trace_id`, filling MLflow's reserved attributes
    /// from the conventions it recognises. `request_id` is the stored `mlflow.traceRequestId`
    /// value, [`request_id_attribute`] of the trace id.
    pub fn from_otlp(trace_id: TraceId, request_id: &str, span: &SpanView<'_>) -> Self {
        // Room for the encoded attributes, plus those MLflow adds, so the map rarely grows.
        let mut attrs = Attributes::with_capacity(24, span.attributes_len() + 256);
        for (key, value) in span.attributes() {
            attrs.insert_with(&text(key), |out| attributes::encode_into(value, out));
        }
        attrs.insert(REQUEST_ID, request_id);
        let events: Vec<SpanEvent> = span
            .events()
            .map(|e| SpanEvent {
                name: text(e.name).into_owned(),
                time_unix_nano: e.time_unix_nano,
                attributes: raw_attributes(e.attributes()),
            })
            .collect();
        conventions::translate(&mut attrs, &events);
        let code = match span.status_code {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        };
        let message = match code {
            StatusCode::Error => text(span.status_message).into_owned(),
            _ => String::new(),
        };
        Span {
            trace_id,
            span_id: SpanId::from_slice(span.span_id).unwrap_or(SpanId([0; 8])),
            parent_span_id: SpanId::from_slice(span.parent_span_id),
            name: text(span.name).into_owned(),
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            events,
            status: SpanStatus { code, message },
            attributes: attrs,
            links: span
                .links()
                .map(|l| {
                    let attributes = raw_attributes(l.attributes());
                    SpanLink {
                        trace_id: format!("tr-{}", hex::encode(l.trace_id)),
                        span_id: hex::encode(l.span_id),
                        attributes: (!attributes.is_empty()).then_some(attributes),
                    }
                })
                .collect(),
        }
    }
}

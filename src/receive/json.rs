//! OTLP/JSON, both ways, exactly as the OTLP specification's "JSON Protobuf Encoding" writes it:
//! lowerCamelCase keys, trace and span ids as lowercase hex (not base64), enums as integers,
//! 64-bit integers as decimal strings. Reading is lenient where protobuf JSON is (numbers or
//! strings for integers, enum names as well as numbers, `"NaN"`/`"Infinity"` doubles) and ignores
//! unknown fields, as the specification requires of receivers.
//!
//! Ids are read as text and converted per span, so a span whose id is not hex is refused alone
//! through `partial_success`, not the whole request.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::validate::{Rejection, SpanError, SpanPath};
use crate::otlp::{
    AnyValue, ArrayValue, Event, InstrumentationScope, KeyValue, KeyValueList, Link, Resource,
    ResourceSpans, ScopeSpans, Span, Status, Value, text,
};

/// An OTLP/JSON body that could not be read; the message names the JSON path and the problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP/JSON at {path}: {message}")]
pub struct JsonError {
    /// Where in the document, e.g. `resourceSpans[0].scopeSpans[0].spans[2].kind`.
    pub path: String,
    /// What was wrong there.
    pub message: String,
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest` body into protobuf types.
///
/// Spans whose ids are not hexadecimal are returned as rejections (and left out of the result).
///
/// # Errors
///
/// [`JsonError`] when the body is not JSON or does not have the OTLP shape.
pub fn decode_request(body: &[u8]) -> Result<(Vec<ResourceSpans>, Vec<Rejection>), JsonError> {
    // Path tracking slows every parse; run it only to explain a failure.
    let req: JRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(_) => return Err(locate_error(body)),
    };
    let mut rejections = Vec::new();
    let resource_spans = req
        .resource_spans
        .into_iter()
        .enumerate()
        .map(|(r, rs)| rs.into_proto(r, &mut rejections))
        .collect();
    Ok((resource_spans, rejections))
}

/// Parses `body` again with path tracking to say where and why it is not OTLP/JSON.
fn locate_error(body: &[u8]) -> JsonError {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, JRequest>(de) {
        Ok(_) => JsonError {
            path: "the top level".into(),
            message: "the document could not be read".into(),
        },
        Err(e) => JsonError {
            path: match e.path().to_string().as_str() {
                "." | "?" => "the top level".to_string(),
                p => p.to_string(),
            },
            message: e.inner().to_string(),
        },
    }
}

/// Wraps resource spans so `serde_json` writes them as an OTLP/JSON `resourceSpans` array.
pub struct JsonResourceSpans<'a>(pub &'a [ResourceSpans]);

impl Serialize for JsonResourceSpans<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(JResourceSpans::from_proto))
    }
}

// ---- the JSON shapes ---------------------------------------------------------------------

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[derive(Default)]
struct JRequest {
    resource_spans: Vec<JResourceSpans>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JResourceSpans {
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<JResource>,
    scope_spans: Vec<JScopeSpans>,
    #[serde(skip_serializing_if = "String::is_empty")]
    schema_url: String,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JResource {
    attributes: Vec<JKeyValue>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JScopeSpans {
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<JScope>,
    spans: Vec<JSpan>,
    #[serde(skip_serializing_if = "String::is_empty")]
    schema_url: String,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JScope {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<JKeyValue>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JSpan {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    trace_state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    parent_span_id: String,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    flags: u32,
    name: String,
    #[serde(deserialize_with = "span_kind")]
    kind: i32,
    #[serde(deserialize_with = "num", serialize_with = "as_string")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "num", serialize_with = "as_string")]
    end_time_unix_nano: u64,
    attributes: Vec<JKeyValue>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_attributes_count: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<JEvent>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_events_count: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<JLink>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_links_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<JStatus>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JEvent {
    #[serde(deserialize_with = "num", serialize_with = "as_string")]
    time_unix_nano: u64,
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<JKeyValue>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JLink {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    trace_state: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<JKeyValue>,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "num", skip_serializing_if = "is_zero")]
    flags: u32,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JStatus {
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(deserialize_with = "status_code", skip_serializing_if = "is_zero_i32")]
    code: i32,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

#[derive(Deserialize, Serialize, Default)]
#[serde(default)]
struct JKeyValue {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<JAnyValue>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JAnyValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    string_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bool_value: Option<bool>,
    #[serde(
        deserialize_with = "opt_num",
        serialize_with = "opt_as_string",
        skip_serializing_if = "Option::is_none"
    )]
    int_value: Option<i64>,
    #[serde(
        deserialize_with = "opt_double",
        skip_serializing_if = "Option::is_none"
    )]
    double_value: Option<JDouble>,
    #[serde(skip_serializing_if = "Option::is_none")]
    array_value: Option<JValues<JAnyValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kvlist_value: Option<JValues<JKeyValue>>,
    #[serde(
        deserialize_with = "opt_base64",
        serialize_with = "opt_as_base64",
        skip_serializing_if = "Option::is_none"
    )]
    bytes_value: Option<Vec<u8>>,
}

#[derive(Deserialize, Serialize)]
#[serde(default)]
struct JValues<T> {
    values: Vec<T>,
}

impl<T> Default for JValues<T> {
    fn default() -> Self {
        Self { values: Vec::new() }
    }
}

/// A double that writes non-finite values as proto3 JSON strings.
struct JDouble(f64);

impl Serialize for JDouble {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v == f64::INFINITY => s.serialize_str("Infinity"),
            v if v == f64::NEG_INFINITY => s.serialize_str("-Infinity"),
            v => s.serialize_f64(v),
        }
    }
}

// ---- lenient number readers ------------------------------------------------------------

/// Reads an integer written as a JSON number or a decimal string (proto3 JSON allows both).
fn num<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let wide = d.deserialize_any(IntVisitor)?;
    T::try_from(wide).map_err(|_| de::Error::custom(format!("integer {wide} out of range")))
}

fn opt_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    num(d).map(Some)
}

struct IntVisitor;

impl de::Visitor<'_> for IntVisitor {
    type Value = i128;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer or a string holding one")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        if v.fract() == 0.0 && v.abs() < 1e38 {
            Ok(v as i128)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("{v:?} is not an integer")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<i128, E> {
        Ok(0)
    }
}

fn opt_double<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JDouble>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => other
                    .parse()
                    .map_err(|_| E::custom(format!("{other:?} is not a number"))),
            }
        }
    }
    d.deserialize_any(V).map(|v| Some(JDouble(v)))
}

/// Reads an enum written as its number or its protobuf name.
fn enum_value<'de, D: Deserializer<'de>>(
    d: D,
    names: &'static [&'static str],
) -> Result<i32, D::Error> {
    struct V(&'static [&'static str]);
    impl de::Visitor<'_> for V {
        type Value = i32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an integer or one of {:?}", self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("enum value {v} out of range")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("enum value {v} out of range")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
            self.0
                .iter()
                .position(|n| *n == v)
                .map(|i| i as i32)
                .ok_or_else(|| E::unknown_variant(v, self.0))
        }
    }
    d.deserialize_any(V(names))
}

fn span_kind<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(
        d,
        &[
            "SPAN_KIND_UNSPECIFIED",
            "SPAN_KIND_INTERNAL",
            "SPAN_KIND_SERVER",
            "SPAN_KIND_CLIENT",
            "SPAN_KIND_PRODUCER",
            "SPAN_KIND_CONSUMER",
        ],
    )
}

fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(
        d,
        &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"],
    )
}

fn opt_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let text = String::deserialize(d)?;
    decode_base64(&text)
        .map(Some)
        .ok_or_else(|| de::Error::custom("not valid base64"))
}

fn opt_as_base64<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

fn as_string<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_as_string<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

// ---- JSON -> protobuf ---------------------------------------------------------------------

/// Decodes a hex id; the empty string is the empty id (a root's parent).
fn hex_id(id: &str, field: &'static str) -> Result<Bytes, SpanError> {
    hex::decode(id)
        .map(Bytes::from)
        .map_err(|_| SpanError::NotHex {
            field,
            value: id.chars().take(40).collect(),
        })
}

/// Text for a JSON field, from an OTLP string field.
fn owned(field: &Bytes) -> String {
    text(field).into_owned()
}

fn attrs_into_proto(attrs: Vec<JKeyValue>) -> Vec<KeyValue> {
    attrs.into_iter().map(JKeyValue::into_proto).collect()
}

fn attrs_from_proto(attrs: &[KeyValue]) -> Vec<JKeyValue> {
    attrs.iter().map(JKeyValue::from_proto).collect()
}

impl JKeyValue {
    fn into_proto(self) -> KeyValue {
        KeyValue {
            key: self.key.into(),
            value: self.value.map(JAnyValue::into_proto),
        }
    }

    fn from_proto(kv: &KeyValue) -> Self {
        Self {
            key: owned(&kv.key),
            value: kv.value.as_ref().map(JAnyValue::from_proto),
        }
    }
}

impl JAnyValue {
    fn into_proto(self) -> AnyValue {
        let value = if let Some(s) = self.string_value {
            Some(Value::StringValue(s.into()))
        } else if let Some(b) = self.bool_value {
            Some(Value::BoolValue(b))
        } else if let Some(i) = self.int_value {
            Some(Value::IntValue(i))
        } else if let Some(d) = self.double_value {
            Some(Value::DoubleValue(d.0))
        } else if let Some(a) = self.array_value {
            let values = a.values.into_iter().map(JAnyValue::into_proto).collect();
            Some(Value::ArrayValue(ArrayValue { values }))
        } else if let Some(kvs) = self.kvlist_value {
            Some(Value::KvlistValue(KeyValueList {
                values: attrs_into_proto(kvs.values),
            }))
        } else {
            self.bytes_value.map(|b| Value::BytesValue(b.into()))
        };
        AnyValue { value }
    }

    fn from_proto(v: &AnyValue) -> Self {
        let mut out = JAnyValue::default();
        match &v.value {
            Some(Value::StringValue(s)) => out.string_value = Some(owned(s)),
            Some(Value::BoolValue(b)) => out.bool_value = Some(*b),
            Some(Value::IntValue(i)) => out.int_value = Some(*i),
            Some(Value::DoubleValue(d)) => out.double_value = Some(JDouble(*d)),
            Some(Value::ArrayValue(a)) => {
                out.array_value = Some(JValues {
                    values: a.values.iter().map(JAnyValue::from_proto).collect(),
                })
            }
            Some(Value::KvlistValue(kvs)) => {
                out.kvlist_value = Some(JValues {
                    values: attrs_from_proto(&kvs.values),
                })
            }
            Some(Value::BytesValue(b)) => out.bytes_value = Some(b.to_vec()),
            None => {}
        }
        out
    }
}

/// Proto3 JSON writes bytes as standard base64 but readers accept the URL-safe alphabet and
/// missing padding too.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

impl JResourceSpans {
    fn into_proto(self, r: usize, rejected: &mut Vec<Rejection>) -> ResourceSpans {
        let resource = self.resource.map(|res| Resource {
            attributes: attrs_into_proto(res.attributes),
            dropped_attributes_count: res.dropped_attributes_count,
            entity_refs: Vec::new(),
        });
        let scope_spans = self
            .scope_spans
            .into_iter()
            .enumerate()
            .map(|(s, ss)| {
                let at = SpanPath {
                    resource: r,
                    scope: s,
                    span: 0,
                };
                ss.into_proto(at, rejected)
            })
            .collect();
        ResourceSpans {
            resource,
            scope_spans,
            schema_url: self.schema_url.into(),
        }
    }

    fn from_proto(rs: &ResourceSpans) -> Self {
        Self {
            resource: rs.resource.as_ref().map(|r| JResource {
                attributes: attrs_from_proto(&r.attributes),
                dropped_attributes_count: r.dropped_attributes_count,
            }),
            scope_spans: rs.scope_spans.iter().map(JScopeSpans::from_proto).collect(),
            schema_url: owned(&rs.schema_url),
        }
    }
}

impl JScopeSpans {
    fn into_proto(self, at: SpanPath, rejected: &mut Vec<Rejection>) -> ScopeSpans {
        let scope = self.scope.map(|sc| InstrumentationScope {
            name: sc.name.into(),
            version: sc.version.into(),
            attributes: attrs_into_proto(sc.attributes),
            dropped_attributes_count: sc.dropped_attributes_count,
        });
        let mut spans = Vec::with_capacity(self.spans.len());
        for (i, js) in self.spans.into_iter().enumerate() {
            match js.into_proto() {
                Ok(span) => spans.push(span),
                Err(error) => {
                    let path = SpanPath { span: i, ..at };
                    rejected.push(Rejection { path, error });
                    // Keep the slot so indexes in later rejections still match the request.
                    spans.push(Span::default());
                }
            }
        }
        ScopeSpans {
            scope,
            spans,
            schema_url: self.schema_url.into(),
        }
    }

    fn from_proto(ss: &ScopeSpans) -> Self {
        Self {
            scope: ss.scope.as_ref().map(|sc| JScope {
                name: owned(&sc.name),
                version: owned(&sc.version),
                attributes: attrs_from_proto(&sc.attributes),
                dropped_attributes_count: sc.dropped_attributes_count,
            }),
            spans: ss.spans.iter().map(JSpan::from_proto).collect(),
            schema_url: owned(&ss.schema_url),
        }
    }
}

impl JSpan {
    /// Fails only when an id is not hex, which refuses this span alone.
    fn into_proto(self) -> Result<Span, SpanError> {
        let mut links = Vec::with_capacity(self.links.len());
        for l in self.links {
            links.push(Link {
                trace_id: hex_id(&l.trace_id, "links.traceId")?,
                span_id: hex_id(&l.span_id, "links.spanId")?,
                trace_state: l.trace_state.into(),
                attributes: attrs_into_proto(l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
                flags: l.flags,
            });
        }
        Ok(Span {
            trace_id: hex_id(&self.trace_id, "traceId")?,
            span_id: hex_id(&self.span_id, "spanId")?,
            trace_state: self.trace_state.into(),
            parent_span_id: hex_id(&self.parent_span_id, "parentSpanId")?,
            flags: self.flags,
            name: self.name.into(),
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: attrs_into_proto(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
            events: self
                .events
                .into_iter()
                .map(|e| Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.into(),
                    attributes: attrs_into_proto(e.attributes),
                    dropped_attributes_count: e.dropped_attributes_count,
                })
                .collect(),
            dropped_events_count: self.dropped_events_count,
            links,
            dropped_links_count: self.dropped_links_count,
            status: self.status.map(|s| Status {
                message: s.message.into(),
                code: s.code,
            }),
        })
    }

    fn from_proto(s: &Span) -> Self {
        Self {
            trace_id: hex::encode(&s.trace_id),
            span_id: hex::encode(&s.span_id),
            trace_state: owned(&s.trace_state),
            parent_span_id: hex::encode(&s.parent_span_id),
            flags: s.flags,
            name: owned(&s.name),
            kind: s.kind,
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: attrs_from_proto(&s.attributes),
            dropped_attributes_count: s.dropped_attributes_count,
            events: s
                .events
                .iter()
                .map(|e| JEvent {
                    time_unix_nano: e.time_unix_nano,
                    name: owned(&e.name),
                    attributes: attrs_from_proto(&e.attributes),
                    dropped_attributes_count: e.dropped_attributes_count,
                })
                .collect(),
            dropped_events_count: s.dropped_events_count,
            links: s
                .links
                .iter()
                .map(|l| JLink {
                    trace_id: hex::encode(&l.trace_id),
                    span_id: hex::encode(&l.span_id),
                    trace_state: owned(&l.trace_state),
                    attributes: attrs_from_proto(&l.attributes),
                    dropped_attributes_count: l.dropped_attributes_count,
                    flags: l.flags,
                })
                .collect(),
            dropped_links_count: s.dropped_links_count,
            status: s.status.as_ref().map(|st| JStatus {
                message: owned(&st.message),
                code: st.code,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::ExportTraceServiceRequest;
    use crate::testkit;

    fn one_span(span: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn encoding_then_decoding_gives_the_request_back() {
        let mut request = testkit::request(3, 4, 3, 200);
        let span = &mut request.resource_spans[0].scope_spans[0].spans[1];
        span.attributes.push(KeyValue {
            key: Bytes::from_static(b"blob"),
            value: Some(AnyValue {
                value: Some(Value::BytesValue(Bytes::from_static(&[0, 255, 7]))),
            }),
        });
        span.attributes.push(KeyValue {
            key: Bytes::from_static(b"nested"),
            value: Some(AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![testkit::kv("a", "b"), testkit::kv_int("n", -5)],
                })),
            }),
        });
        span.status = Some(Status {
            message: Bytes::from_static(b"bad"),
            code: 2,
        });
        let text = serde_json::to_vec(&serde_json::json!({
            "resourceSpans": JsonResourceSpans(&request.resource_spans)
        }))
        .unwrap();
        let (decoded, rejected) = decode_request(&text).unwrap();
        assert!(rejected.is_empty());
        assert_eq!(
            ExportTraceServiceRequest {
                resource_spans: decoded
            },
            request
        );
    }

    #[test]
    fn integers_enums_and_doubles_are_read_leniently() {
        let body = one_span(serde_json::json!({
            "traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
            "kind": "SPAN_KIND_CLIENT", "startTimeUnixNano": 5, "endTimeUnixNano": "6",
            "status": {"code": "STATUS_CODE_ERROR"},
            "attributes": [
                {"key": "i", "value": {"intValue": 7}},
                {"key": "d", "value": {"doubleValue": "NaN"}},
                {"key": "unknown", "value": {"futureValue": 1}}
            ],
            "someFutureField": true
        }));
        let (rs, _) = decode_request(&body).unwrap();
        let span = &rs[0].scope_spans[0].spans[0];
        assert_eq!(
            (
                span.kind,
                span.start_time_unix_nano,
                span.end_time_unix_nano
            ),
            (3, 5, 6)
        );
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(Value::IntValue(7))
        );
        assert!(matches!(
            span.attributes[1].value.as_ref().unwrap().value,
            Some(Value::DoubleValue(d)) if d.is_nan()
        ));
        assert_eq!(span.attributes[2].value.as_ref().unwrap().value, None);
    }

    #[test]
    fn errors_name_the_json_path() {
        let body = one_span(serde_json::json!({
            "attributes": [{"key": "b", "value": {"bytesValue": "***"}}]
        }));
        let err = decode_request(&body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OTLP/JSON at resourceSpans[0].scopeSpans[0].spans[0].attributes[0].value.bytesValue: not valid base64 at line 1 column 97"
        );
        let err = decode_request(br#"{"resourceSpans": {}}"#).unwrap_err();
        assert_eq!(err.path, "resourceSpans");
        let err = decode_request(b"{oops").unwrap_err();
        assert_eq!(err.path, "the top level");
    }

    #[test]
    fn a_non_hex_id_refuses_its_span_and_keeps_its_slot() {
        let body = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "xyz", "spanId": "0102030405060708"},
            {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
             "links": [{"traceId": "0102", "spanId": "nothex"}]},
        ]}]}]});
        let (rs, rejected) = decode_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(rs[0].scope_spans[0].spans.len(), 2);
        let fields: Vec<_> = rejected
            .iter()
            .map(|r| match &r.error {
                SpanError::NotHex { field, .. } => (*field, r.path.span),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(fields, vec![("traceId", 0), ("links.spanId", 1)]);
    }
}

//! Decoding an `ExportTraceServiceRequest` with every `spans` vector allocated once.
//!
//! prost's derived decoder pushes spans one by one, so a 512-span scope grows its vector nine
//! times; each step is a fresh large allocation and a copy of every span decoded so far (a
//! `Span` is a few hundred bytes). Under load that was the biggest single cost of the receive
//! path: large blocks come from fresh, page-faulting memory. This walker counts a scope's spans
//! first and reserves exactly, then lets prost decode each span.
//!
//! It handles the shape exporters send (each field once, in order, well formed). Anything else
//! (a wire-type mismatch, a truncated length, a scope repeated) sends the whole body through
//! prost's derived decoder, so results and error messages are exactly prost's.

use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};

use super::{
    ExportTraceServiceRequest, InstrumentationScope, Resource, ResourceSpans, ScopeSpans, Span,
};

/// Decodes `body`, as `ExportTraceServiceRequest::decode` would, with fewer allocations.
///
/// # Errors
///
/// prost's error for a body that is not an `ExportTraceServiceRequest`.
pub fn decode_request(body: Bytes) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
    match request(body.clone()) {
        Some(request) => Ok(request),
        None => ExportTraceServiceRequest::decode(body),
    }
}

fn request(body: Bytes) -> Option<ExportTraceServiceRequest> {
    let mut request = ExportTraceServiceRequest::default();
    for field in Fields(body) {
        match field? {
            (1, Some(bytes)) => request.resource_spans.push(resource_spans(bytes)?),
            (1, None) => return None,
            _ => {}
        }
    }
    Some(request)
}

fn resource_spans(body: Bytes) -> Option<ResourceSpans> {
    let mut rs = ResourceSpans::default();
    for field in Fields(body) {
        match field? {
            (1, Some(bytes)) if rs.resource.is_none() => {
                rs.resource = Some(Resource::decode(bytes).ok()?)
            }
            (2, Some(bytes)) => rs.scope_spans.push(scope_spans(bytes)?),
            (3, Some(bytes)) => rs.schema_url = bytes,
            (1..=3, _) => return None,
            _ => {}
        }
    }
    Some(rs)
}

fn scope_spans(body: Bytes) -> Option<ScopeSpans> {
    let count = Fields(body.clone())
        .filter(|f| matches!(f, Some((2, Some(_)))))
        .count();
    let mut ss = ScopeSpans {
        spans: Vec::with_capacity(count),
        ..ScopeSpans::default()
    };
    for field in Fields(body) {
        match field? {
            (1, Some(bytes)) if ss.scope.is_none() => {
                ss.scope = Some(InstrumentationScope::decode(bytes).ok()?);
            }
            (2, Some(bytes)) => ss.spans.push(Span::decode(bytes).ok()?),
            (3, Some(bytes)) => ss.schema_url = bytes,
            (1..=3, _) => return None,
            _ => {}
        }
    }
    Some(ss)
}

/// The fields of one message: `(tag, Some(payload))` for a length-delimited field, `(tag,
/// None)` for any other (its value skipped); `None` where the bytes are not well formed.
struct Fields(Bytes);

impl Iterator for Fields {
    type Item = Option<(u32, Option<Bytes>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.0.has_remaining() {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            self.0.clear();
        }
        Some(field)
    }
}

impl Fields {
    fn field(&mut self) -> Option<(u32, Option<Bytes>)> {
        let buf = &mut self.0;
        let (tag, wire) = decode_key(buf).ok()?;
        let len = match wire {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
                return (len <= buf.remaining()).then(|| (tag, Some(buf.split_to(len))));
            }
            WireType::Varint => {
                decode_varint(buf).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        (len <= buf.remaining()).then(|| {
            buf.advance(len);
            (tag, None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(path: &str) -> Bytes {
        Bytes::from(std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap())
    }

    #[test]
    fn equals_prost_on_real_requests_and_reserves_exactly() {
        let big = Bytes::from(crate::testkit::request(3, 40, 7, 600).encode_to_vec());
        for body in [
            capture("tests/fixtures/mlflow-captures/01_sdk_otlp_only/request.pb"),
            capture("tests/fixtures/mlflow-captures/04_genai_semconv_split_trace/req1_children.pb"),
            big,
        ] {
            let ours = request(body.clone()).expect("well-formed requests take the fast path");
            assert_eq!(ours, ExportTraceServiceRequest::decode(body).unwrap());
            for ss in ours.resource_spans.iter().flat_map(|rs| &rs.scope_spans) {
                assert_eq!(ss.spans.capacity(), ss.spans.len());
            }
        }
    }

    #[test]
    fn malformed_bodies_get_prosts_error() {
        let body = Bytes::from(crate::testkit::request(1, 4, 2, 200).encode_to_vec());
        for cut in [1, 7, body.len() / 2, body.len() - 1] {
            let truncated = body.slice(..cut);
            let ours = decode_request(truncated.clone()).unwrap_err();
            let theirs = ExportTraceServiceRequest::decode(truncated).unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string(), "cut at {cut}");
        }
        // resource_spans as a varint: prost's wire-type error, not a silent skip.
        let wrong = Bytes::from_static(&[0x08, 0x01]);
        let err = decode_request(wrong).unwrap_err().to_string();
        assert!(err.contains("invalid wire type"), "{err}");
    }

    #[test]
    fn a_repeated_scope_field_merges_as_prost_does() {
        let scope = |name: &'static str| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: Bytes::from_static(name.as_bytes()),
                ..InstrumentationScope::default()
            }),
            ..ScopeSpans::default()
        };
        // Two `scope` fields in one ScopeSpans (concatenated messages merge).
        let mut ss = scope("a").encode_to_vec();
        ss.extend(scope("b").encode_to_vec());
        let mut resource_spans = Vec::new();
        prost::encoding::bytes::encode(2, &ss, &mut resource_spans);
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &resource_spans, &mut body);
        let body = Bytes::from(body);
        assert!(request(body.clone()).is_none(), "the walker defers");
        let decoded = decode_request(body).unwrap();
        let scope = decoded.resource_spans[0].scope_spans[0].scope.as_ref();
        assert_eq!(scope.unwrap().name, Bytes::from_static(b"b"));
    }
}

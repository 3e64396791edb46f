//! Builders for OTLP spans and requests, shared by unit tests, integration tests and benches.
//!
//! Compiled into the library (hidden from docs) so that `tests/` and `benches/` can use it
//! without a cargo feature that could silently skip them.

use bytes::Bytes;
use prost::Message;

use crate::otlp::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status, Value, text,
};

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Some(AnyValue {
            value: Some(Value::StringValue(Bytes::copy_from_slice(value.as_bytes()))),
        }),
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
    }
}

/// A span with the given ids, starting at 1 s and lasting 1 ms.
pub fn span(trace_id: [u8; 16], span_id: [u8; 8], parent: &[u8], name: &str) -> Span {
    Span {
        trace_id: Bytes::copy_from_slice(&trace_id),
        span_id: Bytes::copy_from_slice(&span_id),
        parent_span_id: Bytes::copy_from_slice(parent),
        name: Bytes::copy_from_slice(name.as_bytes()),
        kind: 1,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_001_000_000,
        status: Some(Status::default()),
        ..Span::default()
    }
}

/// Resource spans for service `service` holding `spans` under one scope.
pub fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: Bytes::from_static(b"traceloom.testkit"),
                ..InstrumentationScope::default()
            }),
            spans,
            schema_url: Bytes::new(),
        }],
        schema_url: Bytes::new(),
    }
}

/// The `service.name` resource attribute, if it is a string.
pub fn service_name(rs: &ResourceSpans) -> Option<String> {
    rs.resource
        .as_ref()?
        .attributes
        .iter()
        .find(|kv| &kv.key[..] == b"service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(text(s).into_owned()),
            _ => None,
        })
}

/// The same request as `opentelemetry-proto`'s type, for its generated gRPC client.
pub fn upstream(
    request: &ExportTraceServiceRequest,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    Message::decode(&request.encode_to_vec()[..]).expect("the two types share one wire format")
}

/// A request of `traces` traces with `spans_per_trace` spans each (a root and children), every
/// span carrying about `attr_bytes` bytes of GenAI-style attributes. Ids derive from `seed` and
/// the trace index, so the same arguments give the same request.
pub fn request(
    seed: u64,
    traces: usize,
    spans_per_trace: usize,
    attr_bytes: usize,
) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(traces * spans_per_trace);
    for t in 0..traces {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&seed.to_be_bytes());
        trace_id[8..].copy_from_slice(&(t as u64 + 1).to_be_bytes());
        for s in 0..spans_per_trace {
            let mut span_id = [0u8; 8];
            span_id[..4].copy_from_slice(&(t as u32).to_be_bytes());
            span_id[4..].copy_from_slice(&(s as u32 + 1).to_be_bytes());
            let parent = if s == 0 {
                Vec::new()
            } else {
                let mut p = span_id;
                p[4..].copy_from_slice(&1u32.to_be_bytes());
                p.to_vec()
            };
            let name = if s == 0 { "invoke_agent" } else { "chat" };
            let mut sp = span(trace_id, span_id, &parent, name);
            let text_seed = seed ^ ((t as u64) << 20 | s as u64);
            sp.attributes = genai_attributes(s, attr_bytes, text_seed);
            spans.push(sp);
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("agent-api", spans)],
    }
}

/// Words that chat messages are made of, as in otlpgen: text that compresses like prose, not
/// like one phrase repeated (which would flatter every codec and dictionary).
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "model", "agent", "tool", "weather", "forecast", "customer", "order", "invoice",
    "summarize", "document", "retrieval", "context", "answer", "question", "please", "query",
    "vector", "search", "result", "latency", "token", "budget", "policy", "account", "balance",
    "shipping", "address", "refund", "status", "pending", "approved", "denied", "ticket",
    "support", "escalate", "priority", "meeting", "calendar", "schedule", "tomorrow", "today",
];

/// `len` bytes of words picked by a splitmix64 sequence from `seed`.
fn prose(seed: u64, len: usize) -> String {
    let mut state = seed;
    let mut text = String::with_capacity(len + 16);
    while text.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        text.push_str(WORDS[(z % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    text.truncate(len);
    text
}

fn genai_attributes(index: usize, attr_bytes: usize, text_seed: u64) -> Vec<KeyValue> {
    let mut attrs = vec![
        kv(
            "gen_ai.operation.name",
            if index == 0 { "invoke_agent" } else { "chat" },
        ),
        kv("gen_ai.provider.name", "openai"),
        kv("gen_ai.request.model", "gpt-4o-mini"),
        kv_int("gen_ai.usage.input_tokens", 120 + index as i64),
        kv_int("gen_ai.usage.output_tokens", 30),
        kv("session.id", "session-0001"),
    ];
    let used: usize = attrs.iter().map(|kv| kv.key.len() + 12).sum();
    let pad = attr_bytes.saturating_sub(used + "gen_ai.input.messages".len() + 40);
    attrs.push(kv(
        "gen_ai.input.messages",
        &format!(
            r#"[{{"role":"user","content":"{}"}}]"#,
            prose(text_seed, pad)
        ),
    ));
    attrs
}

/// The assembled revision of `trace_id` made of every span in `resource_spans`, normalized as a
/// pipeline does (default experiment `"0"`).
pub fn assembled(
    trace_id: crate::model::TraceId,
    resource_spans: Vec<ResourceSpans>,
    revision: u32,
    reason: crate::assemble::ReleaseReason,
) -> crate::model::AssembledTrace {
    use std::sync::Arc;
    let groups = resource_spans
        .into_iter()
        .flat_map(|rs| {
            let resource = rs.resource;
            rs.scope_spans
                .into_iter()
                .map(move |ss| crate::model::EncodedGroup {
                    origin: Arc::new(crate::model::Origin {
                        resource: resource.clone(),
                        scope: ss.scope,
                        ..Default::default()
                    }),
                    spans: ss
                        .spans
                        .iter()
                        .map(|s| Bytes::from(s.encode_to_vec()))
                        .collect(),
                })
        })
        .collect();
    let release = crate::assemble::Release {
        trace_id,
        revision,
        reason,
        groups,
        experiment: None,
        first_position: 0,
        unreadable_spans: 0,
    };
    crate::topology::pipeline::normalize(
        release,
        &crate::config::MlflowConfig::default(),
        &crate::telemetry::metrics::Metrics::new(),
    )
}

/// `count` assembled GenAI traces of `spans_per_trace` spans with about `attr_bytes` of
/// attributes per span, as the benchmarks feed sinks.
pub fn genai_traces(
    count: usize,
    spans_per_trace: usize,
    attr_bytes: usize,
) -> Vec<crate::model::AssembledTrace> {
    let request = request(1, count, spans_per_trace, attr_bytes);
    split(&request.resource_spans)
        .traces
        .into_iter()
        .map(|t| {
            assembled(
                t.trace_id,
                crate::model::resource_spans(&t.decode()),
                1,
                crate::assemble::ReleaseReason::Complete,
            )
        })
        .collect()
}

/// `resource_spans` as a receiver splits them, read from their encoding.
pub fn split(resource_spans: &[ResourceSpans]) -> crate::receive::validate::Split {
    let blocks = crate::otlp::wire::blocks_of(resource_spans).expect("well-formed spans");
    crate::receive::validate::split_by_trace(blocks, Vec::new())
}

/// [`request`] as the receiver hands it on: read from its encoding (spans and string fields
/// slicing it), validated and split by trace.
pub fn batch(
    seed: u64,
    traces: usize,
    spans_per_trace: usize,
    attr_bytes: usize,
) -> crate::model::SpanBatch {
    let body = Bytes::from(request(seed, traces, spans_per_trace, attr_bytes).encode_to_vec());
    let blocks = crate::receive::decode::decode_protobuf(&body).expect("a request just encoded");
    crate::model::SpanBatch {
        meta: crate::model::ReceiveMeta {
            receiver: "otlp".into(),
            protocol: crate::model::Protocol::Grpc,
            received_at: std::time::SystemTime::now(),
            experiment_id: None,
        },
        encoded_bytes: body.len(),
        traces: crate::receive::validate::split_by_trace(blocks, Vec::new()).traces,
    }
}

//! OTLP decode + validate + split-by-trace throughput, in spans per second, for protobuf and
//! OTLP/JSON bodies: 64 traces x 8 spans per request (512 spans, otlpgen's default batch), each
//! span carrying ~300 bytes of GenAI attributes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use traceloom::receive::decode::{ContentType, decode_body};
use traceloom::receive::{json, validate};
use traceloom::testkit;

// The binary's allocator, so the numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 64;
const SPANS_PER_TRACE: usize = 8;

fn bodies() -> (Vec<u8>, Vec<u8>) {
    let request = testkit::request(1, TRACES, SPANS_PER_TRACE, 300);
    let proto = request.encode_to_vec();
    let json = serde_json::to_vec(&serde_json::json!({
        "resourceSpans": json::JsonResourceSpans(&request.resource_spans)
    }))
    .unwrap();
    (proto, json)
}

fn decode(c: &mut Criterion) {
    let (proto, json_body) = bodies();
    let proto = bytes::Bytes::from(proto);
    let spans = (TRACES * SPANS_PER_TRACE) as u64;
    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(spans));
    let json_body = bytes::Bytes::from(json_body);
    for (name, body, content_type) in [
        ("protobuf", &proto, ContentType::Protobuf),
        ("json", &json_body, ContentType::Json),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let (resources, prior) = decode_body(body.clone(), content_type).unwrap();
                let split = validate::split_by_trace(resources, prior);
                assert_eq!(split.accepted, spans as usize);
                split
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

//! Kafka message encoding on one core, in spans per second: 8-span GenAI traces (~1 KiB of chat
//! messages per span), normalized to MLflow, then turned into a message (key, headers, value)
//! in each encoding. librdkafka's batching and compression come after and are not included.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use traceloom::sink::kafka::message::{Encoding, Message};
use traceloom::testkit;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 256;
const SPANS_PER_TRACE: usize = 8;

fn kafka(c: &mut Criterion) {
    let traces = testkit::genai_traces(TRACES, SPANS_PER_TRACE, 1000);
    let mut group = c.benchmark_group("kafka_message");
    group.throughput(Throughput::Elements((TRACES * SPANS_PER_TRACE) as u64));
    for encoding in [
        Encoding::MlflowJson,
        Encoding::OtlpProto,
        Encoding::OtlpJson,
    ] {
        let bytes: usize = traces
            .iter()
            .map(|t| Message::new(t, encoding, 1_000_000).value_len())
            .sum();
        println!(
            "{}: {} value bytes per span",
            encoding.as_str(),
            bytes / (TRACES * SPANS_PER_TRACE)
        );
        group.bench_function(encoding.as_str(), |b| {
            b.iter(|| {
                traces
                    .iter()
                    .map(|t| Message::new(t, encoding, 1_000_000).parts.len())
                    .sum::<usize>()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, kafka);
criterion_main!(benches);

//! OTLP → MLflow conversion throughput on one core, in spans per second: 8-span traces of plain
//! spans (a few HTTP-style attributes) and of GenAI spans carrying ~1 KiB of chat messages, built
//! into MLflow traces (`mlflow::build`), and built then serialized to `Trace.to_dict()` JSON.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use traceloom::mlflow;
use traceloom::model::{EncodedGroup, TraceId};
use traceloom::testkit::{self, kv, kv_int};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 64;
const SPANS_PER_TRACE: usize = 8;

fn traces(genai: bool) -> Vec<(TraceId, Vec<EncodedGroup>)> {
    let mut request = testkit::request(1, TRACES, SPANS_PER_TRACE, if genai { 1000 } else { 0 });
    if !genai {
        for span in &mut request.resource_spans[0].scope_spans[0].spans {
            span.attributes = vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/api/items/{id}"),
                kv_int("http.response.status_code", 200),
                kv("server.address", "api.internal"),
            ];
        }
    }
    testkit::split(&request.resource_spans)
        .traces
        .iter()
        .map(|t| (t.trace_id, t.encoded()))
        .collect()
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements((TRACES * SPANS_PER_TRACE) as u64));
    for (name, genai) in [("plain", false), ("genai_1KiB", true)] {
        let input = traces(genai);
        group.bench_function(format!("{name}/build"), |b| {
            b.iter(|| {
                input
                    .iter()
                    .map(|(id, groups)| mlflow::build(*id, groups, None, "0").trace)
                    .collect::<Vec<_>>()
            })
        });
        group.bench_function(format!("{name}/build_and_serialize"), |b| {
            b.iter(|| {
                input
                    .iter()
                    .map(|(id, groups)| {
                        serde_json::to_vec(&mlflow::build(*id, groups, None, "0").trace).unwrap()
                    })
                    .map(|v| v.len())
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, normalize);
criterion_main!(benches);

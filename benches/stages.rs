//! The stages on one core, in spans per second (criterion's time is per 64 traces of 8 spans:
//! divide by 512 for ns/span): each stage alone, and the chain `genai-redacted.yaml` runs (sample
//! with keep rules, then redact, then enrich). Traces are assembled GenAI traces of 8 spans with
//! ~300 bytes of attributes, chat messages as inputs.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use traceloom::stages::{Chain, StageConfig};
use traceloom::telemetry::metrics::Metrics;
use traceloom::testkit;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 64;
const SPANS_PER_TRACE: usize = 8;

const CASES: &[(&str, &str)] = &[
    ("none", "[]"),
    (
        "filter_drop_spans",
        "[{type: filter, drop_spans: [{name: \"health*\"}, {span_type: RETRIEVER, max_duration: 1ms}]}]",
    ),
    (
        "sample_keep_rules",
        "[{type: sample, rate: 0.1, keep: [{status: ERROR}, {min_duration: 30s}]}]",
    ),
    (
        "redact_inputs_outputs",
        "[{type: redact, salt: s, rules: [{keys: [inputs, outputs], action: drop}, {keys: [user.email, enduser.id], action: hash}]}]",
    ),
    (
        "enrich_tags",
        "[{type: enrich, tags: {team: search}, resource_tags: {service.name: svc}}]",
    ),
    (
        "genai_redacted_chain",
        "[{type: sample, rate: 1.0, keep: [{status: ERROR}]}, {type: redact, rules: [{keys: [inputs, outputs], action: drop}, {keys: [user.email], action: hash}]}, {type: enrich, tags: {redacted: \"true\"}}]",
    ),
];

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("stages");
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements((TRACES * SPANS_PER_TRACE) as u64));
    for (name, yaml) in CASES {
        let configs: Vec<StageConfig> = serde_saphyr::from_str(yaml).unwrap();
        let chain = Chain::new("bench", configs, &metrics);
        group.bench_function(*name, |b| {
            b.iter_batched(
                || testkit::genai_traces(TRACES, SPANS_PER_TRACE, 300),
                |mut traces| {
                    for t in &mut traces {
                        std::hint::black_box(chain.run(t));
                    }
                    traces
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

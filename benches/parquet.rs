//! Parquet encoding throughput on one core, in spans per second: 8-span GenAI traces (~1 KiB of
//! chat messages per span), normalized to MLflow, then encoded into both tables (arrow columns,
//! zstd level 1, in memory) with `trace_json` on (the default) and off, and once more with
//! `trace_json` but no compression, which tells zstd's share. Prints the encoded bytes per span
//! once for each.

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use traceloom::model::AssembledTrace;
use traceloom::sink::parquet::file::{Codec, FileSettings, OpenFile, properties};
use traceloom::sink::parquet::rows::Rows;
use traceloom::testkit;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 256;
const SPANS_PER_TRACE: usize = 8;

fn traces() -> Vec<Arc<AssembledTrace>> {
    testkit::genai_traces(TRACES, SPANS_PER_TRACE, 1000)
        .into_iter()
        .map(Arc::new)
        .collect()
}

/// Encodes `traces` into files of up to 128 MiB, `batches` times; returns the bytes written.
fn encode_files(
    traces: &[Arc<AssembledTrace>],
    trace_json: bool,
    settings: &FileSettings,
    batches: u64,
) -> usize {
    let new = || OpenFile::new("date=2026-11-21".into(), settings, Instant::now());
    let (mut file, mut size, mut rows) = (new(), 0, Rows::new(trace_json));
    for _ in 0..batches {
        file.append(&mut rows, traces.iter().map(|t| &**t));
        if file.size() >= 128 << 20 {
            size += std::mem::replace(&mut file, new()).finish().size();
        }
    }
    size + file.finish().size()
}

fn settings(codec: Codec) -> FileSettings {
    FileSettings {
        traces: properties("traces", codec, None).unwrap(),
        spans: properties("spans", codec, None).unwrap(),
        row_group_bytes: 32 << 20,
        file_bytes: 128 << 20,
    }
}

fn parquet(c: &mut Criterion) {
    let input = traces();
    let spans = TRACES * SPANS_PER_TRACE;
    let mut group = c.benchmark_group("parquet");
    group.throughput(Throughput::Elements(spans as u64));
    for (name, trace_json, codec) in [
        ("encode/trace_json", true, Codec::Zstd),
        ("encode/no_trace_json", false, Codec::Zstd),
        ("encode/trace_json_uncompressed", true, Codec::None),
    ] {
        let settings = settings(codec);
        let batches = 200;
        let size = encode_files(&input, trace_json, &settings, batches);
        println!(
            "{name}: {:.0} bytes per span on disk",
            size as f64 / (spans as u64 * batches) as f64
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                encode_files(&input, trace_json, &settings, iters);
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parquet);
criterion_main!(benches);

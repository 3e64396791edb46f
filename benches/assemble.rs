//! Assembly throughput and memory on one core: 8-span traces (64 per request, ~300 bytes of
//! attributes per span) grouped and released, in spans per second; and the heap bytes the
//! assembler holds per in-flight span, relative to the span's encoded size (printed once).
//!
//! The assembler holds span encodings sliced from the ingest log's records (the router rebases a
//! batch onto its records), so the records are encoded before the clock starts (that cost is the
//! log bench's `encode_request_records`), but inside the memory measurement: the records' bytes
//! are what the assembler keeps alive.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use traceloom::assemble::{AssembleConfig, Assembler, Records};
use traceloom::log::record;
use traceloom::model::{LoggedTrace, Protocol, ReceiveMeta, SpanBatch};
use traceloom::receive::validate::split_by_trace;
use traceloom::testkit;

/// mimalloc, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: usize = 16;
const TRACES: usize = 64;
const SPANS_PER_TRACE: usize = 8;

fn batches() -> (Vec<Arc<SpanBatch>>, usize) {
    let mut encoded = 0;
    let batches = (0..REQUESTS as u64)
        .map(|seed| {
            let request = testkit::request(seed, TRACES, SPANS_PER_TRACE, 300);
            encoded += request.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.encoded_len())
                .sum::<usize>();
            let body = bytes::Bytes::from(request.encode_to_vec());
            let resources = traceloom::receive::decode::decode_protobuf(&body).unwrap();
            Arc::new(SpanBatch {
                meta: ReceiveMeta {
                    receiver: "otlp".into(),
                    protocol: Protocol::Grpc,
                    received_at: SystemTime::now(),
                    experiment_id: None,
                },
                traces: split_by_trace(resources, Vec::new()).traces,
                encoded_bytes: 0,
            })
        })
        .collect();
    (batches, encoded)
}

/// Request `i` as the ingest log writer hands it to the pipeline: rebased onto its records, and
/// where each record is.
fn logged(i: usize, batch: &SpanBatch) -> (SpanBatch, Vec<LoggedTrace>) {
    let mut batch = batch.clone();
    let records = record::encode(&batch);
    record::rebase(&mut batch, &records);
    let logged = records
        .into_iter()
        .zip(0..)
        .map(|(r, t)| LoggedTrace {
            position: (i * TRACES) as u64 + t,
            digests: r.digests,
        })
        .collect();
    (batch, logged)
}

/// Each trace is released once here, so no record is read back.
struct NoRereads;

impl Records for NoRereads {
    fn read(&mut self, position: u64) -> std::io::Result<Vec<u8>> {
        unreachable!("record {position} read back: the bench releases each trace once")
    }
}

fn assembler() -> Assembler {
    Assembler::new(AssembleConfig::default(), Box::new(NoRereads))
}

fn memory_per_span(batches: &[Arc<SpanBatch>], encoded: usize) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut a = assembler();
    let mut out = Vec::new();
    let now = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        let (batch, logged) = logged(i, b);
        a.ingest(&batch, &logged, now, &mut out);
    }
    let held = ALLOCATED.load(Ordering::Relaxed) - before;
    println!(
        "assembler memory: {held} heap bytes for {} spans of {encoded} encoded bytes = {:.2}x the encoded size ({} bytes/span)",
        REQUESTS * TRACES * SPANS_PER_TRACE,
        held as f64 / encoded as f64,
        held / (REQUESTS * TRACES * SPANS_PER_TRACE)
    );
    drop(a);
}

fn assemble(c: &mut Criterion) {
    let (batches, encoded) = batches();
    memory_per_span(&batches, encoded);
    let logged: Vec<(SpanBatch, Vec<LoggedTrace>)> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| logged(i, b))
        .collect();
    let mut group = c.benchmark_group("assemble");
    group.throughput(Throughput::Elements(
        (REQUESTS * TRACES * SPANS_PER_TRACE) as u64,
    ));
    group.bench_function("group_and_release_8_span_traces", |b| {
        b.iter_batched(
            assembler,
            |mut a| {
                let now = Instant::now();
                let mut out = Vec::new();
                for (batch, records) in &logged {
                    a.ingest(batch, records, now, &mut out);
                }
                a.release_due(now + Duration::from_secs(10), &mut out);
                assert_eq!(out.len(), REQUESTS * TRACES);
                out
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, assemble);
criterion_main!(benches);

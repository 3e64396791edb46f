//! The ingest log on one core, in spans per second: encoding a request's span records (done on
//! the receiver's task), appending them to a segment file and committing with and without fsync,
//! through the page cache and with direct I/O (one commit per group of 16 requests, as group
//! commit does under load), and decoding them
//! again (replay). Requests hold 64 traces of 8 GenAI spans with ~300 bytes of attributes.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use traceloom::log::record;
use traceloom::log::segment::SegmentLog;
use traceloom::testkit;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: usize = 64;
const SPANS_PER_TRACE: usize = 8;
const GROUP: usize = 16;

fn bench(c: &mut Criterion) {
    let batch = testkit::batch(1, TRACES, SPANS_PER_TRACE, 300);
    let records = record::encode(&batch);
    let spans = (TRACES * SPANS_PER_TRACE) as u64;
    let mut group = c.benchmark_group("log");
    group.measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(spans));
    group.bench_function("encode_request_records", |b| {
        b.iter(|| record::encode(&batch))
    });
    group.bench_function("decode_records_for_replay", |b| {
        b.iter(|| {
            for r in &records {
                std::hint::black_box(record::decode(&r.bytes).unwrap());
            }
        })
    });

    group.throughput(Throughput::Elements(spans * GROUP as u64));
    for (direct, sync) in [(false, false), (false, true), (true, false), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64 << 20, direct, |p, _| p).unwrap();
        let name = format!(
            "append_group_{}_{}",
            if direct { "direct" } else { "buffered" },
            if sync { "fsync" } else { "no_fsync" }
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |()| append_group(&mut log, &records, sync),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn append_group(log: &mut SegmentLog, records: &[record::Encoded], sync: bool) {
    for _ in 0..GROUP {
        for r in records {
            log.append(&r.bytes, log.end());
        }
    }
    log.commit(sync).unwrap();
    // Keep the directory small: delete segments more than 256 MiB behind.
    log.remove_below(log.end().saturating_sub(256 << 20))
        .unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The release policy, driven by a synthetic clock.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::config::units::{ByteSize, HumanDuration};
use crate::model::{LoggedTrace, Protocol, ReceiveMeta, SpanBatch, TraceId};
use crate::otlp::{ResourceSpans, ScopeSpans, Span};
use crate::testkit;

const T: [u8; 16] = [1; 16];

fn config() -> AssembleConfig {
    AssembleConfig {
        idle_timeout: HumanDuration(Duration::from_secs(5)),
        max_trace_age: HumanDuration(Duration::from_secs(60)),
        max_spans_per_trace: 1000,
        max_trace_bytes: ByteSize::mib(64),
        late_span_window: HumanDuration(Duration::from_secs(120)),
        max_in_flight_bytes: ByteSize::mib(64),
        max_released_bytes: None,
    }
}

fn batch(trace: [u8; 16], spans: Vec<Span>, experiment: Option<&str>) -> SpanBatch {
    let request = vec![ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }];
    let traces = testkit::split(&request).traces;
    assert!(traces.iter().all(|t| t.trace_id == TraceId(trace)));
    SpanBatch {
        meta: ReceiveMeta {
            receiver: "otlp".into(),
            protocol: Protocol::Grpc,
            received_at: SystemTime::UNIX_EPOCH,
            experiment_id: experiment.map(Arc::from),
        },
        traces,
        encoded_bytes: 100,
    }
}

fn root(trace: [u8; 16]) -> Span {
    testkit::span(trace, [1; 8], &[], "root")
}

fn child(trace: [u8; 16], id: u8) -> Span {
    testkit::span(trace, [id; 8], &[1; 8], "child")
}

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: u64) -> Instant {
        self.0 + Duration::from_secs(secs)
    }
}

fn run(a: &mut Assembler, at: Instant) -> Vec<Release> {
    let mut out = Vec::new();
    a.release_due(at, &mut out);
    out
}

/// The tests' ingest log: every record `logged` made, by position.
static RECORDS: Mutex<BTreeMap<u64, Vec<u8>>> = Mutex::new(BTreeMap::new());

/// Reads [`RECORDS`], as the pipeline's assembler reads the log's segments.
struct TestLog;

impl Records for TestLog {
    fn read(&mut self, position: u64) -> io::Result<Vec<u8>> {
        let records = RECORDS.lock().unwrap();
        let record = records.get(&position).cloned();
        record.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no record there"))
    }
}

fn assembler(config: AssembleConfig) -> Assembler {
    Assembler::new(config, Box::new(TestLog))
}

/// The batch's records as the ingest log writer hands them over: positions in arrival order,
/// spans sliced from the encoded records, which go to [`RECORDS`].
fn logged(b: &SpanBatch) -> Vec<LoggedTrace> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    crate::log::record::encode(b)
        .into_iter()
        .map(|r| {
            let position = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            RECORDS.lock().unwrap().insert(position, r.bytes.to_vec());
            LoggedTrace {
                position,
                digests: r.digests,
            }
        })
        .collect()
}

fn ingest(a: &mut Assembler, b: &SpanBatch, at: Instant) -> Vec<Release> {
    let mut out = Vec::new();
    a.ingest(b, &logged(b), at, &mut out);
    out
}

#[test]
fn children_first_then_root_release_once_after_idle() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    assert!(
        ingest(
            &mut a,
            &batch(T, vec![child(T, 2), child(T, 3)], Some("5")),
            c.at(0)
        )
        .is_empty()
    );
    assert!(run(&mut a, c.at(30)).is_empty(), "no root: waits for it");
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(31));
    assert!(run(&mut a, c.at(35)).is_empty(), "idle for 4 s only");
    let out = run(&mut a, c.at(36));
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(
        (r.revision, r.reason, r.span_count()),
        (1, ReleaseReason::Complete, 3)
    );
    assert!(!r.partial());
    assert_eq!(r.experiment.as_deref(), Some("5"), "the first header seen");
    assert!(run(&mut a, c.at(100)).is_empty(), "released once");
}

#[test]
fn root_first_waits_for_the_children() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(0));
    ingest(&mut a, &batch(T, vec![child(T, 2)], None), c.at(3));
    assert!(
        run(&mut a, c.at(7)).is_empty(),
        "the child reset the idle clock"
    );
    let out = run(&mut a, c.at(8));
    assert_eq!(out[0].span_count(), 2);
}

#[test]
fn duplicates_are_counted_and_changed_spans_replace() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T), child(T, 2)], None), c.at(0));
    ingest(&mut a, &batch(T, vec![root(T), child(T, 2)], None), c.at(1));
    let mut renamed = child(T, 2);
    renamed.name = "renamed".into();
    ingest(&mut a, &batch(T, vec![renamed], None), c.at(2));
    assert_eq!(a.counts().duplicate_spans, 2);
    let out = run(&mut a, c.at(7));
    assert_eq!(out[0].span_count(), 2);
    let names: Vec<_> = out[0]
        .decode()
        .iter()
        .flat_map(|g| &g.spans)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        names,
        vec![bytes::Bytes::from("root"), bytes::Bytes::from("renamed")]
    );
}

#[test]
fn a_late_span_makes_revision_two_with_all_spans() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T), child(T, 2)], None), c.at(0));
    assert_eq!(run(&mut a, c.at(5))[0].revision, 1);
    ingest(&mut a, &batch(T, vec![child(T, 3)], None), c.at(50));
    let out = run(&mut a, c.at(55));
    assert_eq!(
        (out[0].revision, out[0].span_count(), out[0].reason),
        (2, 3, ReleaseReason::Complete)
    );
    assert_eq!(a.counts().late_spans, 1);
    // A re-sent span after release is a duplicate: no new revision.
    ingest(&mut a, &batch(T, vec![child(T, 3)], None), c.at(60));
    assert!(run(&mut a, c.at(70)).is_empty());
}

/// The names of a release's spans, in order.
fn names(release: &Release) -> Vec<String> {
    let groups = release.decode();
    let spans = groups.iter().flat_map(|g| &g.spans);
    spans
        .map(|s| String::from_utf8_lossy(&s.name).into_owned())
        .collect()
}

#[test]
fn later_revisions_read_released_spans_back_from_the_log_in_arrival_order() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![child(T, 2)], None), c.at(0));
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(1));
    assert_eq!(names(&run(&mut a, c.at(6))[0]), ["child", "root"]);
    // A changed copy of a released span keeps its place; a new span comes last.
    let mut renamed = child(T, 2);
    renamed.name = "renamed".into();
    ingest(
        &mut a,
        &batch(T, vec![renamed, child(T, 3)], None),
        c.at(10),
    );
    let out = run(&mut a, c.at(15));
    assert_eq!((out[0].revision, out[0].partial()), (2, false));
    assert_eq!(names(&out[0]), ["renamed", "root", "child"]);
    // The changed copy is the one held now: sending it again is a duplicate, the old one is not.
    let mut renamed = child(T, 2);
    renamed.name = "renamed".into();
    ingest(&mut a, &batch(T, vec![renamed], None), c.at(20));
    assert_eq!(a.counts().duplicate_spans, 1);
    assert!(run(&mut a, c.at(30)).is_empty());
    ingest(&mut a, &batch(T, vec![child(T, 2)], None), c.at(40));
    let out = run(&mut a, c.at(45));
    assert_eq!(
        (out[0].revision, names(&out[0])),
        (3, vec!["child".into(), "root".into(), "child".into()])
    );
}

#[test]
fn an_unreadable_record_flags_the_revision_and_keeps_the_rest() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    let first = logged(&batch(T, vec![child(T, 2)], None));
    let mut out = Vec::new();
    a.ingest(
        &batch(T, vec![child(T, 2)], None),
        &first,
        c.at(0),
        &mut out,
    );
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(1));
    assert_eq!(run(&mut a, c.at(6))[0].span_count(), 2);
    RECORDS.lock().unwrap().remove(&first[0].position);
    ingest(&mut a, &batch(T, vec![child(T, 3)], None), c.at(10));
    let out = run(&mut a, c.at(15));
    assert_eq!(names(&out[0]), ["root", "child"]);
    assert_eq!(out[0].unreadable_spans, 1);
    assert_eq!(out[0].partial_reason(), Some("log_unreadable"));
    assert_eq!(a.counts().unreadable_records, 1);
}

#[test]
fn after_the_late_window_a_span_starts_a_fresh_partial_trace() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(0));
    run(&mut a, c.at(5));
    assert!(run(&mut a, c.at(125)).is_empty());
    assert_eq!(a.traces(), 0, "forgotten after late_span_window");
    ingest(&mut a, &batch(T, vec![child(T, 9)], None), c.at(130));
    let out = run(&mut a, c.at(190));
    assert_eq!(
        (out[0].revision, out[0].reason, out[0].span_count()),
        (1, ReleaseReason::MaxAge, 1)
    );
    assert!(out[0].partial());
}

#[test]
fn a_trace_without_root_is_released_at_max_age_flagged() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![child(T, 2)], None), c.at(0));
    assert!(run(&mut a, c.at(59)).is_empty());
    let out = run(&mut a, c.at(60));
    assert_eq!(out[0].reason, ReleaseReason::MaxAge);
}

#[test]
fn a_busy_trace_is_released_at_max_age_even_with_its_root() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(0));
    for s in 1..=30u64 {
        ingest(
            &mut a,
            &batch(T, vec![child(T, s as u8 + 1)], None),
            c.at(s * 2),
        );
        let out = run(&mut a, c.at(s * 2));
        if s * 2 >= 60 {
            assert_eq!(out[0].reason, ReleaseReason::MaxAge);
            return;
        }
        assert!(out.is_empty(), "at {}s", s * 2);
    }
    panic!("never released");
}

#[test]
fn size_bound_releases_early_and_keeps_accumulating() {
    let c = Clock(Instant::now());
    let mut a = assembler(AssembleConfig {
        max_spans_per_trace: 3,
        ..config()
    });
    assert!(ingest(&mut a, &batch(T, vec![root(T), child(T, 2)], None), c.at(0)).is_empty());
    let out = ingest(&mut a, &batch(T, vec![child(T, 3)], None), c.at(1));
    assert_eq!(
        (out[0].reason, out[0].span_count(), out[0].revision),
        (ReleaseReason::Size, 3, 1)
    );
    let out = ingest(&mut a, &batch(T, vec![child(T, 4)], None), c.at(2));
    assert_eq!(
        (out[0].span_count(), out[0].revision),
        (4, 2),
        "nothing lost, next revision"
    );
}

/// What the assembler holds for one trace of a root and a child, open or `released`.
fn two_span_trace_bytes(c: &Clock, released: bool) -> usize {
    let mut probe = assembler(config());
    ingest(
        &mut probe,
        &batch(T, vec![root(T), child(T, 2)], None),
        c.at(0),
    );
    if released {
        assert_eq!(run(&mut probe, c.at(10)).len(), 1);
    }
    probe.bytes()
}

#[test]
fn a_released_trace_keeps_ids_not_spans() {
    let c = Clock(Instant::now());
    let (open, released) = (
        two_span_trace_bytes(&c, false),
        two_span_trace_bytes(&c, true),
    );
    assert!(open > 200, "an open trace holds its spans: {open} bytes");
    assert!(
        released < 64,
        "a released one only ids, digests and records: {released} bytes"
    );
}

#[test]
fn released_bound_forgets_the_oldest_released_traces_only() {
    let c = Clock(Instant::now());
    let one_trace = two_span_trace_bytes(&c, true);
    let mut a = assembler(AssembleConfig {
        max_released_bytes: Some(ByteSize((one_trace * 2) as u64)),
        ..config()
    });
    let ids: Vec<[u8; 16]> = (1..=4).map(|n| [n; 16]).collect();
    for (i, id) in ids[..3].iter().enumerate() {
        ingest(
            &mut a,
            &batch(*id, vec![root(*id), child(*id, 2)], None),
            c.at(i as u64),
        );
    }
    assert_eq!(
        run(&mut a, c.at(10)).len(),
        3,
        "three released, all kept until the next batch"
    );
    // An open trace is never forgotten for this bound, however large.
    ingest(
        &mut a,
        &batch(ids[3], vec![child(ids[3], 2)], None),
        c.at(11),
    );
    assert_eq!(a.counts().forgotten_early, 1);
    assert_eq!(
        a.take_forgotten(),
        vec![TraceId(ids[0])],
        "the oldest release goes"
    );
    assert_eq!(a.traces(), 3);
    // A late child span of trace `id` at `at`, and its trace's next release.
    let late = |a: &mut Assembler, id: [u8; 16], at: u64| {
        ingest(a, &batch(id, vec![child(id, 3)], None), c.at(at));
        let out = run(a, c.at(at + 180));
        out.into_iter().find(|r| r.trace_id == TraceId(id)).unwrap()
    };
    // trace 2 is still held: its late span makes revision 2 with every span.
    let again = late(&mut a, ids[1], 12);
    assert_eq!((again.revision, again.span_count()), (2, 3));
    // trace 1 was forgotten: its late span starts over, without a root.
    let fresh = late(&mut a, ids[0], 200);
    assert_eq!((fresh.revision, fresh.span_count()), (1, 1));
    assert_eq!(fresh.reason, ReleaseReason::MaxAge);
}

#[test]
fn memory_bound_forgets_released_then_releases_the_oldest() {
    let c = Clock(Instant::now());
    let one_trace = two_span_trace_bytes(&c, false);
    let mut a = assembler(AssembleConfig {
        max_in_flight_bytes: ByteSize((one_trace * 2) as u64),
        ..config()
    });
    let ids: Vec<[u8; 16]> = (1..=4).map(|n| [n; 16]).collect();
    ingest(
        &mut a,
        &batch(ids[0], vec![root(ids[0]), child(ids[0], 2)], None),
        c.at(0),
    );
    run(&mut a, c.at(5)); // trace 1 released, still held for late spans
    ingest(
        &mut a,
        &batch(ids[1], vec![root(ids[1]), child(ids[1], 2)], None),
        c.at(6),
    );
    let out = ingest(
        &mut a,
        &batch(ids[2], vec![root(ids[2]), child(ids[2], 2)], None),
        c.at(7),
    );
    assert!(out.is_empty(), "forgetting the released trace was enough");
    assert_eq!(a.counts().forgotten_early, 1);
    let out = ingest(
        &mut a,
        &batch(ids[3], vec![root(ids[3]), child(ids[3], 2)], None),
        c.at(8),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].trace_id, out[0].reason),
        (TraceId(ids[1]), ReleaseReason::Memory)
    );
    assert!(a.bytes() <= one_trace * 2);
}

#[test]
fn drain_releases_everything_unreleased_flagged() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    ingest(&mut a, &batch(T, vec![root(T)], None), c.at(0));
    run(&mut a, c.at(5));
    ingest(
        &mut a,
        &batch([2; 16], vec![child([2; 16], 2)], None),
        c.at(6),
    );
    let mut out = Vec::new();
    a.drain(c.at(7), &mut out);
    assert_eq!(out.len(), 1, "only traces with unreleased spans");
    assert_eq!(out[0].reason, ReleaseReason::Shutdown);
    assert_eq!((a.traces(), a.bytes()), (0, 0));
}

#[test]
fn many_open_traces_release_in_deadline_order() {
    let c = Clock(Instant::now());
    let mut a = assembler(config());
    for n in 0..50_000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id[15] = 1;
        ingest(
            &mut a,
            &batch(id, vec![root(id)], None),
            c.at(u64::from(n % 10)),
        );
    }
    assert_eq!(a.traces(), 50_000);
    let out = run(&mut a, c.at(9));
    assert_eq!(out.len(), 25_000, "those idle since t <= 4 s");
    let out = run(&mut a, c.at(14));
    assert_eq!(out.len(), 25_000);
}

//! The assembler: spans grouped by trace id across requests, released as whole traces.
//!
//! State and rules, no channels and no clock: callers pass `now`, so tests drive time. The only
//! I/O is reading a released trace's earlier spans back through [`Records`] when late spans make
//! its next revision: released spans are not kept in memory, only their ids, a digest of each
//! and where their records are, so memory follows the open traces, not the late-span window.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use indexmap::IndexMap;
use tracing::warn;

use super::config::AssembleConfig;
use crate::config::units::ByteSize;
use crate::model::{
    ArrivedSpan, EncodedGroup, LoggedTrace, Origin, SpanBatch, SpanGroup, SpanId, TraceId,
};

/// Why a trace revision was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// The root arrived and the trace was idle for `idle_timeout`.
    Complete,
    /// The trace reached `max_trace_age` without being complete.
    MaxAge,
    /// The trace reached `max_spans_per_trace` or `max_trace_bytes`.
    Size,
    /// Held spans reached `max_in_flight_bytes`; the oldest open traces went first.
    Memory,
    /// traceloom was shutting down.
    Shutdown,
    /// The ingest log neared `max_log_bytes`; the traces holding its oldest records went first.
    LogSpace,
}

impl ReleaseReason {
    /// The label used in metrics and in the `traceloom.partial_reason` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::MaxAge => "max_age",
            Self::Size => "size",
            Self::Memory => "memory",
            Self::Shutdown => "shutdown",
            Self::LogSpace => "log_space",
        }
    }
}

/// One released revision of a trace: every span held for it, and why it was released.
///
/// Spans stay encoded: MLflow normalization reads them in place ([`crate::otlp::view`]), and
/// stages or sinks that need OTLP structs decode them with [`Release::decode`].
#[derive(Clone, Debug)]
pub struct Release {
    /// The trace.
    pub trace_id: TraceId,
    /// 1 for the first release, then one more for each release after late spans.
    pub revision: u32,
    /// Why now.
    pub reason: ReleaseReason,
    /// All spans of the trace, grouped by origin, encoded.
    pub groups: Vec<EncodedGroup>,
    /// The first `x-mlflow-experiment-id` that came with the trace's spans.
    pub experiment: Option<Arc<str>>,
    /// Log position of the first record of the trace held: replay from there rebuilds it.
    pub first_position: u64,
    /// Spans of earlier revisions that could not be read back from the ingest log (damaged
    /// records): this revision lacks them.
    pub unreadable_spans: usize,
}

impl Release {
    /// Whether the revision is flagged partial: released before it was complete, or lacking
    /// earlier spans that could not be read back.
    pub fn partial(&self) -> bool {
        self.partial_reason().is_some()
    }

    /// Why the revision is partial, for the `traceloom.partial_reason` tag.
    pub fn partial_reason(&self) -> Option<&'static str> {
        match self.reason {
            ReleaseReason::Complete if self.unreadable_spans > 0 => Some("log_unreadable"),
            ReleaseReason::Complete => None,
            reason => Some(reason.as_str()),
        }
    }

    /// The number of spans.
    pub fn span_count(&self) -> usize {
        self.groups.iter().map(|g| g.spans.len()).sum()
    }

    /// Bytes of the spans' encodings.
    pub fn encoded_bytes(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.spans)
            .map(|s| s.len())
            .sum()
    }

    /// The spans decoded, grouped by origin.
    pub fn decode(&self) -> Vec<SpanGroup> {
        self.groups.iter().map(EncodedGroup::decode).collect()
    }
}

/// Counts of what the assembler did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Spans taken in (new or changed).
    pub spans_in: u64,
    /// Re-sent spans identical to one already held.
    pub duplicate_spans: u64,
    /// Spans that arrived after their trace had been released.
    pub late_spans: u64,
    /// Released traces forgotten to stay under `max_in_flight_bytes` or `max_released_bytes`
    /// before their window ended.
    pub forgotten_early: u64,
    /// Records that could not be read back from the ingest log to build a revision.
    pub unreadable_records: u64,
}

/// Reads span records back from the ingest log, by position.
pub trait Records: Send + Sync {
    /// The payload of the record at `position`, as [`crate::log::record::encode`] made it.
    ///
    /// # Errors
    ///
    /// When it cannot be read or is damaged; the message says where.
    fn read(&mut self, position: u64) -> std::io::Result<Vec<u8>>;
}

impl Records for crate::log::reader::FrameReader {
    fn read(&mut self, position: u64) -> std::io::Result<Vec<u8>> {
        crate::log::reader::FrameReader::read(self, position)
    }
}

/// A span not yet released: its encoding, sliced from its record, its digest, and where that
/// record is.
struct Held {
    origin: Arc<Origin>,
    blob: Bytes,
    digest: u64,
    position: u64,
}

struct TraceState {
    /// Spans arrived since the last release, in arrival order.
    fresh: IndexMap<SpanId, Held>,
    /// Spans of earlier revisions, sorted by id, each with a digest of its encoding (to tell a
    /// re-sent copy from a changed one); their encodings are read back from `records`.
    released_spans: Vec<(SpanId, u64)>,
    /// Positions of the records holding the released spans, ascending.
    records: Vec<u64>,
    /// Distinct span ids, fresh or released.
    span_count: usize,
    bytes: usize,
    root_seen: bool,
    /// When the current, not yet released, spans started arriving.
    open_since: Instant,
    last_seen: Instant,
    /// Revisions released so far.
    revisions: u32,
    /// Spans arrived since the last release.
    dirty: bool,
    released_at: Option<Instant>,
    experiment: Option<Arc<str>>,
    /// The deadline this trace has in the heap.
    scheduled: Instant,
    /// When the trace started being held.
    first_seen: Instant,
    /// Log position of its first record held; key in the age order.
    first_position: u64,
}

/// Per-span bookkeeping beyond the encoded size (map entry, blob header, origin pointer).
const SPAN_OVERHEAD: usize = 96;
/// What a released span costs: its id and digest.
const RELEASED_SPAN: usize = 16;
/// What a record position costs.
const RECORD: usize = 8;

/// Groups spans into traces and decides when to release them.
pub struct Assembler {
    config: AssembleConfig,
    records: Box<dyn Records>,
    traces: HashMap<TraceId, TraceState>,
    deadlines: BinaryHeap<Reverse<(Instant, TraceId)>>,
    /// Held traces by the position of their first record, which is also the order of age.
    by_age: BTreeSet<(u64, TraceId)>,
    /// Released traces with nothing new since, oldest release first: forgotten first under
    /// memory pressure, without scanning the open ones.
    released: Retained,
    bytes: usize,
    counts: Counts,
    /// Traces forgotten since the last [`take_forgotten`](Self::take_forgotten), in order.
    forgotten: Vec<TraceId>,
}

impl Assembler {
    /// An empty assembler that reads released spans back from `records`.
    pub fn new(config: AssembleConfig, records: Box<dyn Records>) -> Self {
        Self {
            config,
            records,
            traces: HashMap::new(),
            deadlines: BinaryHeap::new(),
            by_age: BTreeSet::new(),
            released: Retained::default(),
            bytes: 0,
            counts: Counts::default(),
            forgotten: Vec::new(),
        }
    }

    /// Open and recently released traces held.
    pub fn traces(&self) -> usize {
        self.traces.len()
    }

    /// Bytes of spans held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What happened so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// When the oldest held trace started, if any.
    pub fn oldest(&self) -> Option<Instant> {
        self.by_age
            .first()
            .map(|(_, id)| self.traces[id].first_seen)
    }

    /// The log position of the oldest record held, if any: replay must start there.
    pub fn first_position(&self) -> Option<u64> {
        self.by_age.first().map(|(p, _)| *p)
    }

    /// The traces forgotten since the last call, in order: the decision journal records them so
    /// that replay forgets them at the same point.
    pub fn take_forgotten(&mut self) -> Vec<TraceId> {
        std::mem::take(&mut self.forgotten)
    }

    /// The next moment [`release_due`](Self::release_due) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes a batch in (`logged`: where each trace's record is, and its spans encoded); releases traces
    /// that reached their size bound, and the oldest traces if held bytes exceed the memory bound.
    pub fn ingest(
        &mut self,
        batch: &SpanBatch,
        logged: &[LoggedTrace],
        now: Instant,
        out: &mut Vec<Release>,
    ) {
        self.take_in(batch, logged, now, Some(out));
        self.relieve_memory(now, out);
    }

    /// Takes a batch in without releasing anything: replay, where the decision journal says
    /// what was released and when.
    pub fn ingest_held(&mut self, batch: &SpanBatch, logged: &[LoggedTrace], now: Instant) {
        self.take_in(batch, logged, now, None);
    }

    fn take_in(
        &mut self,
        batch: &SpanBatch,
        logged: &[LoggedTrace],
        now: Instant,
        mut out: Option<&mut Vec<Release>>,
    ) {
        debug_assert_eq!(logged.len(), batch.traces.len());
        for (trace, logged) in batch.traces.iter().zip(logged) {
            let experiment = batch.meta.experiment_id.clone();
            let mut digests = logged.digests.iter();
            for group in &trace.groups {
                for span in &group.spans {
                    let digest = *digests.next().expect("one digest per span");
                    self.add(
                        (trace.trace_id, logged.position),
                        &group.origin,
                        (span, digest),
                        experiment.clone(),
                        now,
                    );
                }
            }
            let Some(out) = out.as_deref_mut() else {
                continue;
            };
            let state = &self.traces[&trace.trace_id];
            if state.dirty
                && (state.span_count >= self.config.max_spans_per_trace
                    || state.bytes >= self.config.max_trace_bytes.as_usize())
            {
                out.push(self.release(trace.trace_id, ReleaseReason::Size, now));
            }
        }
    }

    fn add(
        &mut self,
        (trace_id, position): (TraceId, u64),
        origin: &Arc<Origin>,
        (span, digest): (&ArrivedSpan, u64),
        experiment: Option<Arc<str>>,
        now: Instant,
    ) {
        let (span_id, blob) = (span.span_id, &span.encoded);
        let state = self.traces.entry(trace_id).or_insert_with(|| {
            self.by_age.insert((position, trace_id));
            TraceState {
                fresh: IndexMap::new(),
                released_spans: Vec::new(),
                records: Vec::new(),
                span_count: 0,
                bytes: 0,
                root_seen: false,
                open_since: now,
                last_seen: now,
                revisions: 0,
                dirty: false,
                released_at: None,
                experiment: None,
                scheduled: now + self.config.max_trace_age.0,
                first_seen: now,
                first_position: position,
            }
        });
        let released = state
            .released_spans
            .binary_search_by_key(&span_id, |&(id, _)| id);
        let duplicate = match state.fresh.get(&span_id) {
            Some(held) => held.blob == blob,
            None => released.is_ok_and(|i| state.released_spans[i].1 == digest),
        };
        if duplicate {
            self.counts.duplicate_spans += 1;
            return;
        }
        if let Some(at) = state.released_at {
            self.counts.late_spans += 1;
            if !state.dirty {
                self.released.remove(at, trace_id, state.bytes);
            }
        }
        if !state.dirty {
            state.dirty = true;
            state.open_since = now;
            state.scheduled = now + self.config.max_trace_age.0;
            self.deadlines.push(Reverse((state.scheduled, trace_id)));
        }
        self.counts.spans_in += 1;
        let bytes = blob.len() + SPAN_OVERHEAD;
        let held = Held {
            origin: Arc::clone(origin),
            blob: blob.clone(),
            digest,
            position,
        };
        match state.fresh.insert(span_id, held) {
            Some(old) => {
                state.bytes -= old.blob.len() + SPAN_OVERHEAD;
                self.bytes -= old.blob.len() + SPAN_OVERHEAD;
            }
            None if released.is_err() => state.span_count += 1,
            None => {}
        }
        state.bytes += bytes;
        self.bytes += bytes;
        state.root_seen |= span.parent_span_id.is_none();
        state.last_seen = now;
        state.experiment = state.experiment.take().or(experiment);
        let due = due(&self.config, state);
        if due < state.scheduled {
            state.scheduled = due;
            self.deadlines.push(Reverse((due, trace_id)));
        }
    }

    /// Releases every trace whose time has come, and forgets released traces whose late-span
    /// window has ended.
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<Release>) {
        while let Some(&Reverse((when, trace_id))) = self.deadlines.peek() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            let Some(state) = self.traces.get_mut(&trace_id) else {
                continue;
            };
            if state.scheduled != when {
                continue; // a stale entry; the trace has another deadline
            }
            if !state.dirty {
                // Released and quiet: the late-span window has ended.
                self.forget(trace_id);
                continue;
            }
            let due = due(&self.config, state);
            if due > now {
                state.scheduled = due;
                self.deadlines.push(Reverse((due, trace_id)));
                continue;
            }
            let reason = if state.root_seen && state.last_seen + self.config.idle_timeout.0 <= now {
                ReleaseReason::Complete
            } else {
                ReleaseReason::MaxAge
            };
            out.push(self.release(trace_id, reason, now));
        }
    }

    /// Releases every trace with unreleased spans (shutdown); forgets everything.
    pub fn drain(&mut self, now: Instant, out: &mut Vec<Release>) {
        let dirty: Vec<TraceId> = self
            .by_age
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| self.traces[id].dirty)
            .collect();
        for trace_id in dirty {
            let reason = ReleaseReason::Shutdown;
            out.push(self.release(trace_id, reason, now));
        }
        let all: Vec<TraceId> = self.traces.keys().copied().collect();
        for trace_id in all {
            self.forget(trace_id);
        }
    }

    fn release(&mut self, trace_id: TraceId, reason: ReleaseReason, now: Instant) -> Release {
        let late_window = self.config.late_span_window.0;
        let state = self
            .traces
            .get_mut(&trace_id)
            .expect("releasing a held trace");
        let (groups, unreadable_spans) = if state.released_spans.is_empty() {
            let fresh = state.fresh.values().map(|h| (&h.origin, &h.blob));
            (groups(fresh), 0)
        } else {
            let (spans, unreadable) = reread(&mut *self.records, state, &mut self.counts);
            (groups(spans.values().map(|(o, b)| (o, b))), unreadable)
        };
        let bytes = state.bytes;
        state.settle();
        self.bytes = self.bytes - bytes + state.bytes;
        state.revisions += 1;
        state.dirty = false;
        state.released_at = Some(now);
        self.released.insert(now, trace_id, state.bytes);
        state.scheduled = now + late_window;
        self.deadlines.push(Reverse((state.scheduled, trace_id)));
        Release {
            trace_id,
            revision: state.revisions,
            reason,
            groups,
            experiment: state.experiment.clone(),
            first_position: state.first_position,
            unreadable_spans,
        }
    }

    /// Replay: releases `trace_id` as revision `revision`, as the journal says it was.
    /// `None` when the trace is not held (its records were before the replay start).
    pub fn release_as(
        &mut self,
        trace_id: TraceId,
        revision: u32,
        reason: ReleaseReason,
        now: Instant,
    ) -> Option<Release> {
        let state = self.traces.get_mut(&trace_id)?;
        if !state.dirty {
            // Nothing unreleased: replay started after some of its spans, and the revision was
            // taken by every sink; mark it released all the same.
            self.released
                .remove(state.released_at?, trace_id, state.bytes);
        }
        state.revisions = revision - 1;
        state.dirty = true;
        Some(self.release(trace_id, reason, now))
    }

    /// Replay: forgets `trace_id`, as the journal says it was (and so not reported again by
    /// [`take_forgotten`](Self::take_forgotten)).
    pub fn forget_as(&mut self, trace_id: TraceId) {
        self.forget(trace_id);
        self.forgotten.retain(|t| *t != trace_id);
    }

    fn forget(&mut self, trace_id: TraceId) {
        if let Some(state) = self.traces.remove(&trace_id) {
            self.forgotten.push(trace_id);
            self.bytes -= state.bytes;
            self.by_age.remove(&(state.first_position, trace_id));
            if let (Some(at), false) = (state.released_at, state.dirty) {
                self.released.remove(at, trace_id, state.bytes);
            }
        }
    }

    /// Releases (flagged `log_space`) and forgets every trace whose first record is before
    /// `position`, so that the ingest log can delete its oldest segments.
    pub fn release_before(&mut self, position: u64, now: Instant, out: &mut Vec<Release>) {
        while let Some(&(first, trace_id)) = self.by_age.first() {
            if first >= position {
                break;
            }
            if self.traces[&trace_id].dirty {
                out.push(self.release(trace_id, ReleaseReason::LogSpace, now));
            }
            self.forget(trace_id);
        }
    }

    /// Over the memory bound: forget released traces (oldest first), then release the oldest open
    /// traces early and forget them.
    fn relieve_memory(&mut self, now: Instant, out: &mut Vec<Release>) {
        let bound = self.config.max_in_flight_bytes.as_usize();
        let released_bound = self
            .config
            .max_released_bytes
            .map_or(usize::MAX, ByteSize::as_usize);
        while self.bytes > bound || self.released.bytes > released_bound {
            let Some(trace_id) = self.released.oldest() else {
                break;
            };
            self.counts.forgotten_early += 1;
            self.forget(trace_id);
        }
        while self.bytes > bound {
            let Some(&(_, trace_id)) = self.by_age.first() else {
                break;
            };
            out.push(self.release(trace_id, ReleaseReason::Memory, now));
            self.forget(trace_id);
        }
    }
}

impl TraceState {
    /// After a release: the fresh spans join the released ones, keeping only their ids, digests
    /// and record positions.
    fn settle(&mut self) {
        let first_new = self.records.len();
        // Taken, not drained: a drained map would keep its capacity for as long as the trace.
        for (id, held) in std::mem::take(&mut self.fresh) {
            let entry = (id, held.digest);
            match self.released_spans.binary_search_by_key(&id, |&(id, _)| id) {
                Ok(i) => self.released_spans[i] = entry,
                Err(i) => self.released_spans.insert(i, entry),
            }
            self.records.push(held.position);
        }
        // Fresh spans came after every earlier record, in log order but for changed copies.
        self.records[first_new..].sort_unstable();
        self.records.dedup();
        self.bytes = self.released_spans.len() * RELEASED_SPAN + self.records.len() * RECORD;
    }
}

/// The spans of `state`'s next revision when it has released spans: those read back from its
/// records (a later copy of a span replacing an earlier one in place), then the fresh ones. Also
/// returns how many released spans could not be read.
fn reread(
    records: &mut dyn Records,
    state: &TraceState,
    counts: &mut Counts,
) -> (IndexMap<SpanId, (Arc<Origin>, Bytes)>, usize) {
    let mut spans = IndexMap::with_capacity(state.span_count);
    for &position in &state.records {
        let batch = records.read(position).and_then(|payload| {
            crate::log::record::decode(&payload)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                counts.unreadable_records += 1;
                warn!(position, error = %e,
                    "ingest log: cannot read back a record of a released trace; its next revision lacks those spans");
                continue;
            }
        };
        for trace in batch.traces {
            for group in trace.groups {
                for span in group.spans {
                    spans.insert(span.span_id, (Arc::clone(&group.origin), span.encoded));
                }
            }
        }
    }
    let unreadable = state
        .released_spans
        .iter()
        .filter(|(id, _)| !spans.contains_key(id))
        .count();
    for (id, held) in &state.fresh {
        spans.insert(*id, (Arc::clone(&held.origin), held.blob.clone()));
    }
    (spans, unreadable)
}

/// Spans in order, grouped where consecutive spans share an origin.
fn groups<'a>(spans: impl Iterator<Item = (&'a Arc<Origin>, &'a Bytes)>) -> Vec<EncodedGroup> {
    let mut groups: Vec<EncodedGroup> = Vec::new();
    for (origin, blob) in spans {
        match groups.last_mut() {
            Some(g) if Arc::ptr_eq(&g.origin, origin) => g.spans.push(blob.clone()),
            _ => groups.push(EncodedGroup {
                origin: Arc::clone(origin),
                spans: vec![blob.clone()],
            }),
        }
    }
    groups
}

/// Released traces with nothing new since, in release order, and the bytes they hold.
#[derive(Default)]
struct Retained {
    traces: BTreeSet<(Instant, TraceId)>,
    bytes: usize,
}

impl Retained {
    fn insert(&mut self, at: Instant, trace_id: TraceId, bytes: usize) {
        if self.traces.insert((at, trace_id)) {
            self.bytes += bytes;
        }
    }

    /// `bytes` must be what the trace held when inserted: a trace's spans change only after
    /// it leaves this set.
    fn remove(&mut self, at: Instant, trace_id: TraceId, bytes: usize) {
        if self.traces.remove(&(at, trace_id)) {
            self.bytes -= bytes;
        }
    }

    fn oldest(&self) -> Option<TraceId> {
        self.traces.first().map(|&(_, trace_id)| trace_id)
    }
}

/// When a trace with unreleased spans should be released: after `idle_timeout` of quiet once
/// its root is there, at `max_trace_age` in any case.
fn due(config: &AssembleConfig, state: &TraceState) -> Instant {
    let age_limit = state.open_since + config.max_trace_age.0;
    if state.root_seen {
        (state.last_seen + config.idle_timeout.0).min(age_limit)
    } else {
        age_limit
    }
}

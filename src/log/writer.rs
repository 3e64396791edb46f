//! The ingest log's writer task: appends requests' span records, makes them durable with one
//! fsync per group of requests, answers the requests, and hands the batches to the assembler in
//! log order.
//!
//! ```text
//! Router ─► appends queue ─► Writer: frame + write + fsync (one per group) ─► answer OK
//!                                    └─► assembler queue (log order; waiting here pushes back)
//! ```
//!
//! Group commit falls out of the loop: while one write+fsync runs on a blocking thread, new
//! requests queue up, and the next turn takes all of them at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::config::Fsync;
use super::record::Encoded;
use super::segment::{FRAME_HEADER, SegmentLog};
use crate::model::{LoggedTrace, SpanBatch};
use crate::telemetry::metrics::LogMetrics;
use crate::topology::queue::{QueueRx, QueueTx};
use crate::topology::{on_blocking_thread, sleep_until};

/// Most record bytes written in one group.
const GROUP_BYTES: usize = 8 << 20;

/// A request's batch and its encoded records, waiting to be logged.
pub struct Append {
    /// The batch.
    pub batch: Arc<SpanBatch>,
    /// One encoded span record per trace of the batch, in order.
    pub records: Arc<Vec<Encoded>>,
    /// Answered once the records are durable (or refused).
    pub done: oneshot::Sender<Result<(), AppendError>>,
}

/// Why the log refused a request. Both are temporary: the client should retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// `max_log_bytes` reached: a sink is behind.
    #[error("the ingest log is full ({max} bytes): a sink is behind")]
    Full {
        /// The bound.
        max: u64,
    },
    /// The write or fsync failed (e.g. disk full).
    #[error("cannot write the ingest log: {0}")]
    Io(String),
}

/// A logged batch: where each of its traces' records is.
#[derive(Debug)]
pub struct Logged {
    /// The batch.
    pub batch: Arc<SpanBatch>,
    /// Each trace's record: its position, and its spans sliced from it.
    pub traces: Vec<LoggedTrace>,
}

impl Logged {
    /// Its charge against the queue bound: twice the decoded request, what it held when its
    /// spans sliced the request body beside the records. The body is now freed once the records
    /// exist, so a full queue holds about half that; the charge is kept so that the queues hold
    /// as many requests as their defaults were measured with.
    pub fn bytes(&self) -> usize {
        2 * self.batch.encoded_bytes
    }
}

/// The writer task.
pub struct Writer {
    /// The span-record log; `None` only while a write runs on a blocking thread.
    pub log: Option<SegmentLog>,
    /// Requests to log.
    pub input: QueueRx<Append>,
    /// Logged batches, to the assembler.
    pub output: QueueTx<Logged>,
    /// The sync policy.
    pub fsync: Fsync,
    /// `max_log_bytes`.
    pub max_bytes: u64,
    /// Position below which no record is needed any more (after the checkpoint is durable).
    pub floor: watch::Receiver<u64>,
    /// Shared with the pipeline task.
    pub space: Arc<LogSpace>,
    /// Metrics.
    pub metrics: LogMetrics,
}

/// How full the span-record log is, written by the writer and read by the pipeline task, which
/// releases the traces pinning the oldest records when the log nears its bound.
#[derive(Debug, Default)]
pub struct LogSpace {
    /// Bytes kept.
    pub bytes: AtomicU64,
    /// The position the next record will get.
    pub end: AtomicU64,
}

impl Writer {
    /// Runs until the input closes, then syncs and returns.
    ///
    /// # Errors
    ///
    /// When the assembler stopped while the writer was running.
    pub async fn run(mut self) -> Result<(), String> {
        let mut unsynced: Option<Instant> = None;
        let mut ages = Ages::default();
        let mut floor_open = true;
        self.observe(&mut ages);
        loop {
            let sync_at = match (self.fsync, unsynced) {
                (Fsync::Interval(every), Some(since)) => Some(since + every),
                _ => None,
            };
            tokio::select! {
                biased;
                changed = self.floor.changed(), if floor_open => {
                    // Closed: the pipeline is gone, and the input's end follows.
                    floor_open = changed.is_ok();
                    self.truncate(&mut ages);
                }
                item = self.input.recv() => {
                    let Some(first) = item else { break };
                    let mut group = vec![first];
                    self.input.take_waiting(&mut group, GROUP_BYTES, record_bytes);
                    if let Some(logged) = self.write(group, &mut unsynced).await {
                        ages.push(&logged);
                        for l in logged {
                            let size = l.bytes();
                            self.output.send(l, size).await.map_err(|_| "the assembler stopped")?;
                        }
                    }
                }
                () = sleep_until(sync_at) => {
                    self.blocking(SegmentLog::sync).await.map_err(|e| e.to_string())?;
                    unsynced = None;
                }
            }
            self.observe(&mut ages);
        }
        if self.fsync != Fsync::Never {
            self.blocking(SegmentLog::sync)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Appends and commits `group`; answers every request; returns the logged batches.
    async fn write(
        &mut self,
        group: Vec<Append>,
        unsynced: &mut Option<Instant>,
    ) -> Option<Vec<Logged>> {
        let log = self.log.as_mut().expect("the log is back after each write");
        let mut accepted = Vec::with_capacity(group.len());
        for append in group {
            if append.done.is_closed() {
                continue; // the client gave up waiting; it will send again
            }
            let size = record_bytes(&append) as u64;
            if log.bytes() + size > self.max_bytes {
                self.metrics.refused("full");
                let _ = append.done.send(Err(AppendError::Full {
                    max: self.max_bytes,
                }));
                continue;
            }
            let positions: Vec<u64> = append
                .records
                .iter()
                .map(|r| log.append(&r.bytes, log.end()))
                .collect();
            accepted.push((append, positions));
        }
        if accepted.is_empty() {
            return None;
        }
        let sync = self.fsync == Fsync::Always;
        let started = Instant::now();
        let result = self.blocking(move |log| log.commit(sync)).await;
        self.metrics.fsync.observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let dir = self.log.as_ref().map(|l| l.dir().display().to_string());
            error!(dir = dir.unwrap_or_default(), error = %e,
                "cannot write the ingest log; answering clients with a retryable error");
            for (append, _) in accepted {
                self.metrics.refused("io");
                let _ = append.done.send(Err(AppendError::Io(e.to_string())));
            }
            return None;
        }
        if !sync && unsynced.is_none() {
            *unsynced = Some(started);
        }
        let mut logged = Vec::with_capacity(accepted.len());
        for (append, positions) in accepted {
            let _ = append.done.send(Ok(()));
            // The records are shared only when several pipelines take the same batch.
            let records =
                Arc::try_unwrap(append.records).unwrap_or_else(|shared| (*shared).clone());
            let traces = positions
                .into_iter()
                .zip(records)
                .map(|(position, record)| LoggedTrace {
                    position,
                    digests: record.digests,
                })
                .collect();
            logged.push(Logged {
                batch: append.batch,
                traces,
            });
        }
        Some(logged)
    }

    /// Runs `work` on the log on a blocking thread: writes and fsyncs block.
    async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut SegmentLog) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        on_blocking_thread(&mut self.log, work).await
    }

    fn truncate(&mut self, ages: &mut Ages) {
        let floor = *self.floor.borrow();
        let log = self.log.as_mut().expect("the log is back after each write");
        match log.remove_below(floor) {
            Ok(0) => {}
            Ok(n) => info!(
                segments = n,
                floor, "ingest log: deleted segments every sink holds"
            ),
            Err(e) => warn!(dir = %log.dir().display(), error = %e,
                "ingest log: cannot delete a committed segment; will retry"),
        }
        ages.drop_below(floor, log.end());
    }

    fn observe(&self, ages: &mut Ages) {
        let log = self.log.as_ref().expect("the log is back after each write");
        self.space.bytes.store(log.bytes(), Ordering::Relaxed);
        self.space.end.store(log.end(), Ordering::Relaxed);
        self.metrics.bytes.set(log.bytes() as i64);
        self.metrics.segments.set(log.segments() as i64);
        self.metrics.oldest.set(ages.oldest());
    }
}

fn record_bytes(append: &Append) -> usize {
    append
        .records
        .iter()
        .map(|r| r.bytes.len() + FRAME_HEADER as usize)
        .sum()
}

/// When each group was written, to report the age of the oldest record still needed.
#[derive(Default)]
struct Ages(VecDeque<(u64, Instant)>);

impl Ages {
    fn push(&mut self, logged: &[Logged]) {
        if let Some(first) = logged
            .iter()
            .find_map(|l| l.traces.first().map(|t| &t.position))
        {
            self.0.push_back((*first, Instant::now()));
        }
    }

    /// Forgets groups that start below `floor`, keeping the last of them: it may straddle it.
    fn drop_below(&mut self, floor: u64, end: u64) {
        if floor >= end {
            self.0.clear();
        }
        while self.0.len() > 1 && self.0[1].0 <= floor {
            self.0.pop_front();
        }
    }

    fn oldest(&self) -> f64 {
        self.0
            .front()
            .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
    }
}

//! One pipeline's task: replays the ingest log, then takes logged batches, assembles traces,
//! journals every release and forget, and gives each released revision to its
//! [worker](super::workers), which turns it into an MLflow trace and hands it to every sink's
//! queue.
//!
//! Waiting on a full worker or sink queue is the back-pressure: while the task waits it does not
//! read its input, the log writer's output fills, and receivers answer with the retryable codes.
//! When the input closes (shutdown), every trace still held is released, flagged, and every
//! worker has finished before the task returns.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::queue::{QueueRx, QueueTx};
use super::reload::StageConfigs;
use super::workers::{Job, Normalizer, Stages, Workers};
use super::{on_blocking_thread, sleep_until};
use crate::assemble::{AssembleConfig, Assembler, Release};
use crate::config::MlflowConfig;
use crate::log::journal::{self, Decision, Kind};
use crate::log::reader::FrameReader;
use crate::log::segment::SegmentLog;
use crate::log::writer::{LogSpace, Logged};
use crate::log::{Fsync, Replay, SinkMask, Tracker, record};
use crate::mlflow;
use crate::model::{AssembledTrace, LoggedTrace};
use crate::sink::SinkInput;
use crate::stages::Chain;
use crate::telemetry::metrics::{AssemblerMetrics, LogMetrics, Metrics};
use crate::topology::backoff::Backoff;

/// Metadata key of the revision number on every released trace.
pub const REVISION_KEY: &str = "traceloom.revision";
/// Tag set to `"true"` on revisions released before they were complete.
pub const PARTIAL_TAG: &str = "traceloom.partial";
/// Tag naming why a partial revision was released.
pub const PARTIAL_REASON_TAG: &str = "traceloom.partial_reason";

/// How often the replay checkpoint moves forward and committed segments are deleted.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Logged batches taken per turn: one journal sync serves all their releases.
const BATCHES_PER_TURN: usize = 64;
/// First wait after a failed journal write; doubled per failure up to 10 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Everything a pipeline task needs.
pub struct Pipeline {
    /// The pipeline's name, for metrics.
    pub name: String,
    /// The stages; a reload sends new ones.
    pub stages: watch::Receiver<StageConfigs>,
    /// Logged batches, in log order.
    pub input: QueueRx<Logged>,
    /// Each sink's name and queue.
    pub sinks: Vec<(String, QueueTx<SinkInput>)>,
    /// Release policy.
    pub assemble: AssembleConfig,
    /// MLflow settings.
    pub mlflow: MlflowConfig,
    /// `queue.max_bytes`, which also bounds the workers' queues.
    pub queue_bytes: usize,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Pre-labelled assembler metrics.
    pub assembler_metrics: AssemblerMetrics,
    /// The pipeline's side of the ingest log.
    pub log: PipelineLog,
}

/// The pipeline task's side of the ingest log.
pub struct PipelineLog {
    /// The decision journal; `None` only while a write runs on a blocking thread.
    pub journal: Option<SegmentLog>,
    /// Reads span records back for the assembler; taken when the pipeline starts.
    pub records: Option<FrameReader>,
    /// When journal writes are synced.
    pub fsync: Fsync,
    /// Replay floor bookkeeping.
    pub tracker: Arc<Tracker>,
    /// Tells the writer which records it may delete.
    pub floor: watch::Sender<u64>,
    /// What to replay at start.
    pub replay: Option<Replay>,
    /// How full the span-record log is.
    pub space: Arc<LogSpace>,
    /// `max_log_bytes`.
    pub max_bytes: u64,
    /// Metrics.
    pub metrics: LogMetrics,
}

/// Builds the MLflow trace of a released revision.
pub fn normalize(release: Release, config: &MlflowConfig, metrics: &Metrics) -> AssembledTrace {
    let mut built = mlflow::build(
        release.trace_id,
        &release.groups,
        release.experiment.as_deref(),
        &config.default_experiment,
    );
    metrics.mlflow_limits(&built.report);
    let info = &mut built.trace.info;
    info.trace_metadata
        .insert(REVISION_KEY.into(), release.revision.to_string());
    if let Some(reason) = release.partial_reason() {
        info.tags.insert(PARTIAL_TAG.into(), "true".into());
        info.tags.insert(PARTIAL_REASON_TAG.into(), reason.into());
    }
    AssembledTrace::new(release, built)
}

/// Decisions of one turn, in the order the assembler took them.
#[derive(Default)]
struct Turn {
    decisions: Vec<Decision>,
    releases: Vec<Release>,
}

impl Turn {
    /// Takes what the assembler released and forgot in its last operation; `upto` is the
    /// position of the next record it has not seen.
    fn note(&mut self, assembler: &mut Assembler, released: &mut Vec<Release>, upto: u64) {
        for r in released.drain(..) {
            self.decisions.push(Decision {
                trace_id: r.trace_id,
                kind: Kind::Release {
                    revision: r.revision,
                    reason: r.reason,
                },
                upto,
            });
            self.releases.push(r);
        }
        for trace_id in assembler.take_forgotten() {
            self.decisions.push(Decision {
                trace_id,
                kind: Kind::Forget,
                upto,
            });
        }
    }
}

impl Pipeline {
    fn all_sinks(&self) -> SinkMask {
        (1u64 << self.sinks.len()) - 1
    }

    /// Replays the log, then runs until the input closes and every held trace has been handed
    /// to the sinks.
    ///
    /// # Errors
    ///
    /// When a sink stopped while the pipeline was running, or the log cannot be read.
    pub async fn run(mut self) -> Result<(), String> {
        let records = self.log.records.take().expect("the pipeline runs once");
        let mut assembler = Assembler::new(self.assemble.clone(), Box::new(records));
        let mut chain = self.chain();
        let normalizer = Normalizer {
            mlflow: self.mlflow.clone(),
            metrics: Arc::clone(&self.metrics),
            sinks: self.sinks.clone(),
            tracker: Arc::clone(&self.log.tracker),
            chain: None,
        };
        let mut workers = Workers::start(
            normalizer,
            self.mlflow.workers(),
            &self.name,
            self.queue_bytes,
        );
        let mut next = self.replay(&mut assembler, &chain, &mut workers).await?;
        let mut released = Vec::new();
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            let mut turn = Turn::default();
            let deadline = assembler.next_deadline();
            tokio::select! {
                biased;
                logged = self.input.recv() => {
                    let Some(first) = logged else { break };
                    let mut taken = vec![first];
                    self.input.take_waiting(&mut taken, BATCHES_PER_TURN, |_| 1);
                    for logged in taken {
                        next = logged.traces.last().map_or(next, |t| t.position + 1);
                        assembler.ingest(&logged.batch, &logged.traces, Instant::now(), &mut released);
                        self.assembler_metrics.observe(&assembler, &released);
                        turn.note(&mut assembler, &mut released, next);
                    }
                }
                () = sleep_until(deadline) => {}
                _ = checkpoint.tick() => self.checkpoint().await,
            }
            // Every turn, not only when the input is idle: under sustained load the input is
            // always ready, and releases would wait until memory ran out.
            assembler.release_due(Instant::now(), &mut released);
            self.relieve_log(&mut assembler, &mut released);
            self.assembler_metrics.observe(&assembler, &released);
            turn.note(&mut assembler, &mut released, next);
            if self.stages.has_changed().unwrap_or(false) {
                chain = self.chain();
                info!(stages = self.stages.borrow().len(), "stages reloaded");
            }
            self.finish(turn, &assembler, &chain, &mut workers, next)
                .await?;
        }
        let mut turn = Turn::default();
        assembler.drain(Instant::now(), &mut released);
        self.assembler_metrics.observe(&assembler, &released);
        turn.note(&mut assembler, &mut released, next);
        self.finish(turn, &assembler, &chain, &mut workers, next)
            .await?;
        // The workers hold the sink queues' senders now: each sink sees its input end once
        // they are done.
        self.sinks.clear();
        workers.close().await?;
        self.checkpoint().await;
        Ok(())
    }

    /// The stages as last configured.
    fn chain(&mut self) -> Stages {
        let configs = self.stages.borrow_and_update().to_vec();
        Arc::new(Mutex::new(Chain::new(&self.name, configs, &self.metrics)))
    }

    /// Registers the revision released at `position` with the tracker, then gives it to its
    /// worker: registered first, so that no sink can report it durable before, and so that the
    /// assembler's floor may move past it as soon as the turn ends.
    async fn submit(
        &self,
        release: Release,
        position: u64,
        sinks: SinkMask,
        chain: &Stages,
        workers: &mut Workers,
    ) -> Result<(), String> {
        self.log
            .tracker
            .add(&[(position, release.first_position, sinks)]);
        let stages = Arc::clone(chain);
        workers
            .submit(Job {
                release,
                position,
                sinks,
                stages,
            })
            .await
    }

    /// Journals the turn's decisions and gives its revisions to the workers.
    async fn finish(
        &mut self,
        turn: Turn,
        assembler: &Assembler,
        chain: &Stages,
        workers: &mut Workers,
        next: u64,
    ) -> Result<(), String> {
        let floor = assembler.first_position().unwrap_or(next).min(next);
        if turn.decisions.is_empty() {
            self.log.tracker.hold(floor, &[]);
            return Ok(());
        }
        let decisions = Arc::new(turn.decisions);
        let positions = self.journal(&decisions).await;
        let release_positions = decisions
            .iter()
            .zip(positions)
            .filter(|(d, _)| matches!(d.kind, Kind::Release { .. }))
            .map(|(_, p)| p);
        let all = self.all_sinks();
        for (release, position) in turn.releases.into_iter().zip(release_positions) {
            self.submit(release, position, all, chain, workers).await?;
        }
        self.log.tracker.hold(floor, &[]);
        Ok(())
    }

    /// Writes decisions to the journal, retrying until it works: no revision may reach a sink
    /// before its decision is durable, and waiting here pushes back to the receivers.
    async fn journal(&mut self, decisions: &Arc<Vec<Decision>>) -> Vec<u64> {
        let sync = self.log.fsync != Fsync::Never;
        let mut backoff = Backoff::new(FIRST_BACKOFF, Duration::from_secs(10));
        loop {
            let d = Arc::clone(decisions);
            let result = on_blocking_thread(&mut self.log.journal, move |log| {
                journal::record(log, &d, sync)
            })
            .await;
            match result {
                Ok(positions) => return positions,
                Err(e) => {
                    let journal = self.log.journal.as_ref().expect("back after the write");
                    let dir = journal.dir().display();
                    error!(%dir, error = %e, retry_in = ?backoff.next(),
                        "cannot write the decision journal; holding releases and retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Moves the replay checkpoint to what every sink and the assembler no longer need, then
    /// lets the writer and the journal delete the segments before it.
    async fn checkpoint(&mut self) {
        let tracker = Arc::clone(&self.log.tracker);
        let written = tokio::task::spawn_blocking(move || tracker.checkpoint())
            .await
            .expect("checkpoint writes do not panic");
        let floor = match written {
            Ok(floor) => floor,
            Err(e) => {
                warn!(error = %e, "cannot write the ingest log checkpoint; will retry");
                return;
            }
        };
        self.log.floor.send_replace(floor);
        let journal = self
            .log
            .journal
            .as_mut()
            .expect("the journal is back after each write");
        if let Err(e) = journal.remove_below(floor) {
            warn!(dir = %journal.dir().display(), error = %e, "cannot delete a journal segment");
        }
        self.log.tracker.set_manifest_floor(journal.start());
    }

    /// When the span-record log passes three quarters of `max_log_bytes` and what pins its
    /// oldest records is the assembler (not a sink that is behind), releases the traces holding
    /// the oldest half early (flagged `log_space`), so the log never fills while sinks keep up.
    fn relieve_log(&self, assembler: &mut Assembler, released: &mut Vec<Release>) {
        let max = self.log.max_bytes;
        if self.log.space.bytes.load(Ordering::Relaxed) <= max / 4 * 3 {
            return;
        }
        let target = self
            .log
            .space
            .end
            .load(Ordering::Relaxed)
            .saturating_sub(max / 2);
        if self.log.tracker.pending_floor().is_some_and(|p| p < target) {
            return; // a sink is behind: releasing early would not free the log
        }
        assembler.release_before(target, Instant::now(), released);
    }

    /// Rebuilds the assembler from the log and re-sends unfinished revisions to the sinks that
    /// lack them. Returns the position after the last record.
    async fn replay(
        &mut self,
        assembler: &mut Assembler,
        chain: &Stages,
        workers: &mut Workers,
    ) -> Result<u64, String> {
        let Some(mut replay) = self.log.replay.take() else {
            return Ok(0);
        };
        let started = Instant::now();
        let (mut records, mut spans) = (0u64, 0usize);
        while let Some(segment) = replay
            .next_segment()
            .await
            .map_err(|e| format!("cannot read the ingest log: {e}"))?
        {
            for (position, payload) in segment {
                let due = replay.due(Some(position));
                self.apply(assembler, &replay, due, chain, workers).await?;
                match record::decode(&payload) {
                    Ok(batch) => {
                        spans += batch.traces.iter().map(|t| t.span_count()).sum::<usize>();
                        let logged = LoggedTrace::of(position, &batch.traces[0]);
                        assembler.ingest_held(&batch, &[logged], Instant::now());
                        records += 1;
                    }
                    Err(e) => {
                        warn!(position, error = %e, "ingest log: skipping an unreadable record")
                    }
                }
            }
        }
        let due = replay.due(None);
        self.apply(assembler, &replay, due, chain, workers).await?;
        self.log.metrics.replayed.inc_by(records);
        if records > 0 {
            let secs = started.elapsed().as_secs_f64();
            info!(
                records,
                spans,
                held = assembler.traces(),
                seconds = secs,
                spans_per_second = (spans as f64 / secs.max(1e-9)) as u64,
                "ingest log replayed"
            );
        }
        Ok(replay.end)
    }

    /// Applies replayed decisions; a release goes to the sinks whose manifest lacks it.
    async fn apply(
        &mut self,
        assembler: &mut Assembler,
        replay: &Replay,
        due: Vec<(u64, Decision)>,
        chain: &Stages,
        workers: &mut Workers,
    ) -> Result<(), String> {
        for (position, decision) in due {
            let (revision, reason) = match decision.kind {
                Kind::Forget => {
                    assembler.forget_as(decision.trace_id);
                    continue;
                }
                Kind::Release { revision, reason } => (revision, reason),
            };
            let Some(release) =
                assembler.release_as(decision.trace_id, revision, reason, Instant::now())
            else {
                continue;
            };
            let missing = replay.missing(position) & self.all_sinks();
            if missing == 0 {
                continue;
            }
            self.submit(release, position, missing, chain, workers)
                .await?;
        }
        Ok(())
    }
}

//! A pipeline's workers: each released revision becomes an MLflow trace, goes through the stages
//! and is handed to every sink's queue.
//!
//! That work is most of a pipeline's CPU (the assembler's own is about a tenth of it), so it runs
//! on `mlflow.workers` tasks, in parallel on a multi-core machine, while the pipeline task keeps
//! the assembler and the journal to itself. A trace's revisions always go to the same worker (by
//! trace id), through a FIFO queue, so every sink receives them in release order. With one
//! worker the pipeline task does the work itself, with no hand-off.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;

use super::pipeline::normalize;
use super::queue::{self, QueueRx, QueueTx};
use crate::assemble::Release;
use crate::config::MlflowConfig;
use crate::log::{SinkMask, Tracker};
use crate::model::TraceId;
use crate::sink::SinkInput;
use crate::stages::Chain;
use crate::telemetry::metrics::Metrics;

/// Most bytes of released spans waiting for all of a pipeline's workers together (and at most
/// the pipeline's `queue.max_bytes`): enough to keep each busy for milliseconds. A full queue
/// makes the pipeline task wait, which is the back-pressure.
const MAX_QUEUED_BYTES: usize = 8 << 20;

/// The stages as configured when a revision was released. Each worker runs its own copy, taken
/// when it first meets them; the lock only lets workers share the original.
pub type Stages = Arc<Mutex<Chain>>;

/// One released revision to turn into sink input.
pub struct Job {
    /// The revision.
    pub release: Release,
    /// Its release decision's position in the journal, registered with the tracker.
    pub position: u64,
    /// The sinks it goes to.
    pub sinks: SinkMask,
    /// The stages as configured when it was released.
    pub stages: Stages,
}

/// What every worker needs to finish a job.
#[derive(Clone)]
pub struct Normalizer {
    /// MLflow settings.
    pub mlflow: MlflowConfig,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Each sink's name and queue, in configuration order.
    pub sinks: Vec<(String, QueueTx<SinkInput>)>,
    /// Replay floor bookkeeping, told about revisions that stages dropped.
    pub tracker: Arc<Tracker>,
    /// This worker's copy of the stages, and the original it was taken from.
    pub chain: Option<(Stages, Chain)>,
}

impl Normalizer {
    /// Builds the MLflow trace of the job's revision, runs the stages, and hands what they keep
    /// to its sinks, waiting for room in each queue (the back-pressure).
    async fn run(&mut self, job: Job) -> Result<(), String> {
        let Job {
            release,
            position,
            sinks,
            stages,
        } = job;
        let mut assembled = normalize(release, &self.mlflow, &self.metrics);
        assembled.position = position;
        if self.chain(stages).run(&mut assembled) {
            deliver(&self.sinks, Arc::new(assembled), sinks).await?;
        } else {
            self.tracker.dropped(position);
        }
        // Let a sink on this thread take the revision now: freed while its memory is still in
        // the caches, that memory serves the next revision. Building many first (thousands of
        // traces per turn under load) made every allocation a cache miss, 14% more CPU per span.
        tokio::task::yield_now().await;
        Ok(())
    }

    /// This worker's copy of `stages`, taken anew when they changed.
    fn chain(&mut self, stages: Stages) -> &Chain {
        let current = self
            .chain
            .as_ref()
            .is_some_and(|(s, _)| Arc::ptr_eq(s, &stages));
        if !current {
            let copy = stages
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            self.chain = Some((stages, copy));
        }
        &self.chain.as_ref().expect("just set").1
    }
}

/// The workers of one pipeline.
pub enum Workers {
    /// One worker: the pipeline task runs each job itself.
    Inline(Normalizer),
    /// Worker tasks, each with its own queue of jobs.
    Pool {
        /// Jobs for worker `i`.
        queues: Vec<QueueTx<Job>>,
        /// The worker tasks.
        tasks: JoinSet<Result<(), String>>,
    },
}

impl Workers {
    /// Starts `count` workers for pipeline `pipeline` (none when `count` is 1), whose queues
    /// hold at most `queue_bytes` together.
    pub fn start(normalizer: Normalizer, count: usize, pipeline: &str, queue_bytes: usize) -> Self {
        if count <= 1 {
            return Self::Inline(normalizer);
        }
        let bytes = queue_bytes.min(MAX_QUEUED_BYTES) / count;
        let mut tasks = JoinSet::new();
        let queues = (0..count)
            .map(|i| {
                let label = format!("workers.{pipeline}.{i}");
                let gauges = normalizer.metrics.queue(&label, bytes);
                let (tx, rx) = queue::bounded(bytes, gauges);
                tasks.spawn(work(normalizer.clone(), rx));
                tx
            })
            .collect();
        Self::Pool { queues, tasks }
    }

    /// Runs `job`, or queues it for the worker of its trace.
    ///
    /// # Errors
    ///
    /// When a sink stopped while the pipeline was running.
    pub async fn submit(&mut self, job: Job) -> Result<(), String> {
        match self {
            Self::Inline(normalizer) => normalizer.run(job).await,
            Self::Pool { queues, tasks } => {
                let queue = &queues[shard(&job.release.trace_id, queues.len())];
                let bytes = job.release.encoded_bytes();
                if queue.send(job, bytes).await.is_ok() {
                    return Ok(());
                }
                // A worker stops early only on an error: report it.
                queues.clear();
                join(tasks).await
            }
        }
    }

    /// Waits until every job submitted has been handed to the sinks, then lets go of the sink
    /// queues, so that the sinks see their input end.
    ///
    /// # Errors
    ///
    /// When a sink stopped while the pipeline was running.
    pub async fn close(self) -> Result<(), String> {
        match self {
            Self::Inline(_) => Ok(()),
            Self::Pool { queues, mut tasks } => {
                drop(queues);
                join(&mut tasks).await
            }
        }
    }
}

/// The worker for `trace_id` among `count`. Trace ids are random, so their low bytes spread
/// traces evenly.
fn shard(trace_id: &TraceId, count: usize) -> usize {
    let low = u64::from_le_bytes(trace_id.0[8..].try_into().expect("8 bytes"));
    (low % count as u64) as usize
}

async fn work(mut normalizer: Normalizer, mut jobs: QueueRx<Job>) -> Result<(), String> {
    while let Some(job) = jobs.recv().await {
        normalizer.run(job).await?;
    }
    Ok(())
}

/// Waits for every worker; the first error wins.
async fn join(tasks: &mut JoinSet<Result<(), String>>) -> Result<(), String> {
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let outcome = done.unwrap_or_else(|e| Err(format!("a pipeline worker failed: {e}")));
        result = result.and(outcome);
    }
    result
}

/// Hands `assembled` to the sinks in `mask`, waiting for room in each queue (the back-pressure).
async fn deliver(
    sinks: &[(String, QueueTx<SinkInput>)],
    assembled: SinkInput,
    mask: SinkMask,
) -> Result<(), String> {
    for (i, (name, tx)) in sinks.iter().enumerate() {
        if mask & (1 << i) == 0 {
            continue;
        }
        if tx
            .send(Arc::clone(&assembled), assembled.bytes)
            .await
            .is_err()
        {
            return Err(format!(
                "sink {name} stopped while the pipeline was running"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::ReleaseReason;
    use crate::telemetry::metrics::QueueGauges;
    use crate::testkit;

    /// Revision `revision` of one trace holding `spans` spans.
    fn release(revision: u32, spans: u8) -> Release {
        let spans = (1..=spans)
            .map(|i| testkit::span([9; 16], [i; 8], if i == 1 { &[] } else { &[1; 8] }, "s"))
            .collect();
        let split = testkit::split(&[testkit::resource_spans("svc", spans)]);
        Release {
            trace_id: TraceId([9; 16]),
            revision,
            reason: ReleaseReason::Size,
            groups: split.traces[0].encoded(),
            experiment: None,
            first_position: 0,
            unreadable_spans: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_revision_is_never_overtaken_by_the_next_one_of_its_trace() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Arc::new(Tracker::new(dir.path().join("checkpoint"), 0, Vec::new()));
        let (tx, mut rx) = queue::bounded(1 << 30, QueueGauges::default());
        let normalizer = Normalizer {
            mlflow: MlflowConfig::default(),
            metrics: Arc::new(Metrics::new()),
            sinks: vec![("out".into(), tx)],
            tracker,
            chain: None,
        };
        let mut workers = Workers::start(normalizer, 4, "test", 1 << 30);
        let stages = Stages::default();
        // Revision 1 is far bigger, so it takes far longer to build than revision 2.
        for (position, (revision, spans)) in [(1, 250), (2, 1)].into_iter().enumerate() {
            let job = Job {
                release: release(revision, spans),
                position: position as u64,
                sinks: 1,
                stages: Arc::clone(&stages),
            };
            workers.submit(job).await.unwrap();
        }
        workers.close().await.unwrap();
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!((first.release.revision, second.release.revision), (1, 2));
    }
}

//! One pipeline's task: takes batches from the pipeline queue, assembles traces, turns each
//! released revision into an MLflow trace, and hands it to every sink's queue.
//!
//! Waiting on a full sink queue is the back-pressure: while the task waits it does not read its
//! input, the pipeline queue fills, and receivers answer with the retryable codes. When the input
//! closes (shutdown), every trace still held is released, flagged, before the task returns.

use std::sync::Arc;
use std::time::Instant;

use super::queue::{QueueRx, QueueTx};
use super::sleep_until;
use crate::assemble::{AssembleConfig, Assembler, Release};
use crate::config::MlflowConfig;
use crate::mlflow;
use crate::model::{AssembledTrace, SpanBatch};
use crate::sink::SinkInput;
use crate::telemetry::metrics::{AssemblerMetrics, Metrics};

/// Metadata key of the revision number on every released trace.
pub const REVISION_KEY: &str = "traceloom.revision";
/// Tag set to `"true"` on revisions released before they were complete.
pub const PARTIAL_TAG: &str = "traceloom.partial";
/// Tag naming why a partial revision was released.
pub const PARTIAL_REASON_TAG: &str = "traceloom.partial_reason";

/// Everything a pipeline task needs.
pub struct Pipeline {
    /// Its input.
    pub input: QueueRx<Arc<SpanBatch>>,
    /// Each sink's name and queue.
    pub sinks: Vec<(String, QueueTx<SinkInput>)>,
    /// Release policy.
    pub assemble: AssembleConfig,
    /// MLflow settings.
    pub mlflow: MlflowConfig,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Pre-labelled assembler metrics.
    pub assembler_metrics: AssemblerMetrics,
}

/// Builds the MLflow trace of a released revision.
pub fn normalize(release: Release, config: &MlflowConfig, metrics: &Metrics) -> AssembledTrace {
    let experiment = release.experiment.as_deref();
    let groups = release.decode();
    let (mut trace, report) = mlflow::build(
        release.trace_id,
        &groups,
        experiment,
        &config.default_experiment,
    );
    metrics.mlflow_limits(&report);
    let info = &mut trace.info;
    info.trace_metadata
        .insert(REVISION_KEY.into(), release.revision.to_string());
    if release.partial() {
        info.tags.insert(PARTIAL_TAG.into(), "true".into());
        info.tags
            .insert(PARTIAL_REASON_TAG.into(), release.reason.as_str().into());
    }
    let bytes = release
        .groups
        .iter()
        .flat_map(|g| &g.spans)
        .map(bytes::Bytes::len)
        .sum::<usize>()
        * 2;
    AssembledTrace {
        release,
        groups,
        trace,
        bytes,
    }
}

impl Pipeline {
    /// Runs until the input closes and every held trace has been handed to the sinks.
    ///
    /// # Errors
    ///
    /// When a sink stopped while the pipeline was running.
    pub async fn run(mut self) -> Result<(), String> {
        let mut assembler = Assembler::new(self.assemble.clone());
        let mut released = Vec::new();
        loop {
            let deadline = assembler.next_deadline();
            tokio::select! {
                biased;
                batch = self.input.recv() => match batch {
                    Some(batch) => assembler.ingest(&batch, Instant::now(), &mut released),
                    None => break,
                },
                () = sleep_until(deadline) => assembler.release_due(Instant::now(), &mut released),
            }
            self.assembler_metrics.observe(&assembler, &released);
            self.deliver(&mut released).await?;
        }
        assembler.drain(Instant::now(), &mut released);
        self.assembler_metrics.observe(&assembler, &released);
        self.deliver(&mut released).await
    }

    async fn deliver(&self, released: &mut Vec<Release>) -> Result<(), String> {
        for release in released.drain(..) {
            let assembled = Arc::new(normalize(release, &self.mlflow, &self.metrics));
            for (name, tx) in &self.sinks {
                // Waiting here when a sink queue is full is the back-pressure.
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
        }
        Ok(())
    }
}

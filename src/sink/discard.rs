//! The `discard` sink: counts what it receives and drops it, like the OpenTelemetry Collector's
//! `nop` exporter. For load tests that measure everything but the output.

use serde::Deserialize;

use super::{SinkError, SinkInput};
use crate::log::SinkCommits;
use crate::telemetry::metrics::SinkMetrics;
use crate::topology::queue::QueueRx;

/// `type: discard` (no settings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardConfig {}

/// A running `discard` sink.
pub struct DiscardSink {
    metrics: SinkMetrics,
}

impl DiscardSink {
    /// A sink counting into `metrics`.
    pub fn new(metrics: SinkMetrics) -> Self {
        Self { metrics }
    }

    /// Counts and drops until the input closes.
    ///
    /// # Errors
    ///
    /// Never fails; the signature matches the other sinks.
    pub async fn run(
        self,
        mut input: QueueRx<SinkInput>,
        commits: SinkCommits,
    ) -> Result<(), SinkError> {
        while let Some(trace) = input.recv().await {
            commits.durable(&[trace.position]);
            self.metrics.traces.inc();
            self.metrics.spans.inc_by(trace.span_count() as u64);
        }
        Ok(())
    }
}

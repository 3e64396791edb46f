//! The `debug` sink: JSON lines to stdout or a file, one per released trace revision.
//!
//! `format: mlflow` (the default) writes the MLflow trace exactly as MLflow's `Trace.to_dict()`
//! writes it. `format: otlp` writes the revision's OTLP spans:
//!
//! ```json
//! {"trace_id":"5b8e…","revision":1,"release_reason":"complete","partial":false,
//!  "experiment_id":"1","span_count":3,
//!  "resourceSpans":[{"resource":{…},"scopeSpans":[{"scope":{…},"spans":[…]}]}]}
//! ```
//!
//! Lines are flushed one by one, so a reader sees each trace as soon as it is written; a slow
//! reader (or a pipe nobody reads) makes the sink wait, which is back-pressure, not loss.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{BuildError, SinkError, SinkInput};
use crate::log::SinkCommits;
use crate::model::{AssembledTrace, resource_spans};
use crate::receive::json::JsonResourceSpans;
use crate::telemetry::metrics::SinkMetrics;
use crate::topology::backoff::Backoff;
use crate::topology::queue::QueueRx;

/// `type: debug`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// `-` for stdout, else a file appended to (created with its directory if missing).
    #[serde(default = "stdout")]
    pub path: String,
    /// What each line holds.
    #[serde(default)]
    pub format: DebugFormat,
}

/// The debug sink's line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DebugFormat {
    /// One MLflow trace (`Trace.to_dict()`) per line.
    #[default]
    Mlflow,
    /// One revision's OTLP spans per line, in OTLP/JSON.
    Otlp,
}

fn stdout() -> String {
    "-".into()
}

/// A running `debug` sink.
pub struct DebugSink {
    target: Option<PathBuf>,
    format: DebugFormat,
    metrics: SinkMetrics,
}

impl DebugConfig {
    /// Creates the output directory if needed.
    ///
    /// # Errors
    ///
    /// [`BuildError::Path`] when the directory cannot be created.
    pub fn build(&self, metrics: SinkMetrics) -> Result<DebugSink, BuildError> {
        let target = (self.path != "-").then(|| PathBuf::from(&self.path));
        if let Some(dir) = target
            .as_deref()
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| BuildError::Path {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(DebugSink {
            target,
            format: self.format,
            metrics,
        })
    }
}

#[derive(Serialize)]
struct OtlpLine<'a> {
    trace_id: String,
    revision: u32,
    release_reason: &'static str,
    partial: bool,
    experiment_id: &'a str,
    span_count: usize,
    #[serde(rename = "resourceSpans")]
    resource_spans: JsonResourceSpans<'a>,
}

/// Renders one revision as its line (without the newline).
pub fn render(trace: &AssembledTrace, format: DebugFormat) -> String {
    let json = match format {
        DebugFormat::Mlflow => Ok(crate::mlflow::trace_json::to_string(&trace.trace)),
        DebugFormat::Otlp => {
            let r = &trace.release;
            let spans = resource_spans(trace.groups());
            serde_json::to_string(&OtlpLine {
                trace_id: r.trace_id.to_string(),
                revision: r.revision,
                release_reason: r.reason.as_str(),
                partial: r.partial(),
                experiment_id: &trace
                    .trace
                    .info
                    .trace_location
                    .mlflow_experiment
                    .experiment_id,
                span_count: r.span_count(),
                resource_spans: JsonResourceSpans(&spans),
            })
        }
    };
    json.expect("debug lines have only string keys")
}

impl DebugSink {
    /// Writes every revision until the input closes.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] when the output cannot be opened or written.
    pub async fn run(
        self,
        mut input: QueueRx<SinkInput>,
        commits: SinkCommits,
    ) -> Result<(), SinkError> {
        let target_name = self
            .target
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
        let write_err = |source| SinkError::Write {
            target: target_name.clone(),
            source,
        };
        let mut out: Box<dyn AsyncWrite + Send + Unpin> = match &self.target {
            None => Box::new(tokio::io::stdout()),
            Some(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(write_err)?,
            ),
        };
        while let Some(first) = input.recv().await {
            // Everything waiting goes in one write and one manifest entry.
            let mut traces = vec![first];
            input.take_waiting(&mut traces, 1024, |_| 1);
            let mut text = String::new();
            for trace in &traces {
                text.push_str(&render(trace, self.format));
                text.push('\n');
            }
            out.write_all(text.as_bytes()).await.map_err(write_err)?;
            out.flush().await.map_err(write_err)?;
            for trace in &traces {
                self.metrics.traces.inc();
                self.metrics.spans.inc_by(trace.span_count() as u64);
            }
            commit(&commits, traces.iter().map(|t| t.position).collect()).await;
        }
        out.shutdown().await.map_err(write_err)
    }
}

/// Records `positions` in the manifest, retrying until it works (a full disk clears): what was
/// written stays written, and the log keeps it for replay meanwhile.
async fn commit(commits: &SinkCommits, positions: Vec<u64>) {
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    while let Err(e) = commits.commit(positions.clone()).await {
        tracing::error!(error = %e, retry_in = ?backoff.next(),
            "cannot write the debug sink's manifest");
        backoff.wait().await;
    }
}

//! The `debug` sink: JSON lines to stdout or a file, in one of two formats.
//!
//! `format: mlflow` (the default) writes one MLflow trace per line, exactly as MLflow's
//! `Trace.to_dict()` writes it; until trace assembly lands, each is built from the spans of one
//! trace in one request.
//!
//! `format: otlp` writes one line per accepted request: the receive metadata and the spans per
//! trace in OTLP/JSON form:
//!
//! ```json
//! {"receiver":"otlp","protocol":"grpc","received_at":"2026-11-21T09:41:16.067Z",
//!  "experiment_id":"1","span_count":2,
//!  "traces":[{"trace_id":"5b8e…","resourceSpans":[{"resource":{…},"scopeSpans":[…]}]}]}
//! ```
//!
//! Lines are flushed one by one, so a reader sees each batch as soon as it is written; a slow
//! reader (or a pipe nobody reads) makes the sink wait, which is back-pressure, not loss.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{BuildError, SinkError, SinkInput};
use crate::config::MlflowConfig;
use crate::model::{SpanBatch, TraceSpans};
use crate::otlp::ResourceSpans;
use crate::receive::json::JsonResourceSpans;
use crate::telemetry::metrics::{Metrics, SinkMetrics};
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
    /// One accepted request per line, spans in OTLP/JSON.
    Otlp,
}

fn stdout() -> String {
    "-".into()
}

/// A running `debug` sink.
pub struct DebugSink {
    target: Option<PathBuf>,
    format: DebugFormat,
    mlflow: MlflowConfig,
    metrics: SinkMetrics,
    process_metrics: Arc<Metrics>,
}

impl DebugConfig {
    /// Creates the output directory if needed.
    ///
    /// # Errors
    ///
    /// [`BuildError::Path`] when the directory cannot be created.
    pub fn build(
        &self,
        metrics: SinkMetrics,
        mlflow: MlflowConfig,
        process_metrics: Arc<Metrics>,
    ) -> Result<DebugSink, BuildError> {
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
            mlflow,
            metrics,
            process_metrics,
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    receiver: &'a str,
    protocol: &'static str,
    received_at: String,
    experiment_id: Option<&'a str>,
    span_count: usize,
    traces: Vec<TraceEntry>,
}

#[derive(Serialize)]
struct TraceEntry {
    trace_id: String,
    #[serde(rename = "resourceSpans", serialize_with = "as_otlp_json")]
    resource_spans: Vec<ResourceSpans>,
}

fn as_otlp_json<S: serde::Serializer>(rs: &[ResourceSpans], s: S) -> Result<S::Ok, S::Error> {
    JsonResourceSpans(rs).serialize(s)
}

/// Renders one batch as MLflow traces, one JSON line per trace (each ending in a newline),
/// counting the MLflow limits applied.
pub fn render_mlflow(batch: &SpanBatch, mlflow: &MlflowConfig, metrics: &Metrics) -> String {
    let mut out = String::new();
    for t in &batch.traces {
        let experiment = batch.meta.experiment_id.as_deref();
        let (trace, report) = crate::mlflow::build(
            t.trace_id,
            &t.groups,
            experiment,
            &mlflow.default_experiment,
        );
        metrics.mlflow_limits(&report);
        out.push_str(&serde_json::to_string(&trace).expect("an MLflow trace has only string keys"));
        out.push('\n');
    }
    out
}

/// Renders one batch as its OTLP JSON line (without the newline).
pub fn render(batch: &SpanBatch) -> String {
    let line = Line {
        receiver: &batch.meta.receiver,
        protocol: batch.meta.protocol.as_str(),
        received_at: humantime::format_rfc3339_millis(batch.meta.received_at).to_string(),
        experiment_id: batch.meta.experiment_id.as_deref(),
        span_count: batch.span_count(),
        traces: batch
            .traces
            .iter()
            .map(|t: &TraceSpans| TraceEntry {
                trace_id: t.trace_id.to_string(),
                resource_spans: t.to_resource_spans(),
            })
            .collect(),
    };
    serde_json::to_string(&line).expect("the debug line has only string keys and finite numbers")
}

impl DebugSink {
    /// Writes every batch until the input closes.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] when the output cannot be opened or written.
    pub async fn run(self, mut input: QueueRx<SinkInput>) -> Result<(), SinkError> {
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
        while let Some(batch) = input.recv().await {
            let lines = match self.format {
                DebugFormat::Mlflow => render_mlflow(&batch, &self.mlflow, &self.process_metrics),
                DebugFormat::Otlp => render(&batch) + "\n",
            };
            out.write_all(lines.as_bytes()).await.map_err(write_err)?;
            out.flush().await.map_err(write_err)?;
            self.metrics.batches.inc();
            self.metrics.spans.inc_by(batch.span_count() as u64);
        }
        out.shutdown().await.map_err(write_err)
    }
}

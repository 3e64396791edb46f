//! Sinks: where a pipeline's output goes.
//!
//! Every sink has a config (`type:` in the pipeline file), a `build` step that checks it and
//! prepares resources, and a `run` loop that consumes its own bounded queue until the queue closes,
//! then flushes and returns. A sink reads only from its queue, so a slow sink slows only itself
//! until that queue is full; then the pipeline's fan-out waits, and the wait reaches the receivers.

pub mod debug;
pub mod discard;
pub mod kafka;
pub mod parquet;

use std::sync::Arc;

use serde::de::MapAccess;
use serde::{Deserialize, Deserializer};

use crate::config::tagged::{self, Tagged};

use crate::log::SinkCommits;
use crate::model::AssembledTrace;
use crate::telemetry::metrics::Metrics;
use crate::topology::queue::QueueRx;

/// What flows into sinks: released trace revisions, shared between the sinks of a fan-out.
pub type SinkInput = Arc<AssembledTrace>;

/// A sink, chosen by `type:`.
#[derive(Debug)]
pub enum SinkConfig {
    /// JSON lines to stdout or a file, for inspection and tests.
    Debug(debug::DebugConfig),
    /// Counts and drops everything, for load tests.
    Discard(discard::DiscardConfig),
    /// A partitioned Parquet dataset of traces and spans.
    Parquet(parquet::ParquetConfig),
    /// One Kafka message per trace revision.
    Kafka(Box<kafka::config::KafkaConfig>),
}

impl Tagged for SinkConfig {
    const FAMILY: &'static str = "sink";
    const KINDS: &'static [&'static str] = &["debug", "discard", "kafka", "parquet"];

    fn from_rest<'de, A: MapAccess<'de>>(kind: &str, rest: A) -> Result<Self, A::Error> {
        match kind {
            "debug" => tagged::settings(rest).map(SinkConfig::Debug),
            "parquet" => tagged::settings(rest).map(SinkConfig::Parquet),
            "kafka" => tagged::settings(rest).map(SinkConfig::Kafka),
            _ => tagged::settings(rest).map(SinkConfig::Discard),
        }
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file sink's directory does not exist or cannot be created.
    #[error("cannot prepare {path}: {source}")]
    Path {
        /// The path concerned.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Why a running sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing to the output failed.
    #[error("write to {target} failed: {source}")]
    Write {
        /// The output written to.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A built sink, ready to run.
pub enum Sink {
    /// See [`debug::DebugSink`].
    Debug(debug::DebugSink),
    /// See [`discard::DiscardSink`].
    Discard(discard::DiscardSink),
    /// See [`parquet::ParquetSink`].
    Parquet(parquet::ParquetSink),
    /// See [`kafka::KafkaSink`].
    Kafka(Box<kafka::KafkaSink>),
}

impl SinkConfig {
    /// Checks the config and prepares the sink named `name` of pipeline `pipeline`.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming what could not be prepared.
    pub async fn build(
        &self,
        pipeline: &str,
        name: &str,
        metrics: &Metrics,
    ) -> Result<Sink, BuildError> {
        let sink_metrics = metrics.sink(pipeline, name);
        Ok(match self {
            SinkConfig::Debug(c) => Sink::Debug(c.build(sink_metrics)?),
            SinkConfig::Discard(_) => Sink::Discard(discard::DiscardSink::new(sink_metrics)),
            SinkConfig::Parquet(c) => Sink::Parquet(c.build(name, sink_metrics)?),
            SinkConfig::Kafka(c) => Sink::Kafka(Box::new(
                c.build(name, sink_metrics, metrics.kafka(pipeline, name))
                    .await?,
            )),
        })
    }
}

impl Sink {
    /// Consumes `input` until it closes, then flushes. What becomes durable is reported to
    /// `commits`, so the ingest log can let go of it.
    ///
    /// # Errors
    ///
    /// [`SinkError`] when output fails.
    pub async fn run(
        self,
        input: QueueRx<SinkInput>,
        commits: SinkCommits,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Debug(s) => s.run(input, commits).await,
            Sink::Discard(s) => s.run(input, commits).await,
            Sink::Parquet(s) => s.run(input, commits).await,
            Sink::Kafka(s) => s.run(input, commits).await,
        }
    }

    /// Whether replay must know what this sink holds (a manifest), so that it never writes a
    /// revision twice. A sink that keeps nothing does not need one.
    pub fn keeps_manifest(&self) -> bool {
        !matches!(self, Sink::Discard(_))
    }
}

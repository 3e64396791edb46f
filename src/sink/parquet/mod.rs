//! The `parquet` sink: MLflow traces as a partitioned Parquet dataset that DuckDB, Spark and
//! Polars read directly.
//!
//! ```text
//! <path>/traces/date=2026-11-21/part-3f9c…parquet   one row per trace revision
//! <path>/spans/date=2026-11-21/part-3f9c…parquet    one row per span, same file name
//! <path>/_staging/                                   files being published (emptied at start)
//! ```
//!
//! Each partition has one open file pair, encoded in memory ([`file`]) and published atomically
//! ([`publish`]) when it reaches `max_file_size`, when it is `max_file_age` old, when all open
//! files together exceed `max_buffered_bytes`, and at shutdown. A publish that fails (full disk,
//! permissions) is logged with its path, counted, and retried with back-off; meanwhile the sink
//! reads nothing more, so its queue fills and back-pressure reaches the receivers.

pub mod file;
pub mod layout;
pub mod publish;
pub mod rows;
pub mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use self::file::{Codec, FileSettings, Finished, OpenFile};
use self::layout::PartitionKey;
use self::publish::Dataset;
use self::rows::Rows;
use super::{BuildError, SinkError, SinkInput};
use crate::config::units::{ByteSize, HumanDuration};
use crate::log::SinkCommits;
use crate::telemetry::metrics::SinkMetrics;
use crate::topology::backoff::Backoff;
use crate::topology::queue::QueueRx;
use crate::topology::{on_blocking_thread, sleep_until};

/// `type: parquet`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Dataset root; created if missing.
    pub path: PathBuf,
    /// Partition directories, outermost first.
    #[serde(default = "default_partitions")]
    pub partition_by: Vec<PartitionKey>,
    /// `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Codec,
    /// zstd level (1–22); default 1.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// A file is published once it is this large.
    #[serde(default = "default_file_size")]
    pub max_file_size: ByteSize,
    /// A file is published at this age even if small, so that data appears promptly.
    #[serde(default = "default_file_age")]
    pub max_file_age: HumanDuration,
    /// Encoded bytes per row group.
    #[serde(default = "default_row_group")]
    pub row_group_size: ByteSize,
    /// Most bytes of unpublished files held in memory, over all partitions.
    #[serde(default = "default_buffered")]
    pub max_buffered_bytes: ByteSize,
    /// Whether `traces.trace_json` holds the full MLflow trace JSON.
    #[serde(default = "yes")]
    pub trace_json: bool,
}

fn default_partitions() -> Vec<PartitionKey> {
    vec![PartitionKey::Date]
}
fn default_file_size() -> ByteSize {
    ByteSize::mib(128)
}
fn default_file_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_row_group() -> ByteSize {
    ByteSize::mib(32)
}
fn default_buffered() -> ByteSize {
    ByteSize::mib(256)
}
fn yes() -> bool {
    true
}

/// Traces taken from the queue per encoding step, by their queue size.
const STEP_BYTES: usize = 16 << 20;

/// Traces encoded per Arrow batch, by their queue size. Small enough that a batch's columns are
/// still in the caches when the Parquet writer reads them back, and that the builders' buffers
/// are reused rather than grown anew from fresh (page-faulting) memory for every step: with
/// whole 16 MiB steps as one batch, page faults alone took a fifth of the CPU.
const BATCH_BYTES: usize = 1 << 20;

/// First wait after a failed publish; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A running `parquet` sink.
pub struct ParquetSink {
    publisher: Publisher,
    /// `None` only while an encoding step has the files on a blocking thread.
    files: Option<Box<Files>>,
}

/// The open files of every partition, and when to close them.
struct Files {
    settings: FileSettings,
    partition_by: Vec<PartitionKey>,
    max_file_size: usize,
    max_file_age: Duration,
    max_buffered: usize,
    open: BTreeMap<String, OpenFile>,
    rows: Rows,
}

impl ParquetConfig {
    /// Checks the settings, creates the dataset directories and removes staging leftovers.
    ///
    /// # Errors
    ///
    /// [`BuildError`] when the directory cannot be prepared or a setting is out of range.
    pub fn build(&self, name: &str, metrics: SinkMetrics) -> Result<ParquetSink, BuildError> {
        let props = |table| {
            file::properties(table, self.compression, self.compression_level).map_err(|e| {
                BuildError::Setting {
                    field: "compression_level",
                    reason: e.to_string(),
                }
            })
        };
        let settings = FileSettings {
            traces: props("traces")?,
            spans: props("spans")?,
            row_group_bytes: self.row_group_size.as_usize(),
            file_bytes: self.max_file_size.as_usize(),
        };
        let (dataset, removed) = Dataset::open(&self.path).map_err(|e| BuildError::Path {
            path: e.path,
            source: e.source,
        })?;
        if removed > 0 {
            tracing::warn!(sink = name, path = %self.path.display(), removed,
                "removed unpublished files left by an earlier run");
        }
        Ok(ParquetSink {
            publisher: Publisher {
                name: name.to_string(),
                dataset: Arc::new(dataset),
                metrics,
                commits: SinkCommits::detached(),
            },
            files: Some(Box::new(Files {
                settings,
                partition_by: self.partition_by.clone(),
                max_file_size: self.max_file_size.as_usize(),
                max_file_age: self.max_file_age.0,
                max_buffered: self.max_buffered_bytes.as_usize(),
                open: BTreeMap::new(),
                rows: Rows::new(self.trace_json),
            })),
        })
    }
}

impl Files {
    /// Encodes `traces` into their partitions' files; returns the files that are due.
    fn append(&mut self, traces: &[SinkInput], now: Instant) -> Vec<Finished> {
        let mut by_partition: BTreeMap<String, Vec<&SinkInput>> = BTreeMap::new();
        for t in traces {
            by_partition
                .entry(layout::partition(&self.partition_by, t))
                .or_default()
                .push(t);
        }
        let mut done = Vec::new();
        for (partition, traces) in by_partition {
            for batch in batches(&traces, BATCH_BYTES) {
                let file = self
                    .open
                    .entry(partition.clone())
                    .or_insert_with(|| OpenFile::new(partition.clone(), &self.settings, now));
                file.append(&mut self.rows, batch.iter().map(|t| &***t));
                if file.size() >= self.max_file_size {
                    done.extend(self.close(&partition));
                }
            }
        }
        done.extend(self.due(now));
        done
    }

    /// Files past `max_file_age`, then the largest files while over `max_buffered_bytes`.
    fn due(&mut self, now: Instant) -> Vec<Finished> {
        let old: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| now >= f.opened() + self.max_file_age)
            .map(|(p, _)| p.clone())
            .collect();
        let mut done: Vec<Finished> = old.iter().filter_map(|p| self.close(p)).collect();
        while self.buffered() > self.max_buffered {
            let Some(largest) = self
                .open
                .iter()
                .max_by_key(|(_, f)| f.size())
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            done.extend(self.close(&largest));
        }
        done
    }

    fn close(&mut self, partition: &str) -> Option<Finished> {
        self.open.remove(partition).map(OpenFile::finish)
    }

    fn close_all(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.open)
            .into_values()
            .map(OpenFile::finish)
            .collect()
    }

    fn buffered(&self) -> usize {
        self.open.values().map(OpenFile::size).sum()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|f| f.opened() + self.max_file_age)
            .min()
    }
}

/// `traces` in runs of about `max` queue bytes (at least one trace each).
fn batches<'a>(
    traces: &'a [&'a SinkInput],
    max: usize,
) -> impl Iterator<Item = &'a [&'a SinkInput]> {
    let mut rest = traces;
    std::iter::from_fn(move || {
        let mut bytes = 0;
        let n = rest
            .iter()
            .position(|t| {
                bytes += t.bytes;
                bytes > max
            })
            .map_or(rest.len(), |i| i.max(1));
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        (!batch.is_empty()).then_some(batch)
    })
}

impl ParquetSink {
    /// Writes every revision until the input closes, then publishes every open file.
    ///
    /// # Errors
    ///
    /// Never fails: publish errors are retried until they clear.
    pub async fn run(
        mut self,
        mut input: QueueRx<SinkInput>,
        commits: SinkCommits,
    ) -> Result<(), SinkError> {
        self.publisher.commits = commits;
        loop {
            let mut step = Vec::new();
            tokio::select! {
                item = input.recv() => match item {
                    Some(t) => step.push(t),
                    None => break,
                },
                () = sleep_until(self.files().next_deadline()) => {}
            }
            input.take_waiting(&mut step, STEP_BYTES, |t| t.bytes);
            let done = self
                .encode(move |files| files.append(&step, Instant::now()))
                .await;
            self.publisher.publish_all(done).await;
        }
        let done = self.encode(|files| files.close_all()).await;
        self.publisher.publish_all(done).await;
        Ok(())
    }

    /// Runs `work` on the files on a blocking thread: encoding is CPU-bound.
    async fn encode(
        &mut self,
        work: impl FnOnce(&mut Files) -> Vec<Finished> + Send + 'static,
    ) -> Vec<Finished> {
        let done = on_blocking_thread(&mut self.files, |files| work(files)).await;
        let buffered = self.files().buffered() as i64;
        self.publisher.metrics.buffered_bytes.set(buffered);
        done
    }

    fn files(&self) -> &Files {
        self.files.as_ref().expect("files are back after each step")
    }
}

/// Publishes finished files; shared by reference across awaits, so it holds no open file.
struct Publisher {
    name: String,
    dataset: Arc<Dataset>,
    metrics: SinkMetrics,
    commits: SinkCommits,
}

impl Publisher {
    async fn publish_all(&self, done: Vec<Finished>) {
        for file in done {
            self.publish(file).await;
        }
    }

    /// Publishes `file`, retrying with back-off until it succeeds. The manifest entry naming
    /// the files is written first, so that after a crash replay knows whether they made it.
    async fn publish(&self, file: Finished) {
        let file = Arc::new(file);
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            let (dataset, f) = (Arc::clone(&self.dataset), Arc::clone(&file));
            let commits = self.commits.clone();
            let result = tokio::task::spawn_blocking(move || {
                commits
                    .intend(&f.positions, &dataset.targets(&f))
                    .map_err(|source| publish::PublishError {
                        op: "record in the sink manifest",
                        path: dataset.targets(&f).pop().unwrap_or_default(),
                        source,
                    })?;
                dataset.publish(&f)
            })
            .await
            .expect("publishing does not panic");
            let Err(error) = result else { break };
            self.metrics.errors.inc();
            tracing::error!(sink = %self.name, %error, retry_in = ?backoff.next(),
                "cannot publish a Parquet file; holding its traces and retrying");
            backoff.wait().await;
        }
        self.commits.durable(&file.positions);
        self.metrics.files.inc();
        self.metrics.bytes.inc_by(file.size() as u64);
        self.metrics.traces.inc_by(file.revisions.len() as u64);
        self.metrics.spans.inc_by(file.span_rows as u64);
        tracing::debug!(sink = %self.name, partition = %file.partition, file = %file.name,
            traces = file.revisions.len(), "published");
    }
}

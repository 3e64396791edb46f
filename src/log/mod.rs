//! The ingest log: the point of durability. A request is acknowledged only once its spans are on
//! disk, and everything acknowledged reaches every sink exactly once per trace revision, through
//! `kill -9` and restart.
//!
//! ```text
//! <dir>/spans/<position>.seg          span records: one trace's spans from one request (writer.rs)
//! <dir>/journal/<position>.seg        the assembler's releases and forgets (journal.rs)
//! <dir>/sinks/<sink>/<position>.seg   per-sink manifest of durable revisions (commit.rs)
//! <dir>/checkpoint                    where replay starts (commit.rs)
//! <dir>/lock                          one process per log
//! ```
//!
//! The cycle: the writer appends and fsyncs records (group commit), answers the clients, and
//! hands the batches to the assembler in log order. Every release and forget of the assembler is
//! journaled (and synced) before the revision goes to the sinks, so replay can rebuild the same
//! revisions. Sinks record what they made durable in their manifests. The checkpoint moves to the
//! oldest record still needed by a held trace (open, or released and within its late-span
//! window: its next revision reads its records back, reader.rs) or an unfinished revision, and
//! whole segments before it are deleted. At start ([`open`]) damaged tails are cut and reported,
//! and [`Replay`] rebuilds the assembler and re-sends each revision to exactly the sinks whose
//! manifest lacks it.

pub mod commit;
pub mod config;
pub mod journal;
pub mod reader;
pub mod record;
pub mod replay;
pub mod segment;
pub mod writer;

/// The types generated from `proto/traceloom/log/v1/log.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/traceloom.log.v1.rs"));
}

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

pub use self::commit::{Manifest, SinkCommits, SinkMask, Tracker};
pub use self::config::{Fsync, LogConfig};
pub use self::journal::Decision;
pub use self::replay::Replay;
use self::segment::{Opened, SegmentLog};
use crate::telemetry::metrics::LogMetrics;

/// Journal segments: decisions are ~40 bytes each.
const JOURNAL_SEGMENT: u64 = 16 << 20;

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process holds the directory.
    #[error("{}: the log is in use by another traceloom process", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// A file could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { path, source }
}

/// A pipeline's log, opened and recovered, ready to run.
pub struct OpenLog {
    /// The span-record log, for the writer.
    pub records: SegmentLog,
    /// The decision journal, for the pipeline task.
    pub journal: SegmentLog,
    /// The replay floor bookkeeping.
    pub tracker: Arc<Tracker>,
    /// Each sink's manifest, in sink order.
    pub manifests: Vec<Manifest>,
    /// What to replay.
    pub replay: Replay,
    /// The log's id and replay start time, for sinks that read their output back.
    pub origin: commit::Origin,
    /// Held while the process runs: the OS releases it when the process dies, even by SIGKILL.
    _lock: File,
}

/// Opens the log in `dir` for a pipeline with `sinks` (names, in order): locks it, cuts damaged
/// tails (reported in the log and in metrics), and prepares replay.
///
/// # Errors
///
/// [`LogError`] when the directory is in use or cannot be read or written.
pub fn open(
    dir: &Path,
    config: &LogConfig,
    sinks: &[&str],
    metrics: &LogMetrics,
) -> Result<OpenLog, LogError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let lock_path = dir.join("lock");
    let lock = File::create(&lock_path).map_err(io_at(&lock_path))?;
    lock.try_lock().map_err(|_| LogError::Locked {
        dir: dir.to_path_buf(),
    })?;
    let checkpoint = dir.join("checkpoint");
    let from = commit::read_checkpoint(&checkpoint).map_err(io_at(&checkpoint))?;

    let journal_dir = dir.join("journal");
    let mut decisions = Vec::new();
    let (mut journal, opened) =
        SegmentLog::open(&journal_dir, JOURNAL_SEGMENT, false, |p, payload| {
            let Some(d) = Decision::decode(payload) else {
                return 0;
            };
            decisions.push((p, d));
            d.upto
        })
        .map_err(io_at(&journal_dir))?;
    report(&journal_dir, &opened, metrics);
    journal.remove_below(from).map_err(io_at(&journal_dir))?;

    let mut manifests = Vec::new();
    let mut committed = Vec::new();
    for sink in sinks {
        let path = dir.join("sinks").join(sink);
        let (manifest, held) = Manifest::open(&path).map_err(io_at(&path))?;
        manifests.push(manifest);
        committed.push(held);
    }

    let records_dir = dir.join("spans");
    // Opening reads every record anyway: note when the first one to replay was received (the
    // Kafka sink reads its topic back from then).
    let mut replay_since = None;
    let (mut records, opened) = SegmentLog::open(
        &records_dir,
        config.segment_size.0,
        config.direct_io,
        |p, payload| {
            if replay_since.is_none() && p >= from {
                replay_since = record::decode(payload).ok().map(|b| b.meta.received_at);
            }
            p
        },
    )
    .map_err(io_at(&records_dir))?;
    report(&records_dir, &opened, metrics);
    records.remove_below(from).map_err(io_at(&records_dir))?;
    let bases = segment::segment_bases(&records_dir).map_err(io_at(&records_dir))?;
    let end = records.end();
    if end > from {
        info!(dir = %dir.display(), bytes = end - from, decisions = decisions.len(),
            "ingest log: replaying what was not yet in every sink");
    }
    let tracker = Arc::new(Tracker::new(checkpoint, from, metrics.sink_latency.clone()));
    tracker.set_manifest_floor(journal.start());
    let origin = commit::Origin {
        log_id: log_id(dir)?.into(),
        replay_since: replay_since.filter(|_| end > from),
    };
    Ok(OpenLog {
        origin,
        records,
        journal,
        tracker,
        manifests,
        replay: Replay::new(records_dir, bases, from, decisions, committed, end),
        _lock: lock,
    })
}

/// The log's id, made when the directory is first used: sinks label their output with it.
fn log_id(dir: &Path) -> Result<String, LogError> {
    let path = dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&path)(e)),
        _ => {}
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!(
        "{:016x}",
        twox_hash::XxHash64::oneshot(u64::from(std::process::id()), &seed.to_le_bytes())
    );
    std::fs::write(&path, &id).map_err(io_at(&path))?;
    Ok(id)
}

fn report(dir: &Path, opened: &Opened, metrics: &LogMetrics) {
    for d in &opened.damage {
        warn!(file = %d.file.display(), offset = d.offset, bytes = d.bytes, reason = d.reason,
            "ingest log: cut a damaged tail; the records before it are kept");
        metrics.damaged.inc();
        metrics.damaged_bytes.inc_by(d.bytes);
    }
    if !opened.damage.is_empty() {
        warn!(dir = %dir.display(), damaged = opened.damage.len(), "ingest log: damage repaired");
    }
}

//! What each sink has made durable, and from where replay must start.
//!
//! The [`Tracker`] holds, per pipeline, the revisions released but not yet durable in every sink
//! (each with the position of its trace's first record) and the assembler's own floor (the first
//! record of the oldest trace it holds). The smallest of these is where replay must start: the
//! `checkpoint` file, written atomically, after which the segments before it are deleted.
//!
//! Each sink has a manifest ([`SinkCommits`]): entries naming the revisions (by the position of
//! their release decision) it made durable. Replay skips, per sink, the revisions its manifest
//! holds, so a revision reaches each sink once. A file sink writes its entry *before* publishing
//! the files, listing them; the entry counts only if the files exist (see [`Manifest::open`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use prost::Message;

use super::proto::{Checkpoint, SinkCommit};
use super::segment::{SegmentLog, sync_dir};

/// A set of sinks of one pipeline, one bit per sink in configuration order.
pub type SinkMask = u64;

/// Most sinks a pipeline may have.
pub const MAX_SINKS: usize = 64;

/// Replay floor bookkeeping for one pipeline; shared by the pipeline task and its sinks.
pub struct Tracker {
    checkpoint: PathBuf,
    inner: Mutex<Inner>,
    /// Release-to-durable seconds, per sink.
    latency: Vec<Histogram>,
}

#[derive(Default)]
struct Inner {
    assembler_floor: u64,
    /// Release position → (first record position, sinks still to report, when held).
    pending: HashMap<u64, (u64, SinkMask, Instant)>,
    by_first: BTreeSet<(u64, u64)>,
    checkpointed: u64,
    /// Manifest entries whose releases are all below this can go.
    manifest_floor: u64,
}

impl Tracker {
    /// A tracker whose checkpoint lives at `checkpoint`, starting at `replay_from`; `latency`
    /// (per sink, may be empty) observes how long each revision took to become durable.
    pub fn new(checkpoint: PathBuf, replay_from: u64, latency: Vec<Histogram>) -> Self {
        Self {
            checkpoint,
            latency,
            inner: Mutex::new(Inner {
                assembler_floor: replay_from,
                checkpointed: replay_from,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers released revisions `(release position, first record position, sinks to
    /// deliver to)` and the assembler's new floor, in one step so no floor in between is seen.
    pub fn hold(&self, assembler_floor: u64, releases: &[(u64, u64, SinkMask)]) {
        let mut inner = self.lock();
        inner.add(releases);
        inner.assembler_floor = assembler_floor;
    }

    /// Registers released revisions, leaving the assembler's floor where it is (it may only
    /// move once every revision released since has been registered).
    pub fn add(&self, releases: &[(u64, u64, SinkMask)]) {
        self.lock().add(releases);
    }

    /// Sink `sink` made `releases` durable.
    pub fn durable(&self, sink: usize, releases: &[u64]) {
        let mut inner = self.lock();
        for release in releases {
            let Some((first, sinks, held)) = inner.pending.get_mut(release) else {
                continue;
            };
            if let Some(latency) = self.latency.get(sink) {
                latency.observe(held.elapsed().as_secs_f64());
            }
            *sinks &= !(1 << sink);
            if *sinks == 0 {
                let first = *first;
                inner.pending.remove(release);
                inner.by_first.remove(&(first, *release));
            }
        }
    }

    /// A stage dropped the registered revision `release`: no sink will report it, and the log
    /// no longer waits for it.
    pub fn dropped(&self, release: u64) {
        let mut inner = self.lock();
        if let Some((first, _, _)) = inner.pending.remove(&release) {
            inner.by_first.remove(&(first, release));
        }
    }

    /// Where replay would have to start now.
    pub fn floor(&self) -> u64 {
        let inner = self.lock();
        inner.floor()
    }

    /// The first record position some sink still waits for, if any.
    pub fn pending_floor(&self) -> Option<u64> {
        self.lock().by_first.first().map(|(first, _)| *first)
    }

    /// Revisions not yet durable in every sink.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Writes the checkpoint if the floor moved; returns the floor now on disk.
    ///
    /// # Errors
    ///
    /// When the file cannot be written; the previous checkpoint stays.
    pub fn checkpoint(&self) -> io::Result<u64> {
        let floor = self.floor();
        if floor <= self.lock().checkpointed {
            return Ok(self.lock().checkpointed);
        }
        write_checkpoint(&self.checkpoint, floor)?;
        self.lock().checkpointed = floor;
        Ok(floor)
    }

    /// Manifest entries naming only releases below `floor` are no longer needed.
    pub fn set_manifest_floor(&self, floor: u64) {
        self.lock().manifest_floor = floor;
    }

    fn manifest_floor(&self) -> u64 {
        self.lock().manifest_floor
    }
}

impl Inner {
    fn add(&mut self, releases: &[(u64, u64, SinkMask)]) {
        let now = Instant::now();
        for &(release, first, sinks) in releases {
            if sinks != 0 {
                self.pending.insert(release, (first, sinks, now));
                self.by_first.insert((first, release));
            }
        }
    }

    fn floor(&self) -> u64 {
        self.by_first
            .first()
            .map_or(self.assembler_floor, |(first, _)| {
                (*first).min(self.assembler_floor)
            })
    }
}

/// Reads the checkpoint; 0 (replay everything) when there is none.
///
/// # Errors
///
/// When the file exists but cannot be read or decoded.
pub fn read_checkpoint(path: &Path) -> io::Result<u64> {
    match fs::read(path) {
        Ok(bytes) => Checkpoint::decode(&bytes[..])
            .map(|c| c.replay_from)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn write_checkpoint(path: &Path, replay_from: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = Checkpoint { replay_from }.encode_to_vec();
    {
        let mut f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A sink's manifest on disk.
pub struct Manifest {
    log: SegmentLog,
}

/// Manifest segments are small: entries are a few bytes per revision.
const MANIFEST_SEGMENT: u64 = 4 << 20;

impl Manifest {
    /// Opens the manifest in `dir`; returns it and the releases it holds. An entry listing files
    /// counts only if all of them exist; otherwise those that exist are removed, since they were
    /// being published when the process stopped and their revisions will be written again.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read or a half-published file cannot be removed.
    pub fn open(dir: &Path) -> io::Result<(Self, HashSet<u64>)> {
        let mut entries = Vec::new();
        let (log, _) = SegmentLog::open(dir, MANIFEST_SEGMENT, false, |_, payload| {
            let entry = SinkCommit::decode(payload).unwrap_or_default();
            let key = entry.releases.iter().copied().max().unwrap_or(0);
            entries.push(entry);
            key
        })?;
        let mut committed = HashSet::new();
        for entry in entries {
            if entry.files.iter().all(|f| Path::new(f).exists()) {
                committed.extend(entry.releases);
            } else {
                for f in entry.files.iter().filter(|f| Path::new(f).exists()) {
                    fs::remove_file(f)?;
                }
            }
        }
        Ok((Self { log }, committed))
    }

    fn append(&mut self, releases: &[u64], files: &[PathBuf], floor: u64) -> io::Result<()> {
        let entry = SinkCommit {
            releases: releases.to_vec(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
        };
        let key = releases.iter().copied().max().unwrap_or(0);
        self.log.append(&entry.encode_to_vec(), key);
        self.log.commit(true)?;
        self.log.remove_below(floor)?;
        Ok(())
    }
}

/// A sink's handle on the commit protocol: its manifest and the pipeline's tracker.
#[derive(Clone)]
pub struct SinkCommits {
    index: usize,
    tracker: Option<Arc<Tracker>>,
    manifest: Option<Arc<Mutex<Manifest>>>,
    origin: Origin,
}

/// Which log a sink's revisions come from, and since when replay may repeat them.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The ingest log's id (`<dir>/id`), unique per log directory.
    pub log_id: Arc<str>,
    /// When the first replayed record was received; `None` when nothing is replayed. No
    /// revision replay sends was written to a sink before it.
    pub replay_since: Option<std::time::SystemTime>,
}

impl SinkCommits {
    /// Sink `index` of a pipeline, with its manifest (`None`: a sink whose output replay may
    /// repeat, such as `discard`).
    pub fn new(
        index: usize,
        tracker: Arc<Tracker>,
        manifest: Option<Manifest>,
        origin: Origin,
    ) -> Self {
        Self {
            index,
            tracker: Some(tracker),
            manifest: manifest.map(|m| Arc::new(Mutex::new(m))),
            origin,
        }
    }

    /// Where the revisions come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// A handle that records nothing, for sinks run outside a pipeline (tests, benchmarks).
    pub fn detached() -> Self {
        Self {
            index: 0,
            tracker: None,
            manifest: None,
            origin: Origin::default(),
        }
    }

    /// Blocking: records that `releases` are about to be published as `files`. Call before
    /// publishing; then [`durable`](Self::durable) after.
    ///
    /// # Errors
    ///
    /// When the manifest cannot be written; the files must not be published then.
    pub fn intend(&self, releases: &[u64], files: &[PathBuf]) -> io::Result<()> {
        let (Some(manifest), Some(tracker)) = (&self.manifest, &self.tracker) else {
            return Ok(());
        };
        let floor = tracker.manifest_floor();
        manifest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(releases, files, floor)
    }

    /// `releases` are durable in this sink: the log may let go of them.
    pub fn durable(&self, releases: &[u64]) {
        if let Some(tracker) = &self.tracker {
            tracker.durable(self.index, releases);
        }
    }

    /// Records `releases` as durable in the manifest (on a blocking thread), then tells the
    /// tracker. For sinks whose output is durable before this is called.
    ///
    /// # Errors
    ///
    /// When the manifest cannot be written; replay would then send the revisions again.
    pub async fn commit(&self, releases: Vec<u64>) -> io::Result<()> {
        if releases.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.intend(&releases, &[])?;
            this.durable(&releases);
            Ok(())
        })
        .await
        .expect("manifest writes do not panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_oldest_record_an_unfinished_revision_or_the_assembler_needs() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::new(dir.path().join("checkpoint"), 0, Vec::new());
        t.hold(500, &[(10, 100, 0b11), (11, 300, 0b01)]);
        assert_eq!(t.floor(), 100);
        t.durable(0, &[10]);
        assert_eq!(t.floor(), 100, "sink 1 still lacks release 10");
        t.durable(1, &[10]);
        assert_eq!(t.floor(), 300);
        t.durable(0, &[11]);
        assert_eq!(t.floor(), 500);
        assert_eq!(t.checkpoint().unwrap(), 500);
        assert_eq!(
            read_checkpoint(&dir.path().join("checkpoint")).unwrap(),
            500
        );
        t.hold(400, &[]);
        assert_eq!(
            t.checkpoint().unwrap(),
            500,
            "a checkpoint never moves back"
        );
    }

    #[test]
    fn a_manifest_entry_for_files_counts_only_if_they_all_exist() {
        let dir = tempfile::tempdir().unwrap();
        let published = dir.path().join("published.parquet");
        let half = dir.path().join("half-spans.parquet");
        let missing = dir.path().join("half-traces.parquet");
        fs::write(&published, b"x").unwrap();
        fs::write(&half, b"x").unwrap();
        let (mut m, held) = Manifest::open(&dir.path().join("m")).unwrap();
        assert!(held.is_empty());
        m.append(&[1, 2], std::slice::from_ref(&published), 0)
            .unwrap();
        m.append(&[3], &[half.clone(), missing], 0).unwrap();
        m.append(&[4], &[], 0).unwrap();
        drop(m);
        let (_, held) = Manifest::open(&dir.path().join("m")).unwrap();
        assert_eq!(held, HashSet::from([1, 2, 4]));
        assert!(!half.exists(), "a half-published file is removed");
        assert!(published.exists());
    }
}

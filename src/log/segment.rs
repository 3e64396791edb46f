//! An append-only log of checksummed frames in segment files: the storage under the ingest log,
//! the decision journal and the sink manifests.
//!
//! ```text
//! <dir>/00000000000000000000.seg   frames at positions 0 ..
//! <dir>/00000000000067108912.seg   the next segment starts at the position after the last frame
//! frame = u32 LE length | u32 LE CRC32C(length bytes ++ payload) | payload
//! ```
//!
//! A frame's *position* is its byte offset in one position space that runs across segments, so a
//! position names a frame forever, whatever was deleted before it. Opening validates every frame;
//! a bad frame (torn write, bit rot) ends its segment: the file is cut there and the damage is
//! reported, so start never fails on a damaged tail and what precedes it stays readable.
//!
//! Each segment remembers the largest *key* of its frames (a caller-chosen number, e.g. the
//! position of the last span record a journal decision refers to), so that [`SegmentLog::remove_below`]
//! can delete whole sealed segments that nothing needs any more.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bytes before each payload: length and checksum.
pub const FRAME_HEADER: u64 = 8;

/// Frames larger than this are taken for damage: no record comes near it.
const MAX_FRAME: u32 = 1 << 30;

const SUFFIX: &str = "seg";

/// A damaged stretch found and cut at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub file: PathBuf,
    /// Where in the file the first bad frame starts.
    pub offset: u64,
    /// Bytes cut from there to the end of the file.
    pub bytes: u64,
    /// What was wrong.
    pub reason: &'static str,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Valid frames read.
    pub frames: u64,
    /// Damage cut away.
    pub damage: Vec<Damage>,
}

struct Sealed {
    base: u64,
    len: u64,
    max_key: u64,
    path: PathBuf,
}

/// A segmented, checksummed, append-only log in one directory.
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    sealed: Vec<Sealed>,
    active: File,
    active_base: u64,
    /// Bytes in the active file, written or not yet.
    active_len: u64,
    active_max_key: u64,
    /// Frames appended but not yet written to the file.
    pending: Vec<u8>,
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, validating every frame and cutting damage away.
    /// `visit(position, payload)` sees every valid frame in order and returns its key.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created or read, or a segment cannot be read or cut.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut visit: impl FnMut(u64, &[u8]) -> u64,
    ) -> io::Result<(Self, Opened)> {
        fs::create_dir_all(dir)?;
        let mut opened = Opened::default();
        let mut segments = Vec::new();
        for base in segment_bases(dir)? {
            let path = segment_path(dir, base);
            let data = fs::read(&path)?;
            let (valid, max_key, frames) = scan(base, &data, &mut visit);
            opened.frames += frames;
            if (valid as usize) < data.len() {
                opened.damage.push(Damage {
                    file: path.clone(),
                    offset: valid,
                    bytes: data.len() as u64 - valid,
                    reason: damage_reason(&data[valid as usize..]),
                });
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid)?;
                file.sync_all()?;
            }
            segments.push(Sealed {
                base,
                len: valid,
                max_key,
                path,
            });
        }
        let (active_base, active_len, active_max_key) = match segments.pop() {
            Some(last) => (last.base, last.len, last.max_key),
            None => (0, 0, 0),
        };
        let active = open_append(&segment_path(dir, active_base))?;
        sync_dir(dir)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segment_bytes,
                sealed: segments,
                active,
                active_base,
                active_len,
                active_max_key,
                pending: Vec::new(),
            },
            opened,
        ))
    }

    /// Frames `payload` after the last one and returns its position. Nothing reaches the file
    /// before [`commit`](Self::commit).
    pub fn append(&mut self, payload: &[u8], key: u64) -> u64 {
        let position = self.active_base + self.active_len;
        let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
        let len_bytes = len.to_le_bytes();
        let mut crc = crc32c::crc32c(&len_bytes);
        crc = crc32c::crc32c_append(crc, payload);
        self.pending.extend_from_slice(&len_bytes);
        self.pending.extend_from_slice(&crc.to_le_bytes());
        self.pending.extend_from_slice(payload);
        self.active_len += FRAME_HEADER + payload.len() as u64;
        self.active_max_key = self.active_max_key.max(key);
        position
    }

    /// Writes the appended frames; with `sync`, makes them durable. Then starts a new segment if
    /// the active one is full.
    ///
    /// # Errors
    ///
    /// The write or sync error. The file is cut back to its last committed length, and the frames
    /// of this commit are dropped: their positions will be reused, so callers must treat them
    /// as never written.
    pub fn commit(&mut self, sync: bool) -> io::Result<()> {
        let committed = self.active_len - self.pending.len() as u64;
        let result = self.write_pending(sync);
        if result.is_err() {
            self.pending.clear();
            self.active_len = committed;
            let _ = self.active.set_len(committed);
            return result;
        }
        if self.active_len >= self.segment_bytes {
            self.roll(sync)?;
        }
        Ok(())
    }

    fn write_pending(&mut self, sync: bool) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.active.write_all(&self.pending)?;
            self.pending.clear();
        }
        if sync {
            self.active.sync_data()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    ///
    /// The sync error.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()
    }

    fn roll(&mut self, sync: bool) -> io::Result<()> {
        if !sync {
            self.active.sync_data()?;
        }
        let base = self.active_base + self.active_len;
        let file = open_append(&segment_path(&self.dir, base))?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.active, file);
        drop(old);
        self.sealed.push(Sealed {
            base: self.active_base,
            len: self.active_len,
            max_key: self.active_max_key,
            path: segment_path(&self.dir, self.active_base),
        });
        self.active_base = base;
        self.active_len = 0;
        self.active_max_key = 0;
        Ok(())
    }

    /// Deletes the sealed segments whose every key is below `floor`, oldest first, stopping at
    /// the first that is still needed. Returns how many were deleted.
    ///
    /// # Errors
    ///
    /// When a file cannot be deleted; the ones before it are gone.
    pub fn remove_below(&mut self, floor: u64) -> io::Result<usize> {
        let count = self.sealed.iter().take_while(|s| s.max_key < floor).count();
        for (i, segment) in self.sealed.iter().take(count).enumerate() {
            if let Err(e) = fs::remove_file(&segment.path) {
                self.sealed.drain(..i);
                return Err(e);
            }
        }
        self.sealed.drain(..count);
        if count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    /// Bytes in every segment, written or about to be.
    pub fn bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.len).sum::<u64>() + self.active_len
    }

    /// Segment files, the active one included.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The position the next frame will get.
    pub fn end(&self) -> u64 {
        self.active_base + self.active_len
    }

    /// The position of the oldest segment still kept.
    pub fn start(&self) -> u64 {
        self.sealed.first().map_or(self.active_base, |s| s.base)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the valid frames of one segment file whose positions are in `range`, without changing
/// anything.
///
/// # Errors
///
/// When the file cannot be read.
pub fn read_segment(
    dir: &Path,
    base: u64,
    range: std::ops::Range<u64>,
) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let data = fs::read(segment_path(dir, base))?;
    let mut out = Vec::new();
    scan(base, &data, &mut |position, payload: &[u8]| {
        if range.contains(&position) {
            out.push((position, payload.to_vec()));
        }
        0
    });
    Ok(out)
}

/// The bases of the segment files in `dir`, ascending.
///
/// # Errors
///
/// When the directory cannot be read.
pub fn segment_bases(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_suffix(SUFFIX)
            .and_then(|n| n.strip_suffix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Walks the valid frames of a segment; returns the valid length, the largest key and the count.
fn scan(base: u64, data: &[u8], visit: &mut impl FnMut(u64, &[u8]) -> u64) -> (u64, u64, u64) {
    let (mut offset, mut max_key, mut frames) = (0usize, 0u64, 0u64);
    while let Some(payload) = frame_at(&data[offset..]) {
        max_key = max_key.max(visit(base + offset as u64, payload));
        offset += FRAME_HEADER as usize + payload.len();
        frames += 1;
    }
    (offset as u64, max_key, frames)
}

/// The payload of the frame at the start of `data`, if it is whole and its checksum matches.
fn frame_at(data: &[u8]) -> Option<&[u8]> {
    let header = data.get(..FRAME_HEADER as usize)?;
    let len_bytes: [u8; 4] = header[..4].try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_FRAME {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = data.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len as usize)?;
    (crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) == crc).then_some(payload)
}

fn damage_reason(rest: &[u8]) -> &'static str {
    if rest.len() < FRAME_HEADER as usize {
        return "partial frame header (torn write)";
    }
    match rest
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    {
        None => "partial frame header (torn write)",
        Some(len) if len > MAX_FRAME => "impossible frame length",
        Some(len) if rest.len() < FRAME_HEADER as usize + len as usize => {
            "frame shorter than its length (torn write)"
        }
        Some(_) => "checksum mismatch",
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SUFFIX}"))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Makes entries created or removed in `dir` durable.
///
/// # Errors
///
/// When the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path, segment_bytes: u64) -> (SegmentLog, Opened, Vec<(u64, Vec<u8>)>) {
        let mut seen = Vec::new();
        let (log, opened) = SegmentLog::open(dir, segment_bytes, |p, payload| {
            seen.push((p, payload.to_vec()));
            p
        })
        .unwrap();
        (log, opened, seen)
    }

    #[test]
    fn frames_survive_reopen_with_positions_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, seen) = collect(dir.path(), 40);
        assert!(seen.is_empty());
        let mut written = Vec::new();
        for i in 0..10u8 {
            let payload = vec![i; 10 + i as usize];
            let p = log.append(&payload, u64::from(i));
            log.commit(true).unwrap();
            written.push((p, payload));
        }
        assert!(log.segments() > 3, "rolled at 40 bytes");
        let end = log.end();
        drop(log);
        let (log, opened, seen) = collect(dir.path(), 40);
        assert_eq!(seen, written);
        assert_eq!(opened.frames, 10);
        assert!(opened.damage.is_empty());
        assert_eq!(log.end(), end);
    }

    #[test]
    fn a_torn_or_garbled_tail_is_cut_and_reported_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect(dir.path(), 1 << 20);
        let first = log.append(b"first", 0);
        let second = log.append(b"second", 0);
        log.commit(true).unwrap();
        drop(log);
        let file = segment_path(dir.path(), 0);
        let mut data = fs::read(&file).unwrap();
        // Garble the second payload: a checksum mismatch.
        let last = data.len() - 1;
        data[last] ^= 0xFF;
        fs::write(&file, &data).unwrap();
        let (mut log, opened, seen) = collect(dir.path(), 1 << 20);
        assert_eq!(seen, vec![(first, b"first".to_vec())]);
        assert_eq!(opened.damage.len(), 1);
        assert_eq!(opened.damage[0].offset, second);
        assert_eq!(opened.damage[0].reason, "checksum mismatch");
        // Writing resumes where the valid data ends.
        assert_eq!(log.append(b"third", 0), second);
        log.commit(true).unwrap();
        // A torn write: half a frame at the end.
        let mut data = fs::read(&file).unwrap();
        data.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&file, &data).unwrap();
        drop(log);
        let (_, opened, seen) = collect(dir.path(), 1 << 20);
        assert_eq!(seen.len(), 2);
        assert_eq!(opened.damage[0].reason, "partial frame header (torn write)");
        assert_eq!(fs::read(&file).unwrap().len(), data.len() - 6);
    }

    #[test]
    fn sealed_segments_go_only_when_every_key_is_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect(dir.path(), 20);
        for key in [5, 3, 9, 12] {
            log.append(&[0; 16], key);
            log.commit(false).unwrap();
        }
        // Segments hold keys 5, 3, 9, 12 (active).
        assert_eq!(log.segments(), 5);
        assert_eq!(log.remove_below(6).unwrap(), 2);
        assert_eq!(log.remove_below(100).unwrap(), 2, "the active one stays");
        assert_eq!(log.segments(), 1);
        assert_eq!(segment_bases(dir.path()).unwrap(), vec![log.start()]);
    }

    #[test]
    fn a_failed_commit_leaves_no_partial_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect(dir.path(), 1 << 20);
        log.append(b"kept", 0);
        log.commit(false).unwrap();
        let end = log.end();
        // A read-only handle makes the write fail, as a full disk would.
        log.active = File::open(segment_path(dir.path(), 0)).unwrap();
        log.append(b"lost", 0);
        assert!(log.commit(false).is_err());
        assert_eq!(log.end(), end);
        drop(log);
        let (_, opened, seen) = collect(dir.path(), 1 << 20);
        assert_eq!(seen.len(), 1);
        assert!(opened.damage.is_empty());
    }
}

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
//! With direct I/O (the ingest log's records, `log.direct_io`), frames are written with
//! `O_DIRECT`, straight from an aligned buffer to the disk: no copy into the page cache, which
//! cost a fifth of the CPU of a loaded pipeline. Direct writes cover whole 4 KiB blocks, so each
//! write starts at the block where the last one ended (rewriting its committed bytes unchanged)
//! and the file ends in zero padding up to the block boundary until the next write, a roll or
//! the next open cuts it. A zero tail shorter than a block is therefore padding, not damage.
//!
//! Each segment remembers the largest *key* of its frames (a caller-chosen number, e.g. the
//! position of the last span record a journal decision refers to), so that [`SegmentLog::remove_below`]
//! can delete whole sealed segments that nothing needs any more.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aligned_vec::{AVec, ConstAlign};

/// Bytes before each payload: length and checksum.
pub const FRAME_HEADER: u64 = 8;

/// Frames larger than this are taken for damage: no record comes near it.
const MAX_FRAME: u32 = 1 << 30;

const SUFFIX: &str = "seg";

/// Direct I/O writes whole blocks of this size, from memory and at file offsets aligned to it
/// (4 KiB suits disks with 512-byte and 4 KiB sectors alike).
const BLOCK: usize = 4096;

/// Frames waiting to be written, in memory aligned for direct I/O.
type Buffer = AVec<u8, ConstAlign<BLOCK>>;

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
    /// Frames appended but not yet written to the file, after `written` bytes that are: with
    /// direct I/O, the committed part of the file's last block, which the next write rewrites.
    pending: Buffer,
    written: usize,
    /// Whether the active file is open with `O_DIRECT`.
    direct: bool,
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
        direct: bool,
        mut visit: impl FnMut(u64, &[u8]) -> u64,
    ) -> io::Result<(Self, Opened)> {
        fs::create_dir_all(dir)?;
        let mut opened = Opened::default();
        let mut segments = Vec::new();
        let mut last_block = Vec::new();
        for base in segment_bases(dir)? {
            let path = segment_path(dir, base);
            let data = fs::read(&path)?;
            let (valid, max_key, frames) = scan(base, &data, &mut visit);
            opened.frames += frames;
            let rest = &data[valid as usize..];
            if !rest.is_empty() {
                if !is_padding(rest) {
                    opened.damage.push(Damage {
                        file: path.clone(),
                        offset: valid,
                        bytes: rest.len() as u64,
                        reason: damage_reason(rest),
                    });
                }
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid)?;
                file.sync_all()?;
            }
            let block_start = valid as usize / BLOCK * BLOCK;
            last_block = data[block_start..valid as usize].to_vec();
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
        let (active, direct) = open_active(&segment_path(dir, active_base), direct)?;
        sync_dir(dir)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            sealed: segments,
            active,
            active_base,
            active_len,
            active_max_key,
            pending: Buffer::with_capacity(BLOCK, 1 << 20),
            written: 0,
            direct,
        };
        if direct {
            log.pending.extend_from_slice(&last_block);
            log.written = last_block.len();
        }
        Ok((log, opened))
    }

    /// Frames `payload` after the last one and returns its position. Nothing reaches the file
    /// before [`commit`](Self::commit).
    pub fn append(&mut self, payload: &[u8], key: u64) -> u64 {
        let position = self.active_base + self.active_len;
        let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
        let len_bytes = len.to_le_bytes();
        let crc = checksum(len_bytes, payload);
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
        let committed = self.active_len - (self.pending.len() - self.written) as u64;
        let result = self.write_pending(sync);
        if result.is_err() {
            self.pending.truncate(self.written);
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
        if self.pending.len() > self.written {
            if self.direct {
                self.write_direct()?;
            } else {
                let new = &self.pending[self.written..];
                self.active
                    .write_all_at(new, self.active_len - new.len() as u64)?;
                self.pending.clear();
            }
        }
        if sync {
            self.active.sync_data()?;
        }
        Ok(())
    }

    /// Writes the pending blocks, the last one padded with zeros, and keeps the committed part
    /// of the last block for the next write.
    fn write_direct(&mut self) -> io::Result<()> {
        let len = self.pending.len();
        let start = self.active_len - len as u64;
        self.pending.resize(len.next_multiple_of(BLOCK), 0);
        let result = self.active.write_all_at(&self.pending, start);
        self.pending.truncate(len);
        result?;
        let keep = len % BLOCK;
        self.pending.copy_within(len - keep.., 0);
        self.pending.truncate(keep);
        self.written = keep;
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
        if self.direct {
            // The sealed file ends at its last frame, without padding (should the cut not
            // survive a power loss, the next open cuts the padding again).
            self.active.set_len(self.active_len)?;
        }
        if !sync {
            self.active.sync_data()?;
        }
        let base = self.active_base + self.active_len;
        let (file, direct) = open_active(&segment_path(&self.dir, base), self.direct)?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.active, file);
        drop(old);
        self.direct = direct;
        self.pending.clear();
        self.written = 0;
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
    let (len, crc) = frame_header(header.try_into().ok()?)?;
    let payload = data.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len as usize)?;
    (checksum(len.to_le_bytes(), payload) == crc).then_some(payload)
}

/// A frame header's payload length and checksum; `None` for an impossible length.
pub(super) fn frame_header(header: [u8; FRAME_HEADER as usize]) -> Option<(u32, u32)> {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    (len <= MAX_FRAME).then_some((len, u32::from_le_bytes([c0, c1, c2, c3])))
}

/// The checksum a frame header carries: CRC32C of the length bytes and the payload.
pub(super) fn checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
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

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SUFFIX}"))
}

/// Opens the active segment for writing, with `O_DIRECT` if `direct` and the filesystem takes
/// it (some FUSE and network filesystems refuse it); returns whether it did.
fn open_active(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    if direct {
        match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(),
                    "the filesystem refuses direct I/O; writing the log through the page cache");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((options.open(path)?, false))
}

/// Whether the bytes after a segment's last frame are the zero padding of a direct write.
fn is_padding(rest: &[u8]) -> bool {
    rest.len() < BLOCK && rest.iter().all(|&b| b == 0)
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
        collect_with(dir, segment_bytes, false)
    }

    fn collect_with(
        dir: &Path,
        segment_bytes: u64,
        direct: bool,
    ) -> (SegmentLog, Opened, Vec<(u64, Vec<u8>)>) {
        let mut seen = Vec::new();
        let (log, opened) = SegmentLog::open(dir, segment_bytes, direct, |p, payload| {
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

    /// Frames of sizes that straddle block boundaries, committed one by one: each direct write
    /// rewrites the block the previous one ended in.
    fn write_frames(log: &mut SegmentLog, count: u8) -> Vec<(u64, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let payload = vec![i; 700 + 997 * usize::from(i % 7)];
                let p = log.append(&payload, u64::from(i));
                log.commit(i % 3 == 0).unwrap();
                (p, payload)
            })
            .collect()
    }

    /// Reopens the log (through the page cache) and checks it holds exactly `frames`, undamaged.
    fn assert_reopens_with(dir: &Path, segment_bytes: u64, frames: &[(u64, Vec<u8>)]) -> u64 {
        let (log, opened, seen) = collect_with(dir, segment_bytes, false);
        assert_eq!(seen, frames);
        assert!(opened.damage.is_empty(), "{:?}", opened.damage);
        log.end()
    }

    #[test]
    fn direct_writes_survive_reopen_and_their_padding_is_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect_with(dir.path(), 1 << 20, true);
        assert!(log.direct, "the test directory's filesystem takes O_DIRECT");
        let written = write_frames(&mut log, 40);
        let end = log.end();
        drop(log);
        let file = segment_path(dir.path(), 0);
        let on_disk = fs::metadata(&file).unwrap().len();
        assert_eq!(on_disk % BLOCK as u64, 0, "whole blocks were written");
        assert!(on_disk > end, "the last block is padded");
        let (mut log, opened, seen) = collect_with(dir.path(), 1 << 20, true);
        assert_eq!(seen, written);
        assert!(opened.damage.is_empty(), "{:?}", opened.damage);
        assert_eq!(
            fs::metadata(&file).unwrap().len(),
            end,
            "padding cut at open"
        );
        // Writing resumes inside the last block without disturbing its committed frames.
        let more = write_frames(&mut log, 5);
        drop(log);
        assert_reopens_with(dir.path(), 1 << 20, &[written, more].concat());
    }

    #[test]
    fn direct_segments_are_sealed_at_their_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect_with(dir.path(), 10_000, true);
        let written = write_frames(&mut log, 30);
        assert!(log.segments() > 3);
        let end = log.end();
        let bases = segment_bases(dir.path()).unwrap();
        for pair in bases.windows(2) {
            let len = fs::metadata(segment_path(dir.path(), pair[0]))
                .unwrap()
                .len();
            assert_eq!(pair[0] + len, pair[1], "sealed without padding");
        }
        drop(log);
        assert_eq!(assert_reopens_with(dir.path(), 10_000, &written), end);
    }

    #[test]
    fn a_failed_direct_commit_keeps_the_committed_block() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = collect_with(dir.path(), 1 << 20, true);
        let kept = write_frames(&mut log, 3);
        let end = log.end();
        let path = segment_path(dir.path(), 0);
        log.active = File::open(&path).unwrap();
        log.append(b"lost", 0);
        assert!(log.commit(false).is_err());
        assert_eq!(log.end(), end);
        log.active = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let again = write_frames(&mut log, 2);
        drop(log);
        assert_reopens_with(dir.path(), 1 << 20, &[kept, again].concat());
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

//! Reads single span records back by position: the assembler keeps no released span in memory
//! and reads a trace's earlier spans from here when late spans make its next revision.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::segment::{self, FRAME_HEADER};

/// Random access to the frames of one segmented log directory.
///
/// Opened files and the list of segments are cached: a new segment is looked for only when a
/// position lies past the newest one known.
pub struct FrameReader {
    dir: PathBuf,
    bases: Vec<u64>,
    open: Option<(u64, File)>,
}

impl FrameReader {
    /// A reader of the segments in `dir` (as written by [`segment::SegmentLog`]).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            bases: Vec::new(),
            open: None,
        }
    }

    /// The payload of the frame at `position`, checksum verified.
    ///
    /// # Errors
    ///
    /// When no segment holds `position`, the file cannot be read, or the frame there is damaged
    /// (the message names the file and offset).
    pub fn read(&mut self, position: u64) -> io::Result<Vec<u8>> {
        let base = self.base_of(position)?;
        let offset = position - base;
        let file = self.file(base)?;
        let mut header = [0u8; FRAME_HEADER as usize];
        let mut payload = Vec::new();
        let read = file.read_exact_at(&mut header, offset).and_then(|()| {
            let (len, crc) = segment::frame_header(header).ok_or_else(|| damaged("length"))?;
            payload.resize(len as usize, 0);
            file.read_exact_at(&mut payload, offset + FRAME_HEADER)?;
            if segment::checksum(len.to_le_bytes(), &payload) == crc {
                Ok(())
            } else {
                Err(damaged("checksum"))
            }
        });
        read.map_err(|e| {
            let path = segment::segment_path(&self.dir, base);
            io::Error::new(
                e.kind(),
                format!("{} at offset {offset}: {e}", path.display()),
            )
        })?;
        Ok(payload)
    }

    /// The base of the segment holding `position`: the largest base not above it.
    fn base_of(&mut self, position: u64) -> io::Result<u64> {
        if self.bases.last().is_none_or(|&last| position >= last) {
            self.bases = segment::segment_bases(&self.dir)?;
        }
        let index = self.bases.partition_point(|&b| b <= position);
        index.checked_sub(1).map(|i| self.bases[i]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no segment holds position {position}",
                    self.dir.display()
                ),
            )
        })
    }

    fn file(&mut self, base: u64) -> io::Result<&File> {
        if self.open.as_ref().is_none_or(|(b, _)| *b != base) {
            let file = File::open(segment::segment_path(&self.dir, base))?;
            self.open = Some((base, file));
        }
        Ok(&self.open.as_ref().expect("just opened").1)
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("damaged frame ({what})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::segment::SegmentLog;

    #[test]
    fn reads_any_frame_by_position_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64, false, |p, _| p).unwrap();
        let mut reader = FrameReader::new(dir.path().to_path_buf());
        let mut written = Vec::new();
        for i in 0..12u8 {
            let payload = vec![i; 20 + usize::from(i)];
            let position = log.append(&payload, 0);
            log.commit(false).unwrap();
            // Read right after writing, while new segments keep appearing.
            assert_eq!(reader.read(position).unwrap(), payload);
            written.push((position, payload));
        }
        assert!(log.segments() > 3, "the frames span several segments");
        for (position, payload) in written.iter().rev() {
            assert_eq!(&reader.read(*position).unwrap(), payload);
        }
    }

    #[test]
    fn a_damaged_frame_or_a_missing_segment_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, false, |p, _| p).unwrap();
        let first = log.append(b"first record", 0);
        let second = log.append(b"second record", 0);
        log.commit(false).unwrap();
        let path = segment::segment_path(dir.path(), 0);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, data).unwrap();

        let mut reader = FrameReader::new(dir.path().to_path_buf());
        assert_eq!(reader.read(first).unwrap(), b"first record");
        let e = reader.read(second).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("damaged frame (checksum)"), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let e = FrameReader::new(empty.path().to_path_buf())
            .read(0)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}

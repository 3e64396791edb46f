//! Replay after a restart: the span records from the checkpoint on, with the journal's decisions
//! applied between them at the positions they were taken, rebuild the assembler's state and the
//! revisions some sink had not yet made durable.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use super::commit::SinkMask;
use super::journal::Decision;
use super::segment;

/// What is left to replay.
pub struct Replay {
    records_dir: PathBuf,
    /// Segments of the span-record log, by base position.
    bases: VecDeque<u64>,
    /// Where replay starts.
    pub from: u64,
    /// Journal decisions not applied yet, with their positions.
    decisions: VecDeque<(u64, Decision)>,
    /// Per sink, the releases its manifest holds.
    committed: Vec<HashSet<u64>>,
    /// The position after the last record.
    pub end: u64,
}

impl Replay {
    /// Replay of the records in `records_dir` from `from`.
    pub fn new(
        records_dir: PathBuf,
        bases: Vec<u64>,
        from: u64,
        decisions: Vec<(u64, Decision)>,
        committed: Vec<HashSet<u64>>,
        end: u64,
    ) -> Self {
        // Segments ending before `from` hold nothing to replay.
        let first = bases.iter().rposition(|b| *b <= from).unwrap_or(0);
        Self {
            records_dir,
            bases: bases[first..].iter().copied().collect(),
            from,
            decisions: decisions.into(),
            committed,
            end,
        }
    }

    /// The next segment's records from `from` to `end`, read on a blocking thread; `None` at the
    /// end. Records the writer appends meanwhile (after `end`) reach the assembler the live way.
    ///
    /// # Errors
    ///
    /// When a segment cannot be read.
    pub async fn next_segment(&mut self) -> std::io::Result<Option<Vec<(u64, Vec<u8>)>>> {
        let Some(base) = self.bases.pop_front() else {
            return Ok(None);
        };
        let (dir, from, end) = (self.records_dir.clone(), self.from, self.end);
        tokio::task::spawn_blocking(move || segment::read_segment(&dir, base, from..end))
            .await
            .expect("reading a segment does not panic")
            .map(Some)
    }

    /// The decisions to apply before the record at `position` (all of them with `None`).
    pub fn due(&mut self, position: Option<u64>) -> Vec<(u64, Decision)> {
        let count = self
            .decisions
            .iter()
            .take_while(|(_, d)| position.is_none_or(|p| d.upto <= p))
            .count();
        self.decisions.drain(..count).collect()
    }

    /// The sinks whose manifest lacks `release`.
    pub fn missing(&self, release: u64) -> SinkMask {
        self.committed
            .iter()
            .enumerate()
            .filter(|(_, held)| !held.contains(&release))
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }
}

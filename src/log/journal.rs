//! The decision journal: every release and forget of the assembler, in order, with the log
//! position it happened at. Replay applies them at the same points, so a revision rebuilt after a
//! crash has exactly the spans it had before, under the same revision number; a revision is
//! identified by the position of its release decision.

use std::io;

use bytes::Bytes;
use prost::Message;

use super::proto::{Decision as Stored, decision};
use super::segment::SegmentLog;
use crate::assemble::ReleaseReason;
use crate::model::TraceId;

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The trace.
    pub trace_id: TraceId,
    /// What happened.
    pub kind: Kind,
    /// It applies before the first span record at or after this position.
    pub upto: u64,
}

/// What the assembler did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Released revision `revision` for `reason`.
    Release {
        /// The revision number.
        revision: u32,
        /// Why.
        reason: ReleaseReason,
    },
    /// Stopped holding the trace.
    Forget,
}

impl Decision {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, revision, reason) = match self.kind {
            Kind::Release { revision, reason } => {
                (decision::Kind::Release, revision, reason_to_proto(reason))
            }
            Kind::Forget => (decision::Kind::Forget, 0, decision::Reason::Unspecified),
        };
        Stored {
            trace_id: Bytes::copy_from_slice(&self.trace_id.0),
            kind: kind as i32,
            revision,
            reason: reason as i32,
            upto: self.upto,
        }
        .encode_to_vec()
    }

    /// Reads a stored decision; `None` when it is not one this version understands.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let d = Stored::decode(payload).ok()?;
        let trace_id = TraceId::from_slice(&d.trace_id)?;
        let kind = match decision::Kind::try_from(d.kind).ok()? {
            decision::Kind::Release => Kind::Release {
                revision: d.revision,
                reason: reason_from_proto(decision::Reason::try_from(d.reason).ok()?)?,
            },
            decision::Kind::Forget => Kind::Forget,
            decision::Kind::Unspecified => return None,
        };
        Some(Self {
            trace_id,
            kind,
            upto: d.upto,
        })
    }
}

/// Appends decisions and makes them durable; returns their positions.
///
/// # Errors
///
/// The write or sync error; nothing of this call counts as written.
pub fn record(log: &mut SegmentLog, decisions: &[Decision], sync: bool) -> io::Result<Vec<u64>> {
    let positions = decisions
        .iter()
        .map(|d| log.append(&d.encode(), d.upto))
        .collect();
    log.commit(sync)?;
    Ok(positions)
}

fn reason_to_proto(r: ReleaseReason) -> decision::Reason {
    match r {
        ReleaseReason::Complete => decision::Reason::Complete,
        ReleaseReason::MaxAge => decision::Reason::MaxAge,
        ReleaseReason::Size => decision::Reason::Size,
        ReleaseReason::Memory => decision::Reason::Memory,
        ReleaseReason::Shutdown => decision::Reason::Shutdown,
        ReleaseReason::LogSpace => decision::Reason::LogSpace,
    }
}

fn reason_from_proto(r: decision::Reason) -> Option<ReleaseReason> {
    Some(match r {
        decision::Reason::Complete => ReleaseReason::Complete,
        decision::Reason::MaxAge => ReleaseReason::MaxAge,
        decision::Reason::Size => ReleaseReason::Size,
        decision::Reason::Memory => ReleaseReason::Memory,
        decision::Reason::Shutdown => ReleaseReason::Shutdown,
        decision::Reason::LogSpace => ReleaseReason::LogSpace,
        decision::Reason::Unspecified => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip() {
        for kind in [
            Kind::Forget,
            Kind::Release {
                revision: 3,
                reason: ReleaseReason::LogSpace,
            },
        ] {
            let d = Decision {
                trace_id: TraceId([7; 16]),
                kind,
                upto: 12345,
            };
            assert_eq!(Decision::decode(&d.encode()), Some(d));
        }
        assert_eq!(Decision::decode(b"\xff\xff"), None);
    }
}

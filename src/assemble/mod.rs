//! Trace assembly: the spans that many services send for one trace id, in any order and across
//! many requests, become one trace, released once it is complete.
//!
//! Guarantees:
//! - Spans are grouped by trace id across requests, receivers and services, and deduplicated by
//!   span id: a re-sent identical span is only counted; a changed one replaces the earlier copy
//!   (as MLflow's upsert does).
//! - A trace is released when its root has arrived and no span of it arrived for `idle_timeout`
//!   (reason `complete`); at `max_trace_age` in any case (`max_age`, flagged partial); at once when
//!   it reaches `max_spans_per_trace` or `max_trace_bytes` (`size`, flagged, and it keeps
//!   accumulating into the next revision).
//! - A released trace is kept for `late_span_window`: a span arriving then produces the next
//!   revision, holding every span of the trace; consumers keep the highest revision. After the
//!   window a span starts a fresh trace, flagged partial unless its root arrives too.
//! - Held bytes stay under `max_in_flight_bytes`: released traces are forgotten first, then the
//!   oldest open traces are released early (`memory`, flagged). Nothing accepted is dropped; when
//!   releases cannot keep up, the pipeline stops reading its queue and receivers push back.
//! - Every deadline sits in a min-heap, so releasing costs O(log n) per trace and nothing scans
//!   the open traces on a timer.
//!
//! Early release when every known parent has arrived and the root has ended is not done: a
//! service's spans can arrive seconds after the root's (batch exporters flush on their own
//! schedule), and releasing early would turn most distributed traces into two revisions.
//!
//! On shutdown every trace with unreleased spans is released (`shutdown`, flagged). State is
//! keyed by trace id and span id only, so the ingest log can rebuild it by replay after a crash.

mod assembler;
mod config;

pub use assembler::{Assembler, Counts, Records, Release, ReleaseReason};
pub use config::AssembleConfig;

#[cfg(test)]
mod tests;

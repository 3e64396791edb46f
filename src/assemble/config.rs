//! `pipelines.<name>.assemble` in the pipeline file.

use serde::Deserialize;

use crate::config::units::{ByteSize, HumanDuration};

/// When traces are released, and how much may be held.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AssembleConfig {
    /// A trace whose root has arrived is released once no span of it arrived for this long.
    /// Long enough for a service's batch exporter to flush after the root's (OpenTelemetry SDKs
    /// flush every 5 s by default), short enough that traces appear promptly.
    pub idle_timeout: HumanDuration,
    /// A trace is released at this age even without its root (flagged partial); the next spans
    /// make a new revision.
    pub max_trace_age: HumanDuration,
    /// A trace with this many spans is released early (flagged) and keeps accumulating.
    pub max_spans_per_trace: usize,
    /// A trace holding this many bytes is released early (flagged) and keeps accumulating.
    pub max_trace_bytes: ByteSize,
    /// How long a released trace is kept so that late spans produce a complete new revision.
    pub late_span_window: HumanDuration,
    /// Most bytes of spans held at once; beyond it released traces are forgotten first, then
    /// the oldest open traces are released early (flagged).
    pub max_in_flight_bytes: ByteSize,
    /// Most of those bytes spent on released traces kept for `late_span_window`; beyond it the
    /// oldest released traces are forgotten (a late span of theirs starts a new trace, flagged
    /// partial). Unset, released traces may fill all of `max_in_flight_bytes`. A small bound
    /// saves CPU under load, since a large heap of held spans slows every stage (README, "Where
    /// the time goes"), at the cost of shorter effective late-span windows.
    pub max_released_bytes: Option<ByteSize>,
}

impl Default for AssembleConfig {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            idle_timeout: HumanDuration(Duration::from_secs(5)),
            max_trace_age: HumanDuration(Duration::from_secs(300)),
            max_spans_per_trace: 100_000,
            max_trace_bytes: ByteSize::mib(64),
            late_span_window: HumanDuration(Duration::from_secs(300)),
            max_in_flight_bytes: ByteSize::mib(256),
            max_released_bytes: None,
        }
    }
}

//! `sample`: keeps or drops whole traces, after assembly, so a kept trace is always complete.
//!
//! ```yaml
//! - type: sample
//!   keep: [{status: ERROR}, {min_duration: 10s}]   # always kept
//!   rate: 0.1                                       # of the other traces, this fraction
//!   max_traces_per_second: 100                      # and at most this many per second
//! ```
//!
//! The rate decision depends on the trace id alone, the way OpenTelemetry's consistent
//! probability sampling does it: the low 56 bits of the id (random for W3C ids) must be at least
//! `(1 - rate) * 2^56`. Every instance and every revision of a trace decides alike, and a trace
//! kept at rate 0.1 is also kept at 0.2. The per-second cap applies to first revisions only: a
//! later revision holds every span of its trace, so letting it through never leaves a consumer
//! with less than the newest revision it was sent.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;

use super::Verdict;
use super::condition::Conditions;
use crate::model::{AssembledTrace, TraceId};

/// `type: sample` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Traces with a span matching one of these are always kept.
    #[serde(default)]
    pub keep: Conditions,
    /// Fraction of the other traces kept, 0 to 1.
    #[serde(default = "one")]
    pub rate: f64,
    /// Most first revisions kept per second (after `rate`); always-kept traces do not count.
    pub max_traces_per_second: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl SampleConfig {
    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.rate) {
            problems.push(format!("rate {} is not between 0 and 1", self.rate));
        }
        if self
            .max_traces_per_second
            .is_some_and(|r| r.is_nan() || r <= 0.0)
        {
            problems.push("max_traces_per_second must be above 0".into());
        }
        problems
    }
}

/// The running sampler: the config and the token bucket of the per-second cap, which copies
/// share, so that the cap holds across a pipeline's workers.
#[derive(Clone, Debug)]
pub struct Sampler {
    keep: Conditions,
    threshold: u64,
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl Sampler {
    /// Builds the sampler; the bucket starts full.
    pub fn new(config: SampleConfig, now: Instant) -> Self {
        Self {
            keep: config.keep,
            threshold: threshold(config.rate),
            bucket: config.max_traces_per_second.map(|rate| {
                Arc::new(Mutex::new(Bucket {
                    rate,
                    tokens: rate.max(1.0),
                    at: now,
                }))
            }),
        }
    }

    /// Decides for `trace`.
    pub fn apply(&self, trace: &AssembledTrace, now: Instant) -> Verdict {
        if self.keep.any_span(trace) {
            return Verdict::Keep;
        }
        if randomness(&trace.release.trace_id) < self.threshold {
            return Verdict::Drop("sampled_out");
        }
        let first = trace.release.revision == 1;
        let limited = first
            && self
                .bucket
                .as_ref()
                .is_some_and(|b| !b.lock().unwrap_or_else(PoisonError::into_inner).take(now));
        if limited {
            Verdict::Drop("rate_limited")
        } else {
            Verdict::Keep
        }
    }
}

/// Traces whose randomness is below this are dropped.
fn threshold(rate: f64) -> u64 {
    const MAX: f64 = (1u64 << 56) as f64;
    ((1.0 - rate) * MAX).round() as u64
}

/// The low 56 bits of the trace id.
fn randomness(id: &TraceId) -> u64 {
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&id.0[9..]);
    u64::from_be_bytes(low)
}

/// A token bucket holding at most one second of tokens.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stages::tests::{assembled_with_id, span};

    fn sampler(yaml: &str) -> Sampler {
        Sampler::new(serde_saphyr::from_str(yaml).unwrap(), Instant::now())
    }

    fn id(n: u64) -> TraceId {
        // Spread over the whole 56-bit space, as random ids are.
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        TraceId(bytes)
    }

    fn kept(s: &Sampler, n: u64) -> bool {
        let t = assembled_with_id(id(n), 1, vec![span("root", 0, None)]);
        s.apply(&t, Instant::now()) == Verdict::Keep
    }

    #[test]
    fn the_rate_keeps_about_that_fraction_and_the_same_ids_on_every_instance() {
        let (a, b) = (sampler("rate: 0.25"), sampler("rate: 0.25"));
        let kept_a: Vec<u64> = (0..4000).filter(|n| kept(&a, *n)).collect();
        let kept_b: Vec<u64> = (0..4000).filter(|n| kept(&b, *n)).collect();
        assert_eq!(kept_a, kept_b, "the decision depends on the trace id only");
        assert!((900..1100).contains(&kept_a.len()), "{}", kept_a.len());
        // Consistent: what 0.25 keeps, 0.5 keeps too.
        let half = sampler("rate: 0.5");
        assert!(kept_a.iter().all(|n| kept(&half, *n)));
        assert!((0..100).all(|n| kept(&sampler("rate: 1"), n)));
        assert!((0..100).all(|n| !kept(&sampler("rate: 0"), n)));
    }

    #[test]
    fn keep_rules_win_over_the_rate() {
        let s = sampler("rate: 0\nkeep: [{status: ERROR}]");
        let ok = assembled_with_id(id(1), 1, vec![span("root", 0, None)]);
        let failed = assembled_with_id(id(2), 1, vec![span("root", 0, None).error()]);
        assert_eq!(s.apply(&ok, Instant::now()), Verdict::Drop("sampled_out"));
        assert_eq!(s.apply(&failed, Instant::now()), Verdict::Keep);
    }

    #[test]
    fn the_cap_limits_first_revisions_per_second_and_refills() {
        let s = sampler("max_traces_per_second: 2");
        let start = Instant::now();
        let first = |n| assembled_with_id(id(n), 1, vec![span("root", 0, None)]);
        let decisions: Vec<Verdict> = (0..4).map(|n| s.apply(&first(n), start)).collect();
        assert_eq!(
            decisions,
            [
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Drop("rate_limited"),
                Verdict::Drop("rate_limited")
            ]
        );
        let later = assembled_with_id(id(9), 2, vec![span("root", 0, None)]);
        assert_eq!(s.apply(&later, start), Verdict::Keep, "revision 2 passes");
        let next = start + Duration::from_millis(500);
        assert_eq!(s.apply(&first(5), next), Verdict::Keep, "one token back");
    }

    #[test]
    fn copies_share_the_cap() {
        // Each worker of a pipeline runs a copy of the stages; the cap holds for all of them.
        let (a, start) = (sampler("max_traces_per_second: 2"), Instant::now());
        let b = a.clone();
        let first = |n| assembled_with_id(id(n), 1, vec![span("root", 0, None)]);
        let kept = [&a, &b, &a, &b]
            .iter()
            .zip(0..)
            .filter(|(s, n)| s.apply(&first(*n), start) == Verdict::Keep)
            .count();
        assert_eq!(kept, 2);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let c: SampleConfig = serde_saphyr::from_str("rate: 1.5").unwrap();
        assert!(c.problems()[0].contains("between 0 and 1"));
        let c: SampleConfig = serde_saphyr::from_str("max_traces_per_second: 0").unwrap();
        assert!(c.problems()[0].contains("above 0"));
    }
}

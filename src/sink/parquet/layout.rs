//! Where a trace's rows go: its Hive-style partition directory, and the file names derived from
//! what a file holds.

use std::fmt::Write as _;
use std::hash::Hasher as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use twox_hash::XxHash64;

use crate::model::{AssembledTrace, TraceId};

/// A partition column, in the order given by `partition_by`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKey {
    /// `date=YYYY-MM-DD` of `request_time`, UTC.
    Date,
    /// `hour=HH` of `request_time`, UTC.
    Hour,
    /// `experiment_id=…`.
    ExperimentId,
}

/// The partition directory of `trace`, relative to a table's root (`date=2026-11-21/…`).
pub fn partition(keys: &[PartitionKey], trace: &AssembledTrace) -> String {
    let info = &trace.trace.info;
    let time = UNIX_EPOCH + Duration::from_millis(info.request_time_ms);
    let stamp = humantime::format_rfc3339_seconds(time).to_string();
    let mut dir = String::new();
    for key in keys {
        if !dir.is_empty() {
            dir.push('/');
        }
        match key {
            PartitionKey::Date => write!(dir, "date={}", &stamp[..10]),
            PartitionKey::Hour => write!(dir, "hour={}", &stamp[11..13]),
            PartitionKey::ExperimentId => write!(
                dir,
                "experiment_id={}",
                escape(&info.trace_location.mlflow_experiment.experiment_id)
            ),
        }
        .expect("writing to a String");
    }
    dir
}

/// Hive's escaping of partition values: bytes outside `[A-Za-z0-9._-]` become `%XX`, so a value
/// can never add a directory level or hide the file (a leading `.`/`_` is escaped too).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, b) in value.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'.' | b'_')) || b == b'-';
        if plain {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("writing to a String");
        }
    }
    if out.is_empty() {
        out.push_str("__EMPTY__");
    }
    out
}

/// Names a file after what it holds: the same trace revisions in the same partition always give
/// the same name, so a replay overwrites a file instead of adding a duplicate.
pub struct FileName(XxHash64);

impl FileName {
    /// Starts the name of a file in `partition`.
    pub fn new(partition: &str) -> Self {
        let mut h = XxHash64::with_seed(0);
        h.write(partition.as_bytes());
        Self(h)
    }

    /// Adds a trace revision written to the file.
    pub fn add(&mut self, trace_id: &TraceId, revision: u32) {
        self.0.write(&trace_id.0);
        self.0.write(&revision.to_le_bytes());
    }

    /// `part-<16 hex>.parquet`.
    pub fn finish(&self) -> String {
        format!("part-{:016x}.parquet", self.0.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_values_inside_one_directory() {
        assert_eq!(escape("123"), "123");
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape("../x"), "%2E.%2Fx");
        assert_eq!(escape("_tmp"), "%5Ftmp");
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(escape(""), "__EMPTY__");
    }

    #[test]
    fn names_depend_on_partition_and_content_only() {
        let name = |partition: &str, revs: &[(u8, u32)]| {
            let mut n = FileName::new(partition);
            for (id, rev) in revs {
                n.add(&TraceId([*id; 16]), *rev);
            }
            n.finish()
        };
        let a = name("date=2026-11-21", &[(1, 1), (2, 1)]);
        assert_eq!(a, name("date=2026-11-21", &[(1, 1), (2, 1)]));
        assert_ne!(a, name("date=2026-11-22", &[(1, 1), (2, 1)]));
        assert_ne!(a, name("date=2026-11-21", &[(1, 2), (2, 1)]));
        assert!(a.starts_with("part-") && a.ends_with(".parquet") && a.len() == 29);
    }
}

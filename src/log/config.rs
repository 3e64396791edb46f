//! `pipelines.<name>.log` in the pipeline file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use crate::config::units::ByteSize;

/// Where and how a pipeline's ingest log is kept.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The log's directory; default `./data/log/<pipeline>`. One process at a time may use it.
    pub dir: Option<PathBuf>,
    /// When appended records are made durable before clients are answered.
    pub fsync: Fsync,
    /// A segment file is closed and a new one started at this size; whole segments are deleted
    /// once every sink holds what they fed.
    pub segment_size: ByteSize,
    /// Most bytes of span records kept. When a sink is down the log grows to this bound, then
    /// receivers answer with retryable codes instead of dropping data or filling the disk.
    pub max_log_bytes: ByteSize,
    /// Write span records with direct I/O (`O_DIRECT`), bypassing the page cache: the kernel
    /// no longer copies every byte, which saved a quarter of the CPU of a loaded pipeline. Falls
    /// back to ordinary writes on filesystems that refuse direct I/O.
    pub direct_io: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            dir: None,
            fsync: Fsync::Always,
            segment_size: ByteSize::mib(64),
            max_log_bytes: ByteSize(4 << 30),
            direct_io: true,
        }
    }
}

impl LogConfig {
    /// The directory of pipeline `pipeline`'s log.
    pub fn dir_for(&self, pipeline: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join("log").join(pipeline))
    }
}

/// When the ingest log calls `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before every answer to a client. Requests that arrive while a sync runs share the next
    /// one (group commit), so the cost per request falls as load rises. Acknowledged spans
    /// survive power loss.
    Always,
    /// At most this often; clients are answered once their spans are written to the OS. A crash
    /// of traceloom loses nothing; a power loss may lose the last interval.
    Interval(Duration),
    /// Never; the OS writes back when it likes. For benchmarks and throwaway setups.
    Never,
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Never => f.write_str("never"),
            Fsync::Interval(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => humantime::parse_duration(other)
                .ok()
                .filter(|d| !d.is_zero())
                .map(Fsync::Interval)
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "{other:?} is not an fsync policy: use always, never, or an interval such as 100ms"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LogConfig, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn fsync_policies_parse_and_others_are_refused_with_the_choices() {
        assert_eq!(parse("fsync: always").unwrap().fsync, Fsync::Always);
        assert_eq!(parse("fsync: never").unwrap().fsync, Fsync::Never);
        assert_eq!(
            parse("fsync: 100ms").unwrap().fsync,
            Fsync::Interval(Duration::from_millis(100))
        );
        let err = parse("fsync: sometimes").unwrap_err();
        assert!(err.contains("use always, never, or an interval"), "{err}");
        assert!(parse("fsync: 0s").is_err());
    }

    #[test]
    fn the_default_dir_is_per_pipeline_under_data() {
        let c = LogConfig::default();
        assert_eq!(c.dir_for("main"), Path::new("data/log/main"));
        assert_eq!(c.fsync, Fsync::Always);
    }
}

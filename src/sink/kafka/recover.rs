//! After a crash, which replayed revisions are already on the topic.
//!
//! The sink writes a revision to its manifest after the broker acknowledged it, so a crash in
//! between (or before the acknowledgement reached traceloom) leaves revisions on the topic that
//! replay would send again. Every message carries a `traceloom_release` header naming the ingest
//! log and the revision's position in it; at start the sink reads the topic back from the time of
//! the first replayed record (no revision replay sends was produced before it) and skips what it
//! finds there.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The header naming a message's revision: `<log id>/<position>`.
pub const RELEASE_HEADER: &str = "traceloom_release";

/// Clock difference allowed between a record's receive time and a message's timestamp.
const SKEW: Duration = Duration::from_secs(60);
/// Produce requests the crashed process had sent may still be in the broker's hands (a loaded
/// broker was seen appending one 1.6 s after the process died): read back only once no
/// partition's end has moved for this long…
const SETTLE: Duration = Duration::from_secs(2);
/// …or, when other producers keep the topic moving, after this long.
const MAX_SETTLE: Duration = Duration::from_secs(15);
/// How often the partition ends are looked at while settling.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Most time spent reading back.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Each partition's (low, high) watermarks once no high watermark has moved for [`SETTLE`]
/// (or [`MAX_SETTLE`] passed).
fn settled_ends(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> KafkaResult<Vec<(i64, i64)>> {
    let read = || -> KafkaResult<Vec<(i64, i64)>> {
        partitions
            .iter()
            .map(|p| consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)))
            .collect()
    };
    let started = Instant::now();
    let mut ends = read()?;
    let mut since = Instant::now();
    while since.elapsed() < SETTLE && started.elapsed() < MAX_SETTLE {
        std::thread::sleep(SETTLE_POLL);
        let now = read()?;
        if now != ends {
            ends = now;
            since = Instant::now();
        }
    }
    Ok(ends)
}

/// The header value for the revision at `position` of log `log_id`.
pub fn release_header(log_id: &str, position: u64) -> String {
    format!("{log_id}/{position}")
}

/// Positions of the revisions of log `log_id` found on `topic` in messages produced since
/// `since` (less a clock-skew margin). Blocking.
///
/// # Errors
///
/// When the topic cannot be read.
pub fn delivered_since(
    consumer: &ClientConfig,
    topic: &str,
    log_id: &str,
    since: SystemTime,
) -> KafkaResult<HashSet<u64>> {
    let consumer: BaseConsumer = consumer.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    let ends = settled_ends(&consumer, topic, &partitions)?;
    let from_ms = since
        .checked_sub(SKEW)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition_offset(topic, *p, Offset::Offset(from_ms))?;
    }
    // A broker that cannot look offsets up by time is read from the start.
    let starts = consumer
        .offsets_for_times(wanted, Duration::from_secs(10))
        .ok();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashSet::new();
    for (p, (low, high)) in partitions.iter().zip(ends) {
        let start = starts
            .as_ref()
            .and_then(|s| s.find_partition(topic, *p))
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(low);
        tracing::debug!(topic, partition = p, start, high, "reading the topic back");
        if start < high {
            assignment.add_partition_offset(topic, *p, Offset::Offset(start))?;
            remaining.insert((*p, high));
        }
    }
    let mut found = HashSet::new();
    if remaining.is_empty() {
        return Ok(found);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !remaining.is_empty() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                remaining.retain(|(q, _)| *q != p);
                continue;
            }
            Err(e) => return Err(e),
        };
        remaining.retain(|(p, high)| !(message.partition() == *p && message.offset() + 1 >= *high));
        let header = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == RELEASE_HEADER)
                .and_then(|h| h.value)
        });
        if let Some(position) = header
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix(log_id))
            .and_then(|v| v.strip_prefix('/'))
            .and_then(|v| v.parse().ok())
        {
            found.insert(position);
        }
    }
    if !remaining.is_empty() {
        tracing::warn!(
            topic,
            "reading the topic back timed out; some replayed revisions may be sent twice"
        );
    }
    Ok(found)
}

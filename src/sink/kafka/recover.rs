//! After a crash, which replayed revisions are already on the topic.
//!
//! The sink writes a revision to its manifest after the broker acknowledged it, so a crash in
//! between (or before the acknowledgement reached traceloom) leaves revisions on the topic that
//! replay would send again. Every message carries a `traceloom_release` header naming the ingest
//! log and the revision's position in it; at start the sink reads the topic back from the time of
//! the first replayed record (no revision replay sends was produced before it) and skips what it
//! finds there.
//!
//! Reading "to the end" needs care. The end a broker reports (the high watermark) may not yet
//! include the crashed process's last writes: tansu 0.6 leaves the last batch written to a
//! partition out of it until the next write, and any broker may still be appending a request the
//! dead process sent. So the sink first waits until no partition's end has moved for a moment,
//! then writes a **fence** to every partition — a tombstone (null value) with key
//! `traceloom-fence` and a `traceloom_fence` header naming the log — and reads each partition
//! up to its fence. Acknowledged with `acks=all`, the fence lands after everything the broker had
//! appended before it, and it makes those writes visible. Consumers skip fences as they skip any
//! tombstone.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The header naming a message's revision: `<log id>/<position>`.
pub const RELEASE_HEADER: &str = "traceloom_release";
/// The key of fence records.
pub const FENCE_KEY: &str = "traceloom-fence";
/// The header of fence records, naming the log whose restart wrote them.
pub const FENCE_HEADER: &str = "traceloom_fence";

/// The clients a read-back uses.
#[derive(Clone)]
pub struct Clients {
    /// Reads the topic.
    pub consumer: ClientConfig,
    /// Writes the fences (`acks=all`).
    pub fence: ClientConfig,
}

/// Clock difference allowed between a record's receive time and a message's timestamp.
const SKEW: Duration = Duration::from_secs(60);
/// Produce requests the crashed process had sent may still be in the broker's hands: fence and
/// read back only once no partition's end has moved for this long…
const SETTLE: Duration = Duration::from_secs(2);
/// …or, when other producers keep the topic moving, after this long.
const MAX_SETTLE: Duration = Duration::from_secs(15);
/// How often the partition ends are looked at while settling.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Most time spent reading back.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until no partition's high watermark has moved for [`SETTLE`] (or [`MAX_SETTLE`]
/// passed).
fn settled_ends(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) -> KafkaResult<()> {
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
    Ok(())
}

/// The header value for the revision at `position` of log `log_id`.
pub fn release_header(log_id: &str, position: u64) -> String {
    format!("{log_id}/{position}")
}

/// Positions of the revisions of log `log_id` found on `topic` in messages produced since
/// `since` (less a clock-skew margin), read up to a fence written to each partition.
///
/// # Errors
///
/// When the topic cannot be read or a fence cannot be written.
pub async fn delivered_since(
    clients: &Clients,
    topic: &str,
    log_id: &str,
    since: SystemTime,
) -> KafkaResult<HashSet<u64>> {
    let consumer: BaseConsumer = clients.consumer.create()?;
    let name = topic.to_string();
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let partitions = settled_partitions(&consumer, &name);
        (consumer, partitions)
    })
    .await
    .expect("settling does not panic");
    let fences = fence(&clients.fence, topic, &partitions?, log_id).await?;
    let (name, log) = (topic.to_string(), log_id.to_string());
    tokio::task::spawn_blocking(move || read_back(&consumer, &name, &log, since, &fences))
        .await
        .expect("reading back does not panic")
}

/// The topic's partitions, once their ends have settled.
fn settled_partitions(consumer: &BaseConsumer, topic: &str) -> KafkaResult<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    settled_ends(consumer, topic, &partitions)?;
    Ok(partitions)
}

/// Writes a fence to each partition; returns each fence's offset.
async fn fence(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    log_id: &str,
) -> KafkaResult<HashMap<i32, i64>> {
    let producer: FutureProducer = config.create()?;
    let mut offsets = HashMap::new();
    for &partition in partitions {
        let headers = OwnedHeaders::new().insert(Header {
            key: FENCE_HEADER,
            value: Some(log_id),
        });
        let record = FutureRecord::<str, [u8]>::to(topic)
            .partition(partition)
            .key(FENCE_KEY)
            .headers(headers);
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        offsets.insert(partition, delivery.offset);
    }
    Ok(offsets)
}

/// Reads each partition from the first message produced since `since` up to its fence.
fn read_back(
    consumer: &BaseConsumer,
    topic: &str,
    log_id: &str,
    since: SystemTime,
    fences: &HashMap<i32, i64>,
) -> KafkaResult<HashSet<u64>> {
    let from_ms = since
        .checked_sub(SKEW)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut wanted = TopicPartitionList::new();
    for p in fences.keys() {
        wanted.add_partition_offset(topic, *p, Offset::Offset(from_ms))?;
    }
    // A broker that cannot look offsets up by time is read from the start.
    let starts = consumer
        .offsets_for_times(wanted, Duration::from_secs(10))
        .ok();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for (p, fence) in fences {
        let start = starts
            .as_ref()
            .and_then(|s| s.find_partition(topic, *p))
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0 && o < fence)
            .unwrap_or(0);
        tracing::debug!(topic, partition = p, start, fence, "reading the topic back");
        if start < *fence {
            assignment.add_partition_offset(topic, *p, Offset::Offset(start))?;
            remaining.insert(*p, *fence);
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
            // The end of what the broker shows: with the fence written, nothing before it is
            // missing.
            Err(KafkaError::PartitionEOF(p)) => {
                remaining.remove(&p);
                continue;
            }
            Err(e) => return Err(e),
        };
        if remaining
            .get(&message.partition())
            .is_some_and(|fence| message.offset() + 1 >= *fence)
        {
            remaining.remove(&message.partition());
        }
        if let Some(position) = release_position(&message, log_id) {
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

/// The release position a message of log `log_id` carries, if it is one.
fn release_position(message: &impl Message, log_id: &str) -> Option<u64> {
    let header = message.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == RELEASE_HEADER)
            .and_then(|h| h.value)
    })?;
    std::str::from_utf8(header)
        .ok()?
        .strip_prefix(log_id)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

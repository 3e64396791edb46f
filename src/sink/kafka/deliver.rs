//! Delivery accounting: which parts of which trace revisions the broker has acknowledged, which
//! wait for a retry, and what each failure means.
//!
//! librdkafka reports every message exactly once, through [`Reports`]; each message carries a
//! [`Tag`] naming its revision and part. A revision is durable when all its parts are
//! acknowledged. A transient failure (timeout, broker down, leader change) schedules that part
//! again with exponential back-off; a permanent one (unknown topic, authorization, too large)
//! sends the whole revision to the dead-letter path. Reports from a producer that was replaced
//! after a fatal error carry an older generation and are ignored.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use super::message::Message;

/// Names one message: the producer generation that sent it, the revision, and the part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    /// Bumped each time the producer is rebuilt.
    pub generation: u32,
    /// The revision's id in [`InFlight`].
    pub id: u64,
    /// 0-based part index.
    pub part: usize,
}

/// One delivery report.
#[derive(Debug)]
pub struct Report {
    /// The message reported on.
    pub tag: Tag,
    /// `Ok` when the broker acknowledged it.
    pub result: Result<(), KafkaError>,
}

/// librdkafka's callbacks: delivery reports go to the sink's loop, client errors to the log.
pub struct Reports {
    tx: mpsc::UnboundedSender<Report>,
}

impl Reports {
    /// Callbacks feeding `tx`.
    pub fn new(tx: mpsc::UnboundedSender<Report>) -> Self {
        Self { tx }
    }
}

impl ClientContext for Reports {
    /// Connection errors repeat for as long as a broker is down, and librdkafka also logs them:
    /// they go to debug, and the sink's own rate-limited warnings and metrics tell the story.
    fn error(&self, error: KafkaError, reason: &str) {
        match Failure::of(&error) {
            Failure::Transient("transport") => tracing::debug!(%error, "kafka client: {reason}"),
            _ => tracing::warn!(%error, "kafka client: {reason}"),
        }
    }

    /// librdkafka's own log: its errors are ones it recovers from (a refused connection), so
    /// they are warnings here; its notices are debug detail.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(target: "librdkafka", "{facility}: {message}");
            }
            L::Notice | L::Info | L::Debug => {
                tracing::debug!(target: "librdkafka", "{facility}: {message}");
            }
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<Tag>) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        // The loop holds the receiver until every report is in; a send after it is gone only
        // happens while a replaced producer is dropped, whose reports are stale anyway.
        let _ = self.tx.send(Report { tag: *tag, result });
    }
}

/// What a failed delivery means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying; the metric label says why it failed.
    Transient(&'static str),
    /// Will fail again: dead-letter the revision.
    Permanent(&'static str),
    /// The producer is unusable (its idempotence state is lost or fenced) and must be
    /// replaced by a new one.
    Fatal,
}

impl Failure {
    /// Classifies a delivery error.
    pub fn of(error: &KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            // The broker no longer knows this producer's id, epoch or sequence (a broker that
            // lost its state, a fenced epoch): only a new producer id gets through.
            Some(
                C::Fatal
                | C::Fenced
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::InvalidProducerIdMapping
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber,
            ) => Self::Fatal,
            Some(C::MessageTimedOut | C::RequestTimedOut) => Self::Transient("timeout"),
            Some(C::QueueFull) => Self::Transient("queue_full"),
            Some(
                C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::NetworkException
                | C::PurgeInflight
                | C::PurgeQueue,
            ) => Self::Transient("transport"),
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Self::Permanent("too_large"),
            Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => {
                Self::Permanent("unknown_topic")
            }
            Some(
                C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication,
            ) => Self::Permanent("authorization"),
            Some(
                C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::PolicyViolation
                | C::InvalidRequiredAcks
                | C::UnsupportedForMessageFormat
                | C::BadMessage,
            ) => Self::Permanent("invalid"),
            _ => Self::Transient("other"),
        }
    }
}

/// Where a revision is being sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The sink's topic.
    Topic,
    /// The dead-letter topic, after the sink's topic refused it for this reason.
    DeadLetter(String),
}

/// One revision being delivered.
#[derive(Debug)]
pub struct Outgoing {
    /// The encoded message.
    pub message: Arc<Message>,
    /// Spans in the revision, for the sink's counters.
    pub spans: usize,
    /// Where it goes.
    pub destination: Destination,
    /// When its first part was sent, for the delivery latency.
    pub since: Instant,
    acked: Vec<bool>,
    attempts: Vec<u32>,
    remaining: usize,
}

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Every revision not yet acknowledged, and the retry schedule.
#[derive(Debug, Default)]
pub struct InFlight {
    revisions: HashMap<u64, Outgoing>,
    next_id: u64,
    bytes: usize,
    messages: usize,
    retries: BTreeSet<(Instant, Tag)>,
}

impl InFlight {
    /// Tracks a new revision; returns its id. Its parts are to be sent by the caller.
    pub fn insert(&mut self, message: Arc<Message>, spans: usize, to: Destination) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let parts = message.parts.len();
        self.bytes += message.value_len();
        self.messages += parts;
        self.revisions.insert(
            id,
            Outgoing {
                message,
                spans,
                destination: to,
                since: Instant::now(),
                acked: vec![false; parts],
                attempts: vec![0; parts],
                remaining: parts,
            },
        );
        id
    }

    /// The revision `id`, if still tracked.
    pub fn get(&self, id: u64) -> Option<&Outgoing> {
        self.revisions.get(&id)
    }

    /// Records an acknowledgement; returns the revision once all its parts are in.
    pub fn acked(&mut self, id: u64, part: usize) -> Option<Outgoing> {
        let out = self.revisions.get_mut(&id)?;
        if std::mem::replace(out.acked.get_mut(part)?, true) {
            return None;
        }
        out.remaining -= 1;
        self.messages -= 1;
        if out.remaining > 0 {
            return None;
        }
        self.remove(id)
    }

    /// Stops tracking `id` (delivered, or handed to the dead-letter path).
    pub fn remove(&mut self, id: u64) -> Option<Outgoing> {
        let out = self.revisions.remove(&id)?;
        self.bytes -= out.message.value_len();
        self.messages -= out.remaining;
        Some(out)
    }

    /// Schedules part `tag` again after a back-off that grows with its attempts.
    pub fn retry_later(&mut self, tag: Tag, now: Instant) {
        let Some(out) = self.revisions.get_mut(&tag.id) else {
            return;
        };
        let attempts = &mut out.attempts[tag.part];
        *attempts = attempts.saturating_add(1);
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << (*attempts - 1).min(16))
            .min(MAX_BACKOFF);
        self.retries.insert((now + backoff, tag));
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Takes the retries due by `now` whose revision is still tracked.
    pub fn due(&mut self, now: Instant) -> Vec<Tag> {
        let mut due = Vec::new();
        while let Some(&(at, tag)) = self.retries.first()
            && at <= now
        {
            self.retries.pop_first();
            if self.revisions.contains_key(&tag.id) {
                due.push(tag);
            }
        }
        due
    }

    /// Every unacknowledged part, for sending again through a new producer.
    pub fn unacked(&self) -> Vec<(u64, usize)> {
        self.revisions
            .iter()
            .flat_map(|(&id, out)| {
                out.acked
                    .iter()
                    .enumerate()
                    .filter(|(_, acked)| !**acked)
                    .map(move |(part, _)| (id, part))
            })
            .collect()
    }

    /// Drops the retry schedule (everything is about to be sent again).
    pub fn clear_retries(&mut self) {
        self.retries.clear();
    }

    /// Value bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Parts not yet acknowledged.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }
}

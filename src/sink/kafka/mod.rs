//! The `kafka` sink: one message per trace revision, keyed by MLflow trace id, acknowledged by
//! every in-sync replica before it counts as written.
//!
//! ```text
//! input ─► encode (message) ─► librdkafka ─► broker
//!              │                    │
//!              └─ InFlight ◄─ delivery reports (deliver): ack → durable
//!                     │                                   transient → retry with back-off
//!                     └─ refused for good → dead-letter topic or file (dead_letter)
//! ```
//!
//! The sink reads its input only while the value bytes awaiting acknowledgement stay under
//! `max_in_flight_bytes`; a slow or absent broker therefore fills the sink's queue and the
//! pipeline's, and the receivers answer with retryable codes. At shutdown the sink returns
//! once every revision it took is acknowledged or dead-lettered.

pub mod config;
pub mod dead_letter;
pub mod deliver;
pub mod message;
pub mod recover;
#[cfg(test)]
mod tests;
pub mod topic;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::config::{CreateTopic, KafkaConfig};
use self::dead_letter::DeadLetterFile;
use self::deliver::{Destination, Failure, InFlight, Report, Reports, Tag};
use self::message::{Encoding, Message};
use self::topic::TopicError;
use super::{BuildError, SinkError, SinkInput};
use crate::log::SinkCommits;
use crate::telemetry::metrics::{KafkaMetrics, SinkMetrics};
use crate::topology::backoff::Backoff;
use crate::topology::queue::QueueRx;
use crate::topology::sleep_until;

/// At most one warning about transient failures per this interval; the metrics count each.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// At most one topic check per this interval while deliveries keep failing.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the sink knows of its topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopicState {
    /// No broker has answered yet.
    Unknown,
    /// It exists.
    Ready,
    /// It does not exist and traceloom may not create it.
    Missing,
}

type Producer = ThreadedProducer<Reports>;

/// A running `kafka` sink.
pub struct KafkaSink {
    name: String,
    topic_name: String,
    encoding: Encoding,
    max_message_size: usize,
    max_in_flight: usize,
    client: ClientConfig,
    create_topic: Option<CreateTopic>,
    topic: TopicState,
    /// A delivery timed out or found the topic unknown: look at the topic again.
    recheck: bool,
    /// A delivery timed out since the last check.
    timed_out: bool,
    last_check: Option<Instant>,
    producer: Producer,
    generation: u32,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    in_flight: InFlight,
    dead_letter_topic: Option<String>,
    dead_letter_file: DeadLetterFile,
    /// Refused revisions waiting to be written to the dead-letter file: (message, topic, error).
    to_file: Vec<(Arc<Message>, String, String)>,
    /// Revisions acknowledged or dead-lettered, not yet in the manifest.
    durable: Vec<u64>,
    /// The manifest write in progress: the revisions it records, and how it went.
    committing: Option<CommitTask>,
    /// Settings of the consumer that reads the topic back after a crash.
    recovery: recover::Clients,
    /// Replayed revisions found already on the topic: skipped when replay sends them.
    already: std::collections::HashSet<u64>,
    /// Whether the topic was read back (or there was nothing to read back).
    recovered: bool,
    /// The ingest log's id, in every message's `traceloom_release` header.
    log_id: Arc<str>,
    last_warning: Option<Instant>,
    last_refusal: Option<Instant>,
    sink_metrics: SinkMetrics,
    metrics: KafkaMetrics,
}

impl KafkaConfig {
    /// Checks the settings, creates the producer, and prepares the topic when a broker answers;
    /// when none does, the sink prepares it once one does and reads nothing until then.
    ///
    /// # Errors
    ///
    /// [`BuildError::Setting`] naming the setting: brokers that do not resolve, an invalid
    /// librdkafka property, a missing topic, a topic the broker refuses to create.
    pub async fn build(
        &self,
        name: &str,
        sink_metrics: SinkMetrics,
        metrics: KafkaMetrics,
    ) -> Result<KafkaSink, BuildError> {
        resolve_brokers(&self.brokers).await?;
        let client = self.client_config()?;
        // One report per message sent, and messages are bounded by `max_in_flight_bytes`; a
        // bounded channel would stall librdkafka's callback thread instead.
        #[allow(clippy::disallowed_methods)]
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let producer = create_producer(&client, &reports_tx)?;
        let dead_letter_path = self
            .dead_letter
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/dead-letter").join(format!("{name}.jsonl")));
        let dead_letter_file =
            DeadLetterFile::open(dead_letter_path.clone()).map_err(|source| BuildError::Path {
                path: dead_letter_path,
                source,
            })?;
        let mut sink = KafkaSink {
            name: name.to_string(),
            topic_name: self.topic.clone(),
            encoding: self.encoding,
            max_message_size: self.max_message_size.as_usize(),
            max_in_flight: self.max_in_flight_bytes.as_usize(),
            client,
            create_topic: self.create_topic.clone(),
            topic: TopicState::Unknown,
            recheck: false,
            timed_out: false,
            last_check: None,
            producer,
            generation: 0,
            reports_tx,
            reports,
            in_flight: InFlight::default(),
            dead_letter_topic: self.dead_letter.topic.clone(),
            dead_letter_file,
            to_file: Vec::new(),
            durable: Vec::new(),
            committing: None,
            recovery: self.recovery_clients(),
            already: std::collections::HashSet::new(),
            recovered: false,
            log_id: Arc::from(""),
            last_warning: None,
            last_refusal: None,
            sink_metrics,
            metrics,
        };
        match sink.prepare_topics().await {
            Ok(()) => {}
            Err(TopicError::Unreachable(e)) => tracing::warn!(
                brokers = %self.brokers,
                error = %e,
                "no Kafka broker answers yet; the sink will set up topic `{}` once one does, and \
                 holds traces until then",
                self.topic
            ),
            Err(e) => {
                return Err(BuildError::Setting {
                    field: "topic",
                    reason: e.to_string(),
                });
            }
        }
        Ok(sink)
    }
}

/// Fails when no bootstrap broker's host resolves: a typo there would otherwise look like a
/// broker that is down, forever.
async fn resolve_brokers(brokers: &str) -> Result<(), BuildError> {
    let mut failures = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let address = broker.split_once("://").map_or(broker, |(_, rest)| rest);
        match tokio::net::lookup_host(address).await {
            Ok(_) => return Ok(()),
            Err(e) => failures.push(format!("{broker}: {e}")),
        }
    }
    Err(BuildError::Setting {
        field: "brokers",
        reason: if failures.is_empty() {
            "no broker given: expected host:port[,host:port…]".into()
        } else {
            format!("no broker address resolves ({})", failures.join("; "))
        },
    })
}

fn create_producer(
    client: &ClientConfig,
    reports: &mpsc::UnboundedSender<Report>,
) -> Result<Producer, BuildError> {
    client
        .create_with_context(Reports::new(reports.clone()))
        .map_err(|e| BuildError::Setting {
            field: "librdkafka",
            reason: match e {
                KafkaError::ClientConfig(_, description, key, value) => {
                    format!("property `{key}` = `{value}` is refused: {description}")
                }
                other => other.to_string(),
            },
        })
}

/// A manifest write: the revisions it records, and how it went.
type CommitTask = JoinHandle<(Vec<u64>, std::io::Result<()>)>;

/// Waits for the manifest write in `task` (which must be running) and clears it.
async fn committed(task: &mut Option<CommitTask>) -> (Vec<u64>, std::io::Result<()>) {
    let running = task.as_mut().expect("called only while a write runs");
    let done = running.await.expect("manifest writes do not panic");
    *task = None;
    done
}

impl KafkaSink {
    /// Sends every revision until the input closes and everything taken is acknowledged or
    /// dead-lettered.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] never in practice: a dead-letter file that cannot be written is
    /// retried, since dropping the revision is not an option.
    pub async fn run(
        mut self,
        mut input: QueueRx<SinkInput>,
        commits: SinkCommits,
    ) -> Result<(), SinkError> {
        let mut open = true;
        let origin = commits.origin().clone();
        self.log_id = Arc::clone(&origin.log_id);
        while open || !self.in_flight.is_empty() {
            self.wait_for_topics().await;
            self.recover(&origin).await;
            self.recheck_topics().await;
            let room = self.in_flight.bytes() < self.max_in_flight;
            tokio::select! {
                Some(report) = self.reports.recv() => self.on_report(report),
                () = sleep_until(self.in_flight.next_retry()) => {
                    for tag in self.in_flight.due(Instant::now()) {
                        self.metrics.retries.inc();
                        self.send(tag);
                    }
                }
                next = input.recv(), if open && room => match next {
                    Some(trace) => self.submit(&trace),
                    None => open = false,
                },
                done = committed(&mut self.committing), if self.committing.is_some() => {
                    self.on_committed(done);
                }
            }
            self.write_dead_letters().await;
            self.commit(&commits);
            self.metrics.in_flight.set(self.in_flight.messages() as i64);
        }
        // The write in progress, then one for what was acknowledged during it.
        self.finish_commit().await;
        self.commit(&commits);
        self.finish_commit().await;
        Ok(())
    }

    /// Once, after a restart that replays revisions: reads the topic back from the time of the
    /// first replayed record and notes the revisions of this log already there, so that replay
    /// does not write them twice (see [`recover`]).
    async fn recover(&mut self, origin: &crate::log::commit::Origin) {
        if std::mem::replace(&mut self.recovered, true) {
            return;
        }
        let Some(since) = origin.replay_since else {
            return;
        };
        let found =
            recover::delivered_since(&self.recovery, &self.topic_name, &origin.log_id, since).await;
        match found {
            Ok(found) => {
                tracing::info!(sink = %self.name, revisions = found.len(),
                    "read the topic back: replayed revisions already there are not sent again");
                self.already = found;
            }
            Err(e) => tracing::warn!(sink = %self.name, error = %e,
                "cannot read the topic back; replayed revisions delivered just before the \
                 crash may be sent twice"),
        }
    }

    /// Starts recording the acknowledged and dead-lettered revisions in the manifest, unless a
    /// write is in progress. The sink keeps sending and taking reports meanwhile, and the next
    /// write takes everything acknowledged during this one: one manifest sync per write, not per
    /// delivery report (syncing per report took a sixth of the CPU and paced the sink).
    fn commit(&mut self, commits: &SinkCommits) {
        if self.durable.is_empty() || self.committing.is_some() {
            return;
        }
        let durable = std::mem::take(&mut self.durable);
        let commits = commits.clone();
        self.committing = Some(tokio::spawn(async move {
            let result = commits.commit(durable.clone()).await;
            (durable, result)
        }));
    }

    /// Waits for the manifest write in progress, if any.
    async fn finish_commit(&mut self) {
        if self.committing.is_some() {
            let done = committed(&mut self.committing).await;
            self.on_committed(done);
        }
    }

    /// A manifest write ended; on failure its revisions are kept for the next one (a crash
    /// meanwhile makes replay send them again).
    fn on_committed(&mut self, (durable, result): (Vec<u64>, std::io::Result<()>)) {
        if let Err(e) = result {
            self.sink_metrics.errors.inc();
            tracing::error!(sink = %self.name, error = %e, "cannot write the sink manifest; retrying");
            self.durable.extend(durable);
        }
    }

    /// Sets up the topics when no broker answered at start, retrying until one does. Input
    /// waits meanwhile, so the pipeline pushes back.
    async fn wait_for_topics(&mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while self.topic == TopicState::Unknown {
            match self.prepare_topics().await {
                Ok(()) => tracing::info!(topic = %self.topic_name, "Kafka topic ready"),
                Err(TopicError::Unreachable(e)) => {
                    self.warn(format_args!("still no Kafka broker answers ({e})"));
                    backoff.wait().await;
                }
                Err(e) => self.topic_missing(&e),
            }
        }
    }

    /// Deliveries time out or find the topic unknown: a broker that lost the topic (deleted,
    /// or restarted without persistent storage) looks exactly like a slow one to librdkafka,
    /// so look. The topic is created again when `create_topic` is set; otherwise revisions
    /// for it are dead-lettered until it exists again.
    async fn recheck_topics(&mut self) {
        let now = Instant::now();
        if !self.recheck
            || self
                .last_check
                .is_some_and(|at| now - at < RECHECK_INTERVAL)
        {
            return;
        }
        self.recheck = false;
        self.last_check = Some(now);
        let timed_out = std::mem::take(&mut self.timed_out);
        match self.prepare_topics().await {
            // librdkafka retries a producer id that a restarted broker forgot without end, and
            // reports only timeouts: a broker that answers while deliveries time out is that.
            Ok(()) if timed_out => {
                self.rebuild_producer("deliveries time out although the brokers answer");
            }
            Ok(()) | Err(TopicError::Unreachable(_)) => {}
            Err(e) => self.topic_missing(&e),
        }
    }

    fn topic_missing(&mut self, error: &TopicError) {
        tracing::error!(%error, "trace revisions for the topic go to the dead-letter path");
        self.topic = TopicState::Missing;
    }

    /// Checks (or creates) the topic and the dead-letter topic; learns the message size limit.
    async fn prepare_topics(&mut self) -> Result<(), TopicError> {
        let create = self.create_topic.as_ref();
        let facts = topic::prepare(&self.client, &self.topic_name, create).await?;
        if let Some(dead_letter) = &self.dead_letter_topic {
            topic::prepare(&self.client, dead_letter, create).await?;
        }
        if let Some(limit) = facts.max_message_bytes
            && limit < self.max_message_size
        {
            tracing::info!(
                topic = %self.topic_name,
                limit,
                "the topic takes smaller messages than max_message_size; parts follow its limit"
            );
            self.max_message_size = limit;
        }
        self.topic = TopicState::Ready;
        Ok(())
    }

    /// Encodes a revision and sends its parts.
    fn submit(&mut self, trace: &SinkInput) {
        if self.already.remove(&trace.position) {
            self.durable.push(trace.position);
            return;
        }
        let mut message = Message::new(trace, self.encoding, self.max_message_size);
        if !self.log_id.is_empty() {
            message.headers.push((
                recover::RELEASE_HEADER,
                recover::release_header(&self.log_id, trace.position),
            ));
        }
        if message.parts.len() > 1 {
            self.metrics.split.inc();
        }
        let parts = message.parts.len();
        let spans = trace.span_count();
        let id = self
            .in_flight
            .insert(Arc::new(message), spans, Destination::Topic);
        if self.topic == TopicState::Missing {
            self.recheck = true;
            self.refuse(id, format!("topic `{}` does not exist", self.topic_name));
        } else {
            self.send_all(id, parts);
        }
    }

    fn send_all(&mut self, id: u64, parts: usize) {
        for part in 0..parts {
            self.send(Tag {
                generation: self.generation,
                id,
                part,
            });
        }
    }

    /// Hands one part to librdkafka.
    fn send(&mut self, tag: Tag) {
        let tag = Tag {
            generation: self.generation,
            ..tag
        };
        let Some(out) = self.in_flight.get(tag.id) else {
            return;
        };
        let topic = self.topic_for(&out.destination);
        let reason = match &out.destination {
            Destination::Topic => None,
            Destination::DeadLetter(reason) => Some(reason),
        };
        let headers = message::kafka_headers(
            out.message
                .part_headers(tag.part)
                .chain(reason.map(|r| ("error", r.clone()))),
        );
        let record = BaseRecord::with_opaque_to(topic, Box::new(tag))
            .key(out.message.key.as_bytes())
            .payload(&out.message.parts[tag.part][..])
            .headers(headers);
        if let Err(e) = self.producer.send(record).map_err(|(e, _)| e) {
            self.failed(tag, &e);
        }
    }

    /// The topic a destination names.
    fn topic_for(&self, destination: &Destination) -> &str {
        match destination {
            Destination::Topic => &self.topic_name,
            Destination::DeadLetter(_) => self
                .dead_letter_topic
                .as_deref()
                .expect("dead-letter destinations exist only with a dead-letter topic"),
        }
    }

    fn on_report(&mut self, report: Report) {
        let tag = report.tag;
        if tag.generation != self.generation {
            return;
        }
        match report.result {
            Ok(()) => {
                if let Some(out) = self.in_flight.acked(tag.id, tag.part) {
                    self.delivered(&out);
                }
            }
            Err(e) => self.failed(tag, &e),
        }
    }

    /// Every part of a revision is acknowledged: it is durable.
    fn delivered(&mut self, out: &deliver::Outgoing) {
        self.durable.push(out.message.position);
        let parts = out.message.parts.len() as u64;
        let bytes = out.message.value_len() as u64;
        self.metrics.messages.inc_by(parts);
        self.metrics.bytes.inc_by(bytes);
        match out.destination {
            Destination::Topic => {
                self.metrics
                    .delivery
                    .observe(out.since.elapsed().as_secs_f64());
                self.sink_metrics.traces.inc();
                self.sink_metrics.spans.inc_by(out.spans as u64);
                self.sink_metrics.bytes.inc_by(bytes);
            }
            Destination::DeadLetter(_) => {
                self.metrics.dead_lettered.inc();
            }
        }
    }

    fn failed(&mut self, tag: Tag, error: &KafkaError) {
        match Failure::of(error) {
            Failure::Transient("timeout") if self.topic == TopicState::Missing => {
                self.metrics.error("unknown_topic");
                self.sink_metrics.errors.inc();
                self.recheck = true;
                self.refuse(
                    tag.id,
                    format!("topic `{}` does not exist", self.topic_name),
                );
            }
            Failure::Transient(kind) => {
                self.metrics.error(kind);
                self.sink_metrics.errors.inc();
                if kind == "timeout" {
                    self.recheck = true;
                    self.timed_out = true;
                }
                self.warn(format_args!(
                    "a delivery to Kafka failed and will be retried: {error}"
                ));
                self.in_flight.retry_later(tag, Instant::now());
            }
            Failure::Permanent("unknown_topic") if self.create_topic.is_some() => {
                self.metrics.error("unknown_topic");
                self.sink_metrics.errors.inc();
                self.recheck = true;
                self.in_flight.retry_later(tag, Instant::now());
            }
            Failure::Permanent(kind) => {
                self.metrics.error(kind);
                self.sink_metrics.errors.inc();
                self.refuse(tag.id, error.to_string());
            }
            Failure::Fatal => {
                self.metrics.error("fatal");
                self.sink_metrics.errors.inc();
                let reason = self
                    .producer
                    .client()
                    .fatal_error()
                    .map_or_else(|| error.to_string(), |(_, reason)| reason);
                self.rebuild_producer(&reason);
            }
        }
    }

    /// A revision the broker refuses for good: to the dead-letter topic if there is one and it
    /// was not already headed there, else to the dead-letter file.
    fn refuse(&mut self, id: u64, reason: String) {
        let Some(out) = self.in_flight.remove(id) else {
            return;
        };
        let topic = self.topic_for(&out.destination).to_string();
        let now = Instant::now();
        if self
            .last_refusal
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            self.last_refusal = Some(now);
            tracing::error!(
                topic = %topic,
                key = %out.message.key,
                error = %reason,
                "Kafka refused a trace revision for good; it goes to the dead-letter path \
                 (further refusals within {WARN_INTERVAL:?} are only counted)"
            );
        }
        match (&out.destination, &self.dead_letter_topic) {
            (Destination::Topic, Some(_)) => {
                let parts = out.message.parts.len();
                let id =
                    self.in_flight
                        .insert(out.message, out.spans, Destination::DeadLetter(reason));
                self.send_all(id, parts);
            }
            _ => self.to_file.push((out.message, topic, reason)),
        }
    }

    /// The producer cannot deliver any more (its id, epoch or sequence is gone): start a new
    /// producer and send everything unacknowledged again. Reports of the old one are ignored;
    /// a part it had in fact delivered arrives twice, which Kafka cannot prevent here.
    fn rebuild_producer(&mut self, reason: &str) {
        tracing::error!(%reason, "the Kafka producer is stuck; starting a new one");
        match create_producer(&self.client, &self.reports_tx) {
            Ok(producer) => {
                // Dropping a producer purges its queue and joins its thread: not on the runtime.
                let old = std::mem::replace(&mut self.producer, producer);
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new Kafka producer");
                return;
            }
        }
        self.generation = self.generation.wrapping_add(1);
        self.in_flight.clear_retries();
        for (id, part) in self.in_flight.unacked() {
            self.send(Tag {
                generation: self.generation,
                id,
                part,
            });
        }
    }

    /// Writes refused revisions to the dead-letter file, retrying until the file takes them.
    async fn write_dead_letters(&mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        while !self.to_file.is_empty() {
            let file = self.dead_letter_file.clone();
            let mut batch = std::mem::take(&mut self.to_file);
            let total = batch.len();
            let written = tokio::task::spawn_blocking(move || {
                let mut done = Vec::new();
                // Written lines leave the batch, so a retry never writes one twice.
                while let Some((message, topic, error)) = batch.first() {
                    if let Err(e) = file.write(message, topic, error) {
                        return (batch, done, Err(e));
                    }
                    done.push(message.position);
                    batch.remove(0);
                }
                (batch, done, Ok(()))
            })
            .await;
            // Cancelled only when the runtime shuts down, and then nothing can be written.
            let Ok((batch, done, result)) = written else {
                tracing::error!("the runtime stopped while writing the dead-letter file");
                return;
            };
            self.metrics
                .dead_lettered
                .inc_by((total - batch.len()) as u64);
            self.durable.extend(done);
            if let Err(e) = result {
                self.sink_metrics.errors.inc();
                tracing::error!(
                    path = %self.dead_letter_file.path().display(),
                    error = %e,
                    "cannot write the dead-letter file; retrying"
                );
                self.to_file = batch;
                backoff.wait().await;
            }
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            self.last_warning = Some(now);
            tracing::warn!(sink = %self.name, topic = %self.topic_name, "{message}");
        }
    }
}

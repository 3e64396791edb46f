//! Every metric traceloom exports, declared once.
//!
//! Names follow Prometheus conventions with the OpenTelemetry Collector's verbs
//! (`accepted`, `refused`). Components receive pre-labelled handles when they are built, so nothing
//! registers a metric on the hot path. Labels come from closed sets: never a trace id, span name
//! or path.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::Protocol;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabel {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    pipeline: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    pipeline: String,
    sink: String,
}

impl SinkLabel {
    fn new(pipeline: &str, sink: &str) -> Self {
        Self {
            pipeline: pipeline.into(),
            sink: sink.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    pipeline: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageDropLabels {
    pipeline: String,
    stage: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabel {
    receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkErrorLabels {
    pipeline: String,
    sink: String,
    kind: &'static str,
}

/// Why spans were refused, the `reason` label of `traceloom_receiver_refused_spans_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The span broke an OTLP rule (bad id, end before start); refused alone.
    Invalid,
    /// The request could not be decoded.
    Malformed,
    /// The request was larger than the configured limit.
    TooLarge,
    /// The pipeline was full; the client was told to retry.
    Overload,
    /// traceloom was shutting down; the client was told to retry.
    Shutdown,
}

impl RefuseReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Overload => "overload",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The process-wide metric registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    accepted_spans: Family<ProtocolLabel, Counter>,
    refused_spans: Family<RefusedLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    queue_bytes: Family<NameLabel, Gauge>,
    queue_capacity: Family<NameLabel, Gauge>,
    sink_traces: Family<SinkLabel, Counter>,
    sink_spans: Family<SinkLabel, Counter>,
    sink_errors: Family<SinkLabel, Counter>,
    sink_files: Family<SinkLabel, Counter>,
    sink_bytes: Family<SinkLabel, Counter>,
    sink_buffered: Family<SinkLabel, Gauge>,
    sink_latency: Family<SinkLabel, Histogram>,
    kafka: KafkaFamilies,
    log: LogFamilies,
    stage: StageFamilies,
    unrouted_spans: Family<ReceiverLabel, Counter>,
    mlflow_limits: Family<LimitLabel, Counter>,
    assembler_spans_in: Family<PipelineLabel, Counter>,
    assembler_spans_out: Family<PipelineLabel, Counter>,
    assembler_duplicates: Family<PipelineLabel, Counter>,
    assembler_late: Family<PipelineLabel, Counter>,
    assembler_forgotten: Family<PipelineLabel, Counter>,
    assembler_unreadable: Family<PipelineLabel, Counter>,
    assembler_released: Family<ReleaseLabels, Counter>,
    assembler_revisions: Family<PipelineLabel, Counter>,
    assembler_open: Family<PipelineLabel, Gauge>,
    assembler_bytes: Family<PipelineLabel, Gauge>,
    assembler_oldest: Family<PipelineLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("traceloom");
        let m = Self {
            accepted_spans: Family::default(),
            refused_spans: Family::default(),
            requests: Family::default(),
            queue_bytes: Family::default(),
            queue_capacity: Family::default(),
            sink_traces: Family::default(),
            sink_spans: Family::default(),
            sink_errors: Family::default(),
            sink_files: Family::default(),
            sink_bytes: Family::default(),
            sink_buffered: Family::default(),
            // 1 ms to ~65 s: from release to durable in a sink.
            sink_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            kafka: KafkaFamilies::default(),
            log: LogFamilies::default(),
            stage: StageFamilies::default(),
            unrouted_spans: Family::default(),
            mlflow_limits: Family::default(),
            assembler_spans_in: Family::default(),
            assembler_spans_out: Family::default(),
            assembler_duplicates: Family::default(),
            assembler_late: Family::default(),
            assembler_forgotten: Family::default(),
            assembler_unreadable: Family::default(),
            assembler_released: Family::default(),
            assembler_revisions: Family::default(),
            assembler_open: Family::default(),
            assembler_bytes: Family::default(),
            assembler_oldest: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "receiver_accepted_spans",
            "Spans accepted by a receiver and handed to the pipelines",
            m.accepted_spans.clone(),
        );
        registry.register(
            "receiver_refused_spans",
            "Spans refused by a receiver, by reason (invalid, malformed, too_large, overload, shutdown)",
            m.refused_spans.clone(),
        );
        registry.register(
            "receiver_requests",
            "Export requests answered, by transport and response code",
            m.requests.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes waiting in a bounded queue",
            m.queue_bytes.clone(),
        );
        registry.register(
            "queue_capacity_bytes",
            "Capacity of a bounded queue in bytes",
            m.queue_capacity.clone(),
        );
        registry.register(
            "sink_written_traces",
            "Trace revisions a sink has written",
            m.sink_traces.clone(),
        );
        registry.register(
            "sink_written_spans",
            "Spans a sink has written",
            m.sink_spans.clone(),
        );
        registry.register(
            "sink_errors",
            "Output failures of a sink (each is logged with its target and retried)",
            m.sink_errors.clone(),
        );
        registry.register(
            "sink_files_published",
            "Files a file sink has published",
            m.sink_files.clone(),
        );
        registry.register(
            "sink_published_bytes",
            "Bytes a sink has made durable",
            m.sink_bytes.clone(),
        );
        registry.register(
            "sink_buffered_bytes",
            "Bytes a sink holds encoded but not yet durable",
            m.sink_buffered.clone(),
        );
        m.kafka.register(&mut registry);
        m.log.register(&mut registry);
        m.stage.register(&mut registry);
        registry.register(
            "sink_latency_seconds",
            "Seconds from a revision's release to its being durable in the sink",
            m.sink_latency.clone(),
        );
        registry.register(
            "router_unrouted_spans",
            "Accepted spans that no pipeline's `select` took",
            m.unrouted_spans.clone(),
        );
        registry.register(
            "mlflow_limits_applied",
            "MLflow limits applied while building traces (session_rejected, tag_dropped, tag_truncated, metadata_truncated)",
            m.mlflow_limits.clone(),
        );
        for (name, help, family) in [
            (
                "assembler_spans_in",
                "Spans taken into assembly (new or changed)",
                &m.assembler_spans_in,
            ),
            (
                "assembler_spans_out",
                "Spans in released trace revisions",
                &m.assembler_spans_out,
            ),
            (
                "assembler_duplicate_spans",
                "Re-sent spans identical to one held",
                &m.assembler_duplicates,
            ),
            (
                "assembler_late_spans",
                "Spans that arrived after their trace was released",
                &m.assembler_late,
            ),
            (
                "assembler_forgotten_early_traces",
                "Released traces forgotten before their late-span window to respect max_in_flight_bytes or max_released_bytes",
                &m.assembler_forgotten,
            ),
            (
                "assembler_unreadable_records",
                "Ingest log records of released traces that could not be read back for a later revision (damaged log); that revision is flagged partial",
                &m.assembler_unreadable,
            ),
            (
                "assembler_revisions",
                "Revisions after the first (late spans, size releases)",
                &m.assembler_revisions,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "assembler_released_traces",
            "Trace revisions released, by reason (complete, max_age, size, memory, shutdown, log_space)",
            m.assembler_released.clone(),
        );
        registry.register(
            "assembler_open_traces",
            "Traces held (open or in their late-span window)",
            m.assembler_open.clone(),
        );
        registry.register(
            "assembler_held_bytes",
            "Bytes the assembler holds: open traces' spans, and the ids and record positions of released ones",
            m.assembler_bytes.clone(),
        );
        registry.register(
            "assembler_oldest_trace_age_seconds",
            "Age of the oldest trace held",
            m.assembler_oldest.clone(),
        );
        Self { registry, ..m }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Handles for one receiver transport.
    pub fn receiver(self: &Arc<Self>, protocol: Protocol) -> ReceiverMetrics {
        let protocol = protocol.as_str();
        ReceiverMetrics {
            protocol,
            accepted: self
                .accepted_spans
                .get_or_create(&ProtocolLabel { protocol })
                .clone(),
            metrics: Arc::clone(self),
        }
    }

    /// Gauges for one bounded queue; the capacity is set here.
    pub fn queue(&self, name: &str, capacity_bytes: usize) -> QueueGauges {
        let label = NameLabel { name: name.into() };
        self.queue_capacity
            .get_or_create(&label)
            .set(capacity_bytes as i64);
        QueueGauges {
            bytes: self.queue_bytes.get_or_create(&label).clone(),
        }
    }

    /// Counters for one sink.
    pub fn sink(&self, pipeline: &str, sink: &str) -> SinkMetrics {
        let label = SinkLabel::new(pipeline, sink);
        SinkMetrics {
            traces: self.sink_traces.get_or_create(&label).clone(),
            spans: self.sink_spans.get_or_create(&label).clone(),
            errors: self.sink_errors.get_or_create(&label).clone(),
            files: self.sink_files.get_or_create(&label).clone(),
            bytes: self.sink_bytes.get_or_create(&label).clone(),
            buffered_bytes: self.sink_buffered.get_or_create(&label).clone(),
        }
    }
}

impl Metrics {
    /// Counts what [`crate::mlflow::build`] had to change to respect MLflow's limits.
    pub fn mlflow_limits(&self, report: &crate::mlflow::LimitReport) {
        for (limit, n) in [
            ("session_rejected", usize::from(report.session_rejected)),
            ("tag_dropped", report.tags_dropped),
            ("tag_truncated", report.tags_truncated),
            ("metadata_truncated", report.metadata_truncated),
        ] {
            if n > 0 {
                self.mlflow_limits
                    .get_or_create(&LimitLabel { limit })
                    .inc_by(n as u64);
            }
        }
    }
}

impl Metrics {
    /// Handles for one pipeline's assembler.
    pub fn assembler(self: &Arc<Self>, pipeline: &str) -> AssemblerMetrics {
        let label = PipelineLabel {
            pipeline: pipeline.into(),
        };
        AssemblerMetrics {
            pipeline: pipeline.into(),
            spans_in: self.assembler_spans_in.get_or_create(&label).clone(),
            spans_out: self.assembler_spans_out.get_or_create(&label).clone(),
            duplicates: self.assembler_duplicates.get_or_create(&label).clone(),
            late: self.assembler_late.get_or_create(&label).clone(),
            forgotten: self.assembler_forgotten.get_or_create(&label).clone(),
            unreadable: self.assembler_unreadable.get_or_create(&label).clone(),
            revisions: self.assembler_revisions.get_or_create(&label).clone(),
            open: self.assembler_open.get_or_create(&label).clone(),
            bytes: self.assembler_bytes.get_or_create(&label).clone(),
            oldest: self.assembler_oldest.get_or_create(&label).clone(),
            metrics: Arc::clone(self),
            last: crate::assemble::Counts::default(),
        }
    }
}

/// One pipeline's assembler metrics; `observe` after each step brings them up to date.
#[derive(Debug)]
pub struct AssemblerMetrics {
    pipeline: String,
    spans_in: Counter,
    spans_out: Counter,
    duplicates: Counter,
    late: Counter,
    forgotten: Counter,
    unreadable: Counter,
    revisions: Counter,
    open: Gauge,
    bytes: Gauge,
    oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
    last: crate::assemble::Counts,
}

impl AssemblerMetrics {
    /// Records the assembler's state and the revisions it just released.
    pub fn observe(
        &mut self,
        assembler: &crate::assemble::Assembler,
        released: &[crate::assemble::Release],
    ) {
        let now = assembler.counts();
        self.spans_in.inc_by(now.spans_in - self.last.spans_in);
        self.duplicates
            .inc_by(now.duplicate_spans - self.last.duplicate_spans);
        self.late.inc_by(now.late_spans - self.last.late_spans);
        self.forgotten
            .inc_by(now.forgotten_early - self.last.forgotten_early);
        self.unreadable
            .inc_by(now.unreadable_records - self.last.unreadable_records);
        self.last = now;
        for r in released {
            self.spans_out.inc_by(r.span_count() as u64);
            if r.revision > 1 {
                self.revisions.inc();
            }
            let labels = ReleaseLabels {
                pipeline: self.pipeline.clone(),
                reason: r.reason.as_str(),
            };
            self.metrics.assembler_released.get_or_create(&labels).inc();
        }
        self.open.set(assembler.traces() as i64);
        self.bytes.set(assembler.bytes() as i64);
        let age = assembler
            .oldest()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.oldest.set(age);
    }
}

/// Counters of one receiver transport.
#[derive(Clone, Debug)]
pub struct ReceiverMetrics {
    protocol: &'static str,
    accepted: Counter,
    metrics: Arc<Metrics>,
}

impl ReceiverMetrics {
    /// Counts accepted spans.
    pub fn accepted(&self, spans: usize) {
        self.accepted.inc_by(spans as u64);
    }

    /// Counts refused spans with their reason.
    pub fn refused(&self, reason: RefuseReason, spans: usize) {
        if spans > 0 {
            let labels = RefusedLabels {
                protocol: self.protocol,
                reason: reason.as_str(),
            };
            self.metrics
                .refused_spans
                .get_or_create(&labels)
                .inc_by(spans as u64);
        }
    }

    /// Counts an answered request with its response code (HTTP status or gRPC code name).
    pub fn request(&self, code: &str) {
        let labels = RequestLabels {
            protocol: self.protocol,
            code: code.to_string(),
        };
        self.metrics.requests.get_or_create(&labels).inc();
    }
}

/// The fill gauge of one bounded queue.
#[derive(Clone, Debug, Default)]
pub struct QueueGauges {
    /// Bytes currently queued.
    pub bytes: Gauge,
}

/// The Kafka sink's own families, labelled by sink.
#[derive(Debug)]
struct KafkaFamilies {
    messages: Family<SinkLabel, Counter>,
    bytes: Family<SinkLabel, Counter>,
    delivery: Family<SinkLabel, Histogram>,
    retries: Family<SinkLabel, Counter>,
    errors: Family<SinkErrorLabels, Counter>,
    in_flight: Family<SinkLabel, Gauge>,
    split: Family<SinkLabel, Counter>,
    dead_lettered: Family<SinkLabel, Counter>,
}

impl Default for KafkaFamilies {
    fn default() -> Self {
        Self {
            messages: Family::default(),
            bytes: Family::default(),
            // 1ms to ~65s: a healthy broker answers in milliseconds, a failing one in retries.
            delivery: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            retries: Family::default(),
            errors: Family::default(),
            in_flight: Family::default(),
            split: Family::default(),
            dead_lettered: Family::default(),
        }
    }
}

impl KafkaFamilies {
    fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            (
                "kafka_produced_messages",
                "Messages the broker acknowledged",
                &self.messages,
            ),
            (
                "kafka_produced_bytes",
                "Value bytes of the messages the broker acknowledged",
                &self.bytes,
            ),
            (
                "kafka_retries",
                "Messages sent again after a transient failure",
                &self.retries,
            ),
            (
                "kafka_split_traces",
                "Trace revisions larger than max_message_size, sent as numbered parts",
                &self.split,
            ),
            (
                "kafka_dead_lettered_traces",
                "Trace revisions the broker refused for good, written to the dead-letter path",
                &self.dead_lettered,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "kafka_delivery_seconds",
            "From first send to the broker's acknowledgement of every part of a trace revision",
            self.delivery.clone(),
        );
        registry.register(
            "kafka_errors",
            "Failed deliveries by kind (timeout, transport, queue_full, too_large, unknown_topic, authorization, fatal, other)",
            self.errors.clone(),
        );
        registry.register(
            "kafka_in_flight_messages",
            "Messages sent and not yet acknowledged, or waiting to be sent again",
            self.in_flight.clone(),
        );
    }
}

impl Metrics {
    /// Handles for one Kafka sink.
    pub fn kafka(&self, pipeline: &str, sink: &str) -> KafkaMetrics {
        let label = SinkLabel::new(pipeline, sink);
        let k = &self.kafka;
        KafkaMetrics {
            label: label.clone(),
            messages: k.messages.get_or_create(&label).clone(),
            bytes: k.bytes.get_or_create(&label).clone(),
            delivery: k.delivery.get_or_create(&label).clone(),
            retries: k.retries.get_or_create(&label).clone(),
            errors: k.errors.clone(),
            in_flight: k.in_flight.get_or_create(&label).clone(),
            split: k.split.get_or_create(&label).clone(),
            dead_lettered: k.dead_lettered.get_or_create(&label).clone(),
        }
    }
}

/// The ingest log's families, labelled by pipeline.
#[derive(Debug)]
struct LogFamilies {
    bytes: Family<PipelineLabel, Gauge>,
    segments: Family<PipelineLabel, Gauge>,
    oldest: Family<PipelineLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    fsync: Family<PipelineLabel, Histogram>,
    replayed: Family<PipelineLabel, Counter>,
    damaged: Family<PipelineLabel, Counter>,
    damaged_bytes: Family<PipelineLabel, Counter>,
    refused: Family<LogRefusedLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogRefusedLabels {
    pipeline: String,
    reason: &'static str,
}

impl Default for LogFamilies {
    fn default() -> Self {
        Self {
            bytes: Family::default(),
            segments: Family::default(),
            oldest: Family::default(),
            // 50µs to ~1.6s: page-cache writes to a stalled disk.
            fsync: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            replayed: Family::default(),
            damaged: Family::default(),
            damaged_bytes: Family::default(),
            refused: Family::default(),
        }
    }
}

impl LogFamilies {
    fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            (
                "log_bytes",
                "Bytes of span records kept in the ingest log",
                &self.bytes,
            ),
            (
                "log_segments",
                "Segment files of the ingest log",
                &self.segments,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        for (name, help, family) in [
            (
                "log_replayed_records",
                "Span records replayed into the assembler at start",
                &self.replayed,
            ),
            (
                "log_damaged_segments",
                "Damaged segment tails (torn writes, bad checksums) found and cut at start",
                &self.damaged,
            ),
            (
                "log_damaged_bytes",
                "Bytes cut from damaged segment tails at start",
                &self.damaged_bytes,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "log_oldest_uncommitted_age_seconds",
            "Age of the oldest span record that some sink or the assembler still needs",
            self.oldest.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "Duration of each write and fsync of the ingest log (one per group commit)",
            self.fsync.clone(),
        );
        registry.register(
            "log_refused_requests",
            "Requests refused with a retryable code by the log (full: max_log_bytes reached; io: write failed)",
            self.refused.clone(),
        );
    }
}

impl Metrics {
    /// Handles for one pipeline's ingest log.
    pub fn log(&self, pipeline: &str, sinks: &[&str]) -> LogMetrics {
        let label = PipelineLabel {
            pipeline: pipeline.into(),
        };
        let l = &self.log;
        LogMetrics {
            pipeline: pipeline.into(),
            sink_latency: sinks
                .iter()
                .map(|sink| self.sink_latency(pipeline, sink))
                .collect(),
            bytes: l.bytes.get_or_create(&label).clone(),
            segments: l.segments.get_or_create(&label).clone(),
            oldest: l.oldest.get_or_create(&label).clone(),
            fsync: l.fsync.get_or_create(&label).clone(),
            replayed: l.replayed.get_or_create(&label).clone(),
            damaged: l.damaged.get_or_create(&label).clone(),
            damaged_bytes: l.damaged_bytes.get_or_create(&label).clone(),
            refused: l.refused.clone(),
        }
    }
}

/// Handles of one pipeline's ingest log.
#[derive(Clone, Debug)]
pub struct LogMetrics {
    pipeline: String,
    /// Release-to-durable seconds, per sink in configuration order.
    pub sink_latency: Vec<Histogram>,
    /// Bytes kept.
    pub bytes: Gauge,
    /// Segment files.
    pub segments: Gauge,
    /// Age of the oldest record still needed, seconds.
    pub oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Write + fsync durations.
    pub fsync: Histogram,
    /// Records replayed at start.
    pub replayed: Counter,
    /// Damaged tails cut at start.
    pub damaged: Counter,
    /// Bytes cut at start.
    pub damaged_bytes: Counter,
    refused: Family<LogRefusedLabels, Counter>,
}

impl LogMetrics {
    /// Counts one request refused for `reason` (`full` or `io`).
    pub fn refused(&self, reason: &'static str) {
        let labels = LogRefusedLabels {
            pipeline: self.pipeline.clone(),
            reason,
        };
        self.refused.get_or_create(&labels).inc();
    }
}

/// Handles of one Kafka sink (beside its [`SinkMetrics`]).
#[derive(Clone, Debug)]
pub struct KafkaMetrics {
    label: SinkLabel,
    /// Messages acknowledged.
    pub messages: Counter,
    /// Value bytes acknowledged.
    pub bytes: Counter,
    /// Seconds from first send to the acknowledgement of a whole revision.
    pub delivery: Histogram,
    /// Messages sent again.
    pub retries: Counter,
    errors: Family<SinkErrorLabels, Counter>,
    /// Messages awaiting acknowledgement or a retry.
    pub in_flight: Gauge,
    /// Revisions sent in parts.
    pub split: Counter,
    /// Revisions written to the dead-letter path.
    pub dead_lettered: Counter,
}

impl KafkaMetrics {
    /// Counts one failed delivery of `kind`.
    pub fn error(&self, kind: &'static str) {
        let labels = SinkErrorLabels {
            pipeline: self.label.pipeline.clone(),
            sink: self.label.sink.clone(),
            kind,
        };
        self.errors.get_or_create(&labels).inc();
    }
}

/// Counters of one sink.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    /// Trace revisions written.
    pub traces: Counter,
    /// Spans written.
    pub spans: Counter,
    /// Output failures (retried).
    pub errors: Counter,
    /// Files published.
    pub files: Counter,
    /// Bytes made durable.
    pub bytes: Counter,
    /// Bytes encoded, not yet durable.
    pub buffered_bytes: Gauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_prefix_and_labels() {
        let m = Arc::new(Metrics::new());
        let r = m.receiver(Protocol::Grpc);
        r.accepted(5);
        r.refused(RefuseReason::Invalid, 2);
        r.request("OK");
        m.queue("pipeline.default", 1024).bytes.set(10);
        let text = m.render();
        for line in [
            "traceloom_receiver_accepted_spans_total{protocol=\"grpc\"} 5",
            "traceloom_receiver_refused_spans_total{protocol=\"grpc\",reason=\"invalid\"} 2",
            "traceloom_receiver_requests_total{protocol=\"grpc\",code=\"OK\"} 1",
            "traceloom_queue_capacity_bytes{name=\"pipeline.default\"} 1024",
            "traceloom_queue_bytes{name=\"pipeline.default\"} 10",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}

/// The stage families, labelled by pipeline and stage (`<index>-<type>`).
#[derive(Debug)]
struct StageFamilies {
    traces_in: Family<StageLabel, Counter>,
    dropped: Family<StageDropLabels, Counter>,
    dropped_spans: Family<StageLabel, Counter>,
    spans_removed: Family<StageLabel, Counter>,
    values_redacted: Family<StageLabel, Counter>,
    seconds: Family<StageLabel, Histogram>,
}

impl Default for StageFamilies {
    fn default() -> Self {
        Self {
            traces_in: Family::default(),
            dropped: Family::default(),
            dropped_spans: Family::default(),
            spans_removed: Family::default(),
            values_redacted: Family::default(),
            // 1 µs to ~33 ms per trace.
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_001, 2.0, 16))
            }),
        }
    }
}

impl StageFamilies {
    fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            (
                "stage_traces_in",
                "Trace revisions that entered the stage",
                &self.traces_in,
            ),
            (
                "stage_spans_removed",
                "Spans a filter stage removed from kept traces",
                &self.spans_removed,
            ),
            (
                "stage_dropped_spans",
                "Spans of the trace revisions the stage dropped",
                &self.dropped_spans,
            ),
            (
                "stage_values_redacted",
                "Attribute, tag and metadata values a redact stage dropped, hashed or truncated",
                &self.values_redacted,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "stage_traces_dropped",
            "Trace revisions the stage dropped, by reason (not_kept, dropped, sampled_out, rate_limited)",
            self.dropped.clone(),
        );
        registry.register(
            "stage_seconds",
            "Seconds the stage spent per trace revision",
            self.seconds.clone(),
        );
    }
}

impl Metrics {
    /// Handles for one stage of a pipeline.
    pub fn stage(&self, pipeline: &str, stage: &str) -> StageMetrics {
        let label = StageLabel {
            pipeline: pipeline.into(),
            stage: stage.into(),
        };
        let f = &self.stage;
        StageMetrics {
            traces_in: f.traces_in.get_or_create(&label).clone(),
            spans_removed: f.spans_removed.get_or_create(&label).clone(),
            dropped_spans: f.dropped_spans.get_or_create(&label).clone(),
            values_redacted: f.values_redacted.get_or_create(&label).clone(),
            seconds: f.seconds.get_or_create(&label).clone(),
            dropped: f.dropped.clone(),
            label,
        }
    }

    /// The release-to-durable histogram of one sink.
    pub fn sink_latency(&self, pipeline: &str, sink: &str) -> Histogram {
        self.sink_latency
            .get_or_create(&SinkLabel::new(pipeline, sink))
            .clone()
    }

    /// Counts spans of receiver `receiver` that no pipeline selected.
    pub fn unrouted(&self, receiver: &str, spans: usize) {
        self.unrouted_spans
            .get_or_create(&ReceiverLabel {
                receiver: receiver.into(),
            })
            .inc_by(spans as u64);
    }
}

/// Handles of one stage.
#[derive(Clone, Debug)]
pub struct StageMetrics {
    label: StageLabel,
    /// Revisions in.
    pub traces_in: Counter,
    /// Spans removed by a filter.
    pub spans_removed: Counter,
    /// Spans of dropped revisions.
    pub dropped_spans: Counter,
    /// Values redacted.
    pub values_redacted: Counter,
    /// Time per revision.
    pub seconds: Histogram,
    dropped: Family<StageDropLabels, Counter>,
}

impl StageMetrics {
    /// Counts one revision of `spans` spans dropped for `reason`.
    pub fn dropped(&self, reason: &'static str, spans: usize) {
        self.dropped_spans.inc_by(spans as u64);
        self.dropped
            .get_or_create(&StageDropLabels {
                pipeline: self.label.pipeline.clone(),
                stage: self.label.stage.clone(),
                reason,
            })
            .inc();
    }
}

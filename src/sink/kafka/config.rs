//! `type: kafka` settings, and how they become librdkafka properties.
//!
//! The defaults are the ones traces need, not librdkafka's: the idempotent producer with
//! `acks=all` (an acknowledged trace is on every in-sync replica, retries add no duplicates),
//! zstd, Java's `murmur2_random` partitioner (a keyed trace lands in the partition a Java or
//! Kafka Streams client would pick), and a bounded delivery timeout after which traceloom itself
//! retries with back-off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::message::Encoding;
use crate::config::units::{ByteSize, HumanDuration};
use crate::sink::BuildError;

/// `type: kafka`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic every trace revision is written to.
    pub topic: String,
    /// How a trace becomes a message value.
    #[serde(default)]
    pub encoding: Encoding,
    /// Batch compression.
    #[serde(default)]
    pub compression: Compression,
    /// Codec level (librdkafka `compression.level`); the codec's default when absent.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// How long the producer waits to fill a batch.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// Largest message the producer sends; larger traces are split into parts. Lowered at start
    /// to the topic's `max.message.bytes` when the broker reports a smaller one.
    #[serde(default = "default_message_size")]
    pub max_message_size: ByteSize,
    /// How long librdkafka tries one message before traceloom retries it itself.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Most message bytes sent and not yet acknowledged; beyond it the sink reads no more input,
    /// which is how a slow or absent broker pushes back.
    #[serde(default = "default_in_flight")]
    pub max_in_flight_bytes: ByteSize,
    /// TLS and SASL.
    #[serde(default)]
    pub security: Security,
    /// Create the topic at start when it is missing; without it, a missing topic is an error.
    #[serde(default)]
    pub create_topic: Option<CreateTopic>,
    /// Where traces the broker refuses for good go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Any other librdkafka property (`name: value`), applied last.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Scalar>,
}

fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_millis(10))
}
fn default_message_size() -> ByteSize {
    // librdkafka's and Kafka's own default (the broker allows 1048588 with its overhead).
    ByteSize(1_000_000)
}
fn default_delivery_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_in_flight() -> ByteSize {
    ByteSize::mib(64)
}

/// `compression`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// The best ratio for JSON at a low CPU cost.
    #[default]
    Zstd,
    /// The cheapest to compress.
    Lz4,
    /// For old consumers.
    Snappy,
    /// For old consumers.
    Gzip,
    /// Uncompressed.
    None,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::Snappy => "snappy",
            Self::Gzip => "gzip",
            Self::None => "none",
        }
    }
}

/// `security`: passed to librdkafka's `security.protocol`, `sasl.*` and `ssl.*` properties.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: Option<SecurityProtocol>,
    /// SASL credentials.
    #[serde(default)]
    pub sasl: Option<Sasl>,
    /// TLS files.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// `security.sasl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: String,
    /// The user.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (use `${ENV_VAR}` rather than writing it in the file).
    #[serde(default)]
    pub password: Option<String>,
}

/// `security.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA bundle to verify brokers with; the system's when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (mutual TLS).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The client key's password.
    #[serde(default)]
    pub key_password: Option<String>,
    /// Whether the broker's host name must match its certificate.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// `create_topic`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Partitions of the new topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each partition.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Topic configs, e.g. `cleanup.policy: compact`.
    #[serde(default)]
    pub config: BTreeMap<String, Scalar>,
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}

/// `dead_letter`: a topic tried first when set, and a JSON-lines file that is always there.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// JSON-lines file; default `data/dead-letter/<sink>.jsonl`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A topic on the same brokers; refused traces go to the file when it refuses them too.
    #[serde(default)]
    pub topic: Option<String>,
}

/// A YAML scalar written as a librdkafka property value (`linger.ms: 5`, `acks: all`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// Properties traceloom relies on; overriding them would break its delivery accounting.
const RESERVED: &[&str] = &["delivery.report.only.error", "dr_cb", "dr_msg_cb"];

impl KafkaConfig {
    /// A client of the configured brokers with the security settings, named `id`.
    fn client(&self, id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", id);
        self.security.apply(&mut c);
        c
    }

    /// The clients that read the topic back after a crash: a consumer, and the producer of the
    /// fences. Brokers and security come from the sink; nothing else of its producer does.
    pub fn recovery_clients(&self) -> super::recover::Clients {
        let mut consumer = self.client("traceloom-recovery");
        consumer
            .set("group.id", "traceloom-recovery")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let mut fence = self.client("traceloom-fence");
        fence
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("allow.auto.create.topics", "false");
        super::recover::Clients { consumer, fence }
    }

    /// The librdkafka producer properties: traceloom's defaults, the typed settings, then the
    /// `librdkafka` overrides.
    ///
    /// # Errors
    ///
    /// [`BuildError::Setting`] for an override traceloom cannot allow.
    pub fn client_config(&self) -> Result<ClientConfig, BuildError> {
        let mut c = self.client("traceloom");
        let ms = |d: &HumanDuration| d.0.as_millis().to_string();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            // Topics are created by `create_topic`, with its partitions and configs, never as a
            // side effect of a metadata request on a broker that allows auto-creation.
            .set("allow.auto.create.topics", "false")
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", ms(&self.linger))
            .set("message.max.bytes", self.max_message_size.0.to_string())
            .set("message.timeout.ms", ms(&self.delivery_timeout))
            // The sink bounds what it holds in flight; librdkafka's own queue must not refuse
            // first, so it gets room for twice that.
            .set(
                "queue.buffering.max.kbytes",
                (self.max_in_flight_bytes.0 * 2 / 1024)
                    .max(1024)
                    .to_string(),
            )
            .set("queue.buffering.max.messages", "1000000");
        if let Some(level) = self.compression_level {
            c.set("compression.level", level.to_string());
        }
        for (key, value) in &self.librdkafka {
            if RESERVED.contains(&key.as_str()) {
                return Err(BuildError::Setting {
                    field: "librdkafka",
                    reason: format!(
                        "`{key}` cannot be overridden: traceloom needs every delivery report"
                    ),
                });
            }
            c.set(key, value.to_string());
        }
        Ok(c)
    }
}

impl Security {
    fn apply(&self, c: &mut ClientConfig) {
        if let Some(p) = self.protocol {
            let name = match p {
                SecurityProtocol::Plaintext => "plaintext",
                SecurityProtocol::Ssl => "ssl",
                SecurityProtocol::SaslPlaintext => "sasl_plaintext",
                SecurityProtocol::SaslSsl => "sasl_ssl",
            };
            c.set("security.protocol", name);
        }
        if let Some(sasl) = &self.sasl {
            c.set("sasl.mechanisms", &sasl.mechanism);
            set_opt(c, "sasl.username", sasl.username.as_deref());
            set_opt(c, "sasl.password", sasl.password.as_deref());
        }
        if let Some(tls) = &self.tls {
            let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            set_opt(c, "ssl.ca.location", path(&tls.ca_file).as_deref());
            set_opt(
                c,
                "ssl.certificate.location",
                path(&tls.cert_file).as_deref(),
            );
            set_opt(c, "ssl.key.location", path(&tls.key_file).as_deref());
            set_opt(c, "ssl.key.password", tls.key_password.as_deref());
            let check = if tls.verify_hostname { "https" } else { "none" };
            c.set("ssl.endpoint.identification.algorithm", check);
        }
    }
}

fn set_opt(c: &mut ClientConfig, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        c.set(key, v);
    }
}

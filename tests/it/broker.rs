//! A real Kafka-protocol broker for the tests: `tansu` on a free loopback port, in memory, and an
//! rdkafka consumer that reads a topic back.
//!
//! The test command installs tansu (`scripts/test.sh`); without it these tests fail, they never
//! skip.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A running tansu broker; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The tansu binary: `$TANSU`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file());
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path
        .or(cargo_bin.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "the tansu broker is not installed: run the tests with ./scripts/test.sh, which \
                 installs it (cargo install tansu --version 0.6.0 --locked --features dynostore)"
            )
        })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (e.g. again after [`Broker::kill`]).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let mut broker = Self {
            child: None,
            port,
            log,
            _dir: dir,
        };
        broker.restart();
        broker
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL); its in-memory topics are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30s:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The producer's timestamp, ms since the epoch.
    pub timestamp: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub value: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
    }
}

/// Reads `topic` from the beginning until `count` messages arrived (or `timeout` passed), in
/// partition and offset order, leaving out traceloom's fences.
pub fn consume(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "traceloom-tests")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while records.len() < count && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message.unwrap();
        // The tombstones traceloom writes to every partition when it reads the topic back
        // after a crash; consumers skip them.
        if m.key() == Some(b"traceloom-fence".as_slice()) {
            assert!(m.payload().is_none(), "a fence is a tombstone");
            continue;
        }
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.unwrap_or_default().to_vec());
                        (h.key.to_string(), value.unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis().unwrap_or(-1),
            key: String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap(),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// `create_topic` settings for [`kafka_sink`]'s `more`.
pub const CREATE: &str = "create_topic:\n  partitions: 3";

/// The YAML of a `kafka` sink named `kafka` for [`crate::harness::Settings::extra_sinks`], with
/// a 2 s delivery timeout and the settings in `more` (YAML at the sink's indentation).
pub fn kafka_sink(brokers: &str, topic: &str, more: &str) -> String {
    let mut yaml = format!(
        "      kafka:\n        type: kafka\n        brokers: \"{brokers}\"\n        topic: {topic}\n        delivery_timeout: 2s\n"
    );
    for line in more.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str("        ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml
}

/// Waits until `topic` exists with partitions (e.g. re-created by the sink after a restart).
pub fn wait_for_topic(brokers: &str, topic: &str, timeout: Duration) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
            .unwrap_or(0);
        if partitions > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
}

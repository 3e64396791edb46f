//! The ingest log's promise, tested the hard way: traceloom runs as its own process under load
//! and is killed with SIGKILL at random moments, then restarted; at the end every span of every
//! acknowledged request is in the Parquet lake and on the Kafka topic, and no trace revision was
//! written twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as Upstream;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::testkit;

use crate::broker::{self, Broker, free_port};
use crate::mlflow_oracle::run_script;

const TRACES: usize = 20_000;
const SPANS_PER_TRACE: usize = 10;
/// Traces per request: each request carries one span of each of them.
const TRACES_PER_REQUEST: usize = 500;
const KILLS: usize = 3;

/// traceloom as a child process on fixed ports, restartable.
struct Process {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    grpc: u16,
}

impl Process {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_traceloom"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.grpc)).is_err() {
            assert!(
                Instant::now() < deadline,
                "traceloom did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Trace and span ids as hex, for comparing with both outputs.
type Acked = BTreeMap<String, BTreeSet<String>>;

/// Round `round` of chunk `chunk`: span `round` of each trace in the chunk (the root, span 0,
/// comes last, as SDKs export it).
fn request(chunk: usize, round: usize) -> ExportTraceServiceRequest {
    let mut full = testkit::request(chunk as u64 + 1, TRACES_PER_REQUEST, SPANS_PER_TRACE, 200);
    let spans = &mut full.resource_spans[0].scope_spans[0].spans;
    let span = (round + 1) % SPANS_PER_TRACE;
    let picked: Vec<_> = spans
        .iter()
        .skip(span)
        .step_by(SPANS_PER_TRACE)
        .cloned()
        .collect();
    *spans = picked;
    full
}

/// Sends every request once in order, with two in flight; records the spans of those answered
/// OK; returns the requests that were not.
async fn send_all(
    grpc: u16,
    requests: Vec<(usize, usize)>,
    acked: &Arc<Mutex<Acked>>,
) -> Vec<(usize, usize)> {
    let failed = Arc::new(Mutex::new(Vec::new()));
    let queue = Arc::new(Mutex::new(requests.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (queue, failed, acked) = (Arc::clone(&queue), Arc::clone(&failed), Arc::clone(acked));
        workers.push(async move {
            let mut client = None;
            loop {
                let Some((chunk, round)) = queue.lock().unwrap().next() else {
                    break;
                };
                let request = request(chunk, round);
                if client.is_none() {
                    client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                        .await
                        .ok();
                }
                let answer = match client.as_mut() {
                    Some(c) => c.export(testkit::upstream(&request)).await.map(|_| ()),
                    None => Err(tonic::Status::unavailable("not connected")),
                };
                if answer.is_ok() {
                    let mut acked = acked.lock().unwrap();
                    for s in &request.resource_spans[0].scope_spans[0].spans {
                        acked
                            .entry(hex::encode(&s.trace_id))
                            .or_default()
                            .insert(hex::encode(&s.span_id));
                    }
                } else {
                    client = None;
                    failed.lock().unwrap().push((chunk, round));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    futures_util::future::join_all(workers).await;
    Arc::try_unwrap(failed)
        .expect("the workers are done")
        .into_inner()
        .unwrap()
}

fn config(dir: &Path, grpc: u16, brokers: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    type: otlp
    grpc:
      endpoint: 127.0.0.1:{grpc}
admin:
  endpoint: null
pipelines:
  main:
    receivers: [otlp]
    log:
      dir: "{log}"
    assemble:
      idle_timeout: 300ms
    sinks:
      lake:
        type: parquet
        path: "{lake}"
        max_file_age: 1s
{kafka}
shutdown_timeout: 60s
"#,
        log = dir.join("log").display(),
        lake = dir.join("lake").display(),
        // A delivery that times out is sent again, and the broker cannot tell the copy apart:
        // give a loaded machine ample time so that only crashes are tested here.
        kafka = broker::kafka_sink(
            brokers,
            "crash",
            "encoding: otlp-proto\ncreate_topic:\n  partitions: 3"
        )
        .replace("delivery_timeout: 2s", "delivery_timeout: 120s"),
    )
}

/// What the topic holds.
struct Topic {
    /// The newest revision's span ids per trace.
    newest: Acked,
    /// (trace, revision) pairs found more than once.
    repeated: usize,
    /// Repeated pairs whose copies differ (another revision under the same number).
    divergent: usize,
}

fn topic_revisions(brokers: &str) -> Topic {
    let records = broker::consume(brokers, "crash", usize::MAX, Duration::from_secs(20));
    // (trace, revision) -> each copy's release header and value.
    type Copies = Vec<(String, Vec<u8>, String)>;
    let mut seen: HashMap<(String, u32), Copies> = HashMap::new();
    let mut newest: BTreeMap<String, (u32, BTreeSet<String>)> = BTreeMap::new();
    for r in &records {
        let trace = r.header("trace_id")[3..].to_string();
        let revision: u32 = r.header("revision").parse().unwrap();
        let release = r.header("traceloom_release").to_string();
        seen.entry((trace.clone(), revision)).or_default().push((
            release,
            r.value.clone(),
            format!("p{}@{} t{}", r.partition, r.offset, r.timestamp),
        ));
        let request = Upstream::decode(&r.value[..]).unwrap();
        let spans: BTreeSet<String> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| hex::encode(&s.span_id))
            .collect();
        let entry = newest.entry(trace).or_insert((0, BTreeSet::new()));
        if revision > entry.0 {
            *entry = (revision, spans);
        }
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, copies)| copies.len() > 1).collect();
    if !repeated.is_empty() {
        let examples: Vec<_> = repeated
            .iter()
            .take(5)
            .map(|((t, r), c)| {
                (
                    t,
                    r,
                    c.iter().map(|(rel, _, at)| (rel, at)).collect::<Vec<_>>(),
                )
            })
            .collect();
        eprintln!(
            "{} revisions on the topic more than once, e.g. {examples:?}",
            repeated.len()
        );
    }
    Topic {
        newest: newest.into_iter().map(|(t, (_, s))| (t, s)).collect(),
        repeated: repeated.len(),
        divergent: repeated
            .iter()
            .filter(|(_, copies)| {
                copies
                    .iter()
                    .any(|c| (&c.0, &c.1) != (&copies[0].0, &copies[0].1))
            })
            .count(),
    }
}

fn missing(acked: &Acked, found: &Acked) -> usize {
    acked
        .iter()
        .map(|(trace, spans)| {
            let have = found.get(trace);
            spans
                .iter()
                .filter(|s| !have.is_some_and(|h| h.contains(*s)))
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_duplicates_no_acknowledged_span() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let config_path = dir.path().join("crash.yaml");
    std::fs::write(&config_path, config(dir.path(), grpc, &broker.address())).unwrap();
    eprintln!("working directory {}", dir.path().display());
    let mut process = Process {
        config: config_path,
        log: dir.path().join("traceloom.log"),
        child: None,
        grpc,
    };
    process.start();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let acked = Arc::new(Mutex::new(Acked::new()));
    // Chunk by chunk, so that traces complete (and are released, published and delivered)
    // all through the run and the kills land while every stage is busy.
    let requests: Vec<(usize, usize)> = (0..TRACES / TRACES_PER_REQUEST)
        .flat_map(|chunk| (0..SPANS_PER_TRACE).map(move |round| (chunk, round)))
        .collect();
    let sender = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move { send_all(grpc, requests, &acked).await })
    };
    for _ in 0..KILLS {
        let wait = Duration::from_millis(800 + next() % 2_000);
        tokio::time::sleep(wait).await;
        process.signal(libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(next() % 300)).await;
        process.start();
    }
    let mut failed = sender.await.unwrap();
    while !failed.is_empty() {
        failed = send_all(grpc, failed, &acked).await;
    }
    let acked = acked.lock().unwrap().clone();
    let acked_spans: usize = acked.values().map(BTreeSet::len).sum();
    assert!(
        acked_spans >= 200_000,
        "only {acked_spans} spans acknowledged"
    );

    // Let the last traces go quiet and be released, then stop gracefully.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = process.signal(libc::SIGTERM);
    assert!(status.success(), "shutdown failed: {}", process.stderr());

    let lake = run_script(
        "lake_revisions.py",
        &dir.path().join("lake"),
        "reading the lake failed",
    );
    let lake: serde_json::Value = serde_json::from_str(lake.trim()).unwrap();
    // Kept for a post-mortem if an assertion below fails.
    let dir = dir.keep();
    assert_eq!(
        lake["duplicate_revisions"], 0,
        "a revision was written twice to Parquet"
    );
    assert_eq!(lake["duplicate_span_rows"], 0);
    let in_lake: Acked = serde_json::from_value(lake["newest"].clone()).unwrap();
    assert_eq!(
        missing(&acked, &in_lake),
        0,
        "acknowledged spans missing from Parquet"
    );

    // Shutdown returned after every delivery report: the topic holds everything.
    let topic = topic_revisions(&broker.address());
    if topic.repeated > 0 {
        // Where the copies came from: the Kafka sink's warnings and its read-backs.
        let stderr = process.stderr();
        let lines = stderr
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("topic back"));
        for line in lines.take(40) {
            eprintln!("{line}");
        }
    }
    assert_eq!(
        missing(&acked, &topic.newest),
        0,
        "acknowledged spans missing from the topic"
    );
    assert_eq!(topic.newest.len(), TRACES);
    // Replay never sends a revision the topic already holds (it reads the topic back up to a
    // fence), and never sends another revision under a number already used.
    assert_eq!(topic.divergent, 0, "two different revisions share a number");
    assert_eq!(topic.repeated, 0, "revisions on the topic more than once");
    let stderr = process.stderr();
    assert!(
        stderr.contains("ingest log replayed"),
        "no replay happened:\n{stderr}"
    );
    let read_backs = stderr.matches("read the topic back").count();
    eprintln!("Kafka read-backs: {read_backs}");
    assert!(read_backs > 0, "the Kafka sink never read the topic back");
    std::fs::remove_dir_all(dir).unwrap();
}

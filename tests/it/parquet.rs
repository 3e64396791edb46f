//! The Parquet sink as a lake sees it: external engines read the dataset, a replay rewrites the
//! same files, and a full or read-only disk delays data without losing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use traceloom::assemble::ReleaseReason;
use traceloom::model::{AssembledTrace, TraceId};
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::sink::parquet::ParquetConfig;
use traceloom::telemetry::metrics::{Metrics, QueueGauges};
use traceloom::testkit::{self, resource_spans, span};
use traceloom::topology::queue::bounded;

use crate::harness::{Collector, Settings, metric, wait_for};
use crate::mlflow_oracle::run_script;

/// Reads `lake` with DuckDB, pyarrow and MLflow (`tests/python/lake_check.py`).
pub fn lake_check(lake: &Path) -> Value {
    serde_json::from_str(&run_script("lake_check.py", lake, "lake_check failed")).unwrap()
}

/// Every `*.parquet` file under `dir`, relative path → contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// A trace from two services, as MLflow's distributed example makes it.
fn client_server_request(trace: [u8; 16]) -> ExportTraceServiceRequest {
    let root = span(trace, [1; 8], &[], "client-root");
    let handler = span(trace, [2; 8], &[1; 8], "server-handler");
    ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans("client", vec![root]),
            resource_spans("server", vec![handler]),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_pyarrow_and_mlflow_read_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start_with(Settings {
        parquet_file_age: Some("200ms"),
        lake_path: Some(dir.path().join("lake")),
        ..Settings::default()
    })
    .await;
    let many = testkit::request(3, 50, 4, 300);
    for body in [
        many.encode_to_vec(),
        client_server_request([0xCD; 16]).encode_to_vec(),
    ] {
        assert_eq!(c.post_protobuf(body).await.status(), 200);
    }
    // Files are published by age while traceloom runs, not only at shutdown.
    let traces_dir = c.lake.join("traces");
    wait_for("published files", Duration::from_secs(10), || {
        (!files(&traces_dir).is_empty()).then_some(())
    })
    .await;
    let lake = c.lake.clone();
    let metrics = c.metrics().await;
    c.stop().await;
    assert!(
        metric(
            &metrics,
            "traceloom_sink_files_published_total{pipeline=\"main\",sink=\"lake\"}"
        )
        .unwrap()
            >= 1.0
    );
    let found = lake_check(&lake);
    assert_eq!(found["traces"], 51);
    assert_eq!(found["spans"], 50 * 4 + 2);
    assert_eq!(found["join_rows"], 50 * 4 + 2);
    assert_eq!(found["from_json"], 51);
    let duck = &found["duckdb_types"];
    for (table, column, kind) in [
        ("traces", "request_time", "TIMESTAMP WITH TIME ZONE"),
        ("traces", "tags", "MAP(VARCHAR, VARCHAR)"),
        ("traces", "trace_metadata", "MAP(VARCHAR, VARCHAR)"),
        ("traces", "services", "VARCHAR[]"),
        ("traces", "span_count", "INTEGER"),
        ("traces", "input_tokens", "BIGINT"),
        ("traces", "partial", "BOOLEAN"),
        ("traces", "date", "DATE"),
        ("spans", "start_time", "TIMESTAMP WITH TIME ZONE"),
        ("spans", "attributes", "MAP(VARCHAR, VARCHAR)"),
        ("spans", "duration_ns", "BIGINT"),
    ] {
        assert_eq!(duck[table][column], kind, "{table}.{column}");
    }
    let events = duck["spans"]["events"].as_str().unwrap();
    assert!(
        events.starts_with("STRUCT(\"name\" VARCHAR, \"time\" TIMESTAMP WITH TIME ZONE")
            && events.ends_with("[]"),
        "{events}"
    );
    let arrow = &found["pyarrow"];
    assert_eq!(arrow["traces"]["rows"], 51);
    assert_eq!(arrow["spans"]["rows"], 202);
    let types = &arrow["traces"]["types"];
    assert_eq!(types["request_time"], "timestamp[ms, tz=UTC]");
    assert!(
        types["tags"]
            .as_str()
            .unwrap()
            .starts_with("map<string, string")
    );
    assert!(
        types["services"]
            .as_str()
            .unwrap()
            .starts_with("list<item: string")
    );
    assert_eq!(arrow["spans"]["types"]["end_time"], "timestamp[ns, tz=UTC]");
    let two = &found["by_trace"][format!("tr-{}@1", "cd".repeat(16))];
    assert_eq!(two["services"], serde_json::json!(["client", "server"]));
    assert_eq!(
        two["span_names"],
        serde_json::json!(["client-root", "server-handler"])
    );
    assert_eq!(two["name"], "client-root");
    assert_eq!(two["state"], "OK");
}

/// Revisions of traces spread over two days, one of them twice (revisions 1 and 2).
fn revisions() -> Vec<Arc<AssembledTrace>> {
    (0..40u8)
        .map(|i| {
            let id = [i + 1; 16];
            let mut root = span(id, [1; 8], &[], &format!("trace {i}"));
            let day = u64::from(i % 2) * 86_400_000_000_000;
            root.start_time_unix_nano += day;
            root.end_time_unix_nano += day;
            let revision = if i == 7 { 2 } else { 1 };
            Arc::new(testkit::assembled(
                TraceId(id),
                vec![resource_spans("svc", vec![root])],
                revision,
                ReleaseReason::Complete,
            ))
        })
        .collect()
}

/// Runs a Parquet sink at `lake` over `traces` until its input closes.
async fn write(lake: &Path, traces: &[Arc<AssembledTrace>]) {
    let yaml = format!("path: \"{}\"\nmax_file_age: 1h", lake.display());
    let config: ParquetConfig = serde_saphyr::from_str(&yaml).unwrap();
    let sink = config
        .build("lake", Metrics::new().sink("test", "lake"))
        .unwrap();
    let (tx, rx) = bounded(1 << 30, QueueGauges::default());
    for t in traces {
        tx.send(Arc::clone(t), t.bytes).await.unwrap();
    }
    drop(tx);
    sink.run(rx, traceloom::log::SinkCommits::detached())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replay_rewrites_the_same_files_instead_of_adding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let traces = revisions();
    write(&lake, &traces).await;
    let first = files(&lake);
    assert_eq!(first.len(), 4, "two days x two tables: {:?}", first.keys());
    write(&lake, &traces).await;
    let second = files(&lake);
    assert_eq!(first, second, "same names, same bytes");
    let found = lake_check(&lake);
    assert_eq!(found["traces"], 40);
    assert_eq!(found["spans"], 40);
    assert!(
        found["by_trace"]
            .get(format!("tr-{}@2", "08".repeat(16)))
            .is_some()
    );
}

/// A small tmpfs mounted for one test (needs root, as CI has), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test fills a small tmpfs and needs root to mount it (CI runs as root)"
        );
        std::fs::create_dir_all(at).unwrap();
        let fs = Self(at.to_path_buf());
        fs.mount_with(&format!("size={size}"), false);
        fs
    }

    fn mount_with(&self, options: &str, remount: bool) {
        let options = if remount {
            format!("remount,{options}")
        } else {
            options.to_string()
        };
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -o {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `traces` single-span traces whose attributes do not compress (random hex, ~2 KB a span).
fn incompressible(seed: u64, traces: usize) -> ExportTraceServiceRequest {
    let mut x = seed | 1;
    let mut noise = |n: usize| {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect::<String>()
    };
    let spans = (0..traces)
        .map(|t| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&seed.to_be_bytes());
            id[8..].copy_from_slice(&(t as u64 + 1).to_be_bytes());
            let mut s = span(id, [1; 8], &[], "noisy");
            s.attributes = vec![testkit::kv("payload", &noise(128))];
            s
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("svc", spans)],
    }
}

/// Posts batches of fresh traces until one is refused with 503 (back-pressure); returns the
/// number of traces accepted.
async fn post_until_refused(c: &Collector, seed: &mut u64) -> usize {
    let mut accepted = 0;
    for _ in 0..400 {
        *seed += 1;
        let status = c
            .post_protobuf(incompressible(*seed, 100).encode_to_vec())
            .await
            .status();
        match status.as_u16() {
            200 => accepted += 100,
            503 => return accepted,
            other => panic!("unexpected {other}"),
        }
    }
    panic!("no back-pressure after 400 requests while the disk could not be written");
}

async fn wait_for_errors(c: &Collector, above: f64) -> f64 {
    let series = "traceloom_sink_errors_total{pipeline=\"main\",sink=\"lake\"}";
    let mut errors = 0.0;
    for _ in 0..200 {
        errors = metric(&c.metrics().await, series).unwrap_or(0.0);
        if errors > above {
            return errors;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no sink error counted ({errors})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_disk_pushes_back_and_loses_nothing_once_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let disk = Tmpfs::mount(&lake, "256k");
    let c = Collector::start_with(Settings {
        parquet_file_age: Some("100ms"),
        lake_path: Some(lake.clone()),
        queue_bytes: "1MiB",
        admission_timeout: "500ms",
        ..Settings::default()
    })
    .await;
    let mut seed = 0;
    // Full: publishing fails, is counted and retried; the queues fill; receivers answer 503.
    let mut accepted = post_until_refused(&c, &mut seed).await;
    let errors = wait_for_errors(&c, 0.0).await;
    disk.mount_with("size=256m", true);
    // Read-only: the same, until it is writable again.
    disk.mount_with("ro", true);
    accepted += post_until_refused(&c, &mut seed).await;
    wait_for_errors(&c, errors).await;
    disk.mount_with("rw", true);
    c.stop().await;
    let found = lake_check(&lake);
    assert_eq!(
        found["traces"].as_u64(),
        Some(accepted as u64),
        "every accepted trace, once"
    );
    drop(disk);
}

/// Opens every published file of `lake` and reads all its rows; returns the file count.
fn every_published_file_reads(lake: &Path) -> usize {
    let all = files(&lake.join("traces"))
        .into_iter()
        .chain(files(&lake.join("spans")));
    let mut n = 0;
    for (path, bytes) in all {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .unwrap_or_else(|e| panic!("{} is not a valid Parquet file: {e}", path.display()))
        .build()
        .unwrap();
        for batch in reader {
            batch.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_publishing_leaves_only_whole_files() {
    use crate::shutdown::{spawn, terminate};
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let config = dir.path().join("pipeline.yaml");
    let settings = Settings {
        parquet_file_age: Some("500ms"),
        ..Settings::default()
    };
    let yaml = crate::harness::pipeline_yaml(
        &settings,
        &dir.path().join("out.jsonl"),
        &lake,
        &dir.path().join("log"),
    )
    .replace(
        "max_file_age: 500ms",
        "max_file_age: 500ms\n        max_file_size: 4MiB",
    )
    // The last start replays and writes everything the kills left (tens of thousands of spans,
    // in a debug build, on a loaded machine): room for that, which is not what is tested here.
    .replace("shutdown_timeout: 20s", "shutdown_timeout: 120s");
    assert!(yaml.contains("shutdown_timeout: 120s"));
    std::fs::write(&config, yaml).unwrap();
    let (mut leftovers, mut mid_write) = (0, 0);
    for round in 0..4u64 {
        let mut p = spawn(&config);
        let url = p.http.clone();
        let sender = tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let body = incompressible(round << 32 | i, 200).encode_to_vec();
                let sent = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1200 + 200 * round)).await;
        let pid = p.child.id();
        mid_write += usize::from(
            tokio::task::spawn_blocking(move || wait_for_staging_file(pid))
                .await
                .unwrap(),
        );
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        sender.await.unwrap();
        leftovers += usize::from(std::fs::read_dir(lake.join("_staging")).unwrap().count() > 0);
        every_published_file_reads(&lake);
    }
    // A restart clears what the kills left half-written; engines read every published file.
    let mut p = spawn(&config);
    assert_eq!(std::fs::read_dir(lake.join("_staging")).unwrap().count(), 0);
    terminate(&p.child);
    let status = p.child.wait().unwrap();
    let log: Vec<String> = p.stderr.try_iter().collect();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    let published = every_published_file_reads(&lake);
    assert!(
        published >= 2,
        "files were published between kills ({published})"
    );
    let found = lake_check(&lake);
    assert!(found["traces"].as_u64().unwrap() > 0);
    eprintln!(
        "{published} files published; {mid_write} of 4 kills hit an open staging file, \
         {leftovers} left one behind"
    );
    assert!(
        mid_write > 0,
        "no kill landed while a file was being written"
    );
}

/// Polls the open files of process `pid` until one is in `_staging/` (a publish in progress);
/// false if none appeared within 5 s.
fn wait_for_staging_file(pid: u32) -> bool {
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let Ok(entries) = std::fs::read_dir(&fds) else {
            return false;
        };
        for entry in entries.flatten() {
            if std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("/_staging/"))
            {
                return true;
            }
        }
    }
    false
}

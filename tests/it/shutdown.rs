//! Graceful shutdown of the real binary: SIGTERM while the sink is blocked (a FIFO not yet read)
//! still delivers every accepted span, then the process exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use traceloom::testkit;

use crate::harness::{Settings, pipeline_yaml, total_spans, wait_for};
use crate::overload::fifo_reader;

/// A `traceloom run` process and the addresses it logged.
pub struct Process {
    pub child: Child,
    pub http: String,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

/// Starts the binary with JSON logs and waits for its "listening" lines.
pub fn spawn(config: &std::path::Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_traceloom"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut http = None;
    while http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("traceloom logs its addresses");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" && v["protocol"] == "http" {
            http = Some(format!("http://{}/v1/traces", v["addr"].as_str().unwrap()));
        }
    }
    Process {
        child,
        http: http.unwrap(),
        stderr: rx,
    }
}

/// Writes the harness's default pipeline, its debug sink writing to `out`, into `dir`.
fn default_config(dir: &std::path::Path, out: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("pipeline.yaml");
    let yaml = pipeline_yaml(
        &Settings::default(),
        out,
        &dir.join("lake"),
        &dir.join("log"),
    );
    std::fs::write(&config, yaml).unwrap();
    config
}

/// Sends SIGTERM to the process.
pub fn terminate(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_everything_accepted_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("sink.fifo");
    let (go, delivered) = fifo_reader(&fifo);
    let config = default_config(dir.path(), &fifo);
    let mut p = spawn(&config);
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for seed in 0..40 {
        let resp = client
            .post(&p.http)
            .header("content-type", "application/x-protobuf")
            .body(testkit::request(seed, 5, 4, 300).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        accepted += 20;
    }
    // The FIFO has not been read: most batches are still queued inside traceloom.
    terminate(&p.child);
    go.send(()).unwrap();
    let status = tokio::task::spawn_blocking(move || p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    wait_for(
        "the reader to reach the end of the FIFO",
        Duration::from_secs(10),
        || (total_spans(&delivered.lock().unwrap()) >= accepted).then_some(()),
    )
    .await;
    assert_eq!(total_spans(&delivered.lock().unwrap()), accepted);
    let logs: Vec<String> = p.stderr.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("shutdown complete")),
        "no completion log in {logs:?}"
    );
}

#[test]
fn sigterm_as_soon_as_the_listeners_open_still_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = default_config(dir.path(), &dir.path().join("out.jsonl"));
    // Supervisors send SIGTERM whenever they like; one that lands while start-up is finishing
    // must drain and exit 0, never take the default action and kill the process.
    for _ in 0..3 {
        let mut p = spawn(&config);
        terminate(&p.child);
        let status = p.child.wait().unwrap();
        let logs: Vec<String> = p.stderr.try_iter().collect();
        assert!(status.success(), "{status}: {}", logs.join("\n"));
    }
}

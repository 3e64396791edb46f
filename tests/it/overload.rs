//! Back-pressure: the debug sink writes into a FIFO that nobody reads, so it blocks like a stuck
//! downstream. Receivers must then answer 503 + `Retry-After` / `UNAVAILABLE` within a bounded
//! time while queues stay within their byte bounds; once the FIFO is read again, every accepted
//! span is delivered.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::Value;
use traceloom::testkit;

use crate::harness::{Collector, Settings, metric, total_spans, wait_for};

/// Creates a FIFO and a reader thread that opens it (unblocking the writer) but reads only after
/// `go` fires; returns the lines it read.
pub fn fifo_reader(path: &Path) -> (tokio::sync::oneshot::Sender<()>, Arc<Mutex<Vec<Value>>>) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo failed");
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // The sender may be dropped when the test only checks refusals; read anyway.
        let _ = wait.blocking_recv();
        for line in BufReader::new(file).lines() {
            let line = line.unwrap();
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    (go, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sink_pushes_back_then_delivers_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("sink.fifo");
    let (go, delivered) = fifo_reader(&fifo);
    let c = Collector::start_with(Settings {
        queue_bytes: "256KiB",
        admission_timeout: "100ms",
        sink_path: Some(fifo),
        ..Settings::default()
    })
    .await;
    let client = reqwest::Client::new();
    let mut accepted_spans = 0;
    let mut refusal = None;
    for seed in 0..500u64 {
        let body = testkit::request(seed, 10, 8, 400).encode_to_vec();
        let started = Instant::now();
        let resp = client
            .post(c.http_url())
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            accepted_spans += 80;
            continue;
        }
        let took = started.elapsed();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        refusal = Some(took);
        break;
    }
    let took = refusal.expect("the receiver pushed back before 500 requests");
    assert!(took < Duration::from_secs(2), "the 503 came after {took:?}");
    assert!(accepted_spans > 0);

    let mut grpc = TraceServiceClient::connect(c.grpc_url()).await.unwrap();
    let err = grpc
        .export(testkit::upstream(&testkit::request(999, 10, 8, 400)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.message(), "pipeline is full, retry after 1s");

    let m = c.metrics().await;
    let queued = metric(&m, r#"traceloom_queue_bytes{name="pipeline.main"}"#).unwrap();
    assert!(
        queued <= 256.0 * 1024.0,
        "pipeline queue over its bound: {queued}"
    );
    let sink_queued = metric(&m, r#"traceloom_queue_bytes{name="sink.main.out"}"#).unwrap();
    assert!(
        sink_queued <= 256.0 * 1024.0,
        "sink queue over its bound: {sink_queued}"
    );
    assert!(
        metric(
            &m,
            r#"traceloom_receiver_refused_spans_total{protocol="grpc",reason="overload"}"#
        ) == Some(80.0)
    );

    go.send(()).unwrap();
    wait_for(
        "every accepted span delivered",
        Duration::from_secs(20),
        || (total_spans(&delivered.lock().unwrap()) == accepted_spans).then_some(()),
    )
    .await;
    c.stop().await;
    assert_eq!(
        total_spans(&delivered.lock().unwrap()),
        accepted_spans,
        "nothing extra, nothing lost"
    );
}

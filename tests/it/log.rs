//! The ingest log at the edges: a damaged log at start, a sink that is down while load goes on,
//! and a full disk under the log.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use traceloom::log::record;
use traceloom::log::segment::SegmentLog;
use traceloom::testkit;

use crate::broker::{self, Broker};
use crate::harness::{Collector, Settings, metric, total_spans};

/// Writes the records of `traces` traces of 4 spans (root included) into a log at `dir`, as a
/// process that crashed before releasing them would have left them; returns the segment file.
fn crashed_log(dir: &Path, traces: usize) -> std::path::PathBuf {
    let batch = testkit::batch(7, traces, 4, 100);
    let (mut log, _) = SegmentLog::open(&dir.join("spans"), 64 << 20, false, |p, _| p).unwrap();
    for r in record::encode(&batch) {
        log.append(&r.bytes, log.end());
    }
    log.commit(true).unwrap();
    dir.join("spans").join(format!("{:020}.seg", 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tail_is_cut_and_reported_and_everything_before_it_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let segment = crashed_log(&log_dir, 10);
    // Garble the last record's payload and add half a frame after it, as a torn write would.
    let mut data = std::fs::read(&segment).unwrap();
    let last = data.len() - 3;
    data[last] ^= 0x5A;
    data.extend_from_slice(&[200, 0, 0]);
    std::fs::write(&segment, &data).unwrap();

    let c = Collector::start_with(Settings {
        log_dir: Some(log_dir),
        ..Settings::default()
    })
    .await;
    let lines = c.wait_for_spans(36).await;
    assert_eq!(
        lines.len(),
        9,
        "nine whole traces replayed; the garbled tenth is cut"
    );
    let metrics = c.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "traceloom_log_damaged_segments_total{pipeline=\"main\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "traceloom_log_replayed_records_total{pipeline=\"main\"}"
        ),
        Some(9.0)
    );
    // The collector goes on taking spans after the repair.
    let more = testkit::request(99, 1, 3, 50).encode_to_vec();
    assert_eq!(c.post_protobuf(more).await.status(), 200);
    let lines = c.stop_and_read().await;
    assert_eq!(total_spans(&lines), 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_the_log_fills_to_its_bound_then_drains_when_it_returns() {
    let mut broker = Broker::start();
    let topic = "down";
    // Queues larger than the log, so that the log's bound is the one reached.
    let c = Collector::start_with(Settings {
        queue_bytes: "16MiB",
        admission_timeout: "200ms",
        extra_sinks: broker::kafka_sink(
            &broker.address(),
            topic,
            &format!("{}\nmax_in_flight_bytes: 16MiB", broker::CREATE),
        ),
        log_max_bytes: "2MiB",
        log_segment_size: "128KiB",
        ..Settings::default()
    })
    .await;
    broker.kill();
    let mut acked = BTreeSet::new();
    let mut refusal = None;
    for seed in 1..1_000u64 {
        let body = testkit::request(seed, 5, 4, 1_000).encode_to_vec();
        let resp = c.post_protobuf(body).await;
        if resp.status() == 200 {
            acked.extend((1..=5).map(|t| trace_hex(seed, t)));
            continue;
        }
        assert_eq!(resp.status(), 503);
        refusal = Some(resp.text().await.unwrap());
        break;
    }
    let refusal = refusal.expect("the receivers never pushed back");
    assert!(refusal.contains("the ingest log is full"), "{refusal}");
    let full = log_bytes(&c).await;
    assert!(
        full <= 2.0 * 1024.0 * 1024.0,
        "the log outgrew its bound: {full}"
    );

    broker.restart();
    broker::wait_for_topic(&broker.address(), topic, Duration::from_secs(60));
    let records = broker::consume(
        &broker.address(),
        topic,
        acked.len(),
        Duration::from_secs(90),
    );
    let on_topic: BTreeSet<String> = records
        .iter()
        .map(|r| r.header("trace_id")[3..].to_string())
        .collect();
    let lacking = acked.difference(&on_topic).count();
    assert_eq!(lacking, 0, "acknowledged traces missing from the topic");
    // Delivered records go once the traces holding them are released: at once when the log is
    // over three quarters full (the traces are kept for late spans otherwise).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log_bytes(&c).await > full * 0.75 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not shrink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop().await;
}

async fn log_bytes(c: &Collector) -> f64 {
    metric(&c.metrics().await, "traceloom_log_bytes{pipeline=\"main\"}").unwrap()
}

/// The hex trace id of trace `t` (1-based) of `testkit::request(seed, ..)`.
fn trace_hex(seed: u64, t: u64) -> String {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seed.to_be_bytes());
    id[8..].copy_from_slice(&t.to_be_bytes());
    hex::encode(id)
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_retryable_answers_and_no_damage_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, "4m");
    let settings = || Settings {
        log_dir: Some(disk.join("log")),
        sink_path: Some(dir.path().join("out.jsonl")),
        ..Settings::default()
    };
    let c = Collector::start_with(settings()).await;
    let filler = disk.join("filler");
    let free = fs_free(&disk);
    std::fs::write(&filler, vec![0u8; free.saturating_sub(16 << 10) as usize]).unwrap();
    let mut accepted = 0;
    let mut refused = 0;
    for seed in 1..200u64 {
        let body = testkit::request(seed, 2, 4, 1_000).encode_to_vec();
        let resp = c.post_protobuf(body).await;
        match resp.status().as_u16() {
            200 => accepted += 8,
            503 => {
                let text = resp.text().await.unwrap();
                assert!(text.contains("cannot write the ingest log"), "{text}");
                refused += 1;
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "the full disk was never reported");
    std::fs::remove_file(&filler).unwrap();
    let body = testkit::request(500, 2, 4, 1_000).encode_to_vec();
    assert_eq!(c.post_protobuf(body).await.status(), 200, "no recovery");
    accepted += 8;
    let lines = c.stop_and_read().await;
    assert_eq!(total_spans(&lines), accepted);
    // A restart finds the log whole.
    let c = Collector::start_with(settings()).await;
    let metrics = c.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "traceloom_log_damaged_segments_total{pipeline=\"main\"}"
        ),
        Some(0.0)
    );
    c.stop().await;
}

fn fs_free(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

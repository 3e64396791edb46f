//! Starts traceloom in-process on ephemeral loopback ports with a debug sink in a temp dir, and
//! reads back what the sink wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use traceloom::config::Config;
use traceloom::telemetry::metrics::Metrics;
use traceloom::topology::{self, Running};

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running collector and where its debug sink writes.
pub struct Collector {
    running: Option<Running>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub out: PathBuf,
    /// The Parquet sink's dataset, when [`Settings::parquet_file_age`] is set.
    pub lake: PathBuf,
    _dir: tempfile::TempDir,
}

/// Pipeline settings a test may change.
pub struct Settings {
    pub max_body_size: &'static str,
    pub queue_bytes: &'static str,
    pub admission_timeout: &'static str,
    /// The debug sink's output; `None` = a file in the temp dir.
    pub sink_path: Option<PathBuf>,
    /// Origins allowed by CORS on the HTTP receiver; `None` = no CORS section.
    pub cors_origin: Option<&'static str>,
    /// The debug sink's format: `otlp` (one line per request) or `mlflow` (one trace per line).
    pub format: &'static str,
    /// The pipeline's default MLflow experiment.
    pub default_experiment: &'static str,
    /// The assembler's idle timeout.
    pub idle_timeout: &'static str,
    /// The assembler's maximum trace age.
    pub max_trace_age: &'static str,
    /// The assembler's bound on held span bytes.
    pub max_in_flight_bytes: &'static str,
    /// A second sink, `lake` (Parquet under [`Collector::lake`]), publishing files at this age.
    pub parquet_file_age: Option<&'static str>,
    /// Where the Parquet sink writes; `None` = `lake/` in the temp dir.
    pub lake_path: Option<PathBuf>,
    /// More sinks, as YAML at the indentation of a sink name (six spaces).
    pub extra_sinks: String,
    /// The ingest log's directory; `None` = `log/` in the temp dir.
    pub log_dir: Option<PathBuf>,
    /// The ingest log's fsync policy.
    pub fsync: &'static str,
    /// The ingest log's `max_log_bytes`.
    pub log_max_bytes: &'static str,
    /// The ingest log's `segment_size`.
    pub log_segment_size: &'static str,
    /// The assembler's `max_spans_per_trace`.
    pub max_spans_per_trace: &'static str,
    /// The assembler's late-span window.
    pub late_span_window: &'static str,
    /// The pipeline's `stages:`, as a YAML flow list.
    pub stages: &'static str,
    /// `mlflow.workers`; `None`: the default (one per core).
    pub workers: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_size: "16MiB",
            queue_bytes: "64MiB",
            // Long enough that a disk stalled by another test's writes (an fsync waiting behind
            // their writeback) is not mistaken for back-pressure; tests of back-pressure set theirs.
            admission_timeout: "5s",
            sink_path: None,
            cors_origin: None,
            format: "otlp",
            default_experiment: "0",
            idle_timeout: "50ms",
            max_trace_age: "20s",
            max_in_flight_bytes: "256MiB",
            parquet_file_age: None,
            lake_path: None,
            extra_sinks: String::new(),
            log_dir: None,
            fsync: "always",
            log_max_bytes: "1GiB",
            log_segment_size: "64MiB",
            max_spans_per_trace: "100000",
            late_span_window: "5m",
            stages: "[]",
            workers: None,
        }
    }
}

/// The YAML of a one-pipeline collector on ephemeral ports.
pub fn pipeline_yaml(s: &Settings, out: &Path, lake: &Path, log: &Path) -> String {
    format!(
        r#"
receivers:
  otlp:
    type: otlp
    grpc:
      endpoint: 127.0.0.1:0
      max_message_size: {body}
    http:
      endpoint: 127.0.0.1:0
      max_body_size: {body}{cors}
admin:
  endpoint: 127.0.0.1:0
pipelines:
  main:
    receivers: [otlp]
    queue:
      max_bytes: {queue}
      admission_timeout: {wait}
    log:
      dir: "{log}"
      fsync: {fsync}
      max_log_bytes: {log_max}
      segment_size: {segment}
    assemble:
      idle_timeout: {idle}
      max_trace_age: {max_age}
      max_in_flight_bytes: {in_flight}
      max_spans_per_trace: {max_spans}
      late_span_window: {late}
    mlflow:
      default_experiment: "{experiment}"{workers}
    stages: {stages}
    sinks:
      out:
        type: debug
        path: "{out}"
        format: {format}{parquet}
{extra}
shutdown_timeout: 20s
"#,
        body = s.max_body_size,
        queue = s.queue_bytes,
        wait = s.admission_timeout,
        out = out.display(),
        log = log.display(),
        fsync = s.fsync,
        log_max = s.log_max_bytes,
        segment = s.log_segment_size,
        stages = s.stages,
        late = s.late_span_window,
        format = s.format,
        experiment = s.default_experiment,
        workers = s
            .workers
            .map_or(String::new(), |n| format!("\n      workers: {n}")),
        extra = s.extra_sinks,
        idle = s.idle_timeout,
        max_age = s.max_trace_age,
        in_flight = s.max_in_flight_bytes,
        max_spans = s.max_spans_per_trace,
        parquet = s.parquet_file_age.map_or(String::new(), |age| {
            format!(
                "\n      lake:\n        type: parquet\n        path: \"{}\"\n        max_file_age: {age}",
                lake.display()
            )
        }),
        cors = s.cors_origin.map_or(String::new(), |o| {
            format!("\n      cors:\n        allowed_origins: [\"{o}\"]\n        max_age: 10m")
        }),
    )
}

impl Collector {
    pub async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        Self::try_start_with(settings).await.unwrap()
    }

    /// Starts, or says why the collector would not start.
    pub async fn try_start_with(settings: Settings) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = settings
            .sink_path
            .clone()
            .unwrap_or_else(|| dir.path().join("out.jsonl"));
        let lake = settings
            .lake_path
            .clone()
            .unwrap_or_else(|| dir.path().join("lake"));
        let log = settings
            .log_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("log"));
        let config =
            Config::parse(&pipeline_yaml(&settings, &out, &lake, &log), "test.yaml").unwrap();
        let running = topology::start(&config, Arc::new(Metrics::new()))
            .await
            .map_err(|e| e.to_string())?;
        let a = &running.addresses;
        Ok(Self {
            grpc: a.grpc["otlp"],
            http: a.http["otlp"],
            admin: a.admin.unwrap(),
            running: Some(running),
            out,
            lake,
            _dir: dir,
        })
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Every line the debug sink has written so far.
    pub fn lines(&self) -> Vec<Value> {
        read_lines(&self.out)
    }

    /// Waits until the sink holds at least `spans` spans; returns all lines.
    pub async fn wait_for_spans(&self, spans: usize) -> Vec<Value> {
        wait_for(
            &format!("{spans} spans in the debug sink"),
            Duration::from_secs(10),
            || {
                let lines = self.lines();
                (total_spans(&lines) >= spans).then_some(lines)
            },
        )
        .await
    }

    /// Posts an OTLP/HTTP protobuf body to the HTTP receiver.
    pub async fn post_protobuf(&self, body: Vec<u8>) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.http_url())
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }

    /// Stops (which releases every held trace) and returns everything the sink wrote.
    pub async fn stop_and_read(mut self) -> Vec<Value> {
        self.running.take().unwrap().shutdown().await.unwrap();
        self.lines()
    }
}

/// The complete (newline-terminated) JSON lines of `path`; a line still being written is left out.
pub fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn total_spans(lines: &[Value]) -> usize {
    lines
        .iter()
        .map(|l| l["span_count"].as_u64().unwrap() as usize)
        .sum()
}

/// Every span in the lines (`format: otlp`), as OTLP/JSON objects, each with its resource
/// attached under `"_resource"`.
pub fn spans(lines: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for line in lines {
        {
            for rs in line["resourceSpans"].as_array().unwrap() {
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for span in ss["spans"].as_array().unwrap() {
                        let mut span = span.clone();
                        span["_resource"] = rs["resource"].clone();
                        out.push(span);
                    }
                }
            }
        }
    }
    out
}

/// The value of a metric line, e.g. `traceloom_receiver_accepted_spans_total{protocol="grpc"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

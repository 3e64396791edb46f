//! The stage pipeline at work: hot reload under load, a stage that drops everything, and
//! fan-out isolation between a failing sink and a healthy one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::testkit::{resource_spans, span};

use crate::broker::{Broker, CREATE, free_port, kafka_sink};
use crate::harness::{Collector, Settings, metric, pipeline_yaml, read_lines, wait_for};
use crate::kafka::{batches, delivered, post_with_retries};
use crate::parquet::lake_check;

const COLORS: [&str; 3] = ["red", "blue", "green"];

/// A request holding trace `n` whole: a root named `root-<color>` and two children.
fn trace_body(n: u64) -> (String, Vec<u8>) {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[15] = 1;
    let color = COLORS[(n % 3) as usize];
    let root = span(id, [1; 8], &[], &format!("root-{color}"));
    let children = (2..4).map(|c| span(id, [c; 8], &[1; 8], "child"));
    let spans = std::iter::once(root).chain(children).collect();
    let body = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("reload-it", spans)],
    }
    .encode_to_vec();
    (format!("tr-{}", hex::encode(id)), body)
}

/// The pipeline file with `dropped` color filtered out and every kept trace tagged `version`.
fn reload_config(ports: [u16; 3], out: &std::path::Path, dropped: &str, version: &str) -> String {
    let stages = format!(
        "[{{type: filter, drop_traces: [{{name: root-{dropped}}}]}}, {{type: enrich, tags: {{rules: {version}}}}}]"
    );
    let settings = Settings {
        format: "mlflow",
        idle_timeout: "200ms",
        stages: Box::leak(stages.into_boxed_str()),
        ..Settings::default()
    };
    let dir = out.parent().unwrap();
    let mut yaml = pipeline_yaml(&settings, out, &dir.join("lake"), &dir.join("log"));
    for port in ports {
        yaml = yaml.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    }
    yaml
}

fn write(path: &std::path::Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_changed_under_load_applies_to_later_releases_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (out, file, stderr) = (
        dir.path().join("out.jsonl"),
        dir.path().join("pipeline.yaml"),
        dir.path().join("stderr.log"),
    );
    let ports = [free_port(), free_port(), free_port()];
    write(&file, &reload_config(ports, &out, "red", "v1"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_traceloom"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v1/traces", ports[1]);
    let health = format!("http://127.0.0.1:{}/health", ports[2]);
    let started = Instant::now();
    while !reqwest::get(&health)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(started.elapsed() < Duration::from_secs(20), "no /health");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();

    // Load: one whole trace per request, colors in turn, for ~7 s.
    let sender = tokio::spawn(async move {
        let mut sent = BTreeMap::new();
        for n in 0..350u64 {
            let (id, body) = trace_body(n);
            post_with_retries(url.clone(), vec![body]).await;
            sent.insert(id, COLORS[(n % 3) as usize]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });

    // An invalid file is refused (seen by the file watch, then on SIGHUP) and v1 keeps running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    write(&file, "pipelines:\n  main:\n    stages: [{type: fitler}]\n");
    wait_for("the refusal", Duration::from_secs(10), || {
        log().contains("reload refused").then_some(())
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for("the SIGHUP refusal", Duration::from_secs(10), || {
        log().contains("trigger=\"SIGHUP\"").then_some(())
    })
    .await;
    // v2 drops blue instead.
    write(&file, &reload_config(ports, &out, "blue", "v2"));
    wait_for("the reload", Duration::from_secs(10), || {
        log().contains("pipeline file reloaded").then_some(())
    })
    .await;
    let sent = sender.await.unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", log());

    let mut seen: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for line in read_lines(&out) {
        let info = &line["info"];
        let id = info["trace_id"].as_str().unwrap().to_string();
        let version = info["tags"]["rules"].as_str().unwrap().to_string();
        let spans = line["data"]["spans"].as_array().unwrap().len();
        assert!(
            seen.insert(id.clone(), (version, spans)).is_none(),
            "{id} twice"
        );
    }
    let mut versions = BTreeMap::new();
    for (id, color) in &sent {
        match seen.get(id) {
            Some((version, spans)) => {
                assert_eq!(*spans, 3, "{id}: every span");
                let dropped = if version == "v1" { "red" } else { "blue" };
                assert_ne!(*color, dropped, "{id} passed the {version} filter");
                *versions.entry((version.clone(), *color)).or_insert(0) += 1;
            }
            None => assert_ne!(*color, "green", "{id}: green traces are never dropped"),
        }
    }
    for key in [
        ("v1", "blue"),
        ("v1", "green"),
        ("v2", "red"),
        ("v2", "green"),
    ] {
        assert!(
            versions.contains_key(&(key.0.to_string(), key.1)),
            "no {key:?} trace: {versions:?}"
        );
    }
    assert!(log().contains("stages reloaded"), "{}", log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_a_stage_drops_still_let_the_ingest_log_go() {
    let c = Collector::start_with(Settings {
        stages: "[{type: filter, drop_traces: [{}]}]",
        log_segment_size: "64KiB",
        // The assembler keeps released traces this long for late spans, and the log with them.
        late_span_window: "1s",
        ..Settings::default()
    })
    .await;
    let (bodies, ids) = batches(7, 40);
    assert_eq!(post_with_retries(c.http_url(), bodies).await, 0);
    // Every revision was dropped, none is awaited: the checkpoint passes them and the segments
    // behind it are deleted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = c.metrics().await;
        let dropped = metric(
            &text,
            "traceloom_stage_traces_dropped_total{pipeline=\"main\",stage=\"0-filter\",reason=\"dropped\"}",
        );
        let segments = metric(&text, "traceloom_log_segments{pipeline=\"main\"}");
        if dropped == Some(ids.len() as f64) && segments == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.lines().is_empty(), "nothing reached the sink");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_slows_only_kafka_until_its_queue_fills_then_both_get_everything() {
    let mut broker = tokio::task::spawn_blocking(Broker::start).await.unwrap();
    let lake = tempfile::tempdir().unwrap();
    let c = Collector::start_with(Settings {
        lake_path: Some(lake.path().to_path_buf()),
        // A Kafka sink that holds at most 256 KiB awaiting the broker, then stops reading its queue.
        extra_sinks: kafka_sink(
            &broker.address(),
            "isolation",
            &format!("{CREATE}\nmax_in_flight_bytes: 256KiB"),
        ),
        parquet_file_age: Some("200ms"),
        queue_bytes: "256KiB",
        admission_timeout: "500ms",
        max_in_flight_bytes: "512KiB",
        ..Settings::default()
    })
    .await;
    tokio::task::block_in_place(|| broker.kill());
    let (bodies, ids) = batches(11, 80);
    let sender = tokio::spawn(post_with_retries(c.http_url(), bodies));
    let written = |text: &str, sink: &str| {
        metric(
            text,
            &format!("traceloom_sink_written_traces_total{{pipeline=\"main\",sink=\"{sink}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // The lake keeps writing while Kafka has nothing; then the Kafka queue is full, the pipeline
    // waits for it, and receivers answer 503.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text;
    loop {
        text = c.metrics().await;
        let refused = metric(
            &text,
            "traceloom_receiver_refused_spans_total{protocol=\"http_protobuf\",reason=\"overload\"}",
        )
        .unwrap_or(0.0);
        if written(&text, "lake") > 0.0 && refused > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(written(&text, "kafka"), 0.0);
    let lake_while_down = written(&text, "lake");
    assert!(
        (lake_while_down as usize) < ids.len(),
        "the lake was held back once the Kafka queue filled"
    );
    tokio::task::block_in_place(|| broker.restart());
    sender.await.unwrap();
    delivered(&c, ids.len()).await;
    c.stop().await;
    let found = lake_check(lake.path());
    assert_eq!(found["traces"], ids.len());
    let in_lake: std::collections::BTreeSet<String> = found["by_trace"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.split('@').next().unwrap().to_string())
        .collect();
    assert_eq!(in_lake, ids);
}

/// A one-receiver, one-pipeline file whose pipeline takes experiment `experiment` only and
/// writes MLflow lines to `out`.
fn select_config(out: &std::path::Path, log: &std::path::Path, experiment: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    type: otlp\n    http: {{endpoint: \"127.0.0.1:0\"}}\nadmin: {{endpoint: null}}\npipelines:\n  chosen:\n    receivers: [otlp]\n    log: {{dir: \"{log}\"}}\n    assemble: {{idle_timeout: 100ms}}\n    select: [{{experiment: \"{experiment}\"}}]\n    sinks:\n      out: {{type: debug, path: \"{out}\", format: mlflow}}\n",
        log = log.display(),
        out = out.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_select_routes_requests_accepted_after_it() {
    use std::sync::Arc;
    use traceloom::config::Config;
    use traceloom::telemetry::metrics::Metrics;

    let dir = tempfile::tempdir().unwrap();
    let (out, log) = (dir.path().join("out.jsonl"), dir.path().join("log"));
    let first = Config::parse(&select_config(&out, &log, "1"), "select.yaml").unwrap();
    let mut running = traceloom::topology::start(&first, Arc::new(Metrics::new()))
        .await
        .unwrap();
    let url = format!("http://{}/v1/traces", running.addresses.http["otlp"]);
    let client = reqwest::Client::new();
    let post = |n: u64, experiment: &'static str| {
        let (id, body) = trace_body(n);
        let request = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .header("x-mlflow-experiment-id", experiment)
            .body(body);
        async move {
            assert!(request.send().await.unwrap().status().is_success());
            id
        }
    };
    let before = [post(1, "1").await, post(2, "2").await];
    let second = Config::parse(&select_config(&out, &log, "2"), "select.yaml").unwrap();
    running.reload(&second).unwrap();
    let after = [post(3, "1").await, post(4, "2").await];
    running.shutdown().await.unwrap();
    let taken: BTreeMap<String, String> = read_lines(&out)
        .iter()
        .map(|l| {
            let info = &l["info"];
            (
                info["trace_id"].as_str().unwrap().to_string(),
                info["trace_location"]["mlflow_experiment"]["experiment_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let expected = BTreeMap::from([
        (before[0].clone(), "1".to_string()),
        (after[1].clone(), "2".to_string()),
    ]);
    assert_eq!(taken, expected, "experiment 1 before the reload, 2 after");
    // A change that needs a restart is refused, naming the section; the running file stays.
    let other_sink = select_config(&dir.path().join("elsewhere.jsonl"), &log, "2");
    let refused = Config::parse(&other_sink, "select.yaml").unwrap();
    let mut running = traceloom::topology::start(&second, Arc::new(Metrics::new()))
        .await
        .unwrap();
    let error = running.reload(&refused).unwrap_err();
    assert!(error.contains("pipelines.chosen.sinks"), "{error}");
    running.shutdown().await.unwrap();
}

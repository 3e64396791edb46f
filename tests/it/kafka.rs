//! The Kafka sink against a real Kafka-protocol broker (tansu), fed by real OTLP clients.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message as _;
use serde_json::Value;
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::testkit::{self, kv};

use crate::broker::{Broker, CREATE, Record, consume, free_port, kafka_sink};
use crate::harness::{Collector, Settings, metric, wait_for};
use crate::mlflow_oracle::run_script;

const WAIT: Duration = Duration::from_secs(30);

async fn collector(broker: &str, topic: &str, more: &str) -> Collector {
    Collector::start_with(Settings {
        extra_sinks: kafka_sink(broker, topic, &format!("{CREATE}\n{more}")),
        ..Settings::default()
    })
    .await
}

/// Waits until the Kafka sink reports `traces` revisions acknowledged.
pub(crate) async fn delivered(c: &Collector, traces: usize) {
    let series = "traceloom_sink_written_traces_total{pipeline=\"main\",sink=\"kafka\"}";
    let mut text = String::new();
    for _ in 0..(WAIT.as_millis() / 100) {
        text = c.metrics().await;
        if metric(&text, series).unwrap_or(0.0) >= traces as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{traces} traces were not delivered to Kafka within {WAIT:?}:\n{text}");
}

/// Records `n` traces with the OpenTelemetry SDK over OTLP/gRPC: a client root with two server
/// children each, exported span by span (children first, root last).
fn record_traces(c: &Collector, n: usize) -> BTreeSet<String> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.grpc_url())
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("kafka-it").build())
        .build();
    let tracer = provider.tracer("traceloom-it");
    let mut ids = BTreeSet::new();
    for i in 0..n {
        tracer.in_span(format!("client-root-{i}"), |cx: Context| {
            ids.insert(cx.span().span_context().trace_id().to_string());
            for child in ["server-handler", "server-llm"] {
                tracer.in_span(child, |cx: Context| {
                    cx.span()
                        .set_attribute(KeyValue::new("gen_ai.request.model", "gpt-4o-mini"));
                });
            }
        });
    }
    provider.shutdown().unwrap();
    ids
}

/// An OTLP/HTTP protobuf body with `spans` from `service`.
fn body(service: &str, spans: Vec<traceloom::otlp::Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![testkit::resource_spans(service, spans)],
    }
    .encode_to_vec()
}

fn mlflow_id(hex: &str) -> String {
    format!("tr-{hex}")
}

/// Runs MLflow's `Trace.from_dict` → `to_dict` round trip over the values.
fn assert_mlflow_loads(records: &[Record]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.jsonl");
    let mut lines = String::new();
    for r in records {
        lines.push_str(std::str::from_utf8(&r.value).unwrap());
        lines.push('\n');
    }
    std::fs::write(&path, lines).unwrap();
    run_script("roundtrip.py", &path, "MLflow cannot load the Kafka values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traces_reach_the_topic_keyed_by_trace_id_and_load_in_mlflow() {
    let broker = Broker::start();
    let c = collector(&broker.address(), "mlflow-traces", "").await;
    let sent = tokio::task::block_in_place(|| record_traces(&c, 12));
    delivered(&c, 12).await;
    let records = consume(&broker.address(), "mlflow-traces", 12, WAIT);
    assert_eq!(records.len(), 12);

    let keys: BTreeSet<_> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, sent.iter().map(|h| mlflow_id(h)).collect());
    for r in &records {
        assert_eq!(r.header("trace_id"), r.key);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("encoding"), "mlflow-json");
        assert_eq!(r.header("revision"), "1");
        assert_eq!(r.header("span_count"), "3");
        assert_eq!(r.header("experiment_id"), "0");
        let trace: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(trace["info"]["trace_id"], r.key.as_str());
        assert_eq!(trace["data"]["spans"].as_array().unwrap().len(), 3);
    }
    let partitions: BTreeSet<_> = records.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "12 keys over 3 partitions: {partitions:?}"
    );
    assert_mlflow_loads(&records);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_of_a_trace_land_in_one_partition_in_order() {
    let broker = Broker::start();
    let c = collector(&broker.address(), "revisions", "").await;
    let trace = [0x42; 16];
    let first = vec![
        testkit::span(trace, [1; 8], &[], "client-root"),
        testkit::span(trace, [2; 8], &[1; 8], "server-handler"),
    ];
    assert!(
        c.post_protobuf(body("svc", first))
            .await
            .status()
            .is_success()
    );
    delivered(&c, 1).await;
    for (n, id) in [(2, 3u8), (3, 4u8)] {
        let late = vec![testkit::span(trace, [id; 8], &[1; 8], "late-llm")];
        assert!(
            c.post_protobuf(body("svc", late))
                .await
                .status()
                .is_success()
        );
        delivered(&c, n).await;
    }
    let records = consume(&broker.address(), "revisions", 3, WAIT);
    let revisions: Vec<_> = records.iter().map(|r| r.header("revision")).collect();
    assert_eq!(
        revisions,
        ["1", "2", "3"],
        "one partition, offsets in revision order"
    );
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    let spans: Vec<_> = records.iter().map(|r| r.header("span_count")).collect();
    assert_eq!(
        spans,
        ["2", "3", "4"],
        "each revision holds every span so far"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_proto_values_decode_to_the_original_spans() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as Upstream;
    let broker = Broker::start();
    let c = collector(&broker.address(), "otlp", "encoding: otlp-proto").await;
    let trace = [0x17; 16];
    let mut root = testkit::span(trace, [1; 8], &[], "client-root");
    root.attributes = vec![kv("user.id", "ü-42")];
    let server = testkit::span(trace, [2; 8], &[1; 8], "server-handler");
    assert!(
        c.post_protobuf(body("server", vec![server]))
            .await
            .status()
            .is_success()
    );
    assert!(
        c.post_protobuf(body("client", vec![root]))
            .await
            .status()
            .is_success()
    );
    delivered(&c, 1).await;
    let records = consume(&broker.address(), "otlp", 1, WAIT);
    let r = &records[0];
    assert_eq!(r.header("content-type"), "application/x-protobuf");
    assert_eq!(r.header("encoding"), "otlp-proto");
    let request = Upstream::decode(&r.value[..]).unwrap();
    let mut got = BTreeMap::new();
    for rs in &request.resource_spans {
        let service = rs.resource.as_ref().unwrap().attributes[0]
            .value
            .clone()
            .unwrap();
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            assert_eq!(span.trace_id, trace);
            got.insert(
                span.span_id.clone(),
                (span.name.clone(), format!("{service:?}")),
            );
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[&vec![1; 8]].0, "client-root");
    assert!(got[&vec![1; 8]].1.contains("client"));
    assert_eq!(got[&vec![2; 8]].0, "server-handler");
    assert!(got[&vec![2; 8]].1.contains("server"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_trace_arrives_in_parts_that_reassemble() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mlflow_out = dir.path().join("mlflow.jsonl");
    let c = Collector::start_with(Settings {
        extra_sinks: kafka_sink(
            &broker.address(),
            "big",
            &format!("{CREATE}\nmax_message_size: 16KiB"),
        ),
        sink_path: Some(mlflow_out.clone()),
        format: "mlflow",
        ..Settings::default()
    })
    .await;
    let trace = [0x99; 16];
    let mut root = testkit::span(trace, [1; 8], &[], "client-root");
    let prompt: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    root.attributes = vec![kv("mlflow.spanInputs", &format!("\"{prompt}ü\""))];
    assert!(
        c.post_protobuf(body("svc", vec![root]))
            .await
            .status()
            .is_success()
    );
    delivered(&c, 1).await;
    let records = consume(&broker.address(), "big", 100, Duration::from_secs(5));
    let parts: usize = records[0].header("parts").parse().unwrap();
    assert!(parts >= 2, "{parts} parts");
    assert_eq!(records.len(), parts);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.header("part"), (i + 1).to_string());
        assert_eq!(r.key, records[0].key);
        assert_eq!(r.partition, records[0].partition);
        assert!(r.value.len() < 16 * 1024);
    }
    let joined: Vec<u8> = records.iter().flat_map(|r| r.value.clone()).collect();
    let joined: Value = serde_json::from_slice(&joined).unwrap();
    let metrics = c.metrics().await;
    let expected = crate::harness::read_lines(&mlflow_out).remove(0);
    assert_eq!(
        joined, expected,
        "the parts join to the MLflow trace the debug sink wrote"
    );
    assert_eq!(
        metric(
            &metrics,
            "traceloom_kafka_split_traces_total{pipeline=\"main\",sink=\"kafka\"}"
        ),
        Some(1.0)
    );
    c.stop().await;
}

/// Posts `bodies` over OTLP/HTTP, retrying each refused one; returns how many refusals (503 or
/// 429) the receivers answered.
pub(crate) async fn post_with_retries(url: String, bodies: Vec<Vec<u8>>) -> usize {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut refusals = 0;
    for body in bodies {
        loop {
            let status = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status();
            if status.is_success() {
                break;
            }
            assert!(matches!(status.as_u16(), 429 | 503), "unexpected {status}");
            assert!(
                std::time::Instant::now() < deadline,
                "still refused after 90s"
            );
            refusals += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    refusals
}

/// Requests of 4 traces × 4 spans with ~2 KiB attributes each, and the MLflow ids they hold.
pub(crate) fn batches(seed: u64, requests: u64) -> (Vec<Vec<u8>>, BTreeSet<String>) {
    let mut ids = BTreeSet::new();
    let bodies = (0..requests)
        .map(|i| {
            let request = testkit::request(seed * 1000 + i, 4, 4, 2048);
            for span in request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans[0].spans)
            {
                ids.insert(mlflow_id(&hex::encode(&span.trace_id)));
            }
            request.encode_to_vec()
        })
        .collect();
    (bodies, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_starts_late_gets_everything_while_receivers_push_back() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let c = Collector::start_with(Settings {
        extra_sinks: kafka_sink(&address, "late", CREATE),
        queue_bytes: "256KiB",
        admission_timeout: "500ms",
        max_in_flight_bytes: "512KiB",
        ..Settings::default()
    })
    .await;
    let (bodies, ids) = batches(1, 60);
    let sender = tokio::spawn(post_with_retries(c.http_url(), bodies));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = tokio::task::spawn_blocking(move || Broker::start_on(port))
        .await
        .unwrap();
    let refusals = sender.await.unwrap();
    assert!(
        refusals > 0,
        "the receivers never pushed back while the broker was away"
    );
    delivered(&c, ids.len()).await;
    let records = consume(&broker.address(), "late", ids.len(), WAIT);
    let keys: BTreeSet<_> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, ids);
    assert_eq!(records.len(), ids.len(), "no duplicates");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_and_restarted_gets_every_accepted_trace() {
    let mut broker = Broker::start();
    let c = collector(&broker.address(), "restart", "").await;
    let (before, before_ids) = batches(2, 5);
    assert_eq!(post_with_retries(c.http_url(), before).await, 0);
    delivered(&c, before_ids.len()).await;
    let records = consume(&broker.address(), "restart", before_ids.len(), WAIT);
    let keys: BTreeSet<_> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, before_ids);

    // SIGKILL: the in-memory broker comes back empty, without the topic and without the
    // producer ids it handed out.
    broker.kill();
    let (after, after_ids) = batches(3, 5);
    let sender = tokio::spawn(post_with_retries(c.http_url(), after));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| broker.restart());
    sender.await.unwrap();
    delivered(&c, before_ids.len() + after_ids.len()).await;
    let records = consume(&broker.address(), "restart", after_ids.len(), WAIT);
    let keys: BTreeSet<_> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys, after_ids,
        "every trace accepted while the broker was down"
    );
    eprintln!(
        "duplicates after the restart: {}",
        records.len() - after_ids.len()
    );
    let metrics = c.metrics().await;
    let failed = metric(
        &metrics,
        "traceloom_sink_errors_total{pipeline=\"main\",sink=\"kafka\"}",
    )
    .unwrap();
    assert!(
        failed > 0.0,
        "deliveries failed while the broker was down, and were retried"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_traces_go_to_the_dead_letter_file() {
    // No broker at start, so the build cannot check the topic; the broker then comes up without
    // it, and without `create_topic` traceloom may not create it: every revision is refused.
    // (A topic deleted or lost under a running producer is no test here: tansu accepts
    // writes to topics it does not have.)
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let more = format!("dead_letter:\n  path: \"{}\"", dead.display());
    let c = Collector::start_with(Settings {
        extra_sinks: kafka_sink(&format!("127.0.0.1:{port}"), "gone", &more),
        ..Settings::default()
    })
    .await;
    let _broker = tokio::task::spawn_blocking(move || Broker::start_on(port))
        .await
        .unwrap();
    let (bodies, ids) = batches(4, 2);
    assert_eq!(post_with_retries(c.http_url(), bodies).await, 0);
    let lines = wait_for("dead-letter lines", WAIT, || {
        let lines = crate::harness::read_lines(&dead);
        (lines.len() >= ids.len()).then_some(lines)
    })
    .await;
    let mut keys = BTreeSet::new();
    for line in &lines {
        assert_eq!(line["topic"], "gone");
        assert!(!line["error"].as_str().unwrap().is_empty());
        assert_eq!(line["headers"]["encoding"], "mlflow-json");
        let value = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            line["value_base64"].as_str().unwrap(),
        )
        .unwrap();
        let trace: Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(trace["info"]["trace_id"], line["key"]);
        keys.insert(line["key"].as_str().unwrap().to_string());
    }
    assert_eq!(keys, ids);
    let metrics = c.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "traceloom_kafka_dead_lettered_traces_total{pipeline=\"main\",sink=\"kafka\"}"
        ),
        Some(ids.len() as f64)
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kafka_settings_are_named_at_start() {
    let broker = Broker::start();
    let start = |sink: String| async move {
        match Collector::try_start_with(Settings {
            extra_sinks: sink,
            ..Settings::default()
        })
        .await
        {
            Ok(_) => panic!("started with a bad Kafka setting"),
            Err(e) => e,
        }
    };
    let e = start(kafka_sink("nosuch.invalid:9092", "t", "")).await;
    assert!(
        e.contains("brokers") && e.contains("nosuch.invalid:9092"),
        "{e}"
    );

    let e = start(kafka_sink(
        &broker.address(),
        "t",
        "librdkafka:\n  no.such.property: 1",
    ))
    .await;
    assert!(
        e.contains("librdkafka") && e.contains("no.such.property"),
        "{e}"
    );

    let missing = kafka_sink(&broker.address(), "absent", "");
    let e = start(missing).await;
    assert!(
        e.contains("topic `absent` does not exist") && e.contains("create_topic"),
        "{e}"
    );
}

//! The shipped example pipelines (`pipelines/*.yaml`), run as written — only their ports moved
//! to free loopback ones and `./data` into a temp dir — with traces from the OpenTelemetry SDK,
//! and their output read back with DuckDB and MLflow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use traceloom::config::Config;
use traceloom::telemetry::metrics::Metrics;
use traceloom::topology::{self, Running};

use crate::broker::{Broker, consume};
use crate::mlflow_oracle::run_script_with;

/// `pipelines/<file>` with ports 4317, 4318 and 8888 made ephemeral, `./data` under `dir`, and
/// `more` replacements applied.
fn example(file: &str, dir: &Path, more: &[(&str, &str)]) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [(":4317", ":0"), (":4318", ":0"), (":8888", ":0")] {
        text = text.replace(from, to);
    }
    text = text.replace("./data", &dir.join("data").display().to_string());
    for (from, to) in more {
        text = text.replace(from, to);
    }
    Config::parse(&text, file).unwrap_or_else(|e| panic!("{e}"))
}

async fn start(config: &Config) -> Running {
    topology::start(config, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

/// How each recorded trace looks.
#[derive(Clone, Copy)]
struct Shape {
    /// The LLM span fails.
    error: bool,
}

/// Records one trace per entry of `shapes` with the SDK over OTLP/gRPC (with the experiment
/// header when given): a `chat` root holding a prompt and a user's email, an `llm` child.
/// Returns the trace ids (hex).
fn record(running: &Running, experiment: Option<&str>, shapes: &[Shape]) -> Vec<String> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(e) = experiment {
        metadata.insert("x-mlflow-experiment-id", e.parse().unwrap());
    }
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.addresses.grpc["otlp"]))
        .with_metadata(metadata)
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("genai-app").build())
        .build();
    let tracer = provider.tracer("traceloom-examples");
    let mut ids = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        tracer.in_span("chat", |cx: Context| {
            let span = cx.span();
            ids.push(span.span_context().trace_id().to_string());
            span.set_attribute(KeyValue::new(
                "mlflow.spanInputs",
                format!(r#"{{"messages":[{{"role":"user","content":"secret-prompt-{i}"}}]}}"#),
            ));
            span.set_attribute(KeyValue::new("user.email", format!("user{i}@example.com")));
            let mut llm = tracer.start_with_context("llm", &cx);
            llm.set_attribute(KeyValue::new("gen_ai.request.model", "gpt-4o-mini"));
            llm.set_attribute(KeyValue::new("gen_ai.prompt.0.content", "secret-inner"));
            if shape.error {
                llm.set_status(Status::error("rate limited"));
            }
            llm.end();
            span.set_attribute(KeyValue::new("mlflow.spanOutputs", "\"secret-answer\""));
        });
    }
    provider.shutdown().unwrap();
    ids
}

fn mlflow_id(hex: &str) -> String {
    format!("tr-{hex}")
}

/// The traces of a lake: MLflow id → its `lake_check.py --text` summary.
fn lake(path: &Path) -> BTreeMap<String, Value> {
    let out = run_script_with(
        "lake_check.py",
        &[path.as_os_str(), "--text".as_ref()],
        "lake_check failed",
    );
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        found["from_json"], found["traces"],
        "MLflow loads every row"
    );
    found["by_trace"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.split('@').next().unwrap().to_string(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_writes_sdk_traces_to_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let config = example("default.yaml", dir.path(), &[]);
    let running = start(&config).await;
    let ids = record(&running, None, &[Shape { error: false }; 12]);
    running.shutdown().await.unwrap();
    let traces = lake(&dir.path().join("data/lake"));
    let want: BTreeSet<String> = ids.iter().map(|i| mlflow_id(i)).collect();
    assert_eq!(traces.keys().cloned().collect::<BTreeSet<_>>(), want);
    for t in traces.values() {
        assert_eq!(t["span_names"], serde_json::json!(["chat", "llm"]));
    }
    assert!(dir.path().join("data/log/default/checkpoint").exists());
}

/// Whether the sample stage keeps a trace at `rate` (OpenTelemetry's consistent threshold on the
/// low 56 bits of the id), computed here independently of traceloom.
fn sampled(hex: &str, rate: f64) -> bool {
    let low = u64::from_str_radix(&hex[18..], 16).unwrap();
    low >= ((1.0 - rate) * (1u64 << 56) as f64).round() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_redacted_keeps_errors_samples_the_rest_and_writes_no_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let config = example(
        "genai-redacted.yaml",
        dir.path(),
        &[("${TRACELOOM_REDACT_SALT:-}", "ci-salt")],
    );
    let running = start(&config).await;
    let shapes: Vec<Shape> = (0..200).map(|i| Shape { error: i % 10 == 0 }).collect();
    let ids = record(&running, None, &shapes);
    running.shutdown().await.unwrap();

    let traces = lake(&dir.path().join("data/lake-genai"));
    let want: BTreeSet<String> = ids
        .iter()
        .zip(&shapes)
        .filter(|(id, s)| s.error || sampled(id, 0.1))
        .map(|(id, _)| mlflow_id(id))
        .collect();
    let got: BTreeSet<String> = traces.keys().cloned().collect();
    assert_eq!(
        got, want,
        "every failed trace and exactly the sampled tenth of the rest"
    );
    assert!(want.len() > 20 && want.len() < 60, "{} kept", want.len());
    for (id, t) in &traces {
        let json = t["trace_json"].as_str().unwrap();
        let rows = t["span_text"].as_str().unwrap();
        for text in [json, rows] {
            assert!(
                !text.contains("secret"),
                "{id}: a prompt reached the lake: {text}"
            );
            assert!(
                !text.contains("@example.com"),
                "{id}: an email reached the lake"
            );
        }
        assert!(
            rows.contains("sha256:"),
            "{id}: the email is hashed: {rows}"
        );
        assert_eq!(t["tags"]["redacted"], "true");
        assert_eq!(t["span_names"], serde_json::json!(["chat", "llm"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_experiment_routes_each_experiment_to_its_own_lake() {
    let dir = tempfile::tempdir().unwrap();
    let config = example("per-experiment.yaml", dir.path(), &[]);
    let running = start(&config).await;
    let five = [Shape { error: false }; 5];
    let sent: Vec<(Option<&str>, Vec<String>)> = [Some("1"), Some("2"), Some("3"), None]
        .into_iter()
        .map(|e| (e, record(&running, e, &five)))
        .collect();
    running.shutdown().await.unwrap();
    let ids = |experiments: &[Option<&str>]| -> BTreeSet<String> {
        sent.iter()
            .filter(|(e, _)| experiments.contains(e))
            .flat_map(|(_, ids)| ids.iter().map(|i| mlflow_id(i)))
            .collect()
    };
    let lakes = dir.path().join("data/lake");
    for (sub, experiments) in [
        ("experiment-1", vec![Some("1")]),
        ("experiment-2", vec![Some("2")]),
        ("other", vec![Some("3"), None]),
    ] {
        let traces = lake(&lakes.join(sub));
        let got: BTreeSet<String> = traces.keys().cloned().collect();
        let seen: Vec<&Value> = traces.values().map(|t| &t["experiment_id"]).collect();
        assert_eq!(got, ids(&experiments), "{sub}: experiments {seen:?}");
        for t in traces.values() {
            let e = t["experiment_id"].as_str().unwrap();
            assert!(experiments.contains(&Some(e)) || e == "0", "{sub}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_pipeline_writes_the_topic_and_the_lake() {
    let broker = tokio::task::spawn_blocking(Broker::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let brokers = broker.address();
    let config = example(
        "kafka.yaml",
        dir.path(),
        &[("${KAFKA_BROKERS:-localhost:9092}", &brokers)],
    );
    let running = start(&config).await;
    let ids = record(&running, Some("5"), &[Shape { error: false }; 10]);
    running.shutdown().await.unwrap();
    let want: BTreeSet<String> = ids.iter().map(|i| mlflow_id(i)).collect();
    let records = tokio::task::spawn_blocking(move || {
        consume(&brokers, "mlflow-traces", 10, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let keys: BTreeSet<String> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, want);
    let traces = lake(&dir.path().join("data/lake"));
    assert_eq!(traces.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(traces.values().all(|t| t["experiment_id"] == "5"));
}

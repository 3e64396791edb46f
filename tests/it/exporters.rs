//! The `opentelemetry-otlp` crate's span exporter, over gRPC, HTTP/protobuf and HTTP/JSON, into
//! a running traceloom; what the debug sink wrote is checked field by field against what the SDK
//! recorded.

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};

use crate::harness::{Collector, spans};

/// Records a root and a child span through `exporter`; returns their (trace id, root id, child id)
/// as hex.
fn record(exporter: SpanExporter) -> (String, String, String) {
    let resource = Resource::builder()
        .with_service_name("exporter-test")
        .with_attributes([
            KeyValue::new("deployment.environment", "ci"),
            KeyValue::new("host.cpus", 2_i64),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("traceloom-it");
    let mut root = tracer
        .span_builder("client-root")
        .with_kind(SpanKind::Server)
        .start(&tracer);
    root.set_attribute(KeyValue::new("str", "héllo wörld ✓"));
    root.set_attribute(KeyValue::new("int", 42_i64));
    root.set_attribute(KeyValue::new("float", 2.5_f64));
    root.set_attribute(KeyValue::new("bool", true));
    root.set_attribute(KeyValue::new(
        "list",
        opentelemetry::Value::Array(vec![opentelemetry::StringValue::from("a"), "b".into()].into()),
    ));
    let ids = {
        let sc = root.span_context().clone();
        let cx = Context::current().with_remote_span_context(sc.clone());
        let mut child = tracer.start_with_context("server-handler", &cx);
        child.add_event(
            "exception",
            vec![KeyValue::new("exception.message", "boom")],
        );
        child.set_status(Status::error("lookup failed"));
        let child_id = child.span_context().span_id().to_string();
        child.end();
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            child_id,
        )
    };
    root.end();
    provider.shutdown().unwrap();
    ids
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
        .unwrap_or_else(|| panic!("attribute {key} missing in {span}"))
}

fn check(collector_spans: &[Value], (trace, root_id, child_id): &(String, String, String)) {
    let find = |id: &str| {
        collector_spans
            .iter()
            .find(|s| s["spanId"] == id)
            .unwrap_or_else(|| panic!("span {id} not delivered"))
    };
    let root = find(root_id);
    let child = find(child_id);
    assert_eq!(root["traceId"], json!(trace));
    assert_eq!(child["traceId"], json!(trace));
    assert_eq!(root["name"], "client-root");
    assert_eq!(root["kind"], 2, "SPAN_KIND_SERVER as an integer");
    assert!(
        root.get("parentSpanId").is_none(),
        "a root has no parent: {root}"
    );
    assert_eq!(child["name"], "server-handler");
    assert_eq!(child["parentSpanId"], json!(root_id));
    assert_eq!(attr(root, "str"), &json!({"stringValue": "héllo wörld ✓"}));
    assert_eq!(attr(root, "int"), &json!({"intValue": "42"}));
    assert_eq!(attr(root, "float"), &json!({"doubleValue": 2.5}));
    assert_eq!(attr(root, "bool"), &json!({"boolValue": true}));
    assert_eq!(
        attr(root, "list"),
        &json!({"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}})
    );
    assert_eq!(
        child["status"],
        json!({"message": "lookup failed", "code": 2})
    );
    assert_eq!(child["events"][0]["name"], "exception");
    assert_eq!(
        child["events"][0]["attributes"][0],
        json!({"key": "exception.message", "value": {"stringValue": "boom"}})
    );
    let resource = &root["_resource"]["attributes"];
    for expected in [
        json!({"key": "service.name", "value": {"stringValue": "exporter-test"}}),
        json!({"key": "deployment.environment", "value": {"stringValue": "ci"}}),
        json!({"key": "host.cpus", "value": {"intValue": "2"}}),
    ] {
        assert!(
            resource.as_array().unwrap().contains(&expected),
            "{expected} not in {resource}"
        );
    }
    let start: u64 = root["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = root["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(
        start > 1_700_000_000_000_000_000 && end >= start,
        "{start} {end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter_spans_arrive_intact() {
    let c = Collector::start().await;
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-mlflow-experiment-id", "42".parse().unwrap());
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.grpc_url())
        .with_metadata(metadata)
        .build()
        .unwrap();
    let ids = tokio::task::spawn_blocking(move || record(exporter))
        .await
        .unwrap();
    let lines = c.wait_for_spans(2).await;
    assert!(lines.iter().all(|l| l["experiment_id"] == "42"));
    let accepted = crate::harness::metric(
        &c.metrics().await,
        r#"traceloom_receiver_accepted_spans_total{protocol="grpc"}"#,
    );
    assert_eq!(accepted, Some(2.0));
    check(&spans(&lines), &ids);
    c.stop().await;
}

async fn http_roundtrip(protocol: Protocol, label: &str) {
    let c = Collector::start().await;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(c.http_url())
        .with_headers([("x-mlflow-experiment-id".to_string(), "7".to_string())].into())
        .build()
        .unwrap();
    let ids = tokio::task::spawn_blocking(move || record(exporter))
        .await
        .unwrap();
    let lines = c.wait_for_spans(2).await;
    assert!(lines.iter().all(|l| l["experiment_id"] == "7"), "{lines:?}");
    let series = format!("traceloom_receiver_accepted_spans_total{{protocol=\"{label}\"}}");
    assert_eq!(
        crate::harness::metric(&c.metrics().await, &series),
        Some(2.0)
    );
    check(&spans(&lines), &ids);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter_spans_arrive_intact() {
    http_roundtrip(Protocol::HttpBinary, "http_protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_exporter_spans_arrive_intact() {
    http_roundtrip(Protocol::HttpJson, "http_json").await;
}

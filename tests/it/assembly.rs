//! Trace assembly with real clients: spans of one trace from several services, requests and
//! receivers become one trace; duplicates, late spans, missing roots, huge traces and a tight
//! memory bound behave as documented, and no accepted span is ever lost.

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message;
use serde_json::Value;
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::testkit;

use crate::harness::{Collector, Settings, metric, spans, wait_for};

fn provider(service: &str, exporter: SpanExporter) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build()
}

/// A server service behind a real HTTP endpoint: joins the caller's trace from `traceparent`.
async fn serve(provider: SdkTracerProvider) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let tracer = provider.tracer("server");
    let app = axum::Router::new().route(
        "/handle",
        post(move |headers: http::HeaderMap| {
            let tracer = tracer.clone();
            async move {
                let carrier: std::collections::HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect();
                let parent = TraceContextPropagator::new().extract(&carrier);
                // The simple exporter blocks in `end`: keep it off the async workers.
                tokio::task::spawn_blocking(move || {
                    let mut span = tracer.start_with_context("server-handler", &parent);
                    span.set_attribute(KeyValue::new("status", "ok"));
                    span.end();
                })
                .await
                .unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_with_w3c_propagation_make_one_trace_over_both_receivers() {
    let c = Collector::start_with(Settings {
        format: "otlp",
        idle_timeout: "500ms",
        ..Settings::default()
    })
    .await;
    let client_exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.grpc_url())
        .build()
        .unwrap();
    let server_exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(c.http_url())
        .build()
        .unwrap();
    let client = provider("frontend", client_exporter);
    let server = provider("backend", server_exporter);
    let (addr, handle) = serve(server.clone()).await;
    let trace_id = {
        let tracer = client.tracer("client");
        let root = tracer.start("client-root");
        let cx = Context::current_with_span(root);
        let mut headers = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/handle"))
            .header("traceparent", &headers["traceparent"])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = cx.span().span_context().trace_id().to_string();
        tokio::task::spawn_blocking(move || cx.span().end())
            .await
            .unwrap();
        id
    };
    tokio::task::spawn_blocking(move || {
        server.force_flush().unwrap();
        client.force_flush().unwrap();
    })
    .await
    .unwrap();
    let lines = c.wait_for_spans(2).await;
    assert_eq!(lines.len(), 1, "one trace: {lines:#?}");
    assert_eq!(lines[0]["trace_id"], trace_id.as_str());
    assert_eq!(lines[0]["release_reason"], "complete");
    let spans = spans(&lines);
    let root = spans.iter().find(|s| s["name"] == "client-root").unwrap();
    let handler = spans
        .iter()
        .find(|s| s["name"] == "server-handler")
        .unwrap();
    assert_eq!(handler["parentSpanId"], root["spanId"]);
    let m = c.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_accepted_spans_total{protocol="grpc"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_accepted_spans_total{protocol="http_protobuf"}"#
        ),
        Some(1.0)
    );
    handle.abort();
    c.stop().await;
}

const T: [u8; 16] = [0x42; 16];

async fn post_spans(c: &Collector, spans: Vec<traceloom::otlp::Span>, service: &str) {
    let body = ExportTraceServiceRequest {
        resource_spans: vec![testkit::resource_spans(service, spans)],
    }
    .encode_to_vec();
    assert_eq!(c.post_protobuf(body).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_requests_duplicates_and_a_late_span_make_revisions() {
    let c = Collector::start_with(Settings {
        format: "otlp",
        idle_timeout: "300ms",
        ..Settings::default()
    })
    .await;
    let child = |id: u8| testkit::span(T, [id; 8], &[1; 8], "child");
    post_spans(&c, vec![child(2)], "svc-a").await;
    let mut grpc = TraceServiceClient::connect(c.grpc_url()).await.unwrap();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![testkit::resource_spans("svc-b", vec![child(3), child(2)])],
    };
    grpc.export(testkit::upstream(&req)).await.unwrap();
    post_spans(&c, vec![testkit::span(T, [1; 8], &[], "root")], "svc-c").await;
    let first = c.wait_for_spans(3).await;
    assert_eq!(
        (first.len(), first[0]["revision"].clone()),
        (1, Value::from(1))
    );
    post_spans(&c, vec![child(4)], "svc-a").await;
    let lines = c.wait_for_spans(3 + 4).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["revision"], 2);
    assert_eq!(lines[1]["span_count"], 4, "revision 2 holds every span");
    let m = c.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"traceloom_assembler_duplicate_spans_total{pipeline="main"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_assembler_late_spans_total{pipeline="main"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_assembler_revisions_total{pipeline="main"}"#
        ),
        Some(1.0)
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_that_never_gets_its_root_is_released_at_max_age_flagged() {
    let c = Collector::start_with(Settings {
        format: "mlflow",
        max_trace_age: "400ms",
        ..Settings::default()
    })
    .await;
    post_spans(&c, vec![testkit::span(T, [2; 8], &[1; 8], "orphan")], "svc").await;
    let lines = wait_for("the partial trace", Duration::from_secs(5), || {
        let l = c.lines();
        (!l.is_empty()).then_some(l)
    })
    .await;
    let info = &lines[0]["info"];
    assert_eq!(info["state"], "IN_PROGRESS");
    assert_eq!(info["tags"]["traceloom.partial"], "true");
    assert_eq!(info["tags"]["traceloom.partial_reason"], "max_age");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_span_trace_arrives_whole() {
    let c = Collector::start_with(Settings {
        format: "otlp",
        ..Settings::default()
    })
    .await;
    // Children first, the root in the last of four requests, as services export: the trace
    // cannot be released before it, however far apart a loaded machine spaces the requests.
    let mut spans: Vec<_> = (2..=10_000u64)
        .map(|i| testkit::span(T, i.to_be_bytes(), &1u64.to_be_bytes(), "child"))
        .collect();
    spans.push(testkit::span(T, 1u64.to_be_bytes(), &[], "root"));
    for chunk in spans.chunks(2500) {
        post_spans(&c, chunk.to_vec(), "big").await;
    }
    let lines = c.wait_for_spans(10_000).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["span_count"], 10_000);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bound_far_below_the_load_loses_no_span() {
    let c = Collector::start_with(Settings {
        format: "otlp",
        idle_timeout: "5s",
        max_in_flight_bytes: "32KiB",
        ..Settings::default()
    })
    .await;
    let mut sent = HashSet::new();
    for seed in 0..40u64 {
        let request = testkit::request(seed, 5, 8, 300);
        for s in &request.resource_spans[0].scope_spans[0].spans {
            sent.insert((hex::encode(&s.trace_id), hex::encode(&s.span_id)));
        }
        assert_eq!(c.post_protobuf(request.encode_to_vec()).await.status(), 200);
    }
    // Far more than 32 KiB was sent; most traces had to leave early to respect the bound.
    let m = c.metrics().await;
    let held = metric(&m, r#"traceloom_assembler_held_bytes{pipeline="main"}"#).unwrap();
    assert!(held <= 32.0 * 1024.0, "held {held} bytes");
    let lines = c.stop_and_read().await;
    let got: HashSet<(String, String)> = spans(&lines)
        .iter()
        .map(|s| {
            (
                s["traceId"].as_str().unwrap().to_string(),
                s["spanId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, sent, "every accepted span is in some revision");
    assert!(lines.iter().any(|l| l["release_reason"] == "memory"));
}

/// Sends `traces` traces one span at a time, in ten concurrent requests, to a collector that
/// releases a revision after every batch (`max_spans_per_trace: 1`): revisions of a trace are
/// released in the same turns and reach the workers together. Returns the debug sink's lines
/// as (trace id, revision, span count), in the sink's order, once every trace's ten spans
/// arrived.
async fn ten_revisions_each(workers: usize, traces: u8) -> Vec<(String, u64, u64)> {
    let c = Collector::start_with(Settings {
        format: "otlp",
        max_spans_per_trace: "1",
        workers: Some(workers),
        ..Settings::default()
    })
    .await;
    let ids: Vec<[u8; 16]> = (0..traces)
        .map(|t| {
            let mut id = [0x5a; 16];
            (id[8], id[15]) = (t, t);
            id
        })
        .collect();
    // All at once, so that several requests reach one turn of the pipeline.
    let posts = (1..=10u8).map(|span| {
        let parent: &[u8] = if span == 1 { &[] } else { &[1; 8] };
        let spans = ids
            .iter()
            .map(|id| testkit::span(*id, [span; 8], parent, "s"))
            .collect();
        post_spans(&c, spans, "svc")
    });
    futures_util::future::join_all(posts).await;
    wait_for("every span", Duration::from_secs(30), || {
        let whole = c.lines().iter().filter(|l| l["span_count"] == 10).count();
        (whole == usize::from(traces)).then_some(())
    })
    .await;
    c.stop_and_read()
        .await
        .iter()
        .filter(|l| l["release_reason"] == "size")
        .map(|l| {
            let field = |k: &str| l[k].as_u64().unwrap();
            let id = l["trace_id"].as_str().unwrap().to_string();
            (id, field("revision"), field("span_count"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_workers_deliver_every_revision_of_a_trace_in_order() {
    for workers in [4, 1] {
        let lines = ten_revisions_each(workers, 200).await;
        let mut seen: std::collections::HashMap<&str, Vec<(u64, u64)>> = Default::default();
        for (id, revision, spans) in &lines {
            seen.entry(id).or_default().push((*revision, *spans));
        }
        assert_eq!(seen.len(), 200);
        // Requests that arrive together may make one revision: how many there are varies, but
        // in each sink they come in release order, each holding more spans, the last all ten.
        for (id, revisions) in &seen {
            let numbers: Vec<u64> = revisions.iter().map(|r| r.0).collect();
            let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
            assert_eq!(numbers, expected, "trace {id}, {workers} workers");
            assert!(revisions.windows(2).all(|w| w[0].1 < w[1].1), "trace {id}");
            assert_eq!(revisions.last().unwrap().1, 10, "trace {id}");
        }
        let several = seen.values().filter(|r| r.len() > 1).count();
        assert!(
            several > 100,
            "too few traces had several revisions: {several}"
        );
    }
}

//! Every request captured from MLflow and the OpenTelemetry SDKs (`tests/fixtures/mlflow-captures`,
//! copied from `shared/reference/mlflow-captures`) is accepted over HTTP/protobuf, HTTP/JSON (plain,
//! gzip, zstd, deflate) and gRPC, and yields the same spans whichever way it came.

use std::io::Write;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::Value;

use crate::harness::{Collector, spans, total_spans};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlflow-captures")
}

/// Every `(protobuf file, its OTLP/JSON twin, experiment header)` among the captures.
fn captured_requests() -> Vec<(PathBuf, PathBuf, Option<String>)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let pb = file.unwrap().path();
            if pb.extension().is_some_and(|e| e == "pb") {
                let stem = pb.file_stem().unwrap().to_str().unwrap();
                let json = dir.join(format!("{stem}.otlp.json"));
                assert!(json.exists(), "{} has no JSON twin", pb.display());
                let headers = dir.join(format!("{stem}.headers.json"));
                let experiment = std::fs::read_to_string(&headers).ok().and_then(|text| {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    v["headers"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("x-mlflow-experiment-id"))
                        .map(|(_, v)| v.as_str().unwrap().to_string())
                });
                out.push((pb, json, experiment));
            }
        }
    }
    out.sort();
    assert_eq!(out.len(), 8, "all captured requests are found");
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post(
    c: &Collector,
    body: Vec<u8>,
    content_type: &str,
    encoding: Option<&str>,
    experiment: Option<&str>,
) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(c.http_url())
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    if let Some(x) = experiment {
        req = req.header("x-mlflow-experiment-id", x);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{content_type} {encoding:?}: {:?}",
        resp.text().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_yields_the_same_spans_over_every_transport() {
    let c = Collector::start().await;
    let mut grpc = TraceServiceClient::connect(c.grpc_url())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut expected_total = 0;
    let mut deliveries_per_capture = Vec::new();
    for (pb_path, json_path, experiment) in captured_requests() {
        let pb = std::fs::read(&pb_path).unwrap();
        let json = std::fs::read(&json_path).unwrap();
        let request = ExportTraceServiceRequest::decode(&pb[..]).unwrap();
        let span_count: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        let before = c.lines().len();
        let x = experiment.as_deref();
        post(&c, pb.clone(), "application/x-protobuf", None, x).await;
        post(&c, gzip(&pb), "application/x-protobuf", Some("gzip"), x).await;
        post(
            &c,
            zstd::encode_all(&pb[..], 3).unwrap(),
            "application/x-protobuf",
            Some("zstd"),
            x,
        )
        .await;
        post(
            &c,
            deflate(&pb),
            "application/x-protobuf",
            Some("deflate"),
            x,
        )
        .await;
        post(&c, json.clone(), "application/json", None, x).await;
        post(
            &c,
            gzip(&json),
            "application/json; charset=utf-8",
            Some("gzip"),
            x,
        )
        .await;
        let mut grpc_request = tonic::Request::new(request.clone());
        if let Some(x) = x {
            grpc_request
                .metadata_mut()
                .insert("x-mlflow-experiment-id", x.parse().unwrap());
        }
        let answer = grpc.export(grpc_request).await.unwrap().into_inner();
        assert!(
            answer.partial_success.is_none(),
            "{}: {answer:?}",
            pb_path.display()
        );
        expected_total += 7 * span_count;
        let lines = c.wait_for_spans(expected_total).await;
        let delivered = &lines[before..];
        assert_eq!(
            delivered.len(),
            7,
            "{}: one batch per request",
            pb_path.display()
        );
        deliveries_per_capture.push((pb_path, request, delivered.to_vec()));
    }
    for (path, request, delivered) in deliveries_per_capture {
        let first = &delivered[0];
        for other in &delivered[1..] {
            assert_eq!(
                other["traces"],
                first["traces"],
                "{}: {} and {} delivered different spans",
                path.display(),
                first["protocol"],
                other["protocol"]
            );
            assert_eq!(other["experiment_id"], first["experiment_id"]);
        }
        // The delivered spans are exactly the request's spans, by id, in order.
        let sent: Vec<String> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| hex::encode(&s.span_id))
            .collect();
        let mut got: Vec<String> = spans(std::slice::from_ref(first))
            .iter()
            .map(|s| s["spanId"].as_str().unwrap().to_string())
            .collect();
        let mut sent_sorted = sent.clone();
        sent_sorted.sort();
        got.sort();
        assert_eq!(got, sent_sorted, "{}", path.display());
        assert_eq!(total_spans(std::slice::from_ref(first)), sent.len());
    }
    c.stop().await;
}

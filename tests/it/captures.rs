//! Every request captured from MLflow and the OpenTelemetry SDKs (`tests/fixtures/mlflow-captures`,
//! copied from `shared/reference/mlflow-captures`) is accepted over HTTP/protobuf, HTTP/JSON (plain,
//! gzip, zstd, deflate) and gRPC, and yields the same assembled traces whichever way it came.

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

/// The ways a request can reach traceloom.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Protobuf,
    ProtobufGzip,
    ProtobufZstd,
    ProtobufDeflate,
    Json,
    JsonGzip,
    Grpc,
}

async fn send(c: &Collector, how: Transport, pb: &[u8], json: &[u8], experiment: Option<&str>) {
    const PROTO: &str = "application/x-protobuf";
    match how {
        Transport::Protobuf => post(c, pb.to_vec(), PROTO, None, experiment).await,
        Transport::ProtobufGzip => post(c, gzip(pb), PROTO, Some("gzip"), experiment).await,
        Transport::ProtobufZstd => {
            post(
                c,
                zstd::encode_all(pb, 3).unwrap(),
                PROTO,
                Some("zstd"),
                experiment,
            )
            .await
        }
        Transport::ProtobufDeflate => {
            post(c, deflate(pb), PROTO, Some("deflate"), experiment).await
        }
        Transport::Json => post(c, json.to_vec(), "application/json", None, experiment).await,
        Transport::JsonGzip => {
            post(
                c,
                gzip(json),
                "application/json; charset=utf-8",
                Some("gzip"),
                experiment,
            )
            .await
        }
        Transport::Grpc => {
            let mut client = TraceServiceClient::connect(c.grpc_url())
                .await
                .unwrap()
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
            let mut request = tonic::Request::new(ExportTraceServiceRequest::decode(pb).unwrap());
            if let Some(x) = experiment {
                request
                    .metadata_mut()
                    .insert("x-mlflow-experiment-id", x.parse().unwrap());
            }
            let answer = client.export(request).await.unwrap().into_inner();
            assert!(answer.partial_success.is_none(), "{answer:?}");
        }
    }
}

/// Every captured request sent one way; returns the released traces, ordered by trace id.
async fn deliver_all(how: Transport) -> Vec<Value> {
    let c = Collector::start().await;
    let mut total = 0;
    for (pb_path, json_path, experiment) in captured_requests() {
        let pb = std::fs::read(&pb_path).unwrap();
        let json = std::fs::read(&json_path).unwrap();
        total += ExportTraceServiceRequest::decode(&pb[..])
            .unwrap()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>();
        send(&c, how, &pb, &json, experiment.as_deref()).await;
    }
    let mut lines = c.wait_for_spans(total).await;
    assert_eq!(
        total_spans(&lines),
        total,
        "{how:?}: every span once, none twice"
    );
    c.stop().await;
    lines.sort_by(|a, b| a["trace_id"].as_str().cmp(&b["trace_id"].as_str()));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_yields_the_same_traces_over_every_transport() {
    let reference = deliver_all(Transport::Protobuf).await;
    assert_eq!(
        reference.len(),
        5,
        "5 traces: captures 04 and 05 each assemble from several requests"
    );
    assert!(spans(&reference).iter().all(|s| s["traceId"].is_string()));
    for how in [
        Transport::ProtobufGzip,
        Transport::ProtobufZstd,
        Transport::ProtobufDeflate,
        Transport::Json,
        Transport::JsonGzip,
        Transport::Grpc,
    ] {
        let lines = deliver_all(how).await;
        assert_eq!(
            lines, reference,
            "{how:?} delivered different traces than plain protobuf"
        );
    }
}

//! Bad input: each case gets the right status and a message saying what failed, the process
//! keeps serving, and the valid spans of a request are still delivered.

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::{Value, json};
use traceloom::otlp::ExportTraceServiceRequest;
use traceloom::testkit;

use crate::harness::{Collector, Settings, metric, spans};

use traceloom::receive::http::RpcStatus;

async fn small_limit_collector() -> Collector {
    Collector::start_with(Settings {
        max_body_size: "64KiB",
        ..Settings::default()
    })
    .await
}

async fn send(c: &Collector, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(c.http_url()).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn proto_error(resp: reqwest::Response) -> (u16, RpcStatus) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let body = resp.bytes().await.unwrap();
    (status, RpcStatus::decode(&body[..]).unwrap())
}

async fn json_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, resp.json().await.unwrap())
}

fn valid_request(seed: u64) -> Vec<u8> {
    testkit::request(seed, 2, 2, 100).encode_to_vec()
}

/// After a refusal the process still serves and delivers.
async fn still_serving(c: &Collector, seed: u64) {
    let before = crate::harness::total_spans(&c.lines());
    let resp = send(
        c,
        valid_request(seed),
        &[("content-type", "application/x-protobuf")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    c.wait_for_spans(before + 4).await;
}

const PROTO: (&str, &str) = ("content-type", "application/x-protobuf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_protobuf_is_400_with_the_decoder_message() {
    let c = small_limit_collector().await;
    let mut body = valid_request(1);
    body.truncate(body.len() / 2);
    let (status, err) = proto_error(send(&c, body, &[PROTO]).await).await;
    assert_eq!(status, 400);
    assert_eq!(err.code, 3, "INVALID_ARGUMENT");
    assert!(
        err.message
            .starts_with("invalid protobuf ExportTraceServiceRequest: "),
        "{}",
        err.message
    );
    still_serving(&c, 2).await;
    c.stop().await;
}

/// `field` as a length-delimited protobuf field `tag`.
fn delimited(tag: u32, field: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(field.len() as u64, &mut out);
    out.extend_from_slice(field);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_attribute_deep_in_a_span_is_400_naming_the_span_and_field() {
    let c = small_limit_collector().await;
    let good = testkit::span([3; 16], [1; 8], &[], "fine").encode_to_vec();
    let mut bad = testkit::span([3; 16], [2; 8], &[1; 8], "damaged").encode_to_vec();
    // An attribute (field 9) whose key claims 5 bytes where 1 follows.
    bad.extend(delimited(9, &[0x0a, 0x05, b'k']));
    let scope = [delimited(2, &good), delimited(2, &bad)].concat();
    let body = delimited(1, &delimited(2, &scope));
    let (status, err) = proto_error(send(&c, body, &[PROTO]).await).await;
    assert_eq!(status, 400);
    assert_eq!(err.code, 3, "INVALID_ARGUMENT");
    assert_eq!(
        err.message,
        "invalid protobuf ExportTraceServiceRequest: resource_spans[0].scope_spans[0].spans[1]: \
         KeyValue field 1: the buffer ends inside a field"
    );
    still_serving(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415_naming_it() {
    let c = small_limit_collector().await;
    let (status, err) =
        json_body(send(&c, valid_request(1), &[("content-type", "text/plain")]).await).await;
    assert_eq!(status, 415);
    assert_eq!(
        err["message"],
        "unsupported content-type \"text/plain\": use application/x-protobuf or application/json"
    );
    still_serving(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_encoding_is_400_naming_it() {
    let c = small_limit_collector().await;
    let (status, err) =
        proto_error(send(&c, valid_request(1), &[PROTO, ("content-encoding", "br")]).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        err.message,
        "unsupported content-encoding \"br\": use gzip, zstd, deflate or identity"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_413_without_inflating_it() {
    let c = small_limit_collector().await;
    // 256 MiB of zeros in ~256 KiB of gzip: over the wire limit too, so make it fit.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 32 << 20]).unwrap();
    let bomb = e.finish().unwrap();
    assert!(
        bomb.len() < 64 << 10,
        "the bomb fits under the wire limit: {}",
        bomb.len()
    );
    let (status, err) =
        proto_error(send(&c, bomb, &[PROTO, ("content-encoding", "gzip")]).await).await;
    assert_eq!(status, 413);
    assert_eq!(
        err.message,
        "request body larger than the limit of 65536 bytes after decompression"
    );
    still_serving(&c, 3).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413() {
    let c = small_limit_collector().await;
    let body = testkit::request(1, 50, 4, 400).encode_to_vec();
    assert!(body.len() > 64 << 10);
    let (status, err) = proto_error(send(&c, body, &[PROTO]).await).await;
    assert_eq!(status, 413);
    assert_eq!(
        err.message,
        "request body larger than the limit of 65536 bytes"
    );
    still_serving(&c, 4).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405() {
    let c = small_limit_collector().await;
    let resp = reqwest::get(c.http_url()).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_naming_the_field() {
    let c = small_limit_collector().await;
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "01", "kind": "banana"}]}]}]});
    let resp = send(
        &c,
        body.to_string().into_bytes(),
        &[("content-type", "application/json")],
    )
    .await;
    let (status, err) = json_body(resp).await;
    assert_eq!(status, 400);
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.starts_with("invalid OTLP/JSON at resourceSpans[0].scopeSpans[0].spans[0].kind: unknown variant `banana`"),
        "{msg}"
    );
    let resp = send(
        &c,
        b"{not json".to_vec(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    c.stop().await;
}

fn json_span(trace: &str, span: &str, name: &str) -> Value {
    json!({"traceId": trace, "spanId": span, "name": name, "kind": 1,
           "startTimeUnixNano": "1000", "endTimeUnixNano": 2000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_a_non_hex_id_refuses_only_that_span() {
    let c = small_limit_collector().await;
    let trace = "5b8efff798038103d269b633813fc60c";
    let body = json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
    "scopeSpans": [{"spans": [
        json_span(trace, "eee19b7ec3c1b174", "ok-1"),
        json_span("zz8efff798038103d269b633813fc60c", "eee19b7ec3c1b175", "bad"),
        json_span(trace, "eee19b7ec3c1b176", "ok-2"),
    ]}]}]});
    let resp = send(
        &c,
        body.to_string().into_bytes(),
        &[("content-type", "application/json")],
    )
    .await;
    let (status, answer) = json_body(resp).await;
    assert_eq!(status, 200);
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert_eq!(
        answer["partialSuccess"]["errorMessage"],
        "1 spans rejected: resource_spans[0].scope_spans[0].spans[1]: traceId is not hexadecimal: \"zz8efff798038103d269b633813fc60c\""
    );
    let names: Vec<Value> = spans(&c.wait_for_spans(2).await)
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec!["ok-1", "ok-2"]);
    c.stop().await;
}

/// A protobuf request mixing valid spans with one of each kind of invalid span.
fn mixed_request() -> ExportTraceServiceRequest {
    let t = [7u8; 16];
    let mut end_before_start = testkit::span(t, [9; 8], &[], "end-before-start");
    end_before_start.end_time_unix_nano = end_before_start.start_time_unix_nano - 1;
    let spans = vec![
        testkit::span(t, [1; 8], &[], "valid-root"),
        testkit::span([0; 16], [2; 8], &[], "zero-trace"),
        testkit::span(t, [3; 8], &[1; 8], "valid-child"),
        testkit::span(t, [0; 8], &[], "zero-span"),
        testkit::span(t, [4; 8], &[1; 4], "short-parent"),
        end_before_start,
        testkit::span([8; 16], [5; 8], &[], "valid-other-trace"),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![testkit::resource_spans("mixed", spans)],
    }
}

fn check_mixed_delivery(lines: &[Value]) {
    let mut names: Vec<String> = spans(lines)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["valid-child", "valid-other-trace", "valid-root"]
    );
    assert_eq!(lines.len(), 2, "two traces, released separately");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_valid_and_invalid_spans_get_exact_partial_success_over_http() {
    let c = small_limit_collector().await;
    let resp = send(&c, mixed_request().encode_to_vec(), &[PROTO]).await;
    assert_eq!(resp.status(), 200);
    let answer = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 4);
    assert_eq!(
        partial.error_message,
        "4 spans rejected: resource_spans[0].scope_spans[0].spans[1]: trace_id is all zero; \
         resource_spans[0].scope_spans[0].spans[3]: span_id is all zero; \
         resource_spans[0].scope_spans[0].spans[4]: parent_span_id has 4 bytes, must be empty or have 8; \
         and 1 more"
    );
    check_mixed_delivery(&c.wait_for_spans(3).await);
    let m = c.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_refused_spans_total{protocol="http_protobuf",reason="invalid"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_accepted_spans_total{protocol="http_protobuf"}"#
        ),
        Some(3.0)
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_valid_and_invalid_spans_get_exact_partial_success_over_grpc() {
    let c = small_limit_collector().await;
    let mut client = TraceServiceClient::connect(c.grpc_url()).await.unwrap();
    let answer = client
        .export(testkit::upstream(&mixed_request()))
        .await
        .unwrap()
        .into_inner();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 4);
    assert!(
        partial.error_message.starts_with("4 spans rejected: "),
        "{}",
        partial.error_message
    );
    check_mixed_delivery(&c.wait_for_spans(3).await);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversize_and_gzip_bomb_are_resource_exhausted() {
    let c = small_limit_collector().await;
    let mut client = TraceServiceClient::connect(c.grpc_url())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let err = client
        .export(testkit::upstream(&testkit::request(1, 50, 4, 400)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("65536"), "{}", err.message());
    // A request whose gzip form is small but which inflates past the limit.
    let mut bomb = testkit::request(2, 1, 1, 100);
    bomb.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(8 << 20).into();
    let mut gz = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let err = gz.export(testkit::upstream(&bomb)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let ok = gz
        .export(testkit::upstream(&testkit::request(3, 1, 2, 100)))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.partial_success.is_none());
    c.wait_for_spans(2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_one_attribute_does_not_refuse_the_request() {
    let c = small_limit_collector().await;
    let mut request = testkit::request(5, 1, 2, 100);
    let span = &mut request.resource_spans[0].scope_spans[0].spans[1];
    span.attributes.push(testkit::kv("note", "x"));
    let last = span.attributes.len() - 1;
    span.attributes[last].value = Some(traceloom::otlp::AnyValue {
        value: Some(traceloom::otlp::Value::StringValue(
            bytes::Bytes::from_static(b"caf\xe9"),
        )),
    });
    let resp = send(&c, request.encode_to_vec(), &[PROTO]).await;
    assert_eq!(
        resp.status(),
        200,
        "a strict decoder would answer 400 for the whole request"
    );
    let delivered = spans(&c.wait_for_spans(2).await);
    let note = delivered[1]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "note")
        .unwrap();
    assert_eq!(note["value"]["stringValue"], "caf\u{fffd}");
    c.stop().await;
}

//! CORS for browser exporters, and the admin endpoints.

use prost::Message;
use traceloom::testkit;

use crate::harness::{Collector, Settings, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_a_configured_origin_post_traces() {
    let c = Collector::start_with(Settings {
        cors_origin: Some("https://app.example.com"),
        ..Settings::default()
    })
    .await;
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, c.http_url())
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-mlflow-experiment-id",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("content-type") && allowed.contains("x-mlflow-experiment-id"),
        "{allowed}"
    );
    assert_eq!(h["access-control-max-age"], "600");

    let post = client
        .post(c.http_url())
        .header("origin", "https://app.example.com")
        .header("content-type", "application/x-protobuf")
        .body(testkit::request(1, 1, 2, 50).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(
        post.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    let other = client
        .request(reqwest::Method::OPTIONS, c.http_url())
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served_on_the_admin_port() {
    let c = Collector::start().await;
    let health = reqwest::get(format!("http://{}/health", c.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    let resp = c
        .post_protobuf(testkit::request(1, 2, 3, 50).encode_to_vec())
        .await;
    assert_eq!(resp.status(), 200);
    c.wait_for_spans(6).await;
    let m = c.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_accepted_spans_total{protocol="http_protobuf"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_receiver_requests_total{protocol="http_protobuf",code="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_sink_written_spans_total{pipeline="main",sink="out"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"traceloom_queue_capacity_bytes{name="pipeline.main"}"#
        ),
        Some(67108864.0)
    );
    c.stop().await;
}

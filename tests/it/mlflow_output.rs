//! The debug sink's default format: MLflow traces, built from what real clients send, with the
//! experiment taken from the `x-mlflow-experiment-id` header, else the pipeline's default.

use std::time::Duration;

use serde_json::Value;

use crate::captures::fixtures;
use crate::harness::{Collector, Settings, wait_for};

async fn post(c: &Collector, file: &str, experiment: Option<&str>) {
    let body = std::fs::read(fixtures().join(file)).unwrap();
    let mut req = reqwest::Client::new()
        .post(c.http_url())
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(x) = experiment {
        req = req.header("x-mlflow-experiment-id", x);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_sink_writes_mlflow_traces_with_their_experiment() {
    let c = Collector::start_with(Settings {
        format: "mlflow",
        default_experiment: "7",
        ..Settings::default()
    })
    .await;
    post(&c, "04_genai_semconv_split_trace/req2_root.pb", None).await;
    post(&c, "01_sdk_otlp_only/request.pb", Some("42")).await;
    let mut lines: Vec<Value> = wait_for("two MLflow traces", Duration::from_secs(10), || {
        let lines = c.lines();
        (lines.len() == 2).then_some(lines)
    })
    .await;
    lines.sort_by(|a, b| {
        a["info"]["trace_id"]
            .as_str()
            .cmp(&b["info"]["trace_id"].as_str())
    });
    let experiment =
        |l: &Value| l["info"]["trace_location"]["mlflow_experiment"]["experiment_id"].clone();
    assert_eq!(
        lines[0]["info"]["trace_id"],
        "tr-5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(
        experiment(&lines[0]),
        "7",
        "no header: the pipeline default"
    );
    assert_eq!(lines[0]["info"]["state"], "OK");
    assert_eq!(
        lines[1]["info"]["trace_id"],
        "tr-792329fa8d2263019636440bc6951565"
    );
    assert_eq!(experiment(&lines[1]), "42", "the header wins");
    assert_eq!(
        lines[1]["data"]["spans"].as_array().unwrap().len(),
        4,
        "the capture's 4 spans"
    );
    assert_eq!(
        lines[1]["data"]["spans"][0]["attributes"]["mlflow.traceRequestId"],
        "\"tr-792329fa8d2263019636440bc6951565\""
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_session_id_is_left_out_and_counted() {
    use prost::Message;
    let c = Collector::start_with(Settings {
        format: "mlflow",
        ..Settings::default()
    })
    .await;
    let mut request = traceloom::testkit::request(9, 1, 1, 0);
    request.resource_spans[0].scope_spans[0].spans[0].attributes =
        vec![traceloom::testkit::kv("session.id", &"s".repeat(300))];
    let resp = c.post_protobuf(request.encode_to_vec()).await;
    assert_eq!(
        resp.status(),
        200,
        "MLflow would refuse the whole batch; traceloom keeps the data"
    );
    let lines = wait_for("the trace", Duration::from_secs(10), || {
        let lines = c.lines();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(
        lines[0]["info"]["trace_metadata"]
            .get("mlflow.trace.session")
            .is_none()
    );
    let m = c.metrics().await;
    assert_eq!(
        crate::harness::metric(
            &m,
            r#"traceloom_mlflow_limits_applied_total{limit="session_rejected"}"#
        ),
        Some(1.0)
    );
    c.stop().await;
}

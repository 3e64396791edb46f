//! The user's story: MLflow's distributed-tracing example, a client and a server service as two
//! separate Python processes with real MLflow, each exporting OTLP to traceloom on its own
//! schedule. traceloom must deliver exactly one trace with both services' spans, correctly
//! parented, that MLflow's `Trace.from_dict` loads.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Collector, Settings, wait_for};
use crate::mlflow_oracle::{python, run_script};
use crate::parquet::lake_check;

async fn run_example(protocol: &'static str) {
    // A realistic idle timeout: the services export on their own schedules, and a short one
    // would (correctly) release the client's root alone first, then a second revision.
    let workdir = tempfile::tempdir().unwrap();
    let lake = workdir.path().join("lake");
    let c = Collector::start_with(Settings {
        format: "mlflow",
        idle_timeout: "2s",
        parquet_file_age: Some("1h"),
        lake_path: Some(lake.clone()),
        ..Settings::default()
    })
    .await;
    let endpoint = match protocol {
        "grpc" => c.grpc_url(),
        _ => c.http_url(),
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/distributed.py");
    let out = tokio::task::spawn_blocking({
        let workdir = workdir.path().to_path_buf();
        move || {
            Command::new(python())
                .arg(script)
                .arg(&endpoint)
                .arg(protocol)
                .arg(&workdir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace_id = format!("tr-{}", stdout.trim().lines().last().unwrap());
    let trace: Value = wait_for("the assembled trace", Duration::from_secs(20), || {
        c.lines().into_iter().find(|t| {
            t["info"]["trace_id"] == trace_id.as_str()
                && t["data"]["spans"].as_array().unwrap().len() == 2
        })
    })
    .await;
    // Stragglers would show up as a second trace or revision: give them time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = c.lines();
    assert_eq!(all.len(), 1, "exactly one trace, one revision: {all:#?}");
    let spans = trace["data"]["spans"].as_array().unwrap();
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {trace}"))
    };
    let root = by_name("client-root");
    let handler = by_name("server-handler");
    assert_eq!(root["parent_span_id"], Value::Null);
    assert_eq!(
        handler["parent_span_id"], root["span_id"],
        "server-handler is under client-root"
    );
    assert_eq!(handler["attributes"]["status"], "\"ok\"");
    let info = &trace["info"];
    assert_eq!(info["state"], "OK");
    assert_eq!(
        info["tags"]["traceloom.services"],
        r#"["mlflow-client", "mlflow-server"]"#
    );
    assert_eq!(info["tags"]["mlflow.traceName"], "client-root");
    assert_eq!(info["trace_metadata"]["traceloom.revision"], "1");
    assert!(info["tags"].get("traceloom.partial").is_none());
    // MLflow loads what traceloom assembled.
    let path = workdir.path().join("trace.jsonl");
    std::fs::write(&path, format!("{trace}\n")).unwrap();
    run_script(
        "roundtrip.py",
        &path,
        "MLflow cannot load the assembled trace",
    );
    // The same trace lands in the lake: one trace row, two span rows (published at shutdown).
    c.stop().await;
    let found = lake_check(&lake);
    assert_eq!(
        (found["traces"].as_u64(), found["spans"].as_u64()),
        (Some(1), Some(2))
    );
    let row = &found["by_trace"][format!("{trace_id}@1")];
    assert_eq!(
        row["services"],
        serde_json::json!(["mlflow-client", "mlflow-server"])
    );
    assert_eq!(
        row["span_names"],
        serde_json::json!(["client-root", "server-handler"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_distributed_example_over_grpc_is_one_trace() {
    run_example("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_distributed_example_over_http_is_one_trace() {
    run_example("http/protobuf").await;
}

//! Golden vectors: each captured OTLP request, normalized by traceloom, equals the trace MLflow
//! 3.17.2 produced from the same request, once the fields named below are set aside.

use bytes::Bytes;
use serde_json::Value;
use traceloom::mlflow;
use traceloom::model::TraceSpans;
use traceloom::receive::decode::decode_protobuf;
use traceloom::receive::validate::split_by_trace;

use crate::captures::fixtures;

/// The spans of `requests` (in arrival order), merged per trace as the assembler will.
fn spans_of(requests: &[&str]) -> TraceSpans {
    let mut merged: Option<TraceSpans> = None;
    for r in requests {
        let body = std::fs::read(fixtures().join(r)).unwrap();
        let resources = decode_protobuf(&Bytes::from(body)).unwrap();
        let split = split_by_trace(resources, Vec::new());
        assert!(split.rejections.is_empty(), "{r}: {:?}", split.rejections);
        assert_eq!(split.traces.len(), 1, "{r}: one trace per capture");
        let trace = split.traces.into_iter().next().unwrap();
        match &mut merged {
            None => merged = Some(trace),
            Some(m) => m.groups.extend(trace.groups),
        }
    }
    merged.unwrap()
}

fn expected(file: &str) -> Value {
    let path = fixtures().join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn remove(v: &mut Value, pointer: &str, keys: &[&str]) {
    if let Some(Value::Object(map)) = v.pointer_mut(pointer) {
        for k in keys {
            map.remove(*k);
        }
    }
}

fn remove_span_attributes(v: &mut Value, keys: &[&str]) {
    for span in v["data"]["spans"].as_array_mut().unwrap() {
        remove(span, "/attributes", keys);
    }
}

/// Sets aside what differs for a stated reason, on both sides.
fn comparable(mut ours: Value, mut theirs: Value) -> (Value, Value) {
    // Made by MLflow's server for its own storage; no collector can know them.
    remove(
        &mut theirs,
        "/info/tags",
        &["mlflow.artifactLocation", "mlflow.trace.spansLocation"],
    );
    // Cost: MLflow prices tokens with litellm's table; traceloom does not compute cost (the
    // issue makes it optional and it needs a price table kept current).
    remove(&mut theirs, "/info/trace_metadata", &["mlflow.trace.cost"]);
    remove_span_attributes(&mut theirs, &["mlflow.llm.cost"]);
    // Added by traceloom where MLflow's OTLP path leaves them out (issue 3 §4 asks for them):
    // the schema version, the root's inputs/outputs, the trace name (MLflow quirk §8.7 never
    // sets it for OTLP traces) and the list of services that took part.
    remove(
        &mut ours,
        "/info/trace_metadata",
        &[
            "mlflow.trace_schema.version",
            "mlflow.traceInputs",
            "mlflow.traceOutputs",
        ],
    );
    remove(
        &mut ours,
        "/info/tags",
        &["mlflow.traceName", "traceloom.services"],
    );
    (drop_empty_maps(ours), drop_empty_maps(theirs))
}

/// Proto3 JSON omits empty maps; apply that after the removals above.
fn drop_empty_maps(mut v: Value) -> Value {
    let info = v["info"].as_object_mut().unwrap();
    info.retain(|_, field| field.as_object().is_none_or(|m| !m.is_empty()));
    v
}

fn normalize(requests: &[&str], golden: &str) -> (Value, Value) {
    let theirs = expected(golden);
    let experiment = theirs["info"]["trace_location"]["mlflow_experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let trace = spans_of(requests);
    let built = mlflow::build(trace.trace_id, &trace.encoded(), Some(&experiment), "0");
    assert_eq!(built.report, mlflow::LimitReport::default());
    comparable(serde_json::to_value(&built.trace).unwrap(), theirs)
}

fn assert_same(ours: &Value, theirs: &Value, what: &str) {
    if ours != theirs {
        panic!(
            "{what}: traceloom and MLflow differ\n--- traceloom\n{}\n--- mlflow\n{}",
            serde_json::to_string_pretty(ours).unwrap(),
            serde_json::to_string_pretty(theirs).unwrap()
        );
    }
}

#[test]
fn sdk_otlp_only_capture_matches_mlflow() {
    let (ours, theirs) = normalize(
        &["01_sdk_otlp_only/request.pb"],
        "01_sdk_otlp_only/mlflow_trace_after_server_ingest.json",
    );
    assert_same(&ours, &theirs, "01");
}

#[test]
fn sdk_dual_export_capture_matches_mlflow_server_ingest() {
    let (ours, theirs) = normalize(
        &["02_sdk_dual_export/request.pb"],
        "02_sdk_dual_export/mlflow_trace_after_server_ingest.json",
    );
    assert_same(&ours, &theirs, "02");
}

#[test]
fn genai_semconv_split_trace_matches_mlflow_after_each_request() {
    let (ours, theirs) = normalize(
        &["04_genai_semconv_split_trace/req1_children.pb"],
        "04_genai_semconv_split_trace/mlflow_trace_after_req1.json",
    );
    assert_same(&ours, &theirs, "04 after req1");
    let (ours, theirs) = normalize(
        &[
            "04_genai_semconv_split_trace/req1_children.pb",
            "04_genai_semconv_split_trace/req2_root.pb",
        ],
        "04_genai_semconv_split_trace/mlflow_trace_after_req2.json",
    );
    assert_same(&ours, &theirs, "04 after req2");
}

#[test]
fn distributed_capture_assembles_to_mlflow_final_trace() {
    let (ours, mut theirs) = normalize(
        &[
            "05_distributed_sdk/01_v1_traces.request.pb",
            "05_distributed_sdk/02_v1_traces.request.pb",
            "05_distributed_sdk/04_v1_traces.request.pb",
        ],
        "05_distributed_sdk/mlflow_trace_final.json",
    );
    // MLflow also received the client's start_trace call (03_start_trace.request.json), which
    // carries TraceInfo that OTLP cannot: client metadata and its own timing.
    set_aside_start_trace(&mut theirs, &ours);
    assert_same(&ours, &theirs, "05");
}

#[test]
fn native_client_capture_spans_match_mlflow() {
    let (ours, mut theirs) = normalize(
        &["03_sdk_to_mlflow_server/v1_traces.request.pb"],
        "03_sdk_to_mlflow_server/mlflow_trace.json",
    );
    set_aside_start_trace(&mut theirs, &ours);
    assert_same(&ours, &theirs, "03");
}

/// Sets aside what only MLflow's `start_trace` call supplied: `client_request_id`, the SDK's
/// metadata (source, user, git, size statistics, `infoFinalized`, session and user, which OTLP
/// does not carry), its tags (`env`, `mlflow.traceName`) and its own duration. Everything else
/// must agree.
fn set_aside_start_trace(theirs: &mut Value, ours: &Value) {
    let info = theirs["info"].as_object_mut().unwrap();
    info.remove("client_request_id");
    info["execution_duration_ms"] = ours["info"]["execution_duration_ms"].clone();
    let metadata = info["trace_metadata"].as_object_mut().unwrap();
    metadata.retain(|k, _| k == "mlflow.trace.tokenUsage");
    let tags = info["tags"].as_object_mut().unwrap();
    tags.retain(|k, _| k.starts_with("service."));
    *theirs = drop_empty_maps(theirs.take());
}

//! MLflow itself as the oracle: every trace traceloom emits, for the captures and for generated
//! cases covering each convention and edge, loads with MLflow's `Trace.from_dict` and gives the
//! same JSON back from `to_dict()`.
//!
//! Needs the Python environment the test command creates (`scripts/python-env.sh`, path in
//! `TRACELOOM_PYTHON`); without it the test fails, it never skips.

use std::io::Write;
use std::process::Command;

use bytes::Bytes;
use prost::Message;
use traceloom::mlflow;
use traceloom::otlp::{
    AnyValue, ArrayValue, Event, ExportTraceServiceRequest, KeyValue, KeyValueList, Link, Span,
    Status, Value,
};
use traceloom::testkit::{self, kv, kv_int};

use crate::captures::fixtures;

/// The interpreter of the venv with MLflow, set by the test command.
pub fn python() -> String {
    std::env::var("TRACELOOM_PYTHON").unwrap_or_else(|_| {
        panic!(
            "TRACELOOM_PYTHON is not set: run the tests with ./scripts/test.sh, which creates \
             the Python environment with MLflow (scripts/python-env.sh)"
        )
    })
}

fn any(v: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn s(text: &str) -> Value {
    Value::StringValue(Bytes::copy_from_slice(text.as_bytes()))
}

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: any(value),
    }
}

fn with_attrs(mut span: Span, attrs: Vec<KeyValue>) -> Span {
    span.attributes = attrs;
    span
}

/// Requests covering the conventions and edges the issue names; one trace each.
pub fn generated_cases() -> Vec<ExportTraceServiceRequest> {
    let t = |n: u8| [n; 16];
    let root = |n: u8, name: &str| testkit::span(t(n), [n; 8], &[], name);
    let child = |n: u8, id: u8, name: &str| testkit::span(t(n), [id; 8], &[n; 8], name);
    let one = |spans: Vec<Span>| ExportTraceServiceRequest {
        resource_spans: vec![testkit::resource_spans("svc", spans)],
    };
    let genai = one(vec![
        with_attrs(
            root(1, "invoke_agent bot"),
            vec![
                kv("gen_ai.operation.name", "invoke_agent"),
                kv("gen_ai.conversation.id", "c-1"),
            ],
        ),
        with_attrs(
            child(1, 2, "chat gpt"),
            vec![
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.request.model", "gpt-4o-mini"),
                kv("gen_ai.provider.name", "openai"),
                kv_int("gen_ai.usage.input_tokens", 12),
                kv_int("gen_ai.usage.output_tokens", 3),
                kv(
                    "gen_ai.input.messages",
                    r#"[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]"#,
                ),
                kv(
                    "gen_ai.output.messages",
                    r#"[{"role": "assistant", "parts": [{"type": "text", "content": "hello"}]}]"#,
                ),
            ],
        ),
    ]);
    let openinference = one(vec![with_attrs(
        root(2, "llm"),
        vec![
            kv("openinference.span.kind", "LLM"),
            kv(
                "input.value",
                r#"{"messages": [{"role": "user", "content": "What is up?"}]}"#,
            ),
            kv("output.value", "hello!"),
            kv_int("llm.token_count.prompt", 5),
            kv("llm.token_count.completion", "2"),
            kv("llm.model_name", "claude-3"),
            kv("llm.provider", "anthropic"),
        ],
    )]);
    let traceloop = one(vec![with_attrs(
        root(3, "workflow"),
        vec![
            kv("traceloop.span.kind", "workflow"),
            kv("traceloop.entity.input", r#"{"args": [1, 2]}"#),
            kv("traceloop.entity.output", "3"),
            kv("gen_ai.system", "openai"),
            kv_int("gen_ai.usage.prompt_tokens", 7),
            kv_int("gen_ai.usage.completion_tokens", 1),
            kv("gen_ai.prompt.0.content", "first prompt"),
        ],
    )]);
    let mut failing = child(4, 5, "tool");
    failing.status = Some(Status {
        message: Bytes::from_static(b"ValueError: lookup failed"),
        code: 2,
    });
    failing.events = vec![Event {
        time_unix_nano: 1_000_500_000,
        name: Bytes::from_static(b"exception"),
        attributes: vec![
            kv("exception.type", "ValueError"),
            kv("exception.message", "lookup failed"),
            kv_int("exception.count", 2),
        ],
        dropped_attributes_count: 0,
    }];
    let mut errored_root = root(4, "agent");
    errored_root.status = Some(Status {
        message: Bytes::from_static(b"child failed"),
        code: 2,
    });
    let errors = one(vec![errored_root, failing]);
    let nested = one(vec![with_attrs(
        root(5, "nested ✓ ünïcode"),
        vec![
            attr(
                "list",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        any(s("a")).unwrap(),
                        any(Value::IntValue(1)).unwrap(),
                        any(Value::DoubleValue(2.5)).unwrap(),
                        any(Value::BoolValue(false)).unwrap(),
                    ],
                }),
            ),
            attr(
                "map",
                Value::KvlistValue(KeyValueList {
                    values: vec![
                        attr(
                            "inner",
                            Value::KvlistValue(KeyValueList {
                                values: vec![kv("deep", "✓ value")],
                            }),
                        ),
                        kv_int("n", -3),
                    ],
                }),
            ),
            attr("float", Value::DoubleValue(1.5e-6)),
            kv("jsonish", r#"{"a": [1, {"b": null}]}"#),
            kv("quoted", r#""already quoted""#),
            kv("numeric string", "42"),
            kv("emoji 🚀", "多语言 текст"),
            kv("session.id", "sess-✓"),
            kv("user.id", "ünï"),
            kv("mlflow.traceTag.team", "search"),
        ],
    )]);
    let mut linked = root(6, "linked");
    linked.links = vec![Link {
        trace_id: Bytes::copy_from_slice(&[9; 16]),
        span_id: Bytes::copy_from_slice(&[9; 8]),
        trace_state: Bytes::new(),
        attributes: vec![kv("why", "follows")],
        dropped_attributes_count: 0,
        flags: 0,
    }];
    let big = "x".repeat(5000);
    let huge = one(vec![with_attrs(
        root(7, "huge"),
        vec![
            kv(
                "mlflow.spanInputs",
                &format!(r#"{{"messages": [{{"role": "user", "content": "{big}"}}]}}"#),
            ),
            kv("mlflow.spanOutputs", &format!(r#""{big}""#)),
        ],
    )]);
    let several_resources = ExportTraceServiceRequest {
        resource_spans: vec![
            testkit::resource_spans("frontend", vec![root(8, "client-root")]),
            testkit::resource_spans("backend", vec![child(8, 9, "server-handler")]),
        ],
    };
    let no_root = one(vec![child(10, 11, "orphan")]);
    vec![
        genai,
        openinference,
        traceloop,
        errors,
        nested,
        one(vec![linked]),
        huge,
        several_resources,
        no_root,
    ]
}

/// Every trace traceloom derives from the captures and the generated cases.
pub fn all_traces() -> Vec<mlflow::Trace> {
    let mut requests: Vec<ExportTraceServiceRequest> = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "pb") {
                let body = Bytes::from(std::fs::read(&path).unwrap());
                requests.push(ExportTraceServiceRequest::decode(body).unwrap());
            }
        }
    }
    requests.extend(generated_cases());
    requests
        .into_iter()
        .flat_map(|r| testkit::split(&r.resource_spans).traces)
        .map(|t| mlflow::build(t.trace_id, &t.encoded(), None, "0").trace)
        .collect()
}

#[test]
fn mlflow_loads_every_trace_and_writes_it_back_unchanged() {
    let traces = all_traces();
    assert!(traces.len() >= 17);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for t in &traces {
        writeln!(file, "{}", serde_json::to_string(t).unwrap()).unwrap();
    }
    drop(file);
    let stdout = run_script("roundtrip.py", &path, "MLflow refused traceloom's traces");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["traces"], traces.len());
}

#[test]
fn a_real_mlflow_server_builds_the_same_traces_from_the_same_requests() {
    let dir = tempfile::tempdir().unwrap();
    for (i, request) in generated_cases().into_iter().enumerate() {
        let split = testkit::split(&request.resource_spans);
        let t = &split.traces[0];
        let trace = mlflow::build(t.trace_id, &t.encoded(), None, "0").trace;
        std::fs::write(
            dir.path().join(format!("{i:02}.pb")),
            request.encode_to_vec(),
        )
        .unwrap();
        let case = serde_json::json!({"trace": trace, "set_aside": set_aside(i)});
        std::fs::write(
            dir.path().join(format!("{i:02}.traceloom.json")),
            case.to_string(),
        )
        .unwrap();
    }
    let stdout = run_script(
        "server_compare.py",
        dir.path(),
        "traceloom and a real MLflow server disagree",
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["cases"], generated_cases().len());
}

/// Strings near the line between JSON and not, as Python draws it: values built from JSON's
/// parts and Python's extras (`NaN`, `Infinity`, lone surrogate escapes), some damaged by one
/// inserted fragment. Pseudo-random with a fixed seed, so a failure repeats.
fn jsonish_strings(count: usize) -> Vec<String> {
    const LEAVES: &[&str] = &[
        "null",
        "true",
        "-0",
        "12",
        "1.5e-3",
        "NaN",
        "-Infinity",
        "Infinity",
        r#""v""#,
        r#""\ud800""#,
        r#""\u00e9\n\"""#,
        r#""é ✓""#,
        "\"tab\tinside\"",
    ];
    const DAMAGE: &[&str] = &[
        ",", "]", "}", ":", "\"", "\\", ".", "e", "0", "nan", "\\x", " ",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).unwrap()
    };
    fn value(next: &mut impl FnMut(usize) -> usize, depth: usize) -> String {
        match if depth == 0 { 0 } else { next(4) } {
            0 | 1 => LEAVES[next(LEAVES.len())].to_string(),
            2 => {
                let items: Vec<_> = (0..next(4)).map(|_| value(next, depth - 1)).collect();
                format!("[{}]", items.join(", "))
            }
            _ => {
                let fields: Vec<_> = (0..next(4))
                    .map(|i| format!("\"k{i}\": {}", value(next, depth - 1)))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
        }
    }
    (0..count)
        .map(|_| {
            let mut text = value(&mut next, 4);
            if next(3) == 0 {
                let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                text.insert_str(cuts[next(cuts.len())], DAMAGE[next(DAMAGE.len())]);
            }
            text
        })
        .collect()
}

#[test]
fn string_attributes_are_kept_as_json_exactly_where_mlflow_keeps_them() {
    let mut strings = jsonish_strings(3000);
    let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
    strings.extend([deep(200), " [NaN] ".to_string(), "\u{feff}[]".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strings.jsonl");
    let lines: Vec<String> = strings
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let stdout = run_script(
        "attribute_strings.py",
        &path,
        "MLflow could not store the strings",
    );
    let expected: Vec<String> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(expected.len(), strings.len());
    let kept = strings
        .iter()
        .zip(&expected)
        .filter(|(s, e)| s == e)
        .count();
    assert!(
        (300..2700).contains(&kept),
        "the strings straddle the line: {kept} of {} kept as JSON",
        strings.len()
    );
    for (s, expected) in strings.iter().zip(&expected) {
        assert_eq!(&mlflow::attributes::encode_str(s), expected, "for {s:?}");
    }
}

/// Runs `tests/python/<script> <arg>` in the MLflow venv; fails with `what` and its output unless
/// it exits 0. Returns its stdout.
pub fn run_script(script: &str, arg: &std::path::Path, what: &str) -> String {
    run_script_with(script, &[arg.as_os_str()], what)
}

/// [`run_script`] with several arguments.
pub fn run_script_with(script: &str, args: &[&std::ffi::OsStr], what: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Attributes and tags a generated case sets aside, each a conscious divergence from MLflow.
fn set_aside(case: usize) -> Vec<&'static str> {
    match case {
        // Two resources in one request: MLflow lets the last resource's `service.name` win (quirk
        // §8.6); traceloom lets the root span's resource win, so the tag names the entry service.
        7 => vec!["service.name"],
        // Bytes: MLflow's JSON encoder falls back to Python's `str(b'...')`, a Python-only
        // rendering; traceloom writes standard base64, which every reader can decode.
        4 => vec!["blob"],
        _ => vec![],
    }
}

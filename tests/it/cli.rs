//! The command line: `validate` reports every problem with file, line, column, field and why;
//! `run` fails clearly when it cannot listen; `--help` documents every option.

use std::process::Command;

fn traceloom(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_traceloom"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const GOOD_HEAD: &str = "receivers:\n  otlp:\n    type: otlp\n    grpc: {}\n";

/// (file body, the expected error text after `FILE:`)
const BROKEN: &[(&str, &str)] = &[
    (
        "receivers:\n  otlp:\n    type: otlp\n    grpc:\n      endpont: 127.0.0.1:1\npipelines: {}\n",
        "5:7: receivers.otlp.grpc.endpont: unknown field `endpont`, expected one of endpoint, max_message_size; did you mean `endpoint`?",
    ),
    (
        "receivers:\n  otlp:\n    type: otlpx\npipelines: {}\n",
        "3:5: receivers.otlp: unknown variant `otlpx`, expected one of otlp; did you mean `otlp`?",
    ),
    (
        "receivers:\n  otlp:\n    grpc: {}\n    type: otlp\npipelines: {}\n",
        "3:5: receivers.otlp: a receiver must start with `type:` (one of otlp)",
    ),
    (
        "pipelines:\n  p:\n    receivers: [otlp]\n    queue:\n      max_bytes: 12 parsecs\n    sinks: {}\n",
        "5:18: pipelines.p.queue.max_bytes: \"parsecs\" is not a size unit: use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB",
    ),
    (
        "pipelines:\n  p:\n    receivers: [otlp]\n    queue:\n      admission_timeout: soon\n    sinks: {}\n",
        "5:26: pipelines.p.queue.admission_timeout: \"soon\" is not a duration (expected number at 0): use e.g. 500ms, 5s, 2m",
    ),
    (
        "pipelines:\n  p:\n    receivers: [otlp]\n    sinks:\n      s:\n        type: kafak\n",
        "6:9: pipelines.p.sinks.s: unknown variant `kafak`, expected one of debug, discard, kafka, parquet; did you mean `kafka`?",
    ),
    (
        "pipelines:\n  p:\n    receivers: [otlp]\n    sinks:\n      s: {type: debug, pth: x}\n",
        "5:24: pipelines.p.sinks.s.pth: unknown field `pth`, expected one of path, format; did you mean `path`?",
    ),
];

#[test]
fn validate_reports_file_line_field_and_why() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (body, expected)) in BROKEN.iter().enumerate() {
        let path = dir.path().join(format!("broken{i}.yaml"));
        std::fs::write(&path, body).unwrap();
        let (code, _, stderr) = traceloom(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{body}");
        assert_eq!(
            stderr.trim(),
            format!("{}:{expected}", path.display()),
            "{body}"
        );
    }
}

#[test]
fn validate_lists_every_semantic_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refs.yaml");
    let body =
        format!("{GOOD_HEAD}pipelines:\n  p:\n    receivers: [otlp, nope]\n    sinks: {{}}\n");
    std::fs::write(&path, body).unwrap();
    let (code, _, stderr) = traceloom(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = path.display();
    assert_eq!(
        stderr.trim(),
        format!(
            "{p}:7:23: pipelines.p.receivers[1]: unknown receiver \"nope\"; defined receivers: otlp\n\
             {p}: pipelines.p.sinks: no sink: traces would have nowhere to go"
        )
    );
}

#[test]
fn validate_accepts_the_shipped_pipelines() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let (code, stdout, stderr) = traceloom(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", path.display());
        assert!(stdout.ends_with(": valid\n"));
    }
}

#[test]
fn validate_reports_a_missing_file() {
    let (code, _, stderr) = traceloom(&["validate", "--config", "/nonexistent/x.yaml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("/nonexistent/x.yaml: cannot read the file: "),
        "{stderr}"
    );
}

#[test]
fn run_fails_clearly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let body = format!(
        "receivers:\n  otlp:\n    type: otlp\n    grpc:\n      endpoint: 127.0.0.1:{port}\nadmin:\n  endpoint: null\n\
         pipelines:\n  p:\n    receivers: [otlp]\n    log:\n      dir: \"{log}\"\n    sinks:\n      s: {{type: discard}}\n",
        log = dir.path().join("log").display()
    );
    std::fs::write(&path, body).unwrap();
    let (code, _, stderr) = traceloom(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "receivers.otlp.grpc: cannot listen on 127.0.0.1:{port}: "
        )),
        "{stderr}"
    );
}

#[test]
fn help_documents_commands_and_options() {
    let (code, stdout, _) = traceloom(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "validate", "--log-format", "--log-level"] {
        assert!(stdout.contains(word), "--help lacks {word}:\n{stdout}");
    }
    let (_, run_help, _) = traceloom(&["run", "--help"]);
    assert!(
        run_help.contains("--config") && run_help.contains("embedded default"),
        "{run_help}"
    );
}

#[test]
fn validate_names_an_unset_environment_variable_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(
        &path,
        "pipelines:\n  p:\n    receivers: [otlp]\n    sinks:\n      k: {type: kafka, brokers: \"${TRACELOOM_TEST_UNSET_BROKERS}\", topic: t}\n",
    )
    .unwrap();
    let (code, _, stderr) = traceloom(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:5:34: environment variable TRACELOOM_TEST_UNSET_BROKERS is not set (give a default with ${{TRACELOOM_TEST_UNSET_BROKERS:-value}})",
            path.display()
        )
    );
}

#[tokio::test]
async fn health_answers_for_a_running_collector_and_fails_without_one() {
    let c = crate::harness::Collector::start().await;
    let admin = c.admin.to_string();
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || traceloom(&["health", "--admin", &admin]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    c.stop().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, _, stderr) = traceloom(&["health", "--admin", &closed]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("traceloom: unhealthy: "), "{stderr}");
}

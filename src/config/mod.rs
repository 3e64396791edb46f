//! The pipeline file: what receivers listen, which pipelines read them, and where traces go.
//!
//! Loading has two layers. Deserialization mirrors the YAML exactly (`deny_unknown_fields` on
//! every struct, component kinds chosen by `type:`), so a typo is an error with its line, not a
//! silently ignored key. Then [`Config::validate`] checks what types cannot: references between
//! sections, and that every pipeline has somewhere to send its traces. Every error names the
//! file, line, column, the path of the field and why.

pub mod env;
pub mod pattern;
pub mod tagged;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;

use serde::de::MapAccess;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use tagged::Tagged;

use crate::receive::grpc::GrpcConfig;
use crate::receive::http::HttpConfig;
use crate::sink::SinkConfig;
use units::{ByteSize, HumanDuration};

/// The embedded default pipeline, `pipelines/default.yaml`, used by `traceloom run` without
/// `--config`.
pub const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/default.yaml");

/// The name under which the embedded default is reported in errors.
pub const DEFAULT_PIPELINE_NAME: &str = "<embedded pipelines/default.yaml>";

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Named receivers; pipelines refer to them by name.
    #[serde(default)]
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// The admin HTTP server (`/metrics`, `/health`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Named pipelines.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// How long shutdown may take to drain before in-flight work is abandoned.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

/// A receiver, chosen by `type:`.
#[derive(Debug)]
pub enum ReceiverConfig {
    /// OTLP over gRPC and/or HTTP.
    Otlp(OtlpReceiverConfig),
}

impl Tagged for ReceiverConfig {
    const FAMILY: &'static str = "receiver";
    const KINDS: &'static [&'static str] = &["otlp"];

    fn from_rest<'de, A: MapAccess<'de>>(_kind: &str, rest: A) -> Result<Self, A::Error> {
        tagged::settings(rest).map(ReceiverConfig::Otlp)
    }
}

impl<'de> Deserialize<'de> for ReceiverConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

/// `type: otlp`: a section that is absent is not served; `grpc: {}` serves it with defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// OTLP/gRPC, default `127.0.0.1:4317`.
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    /// OTLP/HTTP, default `127.0.0.1:4318`.
    #[serde(default)]
    pub http: Option<HttpConfig>,
}

/// `admin:`, the HTTP server for `/metrics` and `/health`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on; `null` disables the admin server.
    pub endpoint: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            endpoint: Some("127.0.0.1:8888".into()),
        }
    }
}

/// One pipeline: which receivers feed it and which sinks it writes to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names of receivers (in `receivers:`) whose spans this pipeline takes.
    pub receivers: Vec<Spanned<String>>,
    /// The pipeline's input queues (before and after the ingest log).
    #[serde(default)]
    pub queue: QueueConfig,
    /// The ingest log: where accepted spans are made durable before clients are answered.
    #[serde(default)]
    pub log: crate::log::LogConfig,
    /// When traces are complete enough to release.
    #[serde(default)]
    pub assemble: crate::assemble::AssembleConfig,
    /// How spans become MLflow traces.
    #[serde(default)]
    pub mlflow: MlflowConfig,
    /// Which of the receivers' traces this pipeline takes; absent: all of them.
    #[serde(default)]
    pub select: Option<Spanned<crate::topology::select::Select>>,
    /// Run on every released trace, in order, before the sinks.
    #[serde(default)]
    pub stages: Vec<Spanned<crate::stages::StageConfig>>,
    /// Named sinks; every trace goes to each of them.
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// `pipelines.<name>.mlflow`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowConfig {
    /// The MLflow experiment of traces whose spans came with no `x-mlflow-experiment-id` header
    /// and no `mlflow.experimentId` resource attribute. `"0"` is MLflow's default experiment.
    pub default_experiment: String,
    /// Tasks that build MLflow traces from released revisions and run the stages, in parallel
    /// (a trace's revisions always go to the same one, in order). Unset: one per core the
    /// process may run on.
    pub workers: Option<NonZeroUsize>,
}

impl MlflowConfig {
    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

impl Default for MlflowConfig {
    fn default() -> Self {
        Self {
            default_experiment: "0".into(),
            workers: None,
        }
    }
}

/// The bounded queue in front of a pipeline, or of a sink.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most bytes of decoded requests held before receivers push back.
    pub max_bytes: ByteSize,
    /// How long a receiver waits for room before answering 503 / `UNAVAILABLE`.
    pub admission_timeout: HumanDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::mib(64),
            admission_timeout: HumanDuration(std::time::Duration::from_millis(500)),
        }
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when known.
    pub position: Option<(u64, u64)>,
    /// Dotted path of the field, e.g. `pipelines.default.receivers[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A pipeline file that cannot be used; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or the embedded default's name.
    pub file: String,
    /// Every problem, in file order where positions are known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = p.position {
                write!(f, ":{line}:{col}")?;
            }
            if !p.path.is_empty() {
                write!(f, ": {}", p.path)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a pipeline file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the file cannot be read, parsed or validated.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                position: None,
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse(&text, &file)
    }

    /// The embedded default pipeline.
    pub fn embedded_default() -> Self {
        Self::parse(DEFAULT_PIPELINE, DEFAULT_PIPELINE_NAME)
            .expect("the embedded default pipeline is validated by a unit test")
    }

    /// Parses and validates pipeline text; `file` names it in errors. Environment variables
    /// (`${NAME}`, `${NAME:-default}`) are substituted first, see [`env`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`] listing every problem found.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_string(),
            problems,
        };
        let text = env::substitute(text, |name| std::env::var(name).ok()).map_err(fail)?;
        let mut path = String::new();
        let parsed = serde_saphyr::with_deserializer_from_str(&text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
        let config: Config = match parsed {
            Ok(c) => c,
            Err(e) => return Err(fail(vec![syntax_problem(&path, &e)])),
        };
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Checks what deserialization cannot: references and non-empty sections.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.pipelines.is_empty() {
            problems.push(Problem {
                position: None,
                path: "pipelines".into(),
                message: "no pipeline is defined: add at least one".into(),
            });
        }
        for (name, receiver) in &self.receivers {
            let ReceiverConfig::Otlp(otlp) = receiver;
            if otlp.grpc.is_none() && otlp.http.is_none() {
                problems.push(Problem {
                    position: None,
                    path: format!("receivers.{name}"),
                    message: "serves nothing: add `grpc: {}` and/or `http: {}`".into(),
                });
            }
        }
        for (name, pipeline) in &self.pipelines {
            problems.extend(pipeline.validate(name, &self.receivers));
        }
        problems.sort_by_key(|p| p.position.unwrap_or((u64::MAX, 0)));
        problems
    }
}

impl PipelineConfig {
    fn validate(&self, name: &str, receivers: &BTreeMap<String, ReceiverConfig>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.receivers.is_empty() {
            problems.push(Problem {
                position: None,
                path: format!("pipelines.{name}.receivers"),
                message: "no receiver: name at least one from `receivers`".into(),
            });
        }
        for (i, r) in self.receivers.iter().enumerate() {
            if !receivers.contains_key(&r.value) {
                let known: Vec<&str> = receivers.keys().map(String::as_str).collect();
                problems.push(Problem {
                    position: Some((r.referenced.line(), r.referenced.column())),
                    path: format!("pipelines.{name}.receivers[{i}]"),
                    message: format!(
                        "unknown receiver {:?}; defined receivers: {}{}",
                        r.value,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        },
                        did_you_mean(&r.value, known.iter().copied())
                    ),
                });
            }
        }
        if let Some(select) = &self.select {
            problems.extend(select.value.problems().into_iter().map(|message| Problem {
                position: Some((select.referenced.line(), select.referenced.column())),
                path: format!("pipelines.{name}.select"),
                message,
            }));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            problems.extend(stage.value.problems().into_iter().map(|message| Problem {
                position: Some((stage.referenced.line(), stage.referenced.column())),
                path: format!("pipelines.{name}.stages[{i}]"),
                message: format!("{}: {message}", stage.value.kind()),
            }));
        }
        if self.sinks.len() > crate::log::commit::MAX_SINKS {
            problems.push(Problem {
                position: None,
                path: format!("pipelines.{name}.sinks"),
                message: format!(
                    "{} sinks; a pipeline may have at most {}",
                    self.sinks.len(),
                    crate::log::commit::MAX_SINKS
                ),
            });
        }
        if self.sinks.is_empty() {
            problems.push(Problem {
                position: None,
                path: format!("pipelines.{name}.sinks"),
                message: "no sink: traces would have nowhere to go".into(),
            });
        }
        problems
    }
}

fn syntax_problem(path: &str, e: &serde_saphyr::Error) -> Problem {
    Problem {
        position: e.location().map(|l| (l.line(), l.column())),
        // `Spanned` fields show up as `.value` in the path; users never write it.
        path: if path == "." {
            String::new()
        } else {
            path.replace(".value.", ".")
                .trim_end_matches(".value")
                .to_string()
        },
        message: plain_message(e),
    }
}

/// The parser's message without its own location suffix or source snippet, which
/// [`ConfigError`] renders in its own `file:line:col` form; for an unknown name, the nearest
/// valid one is suggested.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 3 column 5: message" -> "message"
    let message = match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, message)) if position.contains(" column ") => message.to_string(),
        _ => first.to_string(),
    };
    let suggestion = suggest_for(&message);
    message + &suggestion
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant"), a
/// "; did you mean `a`?" naming the nearest expected name, if one is close.
fn suggest_for(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return String::new();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let Some(expected) = expected.split_once("expected one of ").map(|(_, e)| e) else {
        return String::new();
    };
    let names = expected.split(", ").map(|n| n.trim_matches('`'));
    did_you_mean(unknown, names)
}

/// "; did you mean `x`?" for the candidate nearest to `name`, when it is close enough to be a
/// typo (edit distance at most a third of the name, and at most 3).
fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let config = Config::parse(DEFAULT_PIPELINE, DEFAULT_PIPELINE_NAME).unwrap();
        assert!(config.pipelines.contains_key("default"));
    }
}

#[cfg(test)]
mod broken_files {
    use super::*;

    const BASE: &str = "receivers:
  otlp:
    type: otlp
    grpc: {endpoint: 127.0.0.1:0}
pipelines:
  main:
    receivers: [otlp]
";

    /// Parses BASE followed by `tail` and returns the rendered error.
    fn error(tail: &str) -> String {
        let text = format!("{BASE}{tail}");
        Config::parse(&text, "broken.yaml").unwrap_err().to_string()
    }

    #[test]
    fn each_broken_file_names_file_line_field_and_reason() {
        let sinks = "    sinks:\n      out: {type: discard}\n";
        let cases: Vec<(String, &str)> = vec![
            (
                format!("    stages:\n      - type: fitler\n        drop_spans: []\n{sinks}"),
                "broken.yaml:9:",
            ),
            (
                format!("    stages:\n      - type: sample\n        rate: often\n{sinks}"),
                "broken.yaml:10:",
            ),
            (
                format!("    stages:\n      - type: filter\n        keep_trace: [{{}}]\n{sinks}"),
                "broken.yaml:10:",
            ),
            (
                "    sinks:\n      out: {type: kafak}\n".to_string(),
                "broken.yaml:9:",
            ),
            (
                format!("    assemble:\n      idle_timeout: 5 parsecs\n{sinks}"),
                "broken.yaml:9:",
            ),
            (format!("    recievers: [otlp]\n{sinks}"), "broken.yaml:8:"),
            (
                format!("    stages:\n      - type: sample\n        rate: 2\n{sinks}"),
                "broken.yaml:9:",
            ),
            (
                format!("    mlflow:\n      workers: 0\n{sinks}"),
                "broken.yaml:9:",
            ),
        ];
        let expected = [
            "pipelines.main.stages[0]: unknown variant `fitler`, expected one of filter, sample, redact, enrich; did you mean `filter`?",
            "rate",
            "unknown field `keep_trace`",
            "did you mean `kafka`?",
            "\"5 parsecs\" is not a duration",
            "did you mean `receivers`?",
            "pipelines.main.stages[0]: sample: rate 2 is not between 0 and 1",
            "pipelines.main.mlflow.workers: invalid value: integer `0`, expected a nonzero usize",
        ];
        for ((tail, position), want) in cases.iter().zip(expected) {
            let got = error(tail);
            assert!(
                got.starts_with(position),
                "{got:?} should start with {position}"
            );
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }

    #[test]
    fn a_missing_environment_variable_is_named_with_its_line() {
        let got =
            error("    sinks:\n      out: {type: debug, path: \"${TRACELOOM_SURELY_UNSET}\"}\n");
        assert!(got.starts_with("broken.yaml:9:"), "{got}");
        assert!(got.contains("TRACELOOM_SURELY_UNSET"), "{got}");
    }

    #[test]
    fn an_unknown_receiver_suggests_the_nearest_and_every_problem_is_listed() {
        let text = BASE.replace("receivers: [otlp]", "receivers: [oltp]")
            + "    select: []\n    stages:\n      - type: enrich\n    sinks: {out: {type: discard}}\n";
        let got = Config::parse(&text, "broken.yaml").unwrap_err();
        let rendered = got.to_string();
        assert_eq!(got.problems.len(), 3, "{rendered}");
        assert!(
            rendered.contains(
                "unknown receiver \"oltp\"; defined receivers: otlp; did you mean `otlp`?"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains("broken.yaml:8:13: pipelines.main.select: an empty `select`"),
            "{rendered}"
        );
        assert!(
            rendered.contains("pipelines.main.stages[0]: enrich: nothing to add"),
            "{rendered}"
        );
    }
}

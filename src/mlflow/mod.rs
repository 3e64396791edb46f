//! OTLP spans → MLflow traces, following MLflow's own ingest rules
//! (`shared/reference/mlflow-trace-model.md`).
//!
//! - [`span`]: one OTLP span → MLflow `Span` (`Span.from_otel_proto` + `sanitize_attributes`),
//!   with [`conventions`] filling `mlflow.spanType`, inputs, outputs, token usage, model and
//!   provider from GenAI semconv, OpenInference, Traceloop and others.
//! - [`trace`]: a trace's spans → `TraceInfo` (state, times, previews, session, user, usage, tags),
//!   a pure function of the spans so it can be recomputed when a late span arrives.
//! - [`attributes`] and [`json`]: MLflow's JSON-in-string attribute encoding, byte for byte,
//!   [`json_check`] deciding which strings are kept as JSON as Python's `json.loads` decides;
//!   [`usage`] reads stored token usage field by field; [`attribute_map`] holds a span's stored
//!   attributes.
//! - [`trace_json`]: the trace's JSON written straight into a string, for the sinks.
//!
//! The output serializes (serde) to exactly the JSON of MLflow's `Trace.to_dict()`.

pub mod attribute_map;
pub mod attributes;
pub mod conventions;
pub mod json;
pub mod json_check;
pub mod preview;
pub mod span;
pub mod trace;
pub mod trace_json;
pub mod usage;

pub use trace::{Built, LimitReport, Trace, build};

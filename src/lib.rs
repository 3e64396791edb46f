//! traceloom: an OTLP trace collector that assembles complete MLflow traces and writes them to
//! Kafka and Parquet.
//!
//! ```text
//!  OTLP/gRPC :4317 ─┐
//!  OTLP/HTTP :4318 ─┴─► receive ──► ingest log ──► assemble ──► normalize ──┬─► sink queue ─► sink
//!  (proto | json,       decode,     durable;       group by     OTLP spans  └─► sink queue ─► sink
//!   gzip|zstd|deflate)  validate,   ack after      trace id     → MLflow
//!                       split by    append
//!                       trace id
//! ```
//!
//! The modules follow the data flow: [`receive`] (OTLP/gRPC and OTLP/HTTP), [`log`] (the ingest
//! log, replay and commits), [`assemble`] (traces from spans), [`mlflow`] (MLflow traces), [`topology`]
//! (wiring, bounded queues, shutdown), [`sink`] (outputs), plus [`config`] (the pipeline file),
//! [`telemetry`] (metrics, logs, admin server), [`model`] (the types stages share), [`otlp`] (the
//! OTLP messages, with zero-copy string fields) and [`server`] (the bound HTTP server shape).

#![warn(missing_docs, unreachable_pub)]

pub mod assemble;
pub mod config;
pub mod log;
pub mod mlflow;
pub mod model;
pub mod otlp;
pub mod receive;
pub mod server;
pub mod sink;
pub mod stages;
pub mod telemetry;
#[doc(hidden)]
pub mod testkit;
pub mod topology;

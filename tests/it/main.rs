//! Integration tests: traceloom on loopback, driven by real OTLP clients.

mod assembly;
mod bad_input;
mod broker;
mod captures;
mod cli;
mod crash;
mod distributed;
mod examples;
mod exporters;
mod golden;
mod harness;
mod http_extras;
mod kafka;
mod log;
mod mlflow_oracle;
mod mlflow_output;
mod overload;
mod parquet;
mod shutdown;
mod stages;

//! The `traceloom` binary: command line, logging, signals and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use traceloom::config::Config;
use traceloom::telemetry::logging::{self, LogFormat};
use traceloom::telemetry::metrics::Metrics;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// traceloom: an OTLP trace collector that turns spans into complete MLflow traces.
///
/// Point OpenTelemetry exporters at it (OTLP/gRPC on 127.0.0.1:4317, OTLP/HTTP on
/// 127.0.0.1:4318 by default); it validates spans, assembles traces and writes them to its sinks.
/// Metrics and health are served on the admin port (127.0.0.1:8888 by default).
#[derive(Parser)]
#[command(name = "traceloom", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr: `human` (coloured on a terminal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "TRACELOOM_LOG_FORMAT"
    )]
    log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,traceloom=debug`.
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector until SIGINT or SIGTERM, then drain what was accepted and exit 0.
    Run {
        /// Pipeline file (YAML). Without it, the embedded default runs: OTLP on
        /// 127.0.0.1:4317/4318 into the pipeline in `pipelines/default.yaml`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask a running traceloom whether it is healthy: exit 0 when its admin server's `/health`
    /// answers 200, 1 otherwise. For container health checks.
    Health {
        /// The admin server's address.
        #[arg(long, default_value = "127.0.0.1:8888")]
        admin: String,
    },
    /// Check a pipeline file and exit: 0 when valid, 1 with every problem as
    /// `file:line:column: field: why` otherwise.
    Validate {
        /// Pipeline file (YAML) to check.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Health { admin } => {
            match traceloom::telemetry::admin::probe(&admin, std::time::Duration::from_secs(2)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("traceloom: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
                eprintln!("traceloom: {e:#}");
                return ExitCode::from(2);
            }
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "traceloom stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("traceloom")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let metrics = Arc::new(Metrics::new());
        let running = traceloom::topology::start(&config, metrics).await?;
        tokio::select! {
            signal = shutdown_signal() => tracing::info!(signal, "signal received"),
            () = running.failed() => tracing::error!("a component failed; shutting down"),
        }
        running
            .shutdown()
            .await
            .map_err(|problems| anyhow::anyhow!("shutdown incomplete: {}", problems.join("; ")))
    })
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler succeeds on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

//! The `traceloom` binary: command line, logging, signals and exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
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
    /// Run the collector until SIGINT or SIGTERM, then drain what was accepted and exit 0. On
    /// SIGHUP, or when the pipeline file changes, the file is validated and its stages, `select`
    /// and pipeline receivers applied; an invalid file, or one changing what needs a restart,
    /// is refused and logged, and the running configuration stays.
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
        // Handlers go in before the listeners open: a SIGTERM that arrives once the "listening"
        // lines are out (a replay may still be running) must drain, not kill the process.
        let shutdown = shutdown_signal()?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
        let metrics = Arc::new(Metrics::new());
        let mut running = traceloom::topology::start(&config, metrics).await?;
        let mut poll = tokio::time::interval(CONFIG_POLL);
        let mut last = config_path.as_deref().map(std::fs::read);
        tokio::pin!(shutdown);
        loop {
            let trigger = tokio::select! {
                signal = &mut shutdown => {
                    tracing::info!(signal, "signal received");
                    break;
                }
                () = running.failed() => {
                    tracing::error!("a component failed; shutting down");
                    break;
                }
                _ = hangup.recv() => "SIGHUP",
                _ = poll.tick() => {
                    let now = config_path.as_deref().map(std::fs::read);
                    let changed = matches!((&last, &now), (Some(Ok(a)), Some(Ok(b))) if a != b);
                    last = now;
                    if !changed {
                        continue;
                    }
                    "the file changed"
                }
            };
            reload(&mut running, config_path.as_deref(), trigger);
        }
        running
            .shutdown()
            .await
            .map_err(|problems| anyhow::anyhow!("shutdown incomplete: {}", problems.join("; ")))
    })
}

/// How often the pipeline file is checked for changes.
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Validates the pipeline file again and applies it; on any problem the running configuration
/// stays and the log says why.
fn reload(running: &mut traceloom::topology::Running, path: Option<&Path>, trigger: &str) {
    let Some(path) = path else {
        tracing::warn!(
            trigger,
            "reload: running the embedded default, there is no file to read"
        );
        return;
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(trigger, error = %e,
                "reload refused: the pipeline file is invalid; the running configuration stays");
            return;
        }
    };
    match running.reload(&config) {
        Ok(()) => tracing::info!(trigger, file = %path.display(), "pipeline file reloaded"),
        Err(e) => tracing::error!(trigger, error = %e, "reload refused"),
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves to the first signal's name.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

//! Wiring: builds receivers, pipelines and sinks from a [`Config`], runs them, and shuts them
//! down in order.
//!
//! ```text
//! receiver ─► Router ─► log queue ─► log writer ─► pipeline queue ─► pipeline task ─► workers ─┬─► sink queue ─► sink
//!   (shared    (per receiver:        (append, fsync,                  (assemble,      (MLflow,  └─► sink queue ─► sink
//!    by name)   its pipelines)        answer)                          journal)        stages, fan-out)
//! ```
//!
//! Back-pressure: every queue is bounded in bytes. A full sink queue blocks a worker's fan-out;
//! the worker's full queue stops the pipeline task, which stops reading the pipeline queue, which
//! fills; the log writer waits, its queue fills, and receivers wait at most the pipeline's
//! `admission_timeout` and answer with the retryable OTLP code. A client is answered OK only
//! once its spans are in the ingest log.
//!
//! Shutdown is data-driven: (1) receivers stop accepting and finish in-flight requests; (2) the
//! router drops its queue senders, so each log writer drains and syncs, each pipeline drains,
//! waits for its workers and closes its sink queues; (3) sinks write what they hold, flush and
//! return; (4) the replay checkpoint moves past what every sink holds; (5) the admin server stops
//! last. Anything still
//! running at `shutdown_timeout` is abandoned and reported, and the exit is non-zero; the ingest
//! log replays it at the next start.

pub mod backoff;
pub mod pipeline;
pub mod queue;
pub mod reload;
pub mod router;
pub mod select;
pub mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, ReceiverConfig};
use crate::log::reader::FrameReader;
use crate::log::writer::{LogSpace, Writer};
use crate::log::{SinkCommits, Tracker};
use crate::model::Protocol;
use crate::receive::{Exporter, Ingest};
use crate::sink;
use crate::telemetry::admin::{self, Health};
use crate::telemetry::metrics::Metrics;
use router::{PipelineInput, Router, Routes};

/// Why the topology could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket could not be bound.
    #[error("{component}: cannot listen on {endpoint}: {source}")]
    Bind {
        /// e.g. `receivers.otlp.grpc`.
        component: String,
        /// The configured address.
        endpoint: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// A pipeline's ingest log could not be opened.
    #[error("pipelines.{pipeline}.log: {source}")]
    Log {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: crate::log::LogError,
    },
    /// A sink could not be built.
    #[error("pipelines.{pipeline}.sinks.{sink}: {source}")]
    Sink {
        /// The pipeline.
        pipeline: String,
        /// The sink.
        sink: String,
        /// Why.
        #[source]
        source: sink::BuildError,
    },
}

/// Addresses the topology actually listens on (ports resolved when configured as 0).
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    /// OTLP/gRPC per receiver name.
    pub grpc: BTreeMap<String, SocketAddr>,
    /// OTLP/HTTP per receiver name.
    pub http: BTreeMap<String, SocketAddr>,
    /// The admin server, if enabled.
    pub admin: Option<SocketAddr>,
}

type TaskResult = (String, Result<(), String>);

/// A started topology.
pub struct Running {
    /// Where it listens.
    pub addresses: Addresses,
    router: Arc<Router>,
    health: Arc<Health>,
    stop_receivers: CancellationToken,
    stop_admin: CancellationToken,
    failed: CancellationToken,
    receivers: JoinSet<TaskResult>,
    pipelines: JoinSet<TaskResult>,
    admin: JoinSet<TaskResult>,
    trackers: Vec<Arc<Tracker>>,
    shutdown_timeout: Duration,
    reload: reload::Reloader,
}

/// Builds and starts everything `config` describes.
///
/// # Errors
///
/// [`StartError`] when a socket cannot be bound or a sink cannot be built; nothing is left running.
pub async fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Running, StartError> {
    let failed = CancellationToken::new();
    let mut pipelines = JoinSet::new();
    let mut inputs = BTreeMap::new();
    let mut stage_senders = BTreeMap::new();
    let mut trackers = Vec::new();
    for (name, pipeline) in &config.pipelines {
        let sink_names: Vec<&str> = pipeline.sinks.keys().map(String::as_str).collect();
        let log_metrics = metrics.log(name, &sink_names);
        let dir = pipeline.log.dir_for(name);
        let log =
            crate::log::open(&dir, &pipeline.log, &sink_names, &log_metrics).map_err(|source| {
                StartError::Log {
                    pipeline: name.clone(),
                    source,
                }
            })?;
        trackers.push(Arc::clone(&log.tracker));
        let mut manifests = log.manifests.into_iter();
        let mut sink_txs = Vec::new();
        for (index, (sink_name, sink_config)) in pipeline.sinks.iter().enumerate() {
            let sink = sink_config
                .build(name, sink_name, &metrics)
                .await
                .map_err(|source| StartError::Sink {
                    pipeline: name.clone(),
                    sink: sink_name.clone(),
                    source,
                })?;
            let manifest = manifests.next().filter(|_| sink.keeps_manifest());
            let commits = SinkCommits::new(
                index,
                Arc::clone(&log.tracker),
                manifest,
                log.origin.clone(),
            );
            let label = format!("sink.{name}.{sink_name}");
            let (tx, rx) = queue::bounded(
                pipeline.queue.max_bytes.as_usize(),
                metrics.queue(&label, pipeline.queue.max_bytes.as_usize()),
            );
            let span = info_span!("sink", pipeline = %name, sink = %sink_name);
            spawn_tracked(
                &mut pipelines,
                &failed,
                label.clone(),
                async move { sink.run(rx, commits).await.map_err(|e| e.to_string()) }
                    .instrument(span),
            );
            sink_txs.push((sink_name.clone(), tx));
        }
        let queue_bytes = pipeline.queue.max_bytes.as_usize();
        let log_label = format!("log.{name}");
        let (append_tx, append_rx) =
            queue::bounded(queue_bytes, metrics.queue(&log_label, queue_bytes));
        let label = format!("pipeline.{name}");
        let (logged_tx, logged_rx) =
            queue::bounded(queue_bytes, metrics.queue(&label, queue_bytes));
        let (floor_tx, floor_rx) = watch::channel(log.replay.from);
        let space = Arc::new(LogSpace::default());
        let records = FrameReader::new(log.records.dir().to_path_buf());
        let writer = Writer {
            log: Some(log.records),
            input: append_rx,
            output: logged_tx,
            fsync: pipeline.log.fsync,
            max_bytes: pipeline.log.max_log_bytes.0,
            floor: floor_rx,
            space: Arc::clone(&space),
            metrics: log_metrics.clone(),
        };
        let span = info_span!("log", pipeline = %name);
        spawn_tracked(
            &mut pipelines,
            &failed,
            log_label,
            writer.run().instrument(span),
        );
        let span = info_span!("pipeline", pipeline = %name);
        let (stages_tx, stages_rx) = watch::channel(reload::stage_configs(pipeline));
        let task = pipeline::Pipeline {
            name: name.clone(),
            stages: stages_rx,
            input: logged_rx,
            sinks: sink_txs,
            assemble: pipeline.assemble.clone(),
            mlflow: pipeline.mlflow.clone(),
            queue_bytes,
            metrics: Arc::clone(&metrics),
            assembler_metrics: metrics.assembler(name),
            log: pipeline::PipelineLog {
                journal: Some(log.journal),
                records: Some(records),
                fsync: pipeline.log.fsync,
                tracker: log.tracker,
                floor: floor_tx,
                replay: Some(log.replay),
                space,
                max_bytes: pipeline.log.max_log_bytes.0,
                metrics: log_metrics,
            },
        };
        spawn_tracked(&mut pipelines, &failed, label, task.run().instrument(span));
        inputs.insert(
            name.clone(),
            PipelineInput {
                tx: append_tx,
                admission_timeout: pipeline.queue.admission_timeout.0,
            },
        );
        stage_senders.insert(name.clone(), stages_tx);
    }
    let router = Arc::new(Router::new(
        Routes::new(config, &inputs),
        Arc::clone(&metrics),
    ));
    let stop_receivers = CancellationToken::new();
    let mut receivers = JoinSet::new();
    let mut addresses = Addresses::default();
    for (name, receiver) in &config.receivers {
        let ReceiverConfig::Otlp(otlp) = receiver;
        let ingest: Arc<dyn Ingest> = router.clone();
        let exporter = |protocol| {
            Exporter::new(
                Arc::from(name.as_str()),
                protocol,
                Arc::clone(&ingest),
                &metrics,
            )
        };
        if let Some(grpc) = &otlp.grpc {
            let server = grpc
                .build(exporter(Protocol::Grpc))
                .await
                .map_err(|source| {
                    bind_error(format!("receivers.{name}.grpc"), &grpc.endpoint, source)
                })?;
            let addr = server.local_addr();
            info!(receiver = %name, protocol = "grpc", %addr, "listening");
            addresses.grpc.insert(name.clone(), addr);
            let stop = stop_receivers.clone();
            spawn_tracked(
                &mut receivers,
                &failed,
                format!("receivers.{name}.grpc"),
                async move { server.run(stop).await.map_err(|e| e.to_string()) },
            );
        }
        if let Some(http) = &otlp.http {
            let server = http
                .build([
                    exporter(Protocol::HttpProtobuf),
                    exporter(Protocol::HttpJson),
                ])
                .await
                .map_err(|source| {
                    bind_error(format!("receivers.{name}.http"), &http.endpoint, source)
                })?;
            let addr = server.local_addr();
            info!(receiver = %name, protocol = "http", %addr, "listening");
            addresses.http.insert(name.clone(), addr);
            let stop = stop_receivers.clone();
            spawn_tracked(
                &mut receivers,
                &failed,
                format!("receivers.{name}.http"),
                async move { server.run(stop).await.map_err(|e| e.to_string()) },
            );
        }
    }
    let health = Arc::new(Health::default());
    let stop_admin = CancellationToken::new();
    let mut admin = JoinSet::new();
    if let Some(endpoint) = &config.admin.endpoint {
        let server = admin::bind(endpoint, Arc::clone(&metrics), Arc::clone(&health))
            .await
            .map_err(|source| bind_error("admin".into(), endpoint, source))?;
        addresses.admin = Some(server.local_addr());
        info!(addr = %server.local_addr(), "admin server listening (/metrics, /health)");
        let stop = stop_admin.clone();
        spawn_tracked(&mut admin, &failed, "admin".into(), async move {
            server.run(stop).await.map_err(|e| e.to_string())
        });
    }
    Ok(Running {
        addresses,
        router,
        health,
        stop_receivers,
        stop_admin,
        failed,
        receivers,
        pipelines,
        admin,
        trackers,
        shutdown_timeout: config.shutdown_timeout.0,
        reload: reload::Reloader::new(config, inputs, stage_senders),
    })
}

fn bind_error(component: String, endpoint: &str, source: std::io::Error) -> StartError {
    StartError::Bind {
        component,
        endpoint: endpoint.to_string(),
        source,
    }
}

/// Spawns a component task whose failure starts shutdown of the whole process.
fn spawn_tracked<F>(
    set: &mut JoinSet<TaskResult>,
    failed: &CancellationToken,
    name: String,
    task: F,
) where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let failed = failed.clone();
    set.spawn(async move {
        let result = task.await;
        if let Err(e) = &result {
            error!(component = %name, error = %e, "component failed");
            failed.cancel();
        }
        (name, result)
    });
}

impl Running {
    /// Applies a changed pipeline file: new stages, `select` and pipeline receivers take effect
    /// for traces released (and batches accepted) from now on. Anything else that changed needs
    /// a restart: then nothing is applied and the error says what.
    ///
    /// # Errors
    ///
    /// The sections that differ and cannot change while running.
    pub fn reload(&mut self, config: &Config) -> Result<(), String> {
        self.reload.apply(config, &self.router)
    }

    /// Resolves when a component has failed; the caller should then shut down.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Stops accepting, drains pipelines and sinks, stops the admin server.
    ///
    /// # Errors
    ///
    /// The components that failed or did not finish within `shutdown_timeout`.
    pub async fn shutdown(mut self) -> Result<(), Vec<String>> {
        info!("shutdown: receivers stop accepting, draining pipelines");
        let deadline = Instant::now() + self.shutdown_timeout;
        self.health.set_draining();
        let mut problems = Vec::new();
        self.stop_receivers.cancel();
        problems.extend(join_until(&mut self.receivers, deadline).await);
        self.router.close();
        self.reload.close();
        problems.extend(join_until(&mut self.pipelines, deadline).await);
        for tracker in &self.trackers {
            if let Err(e) = tracker.checkpoint() {
                problems.push(format!("cannot write the ingest log checkpoint: {e}"));
            }
        }
        self.stop_admin.cancel();
        problems.extend(join_until(&mut self.admin, deadline + Duration::from_secs(1)).await);
        if problems.is_empty() {
            info!("shutdown complete: every accepted batch was delivered to the sinks");
            Ok(())
        } else {
            for p in &problems {
                warn!(problem = %p, "shutdown incomplete");
            }
            Err(problems)
        }
    }
}

/// Waits for every task in `set` until `deadline`, then aborts the rest. Returns the problems.
async fn join_until(set: &mut JoinSet<TaskResult>, deadline: Instant) -> Vec<String> {
    let mut problems = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), set.join_next()).await;
        match next {
            Ok(None) => break,
            Ok(Some(Ok((_, Ok(()))))) => {}
            Ok(Some(Ok((name, Err(e))))) => problems.push(format!("{name}: {e}")),
            Ok(Some(Err(join))) => {
                problems.push(format!("a task panicked or was cancelled: {join}"))
            }
            Err(_) => {
                problems.push(format!(
                    "{} tasks did not finish before the shutdown timeout",
                    set.len()
                ));
                set.abort_all();
                break;
            }
        }
    }
    problems
}

/// Runs `work` on a blocking thread with the state held in `slot` (file I/O, encoding), and puts
/// the state back. The slot is empty only while the work runs.
///
/// # Panics
///
/// If the slot is empty (a previous call was cancelled) or `work` panics.
pub async fn on_blocking_thread<S, T>(
    slot: &mut Option<S>,
    work: impl FnOnce(&mut S) -> T + Send + 'static,
) -> T
where
    S: Send + 'static,
    T: Send + 'static,
{
    let mut state = slot
        .take()
        .expect("the state is back after each blocking step");
    let (state, result) = tokio::task::spawn_blocking(move || {
        let result = work(&mut state);
        (state, result)
    })
    .await
    .expect("blocking steps do not panic");
    *slot = Some(state);
    result
}

/// Sleeps until `deadline`, or forever when there is none.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

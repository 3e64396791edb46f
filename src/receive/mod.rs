//! OTLP receivers: gRPC (`grpc.rs`) and HTTP (`http.rs`) on top of one export routine.
//!
//! What a receiver guarantees: a request is answered OK only after its valid spans were handed
//! to every pipeline that reads from the receiver ([`Ingest::submit`] returned `Ok`). Invalid
//! spans are refused one by one through OTLP `partial_success`; the rest of the request goes on.
//! When a pipeline is full the client gets the retryable answer of its transport (gRPC
//! `UNAVAILABLE`, HTTP 503 + `Retry-After`), never a hung request, an error it would not retry,
//! or a silent drop.
//!
//! On shutdown the servers stop accepting connections, finish the requests in flight, and then
//! drop their handle on the pipelines so these can drain.

pub mod decode;
pub mod grpc;
pub mod http;
pub mod json;
pub mod validate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::model::{Protocol, ReceiveMeta, SpanBatch};
use crate::otlp::wire::ResourceBlock;
use crate::telemetry::metrics::{Metrics, ReceiverMetrics, RefuseReason};
use validate::Rejection;

/// The header MLflow's own `/v1/traces` endpoint reads to choose the experiment.
pub const EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";

/// Why a batch was not taken. All are temporary: the client should retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A pipeline had no room within the admission wait.
    #[error("pipeline is full, retry after {}s", retry_after.as_secs())]
    Overloaded {
        /// The delay suggested to the client.
        retry_after: Duration,
    },
    /// traceloom is shutting down.
    #[error("traceloom is shutting down, retry against another instance or later")]
    ShuttingDown,
    /// The ingest log could not take the batch (full, or a write failed).
    #[error("{0}; retry later")]
    Log(#[from] crate::log::writer::AppendError),
}

/// A boxed future, as `Ingest` is used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where receivers hand accepted batches: the pipelines (later, the ingest log).
pub trait Ingest: Send + Sync + 'static {
    /// Hands one validated batch to every pipeline reading from `batch.meta.receiver`.
    ///
    /// Resolves once the batch is held by them (the point at which the client may be told OK),
    /// or with a retryable error.
    fn submit(&self, batch: SpanBatch) -> BoxFuture<'_, Result<(), SubmitError>>;
}

/// The export routine both transports share: validate, split by trace, submit, answer.
#[derive(Clone)]
pub struct Exporter {
    receiver: Arc<str>,
    ingest: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
}

impl Exporter {
    /// An exporter for receiver `receiver` on `protocol`, handing batches to `ingest`.
    pub fn new(
        receiver: Arc<str>,
        protocol: Protocol,
        ingest: Arc<dyn Ingest>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self {
            receiver,
            ingest,
            metrics: metrics.receiver(protocol),
        }
    }

    /// Metric handles of this transport.
    pub fn metrics(&self) -> &ReceiverMetrics {
        &self.metrics
    }

    /// Validates and submits decoded spans; returns the OTLP response to send.
    ///
    /// `prior` are spans already refused by the decoder; `encoded_bytes` is the decoded body
    /// size, the cost of the batch in the pipeline's byte-bounded queue.
    ///
    /// # Errors
    ///
    /// [`SubmitError`] when the pipelines could not take the batch; nothing was accepted.
    pub async fn export(
        &self,
        protocol: Protocol,
        experiment_id: Option<&str>,
        resources: Vec<ResourceBlock>,
        prior: Vec<Rejection>,
        encoded_bytes: usize,
    ) -> Result<ExportTraceServiceResponse, SubmitError> {
        let split = validate::split_by_trace(resources, prior);
        self.metrics
            .refused(RefuseReason::Invalid, split.rejections.len());
        let partial_success =
            split
                .error_message()
                .map(|error_message| ExportTracePartialSuccess {
                    rejected_spans: split.rejections.len() as i64,
                    error_message,
                });
        if split.accepted > 0 {
            let accepted = split.accepted;
            let batch = SpanBatch {
                meta: ReceiveMeta {
                    receiver: Arc::clone(&self.receiver),
                    protocol,
                    received_at: SystemTime::now(),
                    experiment_id: experiment_id.map(Arc::from),
                },
                traces: split.traces,
                encoded_bytes,
            };
            if let Err(e) = self.ingest.submit(batch).await {
                let reason = match e {
                    SubmitError::Overloaded { .. } | SubmitError::Log(_) => RefuseReason::Overload,
                    SubmitError::ShuttingDown => RefuseReason::Shutdown,
                };
                self.metrics.refused(reason, accepted);
                return Err(e);
            }
            self.metrics.accepted(accepted);
        }
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on tonic.
//!
//! Accepts gzip and zstd request compression. A message larger than `max_message_size` (after
//! decompression) is refused with `RESOURCE_EXHAUSTED` naming both sizes: tonic itself answers
//! `OUT_OF_RANGE`, which OTLP exporters retry, so an oversize request would be sent again and
//! again; [`oversize_is_resource_exhausted`] rewrites that answer. A full pipeline answers
//! `UNAVAILABLE`, which every OTLP exporter retries with back-off.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{EXPERIMENT_HEADER, Exporter, SubmitError};
use crate::config::units::ByteSize;
use crate::model::Protocol;

/// `receivers.<name>.grpc` in the pipeline file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address to listen on. Loopback by default, like the OpenTelemetry Collector; containers
    /// set `0.0.0.0:4317`.
    pub endpoint: String,
    /// Largest request accepted, after decompression.
    pub max_message_size: ByteSize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            endpoint: "127.0.0.1:4317".into(),
            max_message_size: ByteSize::mib(16),
        }
    }
}

/// A bound, not yet serving, gRPC receiver.
pub struct GrpcReceiver {
    listener: TcpListener,
    exporter: Exporter,
    max_message_size: usize,
}

impl GrpcConfig {
    /// Binds the listening socket.
    ///
    /// # Errors
    ///
    /// The bind error, e.g. address in use.
    pub async fn build(&self, exporter: Exporter) -> std::io::Result<GrpcReceiver> {
        let listener = TcpListener::bind(&self.endpoint).await?;
        Ok(GrpcReceiver {
            listener,
            exporter,
            max_message_size: self.max_message_size.as_usize(),
        })
    }
}

impl GrpcReceiver {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests and returns.
    ///
    /// # Errors
    ///
    /// A fatal transport error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), tonic::transport::Error> {
        let service = TraceServiceServer::new(Service {
            exporter: self.exporter,
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(self.max_message_size);
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            // Larger HTTP/2 windows than hyper's defaults: OTLP requests are often 0.25-1 MiB
            // and several share one connection; 1 MiB windows stall them on flow control.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(tower::util::MapResponseLayer::new(
                oversize_is_resource_exhausted,
            ))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    }
}

/// Turns tonic's `OUT_OF_RANGE` "message length too large" refusal into `RESOURCE_EXHAUSTED`
/// without `RetryInfo`, which OTLP clients do not retry. The refusal is a trailers-only response,
/// so the status sits in the headers (and in the response extensions).
fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let too_large = response
        .extensions()
        .get::<Status>()
        .is_some_and(|s| s.code() == tonic::Code::OutOfRange && s.message().contains("too large"));
    if too_large {
        let message = response
            .extensions()
            .get::<Status>()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        let status = Status::resource_exhausted(format!(
            "request refused, not retryable: {message}; send smaller batches or raise max_message_size"
        ));
        let headers = response.headers_mut();
        headers.remove(Status::GRPC_MESSAGE);
        if status.add_header(headers).is_ok() {
            response.extensions_mut().insert(status);
        }
    }
    response
}

struct Service {
    exporter: Exporter,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let experiment = request
            .metadata()
            .get(EXPERIMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = request.into_inner();
        let size = message.encoded_len();
        let result = self
            .exporter
            .export(
                Protocol::Grpc,
                experiment.as_deref(),
                message.resource_spans,
                Vec::new(),
                size,
            )
            .await;
        let answer = result.map(Response::new).map_err(|e| match e {
            SubmitError::Overloaded { .. } | SubmitError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
        });
        let code = match &answer {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.exporter.metrics().request(&code);
        answer
    }
}

//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on tonic.
//!
//! Accepts gzip and zstd request compression. A message larger than `max_message_size` (after
//! decompression) is refused with `RESOURCE_EXHAUSTED` naming both sizes: tonic itself answers
//! `OUT_OF_RANGE`, which OTLP exporters retry, so an oversize request would be sent again and
//! again; [`oversize_is_resource_exhausted`] rewrites that answer. A full pipeline answers
//! `UNAVAILABLE`, which every OTLP exporter retries with back-off.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{EXPERIMENT_HEADER, Exporter, SubmitError};
use crate::config::units::ByteSize;
use crate::model::Protocol;
use crate::otlp::wire::ResourceBlock;

/// The gRPC path of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
    service: TraceService,
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
            service: TraceService {
                exporter: Arc::new(exporter),
                max_message_size: self.max_message_size.as_usize(),
            },
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
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            // OTLP requests are often 0.25-1 MiB and several share one connection: hyper's
            // defaults (1 MiB windows, 16 KiB frames) stall them on flow control and cut them
            // into many small frames; larger ones raised throughput by a fifth.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(Some(1 << 20))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(self.service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    }
}

/// `TraceService/Export` over tonic's unary machinery with [`SizedCodec`].
#[derive(Clone)]
struct TraceService {
    exporter: Arc<Exporter>,
    max_message_size: usize,
}

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for TraceService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not served here",
                    request.uri().path()
                ))
                .into_http());
            }
            let mut grpc = Grpc::new(SizedCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(service.max_message_size);
            let response = grpc.unary(ExportMethod(service.exporter), request).await;
            Ok(oversize_is_resource_exhausted(response))
        })
    }
}

/// A decoded request and its size in bytes.
/// A decoded request's resource spans, their spans' encodings, and its size.
type Sized = (Vec<ResourceBlock>, usize);

struct ExportMethod(Arc<Exporter>);

impl UnaryService<Sized> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send>>;

    fn call(&mut self, request: Request<Sized>) -> Self::Future {
        let exporter = Arc::clone(&self.0);
        Box::pin(async move {
            let experiment = request
                .metadata()
                .get(EXPERIMENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (spans, size) = request.into_inner();
            let result = exporter
                .export(
                    Protocol::Grpc,
                    experiment.as_deref(),
                    spans,
                    Vec::new(),
                    size,
                )
                .await;
            // Every submit error is temporary: UNAVAILABLE is the code OTLP clients retry.
            let answer = result
                .map(Response::new)
                .map_err(|e: SubmitError| Status::unavailable(e.to_string()));
            let code = match &answer {
                Ok(_) => "OK".to_string(),
                Err(status) => format!("{:?}", status.code()),
            };
            exporter.metrics().request(&code);
            answer
        })
    }
}

/// Protobuf codec whose decoder also reports the message's decoded size.
struct SizedCodec;

impl Codec for SizedCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Sized;
    type Encoder = SizedCodec;
    type Decoder = SizedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        SizedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        SizedCodec
    }
}

impl Encoder for SizedCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl Decoder for SizedCodec {
    type Item = Sized;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Sized>, Status> {
        let size = src.remaining();
        // One slice of tonic's buffer; every span and string field then slices it in turn.
        let message = src.copy_to_bytes(size);
        super::decode::decode_protobuf(&message)
            .map(|spans| Some((spans, size)))
            .map_err(|e| {
                Status::invalid_argument(format!("invalid protobuf ExportTraceServiceRequest: {e}"))
            })
    }
}

/// Turns tonic's `OUT_OF_RANGE` "message length too large" refusal into `RESOURCE_EXHAUSTED`
/// without `RetryInfo`, which OTLP clients do not retry. The refusal is a trailers-only response,
/// so the status sits in the headers (and in the response extensions).
fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(message) = response
        .extensions()
        .get::<Status>()
        .filter(|s| s.code() == tonic::Code::OutOfRange && s.message().contains("too large"))
        .map(|s| s.message().to_string())
    else {
        return response;
    };
    let status = Status::resource_exhausted(format!(
        "request refused, not retryable: {message}; send smaller batches or raise max_message_size"
    ));
    let headers = response.headers_mut();
    headers.remove(Status::GRPC_MESSAGE);
    if status.add_header(headers).is_ok() {
        response.extensions_mut().insert(status);
    }
    response
}

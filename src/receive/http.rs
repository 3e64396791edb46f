//! The OTLP/HTTP receiver: `POST /v1/traces` on axum.
//!
//! Status codes follow the OTLP/HTTP specification: 200 with an `ExportTraceServiceResponse`
//! (carrying `partial_success` when spans were refused), 400 for a body that cannot be decoded or
//! an unknown `Content-Encoding`, 405 for another method, 413 for a body over `max_body_size`
//! (on the wire or after decompression), 415 for a content type other than protobuf or JSON,
//! 503 + `Retry-After` when a pipeline is full. Error bodies are `google.rpc.Status` in the
//! request's encoding, with a message that says what failed.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::decode::{self, ContentEncoding, ContentType, DecodeError};
use super::{EXPERIMENT_HEADER, Exporter, SubmitError};
use crate::config::units::{ByteSize, HumanDuration};
use crate::model::Protocol;
use crate::server::BoundServer;
use crate::telemetry::metrics::RefuseReason;

/// The OTLP/HTTP path for traces.
pub const TRACES_PATH: &str = "/v1/traces";

/// `receivers.<name>.http` in the pipeline file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on. Loopback by default; containers set `0.0.0.0:4318`.
    pub endpoint: String,
    /// Largest body accepted, on the wire and after decompression.
    pub max_body_size: ByteSize,
    /// Cross-origin access for browser OTLP exporters; absent means no CORS headers.
    pub cors: Option<CorsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            endpoint: "127.0.0.1:4318".into(),
            max_body_size: ByteSize::mib(16),
            cors: None,
        }
    }
}

/// `receivers.<name>.http.cors`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to post traces, e.g. `https://app.example.com`; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

struct HttpState {
    exporter_proto: Exporter,
    exporter_json: Exporter,
    limit: usize,
}

impl HttpConfig {
    /// Binds the listening socket and builds the routes.
    ///
    /// `exporters` are the export routines for the protobuf and JSON transports (two, so that
    /// metrics are labelled by encoding).
    ///
    /// # Errors
    ///
    /// The bind error, or an invalid CORS origin.
    pub async fn build(&self, exporters: [Exporter; 2]) -> std::io::Result<BoundServer> {
        let [exporter_proto, exporter_json] = exporters;
        let state = Arc::new(HttpState {
            exporter_proto,
            exporter_json,
            limit: self.max_body_size.as_usize(),
        });
        let mut router = Router::new()
            .route(TRACES_PATH, post(export).fallback(method_not_allowed))
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        if let Some(cors) = &self.cors {
            router = router.layer(cors_layer(cors)?);
        }
        BoundServer::bind(&self.endpoint, router).await
    }
}

fn cors_layer(cors: &CorsConfig) -> std::io::Result<CorsLayer> {
    let origins = if cors.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = cors
            .allowed_origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("cors origin {o:?} is not a valid header value"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let mut layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST])
        .allow_headers([
            CONTENT_TYPE,
            CONTENT_ENCODING,
            http::HeaderName::from_static(EXPERIMENT_HEADER),
        ]);
    if let Some(age) = cors.max_age {
        layer = layer.max_age(age.0);
    }
    Ok(layer)
}

/// An error answer: HTTP status, `google.rpc.Status` code and message.
struct Refusal {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The `google.rpc.Code` matching the HTTP status.
    fn rpc_code(&self) -> i32 {
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => 14, // UNAVAILABLE
            StatusCode::PAYLOAD_TOO_LARGE => 8,    // RESOURCE_EXHAUSTED
            StatusCode::METHOD_NOT_ALLOWED => 12,  // UNIMPLEMENTED
            _ => 3,                                // INVALID_ARGUMENT
        }
    }

    fn into_response(self, content_type: ContentType) -> Response {
        let code = self.rpc_code();
        let body = match content_type {
            ContentType::Protobuf => RpcStatus {
                code,
                message: self.message,
            }
            .encode_to_vec(),
            ContentType::Json => serde_json::json!({ "code": code, "message": self.message })
                .to_string()
                .into_bytes(),
        };
        let mut response =
            (self.status, [(CONTENT_TYPE, content_type.as_str())], body).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `google.rpc.Status` without `details`, which traceloom never sets: the body of every HTTP
/// error answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What failed.
    #[prost(string, tag = "2")]
    pub message: String,
}

fn header(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn method_not_allowed(headers: HeaderMap) -> Response {
    let ct = ContentType::parse(header(&headers, CONTENT_TYPE)).unwrap_or(ContentType::Json);
    let mut response = Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{TRACES_PATH} accepts only POST"),
    )
    .into_response(ct);
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn export(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let content_type = match ContentType::parse(header(&headers, CONTENT_TYPE)) {
        Ok(ct) => ct,
        Err(e) => {
            state.exporter_proto.metrics().request("415");
            return Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
                .into_response(ContentType::Json);
        }
    };
    let exporter = match content_type {
        ContentType::Protobuf => &state.exporter_proto,
        ContentType::Json => &state.exporter_json,
    };
    let answer = handle(&state, exporter, content_type, &headers, body).await;
    let response = match answer {
        Ok(ok) => ok_response(ok, content_type),
        Err(refusal) => refusal.into_response(content_type),
    };
    exporter.metrics().request(response.status().as_str());
    response
}

async fn handle(
    state: &HttpState,
    exporter: &Exporter,
    content_type: ContentType,
    headers: &HeaderMap,
    body: Body,
) -> Result<ExportTraceServiceResponse, Refusal> {
    let protocol = match content_type {
        ContentType::Protobuf => Protocol::HttpProtobuf,
        ContentType::Json => Protocol::HttpJson,
    };
    let refuse = |reason, e: DecodeError| {
        exporter.metrics().refused(reason, 0);
        let status = match e {
            DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal::new(status, e.to_string())
    };
    let encoding = ContentEncoding::parse(header(headers, CONTENT_ENCODING))
        .map_err(|e| refuse(RefuseReason::Malformed, e))?;
    let too_large = DecodeError::TooLarge {
        limit: state.limit,
        after: "",
    };
    let declared = header(headers, CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.limit) {
        return Err(refuse(RefuseReason::TooLarge, too_large));
    }
    let wire = axum::body::to_bytes(body, state.limit).await.map_err(|e| {
        if is_length_limit(&e) {
            refuse(RefuseReason::TooLarge, too_large)
        } else {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    let plain = decode::decompress(wire, encoding, state.limit).map_err(|e| {
        let reason = match e {
            DecodeError::TooLarge { .. } => RefuseReason::TooLarge,
            _ => RefuseReason::Malformed,
        };
        refuse(reason, e)
    })?;
    let size = plain.len();
    let (resource_spans, prior) =
        decode::decode_body(plain, content_type).map_err(|e| refuse(RefuseReason::Malformed, e))?;
    let experiment = header(headers, EXPERIMENT_HEADER);
    exporter
        .export(protocol, experiment, resource_spans, prior, size)
        .await
        .map_err(|e| {
            let mut refusal = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            refusal.retry_after = Some(match e {
                SubmitError::Overloaded { retry_after } => retry_after.as_secs().max(1),
                SubmitError::Log(_) => 1,
                SubmitError::ShuttingDown => 5,
            });
            refusal
        })
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn ok_response(answer: ExportTraceServiceResponse, content_type: ContentType) -> Response {
    let body = match content_type {
        ContentType::Protobuf => answer.encode_to_vec(),
        ContentType::Json => match answer.partial_success {
            // Proto3 JSON writes int64 as a string.
            Some(p) => serde_json::json!({
                "partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }
            }),
            None => serde_json::json!({}),
        }
        .to_string()
        .into_bytes(),
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, content_type.as_str())],
        body,
    )
        .into_response()
}

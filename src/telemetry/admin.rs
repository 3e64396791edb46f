//! The admin HTTP server: `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! It listens apart from the OTLP ports (default `127.0.0.1:8888`, the port the OpenTelemetry
//! Collector uses for its own metrics) so that scraping never competes with ingest, and it stops
//! last at shutdown so the final counts can still be read while pipelines drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use http::header::CONTENT_TYPE;

use super::metrics::Metrics;
use crate::server::BoundServer;

/// Whether traceloom is serving or draining, as `/health` reports it.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    /// Marks the process as shutting down: `/health` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds the admin server on `endpoint`.
///
/// # Errors
///
/// The bind error.
pub async fn bind(
    endpoint: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<BoundServer> {
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health_check))
        .with_state(Arc::new(AdminState { metrics, health }));
    BoundServer::bind(endpoint, router).await
}

async fn render_metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn health_check(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.health.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"draining\"}")
    } else {
        (StatusCode::OK, "{\"status\":\"ok\"}")
    }
}

/// Asks the admin server at `address` (`host:port`) for `/health`, without an HTTP client
/// library: what `traceloom health` runs as a container health check.
///
/// # Errors
///
/// Why the server is not healthy: unreachable, or its status line.
pub fn probe(address: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{address}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{address}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut response)
        .map_err(|e| format!("{address}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("{address}/health answered `{status}`"))
    }
}

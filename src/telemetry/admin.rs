//! The admin HTTP server: `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! It listens apart from the OTLP ports (default `127.0.0.1:8888`, the port the OpenTelemetry
//! Collector uses for its own metrics) so that scraping never competes with ingest, and it stops
//! last at shutdown so the final counts can still be read while pipelines drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

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

/// A bound, not yet serving, admin server.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `endpoint`.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(
        endpoint: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(endpoint).await?;
        let router = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/health", get(health_check))
            .with_state(Arc::new(AdminState { metrics, health }));
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// A fatal I/O error of the listener.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
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

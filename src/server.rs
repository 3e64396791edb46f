//! An HTTP server bound at build time and served by axum until cancelled: the shape shared by the
//! OTLP/HTTP receiver and the admin server.
//!
//! Binding in `build` (not in `run`) makes an address in use a start-up error with the component's
//! name, and lets callers learn the real port when they asked for port 0.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listening socket and the routes that will serve it.
pub struct BoundServer {
    listener: TcpListener,
    router: Router,
}

impl BoundServer {
    /// Binds `endpoint` for `router`.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(endpoint: &str, router: Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind(endpoint).await?;
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` is cancelled, then lets open requests finish and returns.
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

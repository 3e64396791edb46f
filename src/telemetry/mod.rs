//! Self-observability: metrics (`metrics.rs`), logging (`logging.rs`) and the admin HTTP server
//! (`admin.rs`) that serves `/metrics` and `/health`.

pub mod admin;
pub mod logging;
pub mod metrics;

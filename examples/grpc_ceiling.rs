//! The OTLP/gRPC receive floor on this machine: a tonic server with OpenTelemetry's generated
//! `TraceService` that decodes each request with prost, counts its spans and answers OK, with
//! nothing else of traceloom running. Every OTLP/gRPC collector built on tonic and prost does at
//! least this much per span; one that skips prost's decode, as traceloom's receivers do, still
//! pays the rest (tonic, hyper, the kernel), which is printed apart.
//!
//!   taskset -c 1 cargo run --release --example grpc_ceiling -- --spans 800000 &
//!   taskset -c 0 otlpgen send --traces 100000 --pregen
//!
//! It exits after `--spans` spans and prints its CPU time per span (every thread).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use common::cpu_seconds;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: std::net::SocketAddr,
    /// Exit after this many spans.
    #[arg(long, default_value_t = 800_000)]
    spans: u64,
}

struct Count {
    spans: AtomicU64,
    /// The last request (each replaces, and so drops, the one before, as serving it would):
    /// decoded again at exit to split prost's share out.
    last: std::sync::Mutex<ExportTraceServiceRequest>,
    target: u64,
    done: Notify,
}

/// The service: shares its count with `main`.
struct Counter(Arc<Count>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = span_count(request.get_ref());
        let count = &self.0;
        if count.spans.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64 >= count.target {
            count.done.notify_one();
        }
        *count.last.lock().expect("not poisoned") = request.into_inner();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// CPU time prost takes to decode `body`, per span (warm caches: a lower bound).
fn decode_us_per_span(body: &[u8]) -> f64 {
    const ROUNDS: usize = 200;
    let spans = span_count(&ExportTraceServiceRequest::decode(body).expect("re-encoded request"));
    let cpu = cpu_seconds();
    for _ in 0..ROUNDS {
        std::hint::black_box(ExportTraceServiceRequest::decode(body).expect("re-encoded request"));
    }
    (cpu_seconds() - cpu) * 1e6 / (ROUNDS * spans) as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let count = Arc::new(Count {
        spans: AtomicU64::new(0),
        last: Default::default(),
        target: args.spans,
        done: Notify::new(),
    });
    let service =
        TraceServiceServer::new(Counter(Arc::clone(&count))).max_decoding_message_size(64 << 20);
    let cpu = cpu_seconds();
    let done = Arc::clone(&count);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_shutdown(args.listen, async move { done.done.notified().await })
        .await?;
    let spans = count.spans.load(Ordering::Relaxed);
    let per_span = (cpu_seconds() - cpu) * 1e6 / spans as f64;
    println!(
        "{spans} spans received and decoded: {per_span:.2} us/span of CPU, of which prost's \
         decode {:.2} (the rest is tonic, hyper and the kernel)",
        decode_us_per_span(&count.last.lock().expect("not poisoned").encode_to_vec())
    );
    Ok(())
}

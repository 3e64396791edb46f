//! The router: hands each accepted batch to the log writers of the pipelines that read its
//! receiver and select its traces, and answers the client once every one of them has the spans
//! on disk.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::queue::{QueueTx, SendError};
use super::select::Select;
use crate::config::Config;
use crate::log::record::Encoded;
use crate::log::writer::Append;
use crate::model::SpanBatch;
use crate::receive::{BoxFuture, Ingest, SubmitError};
use crate::telemetry::metrics::Metrics;

/// How long clients are told to wait after an overload answer.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A pipeline's input: its log writer's queue.
#[derive(Clone)]
pub struct PipelineInput {
    /// The log writer's queue.
    pub tx: QueueTx<Append>,
    /// How long a receiver waits for room.
    pub admission_timeout: Duration,
}

/// One pipeline as a receiver's route: its input and what it selects.
struct Route {
    input: PipelineInput,
    select: Option<Arc<Select>>,
}

/// Receiver name → the pipelines that read it.
pub struct Routes(BTreeMap<String, Vec<Route>>);

impl Routes {
    /// The routes `config` describes, to the pipelines' `inputs` (by pipeline name).
    pub fn new(config: &Config, inputs: &BTreeMap<String, PipelineInput>) -> Self {
        let mut routes: BTreeMap<String, Vec<Route>> = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let Some(input) = inputs.get(name) else {
                continue;
            };
            for receiver in &pipeline.receivers {
                routes
                    .entry(receiver.value.clone())
                    .or_default()
                    .push(Route {
                        input: input.clone(),
                        select: pipeline.select.as_ref().map(|s| Arc::new(s.value.clone())),
                    });
            }
        }
        Self(routes)
    }
}

/// Hands batches from receivers to the pipelines that read them.
pub struct Router {
    /// `None` once shutdown has closed the router.
    routes: RwLock<Option<Arc<Routes>>>,
    metrics: Arc<Metrics>,
}

impl Router {
    /// A router over `routes`.
    pub fn new(routes: Routes, metrics: Arc<Metrics>) -> Self {
        Self {
            routes: RwLock::new(Some(Arc::new(routes))),
            metrics,
        }
    }

    /// Stops routing: later batches are refused as shutting down.
    pub fn close(&self) {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Routes later batches by `routes` (a reload); batches in flight finish on the old ones.
    pub fn replace(&self, routes: Routes) {
        let mut slot = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            *slot = Some(Arc::new(routes));
        }
    }

    fn current(&self) -> Option<Arc<Routes>> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What one pipeline gets of a batch.
fn portion(
    select: Option<&Select>,
    batch: &Arc<SpanBatch>,
    records: &Arc<Vec<Encoded>>,
    taken: &mut [bool],
) -> Option<(Arc<SpanBatch>, Arc<Vec<Encoded>>, usize)> {
    let Some(select) = select else {
        taken.fill(true);
        return Some((Arc::clone(batch), Arc::clone(records), batch.encoded_bytes));
    };
    let chosen: Vec<usize> = (0..batch.traces.len())
        .filter(|&i| select.takes(&batch.meta, &batch.traces[i]))
        .collect();
    for &i in &chosen {
        taken[i] = true;
    }
    if chosen.is_empty() {
        return None;
    }
    if chosen.len() == batch.traces.len() {
        return Some((Arc::clone(batch), Arc::clone(records), batch.encoded_bytes));
    }
    let part_records: Vec<Encoded> = chosen.iter().map(|&i| records[i].clone()).collect();
    let size = part_records.iter().map(|r| r.bytes.len()).sum();
    let part = SpanBatch {
        meta: batch.meta.clone(),
        traces: chosen.iter().map(|&i| batch.traces[i].clone()).collect(),
        encoded_bytes: size,
    };
    Some((Arc::new(part), Arc::new(part_records), size))
}

impl Ingest for Router {
    fn submit(&self, batch: SpanBatch) -> BoxFuture<'_, Result<(), SubmitError>> {
        let routes = self.current();
        Box::pin(async move {
            let routes = routes.ok_or(SubmitError::ShuttingDown)?;
            let targets = routes
                .0
                .get(&*batch.meta.receiver)
                .map(Vec::as_slice)
                .unwrap_or_default();
            // Encoded once, here on the receiver's task, for every pipeline's log; from here on
            // the batch's spans are the records' copies.
            let mut batch = batch;
            let records = crate::log::record::encode(&batch);
            crate::log::record::rebase(&mut batch, &records);
            let (batch, records) = (Arc::new(batch), Arc::new(records));
            let mut taken = vec![false; batch.traces.len()];
            let mut appended = Vec::with_capacity(targets.len());
            for route in targets {
                let Some((part, part_records, size)) =
                    portion(route.select.as_deref(), &batch, &records, &mut taken)
                else {
                    continue;
                };
                let timeout = route.input.admission_timeout;
                let deadline = tokio::time::Instant::now() + timeout;
                let (done, answer) = oneshot::channel();
                let append = Append {
                    batch: part,
                    records: part_records,
                    done,
                };
                match route.input.tx.send_timeout(append, size, timeout).await {
                    Ok(()) => appended.push((deadline, answer)),
                    Err(SendError::Full(_)) => {
                        return Err(SubmitError::Overloaded {
                            retry_after: RETRY_AFTER,
                        });
                    }
                    Err(SendError::Closed(_)) => return Err(SubmitError::ShuttingDown),
                }
            }
            let unrouted: usize = batch
                .traces
                .iter()
                .zip(&taken)
                .filter(|(_, t)| !**t)
                .map(|(t, _)| t.span_count())
                .sum();
            if unrouted > 0 {
                self.metrics.unrouted(&batch.meta.receiver, unrouted);
            }
            // The wait for the log is bounded too: a writer held up by a full pipeline queue
            // skips requests whose client stopped waiting (their answer channel is closed).
            for (deadline, answer) in appended {
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => return Err(SubmitError::Log(e)),
                    Ok(Err(_)) => return Err(SubmitError::ShuttingDown),
                    Err(_) => {
                        return Err(SubmitError::Overloaded {
                            retry_after: RETRY_AFTER,
                        });
                    }
                }
            }
            Ok(())
        })
    }
}

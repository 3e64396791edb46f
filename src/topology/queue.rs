//! A queue bounded in bytes, the only kind of queue in traceloom's data path.
//!
//! Trace sizes vary by orders of magnitude, so a count bound says nothing about memory. Each item
//! carries a semaphore permit for its size; the permit is released when the consumer takes the
//! item. A sender waits for capacity (that wait is the back-pressure) and receivers at the edge
//! bound the wait with [`QueueTx::send_timeout`] so clients get a retryable answer instead of a
//! hung request. There is no unbounded constructor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::telemetry::metrics::QueueGauges;

/// Why a send did not happen; the value comes back so the caller can answer or retry.
#[derive(Debug, thiserror::Error)]
pub enum SendError<T> {
    /// No capacity within the allowed wait.
    #[error("queue full")]
    Full(T),
    /// The consumer is gone (shutdown).
    #[error("queue closed")]
    Closed(T),
}

struct Slot<T> {
    value: T,
    _permit: OwnedSemaphorePermit,
}

/// The sending half. Cloning shares the capacity.
pub struct QueueTx<T> {
    tx: mpsc::Sender<Slot<T>>,
    bytes: Arc<Semaphore>,
    capacity: usize,
    gauges: QueueGauges,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: Arc::clone(&self.bytes),
            capacity: self.capacity,
            gauges: self.gauges.clone(),
        }
    }
}

/// The receiving half.
pub struct QueueRx<T> {
    rx: mpsc::Receiver<Slot<T>>,
    gauges: QueueGauges,
}

/// Most items a queue holds regardless of size, so that empty batches cannot pile up.
const MAX_ITEMS: usize = 1 << 16;

/// Creates a queue holding at most `capacity_bytes` bytes of items.
pub fn bounded<T>(capacity_bytes: usize, gauges: QueueGauges) -> (QueueTx<T>, QueueRx<T>) {
    let capacity = capacity_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::channel(MAX_ITEMS);
    let tx = QueueTx {
        tx,
        bytes: Arc::new(Semaphore::new(capacity)),
        capacity,
        gauges: gauges.clone(),
    };
    (tx, QueueRx { rx, gauges })
}

impl<T> QueueTx<T> {
    /// Waits for room for `size` bytes, then queues `value`.
    ///
    /// An item larger than the whole queue waits for the queue to be empty and then goes alone.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] when the consumer has gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if cancelled, nothing was queued.
    pub async fn send(&self, value: T, size: usize) -> Result<(), SendError<T>> {
        let permits = size.clamp(1, self.capacity) as u32;
        let Ok(permit) = Arc::clone(&self.bytes).acquire_many_owned(permits).await else {
            return Err(SendError::Closed(value));
        };
        self.push(value, permit).await
    }

    /// Like [`send`](Self::send) but gives up after `wait`.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] when no room appeared in time, [`SendError::Closed`] when the consumer
    /// has gone.
    pub async fn send_timeout(
        &self,
        value: T,
        size: usize,
        wait: Duration,
    ) -> Result<(), SendError<T>> {
        let permits = size.clamp(1, self.capacity) as u32;
        let acquire = Arc::clone(&self.bytes).acquire_many_owned(permits);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => self.push(value, permit).await,
            Ok(Err(_)) => Err(SendError::Closed(value)),
            Err(_) => Err(SendError::Full(value)),
        }
    }

    async fn push(&self, value: T, permit: OwnedSemaphorePermit) -> Result<(), SendError<T>> {
        let size = permit.num_permits() as i64;
        self.gauges.bytes.inc_by(size);
        self.tx
            .send(Slot {
                value,
                _permit: permit,
            })
            .await
            .map_err(|e| {
                self.gauges.bytes.dec_by(size);
                SendError::Closed(e.0.value)
            })
    }
}

impl<T> QueueRx<T> {
    /// Takes the next item, freeing its bytes; `None` once every sender is gone and the queue is
    /// empty.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as `tokio::sync::mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<T> {
        let slot = self.rx.recv().await?;
        Some(self.take(slot))
    }

    /// Takes the next item if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let slot = self.rx.try_recv().ok()?;
        Some(self.take(slot))
    }

    /// Moves the items already waiting into `items` while their total `cost` is below `budget`
    /// (batching without waiting: one step handles everything that piled up).
    pub fn take_waiting(&mut self, items: &mut Vec<T>, budget: usize, cost: impl Fn(&T) -> usize) {
        let mut spent: usize = items.iter().map(&cost).sum();
        while spent < budget
            && let Some(more) = self.try_recv()
        {
            spent += cost(&more);
            items.push(more);
        }
    }

    fn take(&self, slot: Slot<T>) -> T {
        self.gauges.bytes.dec_by(slot._permit.num_permits() as i64);
        slot.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_after_the_wait_and_accepts_after_a_receive() {
        let gauges = QueueGauges::default();
        let (tx, mut rx) = bounded::<u32>(100, gauges.clone());
        tx.send(1, 60).await.unwrap();
        let refused = tx.send_timeout(2, 60, Duration::from_millis(50)).await;
        assert!(matches!(refused, Err(SendError::Full(2))));
        assert_eq!(gauges.bytes.get(), 60);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(gauges.bytes.get(), 0);
        tx.send_timeout(2, 60, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_item_goes_alone() {
        let gauges = QueueGauges::default();
        let (tx, mut rx) = bounded::<u32>(100, gauges.clone());
        tx.send(1, 1_000).await.unwrap();
        assert_eq!(gauges.bytes.get(), 100);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(gauges.bytes.get(), 0);
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn taking_what_is_waiting_stops_at_the_limit_and_loses_nothing() {
        let (tx, mut rx) = bounded::<u32>(1_000, QueueGauges::default());
        for i in 1..=5 {
            tx.send(i, 1).await.unwrap();
        }
        let mut items = vec![rx.recv().await.unwrap()];
        rx.take_waiting(&mut items, 3, |_| 1);
        assert_eq!(items, vec![1, 2, 3]);
        let mut items = vec![rx.recv().await.unwrap()];
        rx.take_waiting(&mut items, 3, |_| 1);
        assert_eq!(items, vec![4, 5]);
    }

    #[tokio::test]
    async fn dropping_the_senders_drains_then_ends_and_a_gone_consumer_refuses() {
        let gauges = QueueGauges::default();
        let (tx, mut rx) = bounded::<u32>(100, gauges.clone());
        tx.send(1, 10).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        assert_eq!(gauges.bytes.get(), 0);
        let (tx, rx) = bounded::<u32>(100, QueueGauges::default());
        drop(rx);
        assert!(matches!(tx.send(2, 10).await, Err(SendError::Closed(2))));
    }
}

//! Waits between retries of work that must eventually succeed (a write to a full disk, a
//! broker that is away): doubling from a first wait up to a ceiling. Waiting is what pushes
//! back: the task retrying reads no more input meanwhile.

use std::time::Duration;

/// Doubling waits, from `first` up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, never beyond `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// How long the next [`Backoff::wait`] sleeps (for the log line announcing it).
    pub fn next(&self) -> Duration {
        self.next
    }

    /// Sleeps the current wait, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(b.next());
            b.wait().await;
        }
        assert_eq!(seen, [100, 200, 300, 300].map(Duration::from_millis));
    }
}

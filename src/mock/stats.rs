//! [`MockStats`], the mock's counters, with [`MockStats::wait_for`] for tests;
//! and the [`Tracker`] that moves one request through them, arrival to outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::unix_nanos;

/// Counters, shared with whoever started the mock (tests read them directly).
///
/// Every request to a `/v1/...` path is counted in `requests` and `active` on
/// arrival, and leaves `active` exactly once as `completed`, `disconnects` or
/// `broken`, so `requests == active + completed + disconnects + broken` at rest.
/// `active` is decremented before the outcome counter is incremented: whoever sees
/// the outcome also sees the request gone from `active`.
#[derive(Debug, Default)]
pub struct MockStats {
    requests: AtomicU64,
    completed: AtomicU64,
    disconnects: AtomicU64,
    broken: AtomicU64,
    events_sent: AtomicU64,
    active: AtomicU64,
    connections: AtomicU64,
    /// Wall-clock nanoseconds of the latest disconnect (0: none yet).
    last_disconnect_ns: AtomicU64,
    /// Tasks inside [`MockStats::wait_for`]; counter updates skip the `Notify`
    /// (which takes a lock) while nobody waits.
    waiters: AtomicUsize,
    changed: Notify,
}

impl MockStats {
    /// Completion requests received (any `/v1/*` endpoint, not `/stats` or `/echo`).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Responses whose body was sent to the end.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    /// Requests dropped before their response ended: the client (or gateway) went
    /// away, whether before the response head or mid-body.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::SeqCst)
    }

    /// Responses deliberately aborted by a `break_after` override.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::SeqCst)
    }

    /// SSE events written, all requests together.
    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::SeqCst)
    }

    /// Requests in progress: waiting for their first byte or streaming.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// When the latest disconnect was counted, in wall-clock nanoseconds since
    /// the Unix epoch; 0 before the first. Benchmarks compare it with the time a
    /// client left to learn how long the upstream took to see its request cancelled.
    pub fn last_disconnect_ns(&self) -> u64 {
        self.last_disconnect_ns.load(Ordering::SeqCst)
    }

    /// All counters as one JSON object (the body of `GET /stats`):
    /// `{"requests":..,"completed":..,"disconnects":..,"events_sent":..,"active":..,"connections":..,"broken":..,"last_disconnect_ns":..}`.
    pub fn snapshot_json(&self) -> String {
        format!(
            r#"{{"requests":{},"completed":{},"disconnects":{},"events_sent":{},"active":{},"connections":{},"broken":{},"last_disconnect_ns":{}}}"#,
            self.requests(),
            self.completed(),
            self.disconnects(),
            self.events_sent(),
            self.active(),
            self.connections(),
            self.broken(),
            self.last_disconnect_ns(),
        )
    }

    /// Waits until `condition` holds, re-checking it on every counter change.
    /// Returns whether it held before `timeout` ran out.
    pub async fn wait_for(&self, condition: impl Fn(&Self) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaiterGuard(&self.waiters);
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a change between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if condition(self) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return condition(self);
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Counts a TCP connection accepted.
    pub(super) fn count_connection(&self) {
        self.bump(&self.connections);
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        // SeqCst on both sides: either the waiter sees our update when it checks its
        // condition, or we see its registration here.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one `/v1/` request from arrival to its outcome. Dropped while still
/// open, it counts a disconnect.
pub(super) struct Tracker {
    stats: Arc<MockStats>,
    open: bool,
}

/// How a request left `active`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    /// Its body was sent to the end.
    Completed,
    /// Its body was cut on purpose (`mock.break_after`).
    Broken,
    /// The peer went away first.
    Disconnected,
}

impl Tracker {
    /// Counts the request in `requests` and `active`.
    pub(super) fn start(stats: Arc<MockStats>) -> Self {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.bump(&stats.active);
        Self { stats, open: true }
    }

    /// Counts one SSE event written for this request.
    pub(super) fn event_sent(&self) {
        self.stats.bump(&self.stats.events_sent);
    }

    /// Moves the request from `active` to `outcome`; only the first call counts.
    pub(super) fn close(&mut self, outcome: Outcome) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let stats = &self.stats;
        stats.active.fetch_sub(1, Ordering::SeqCst);
        let counter = match outcome {
            Outcome::Completed => &stats.completed,
            Outcome::Broken => &stats.broken,
            Outcome::Disconnected => {
                // Stamped before the count, so whoever sees the count sees the time.
                stats
                    .last_disconnect_ns
                    .store(unix_nanos(), Ordering::SeqCst);
                &stats.disconnects
            }
        };
        stats.bump(counter);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.close(Outcome::Disconnected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_for_gives_up_after_its_timeout() {
        let stats = MockStats::default();
        assert!(
            !stats
                .wait_for(|s| s.completed() > 0, Duration::from_millis(20))
                .await
        );
        assert!(stats.wait_for(|s| s.completed() == 0, Duration::ZERO).await);
    }
}

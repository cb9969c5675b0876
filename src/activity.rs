//! What one client connection is doing, for two decisions the server makes
//! about it:
//!
//! - **Idle**: a connection with no request in progress for
//!   `header_read_timeout` is closed (HTTP/2 gets a GOAWAY), so that idle
//!   keep-alive connections do not hold `max_connections` slots for ever.
//! - **Rapid reset** (CVE-2023-44487, and its paced form): a client that
//!   opens streams and resets them before their responses end makes the
//!   gateway start an upstream request for each, for the price of two small
//!   frames. hyper's own guard only counts streams reset before the handler
//!   took them; the gateway takes them at once. So, as Envoy does, a
//!   connection on which more than half of at least [`PREMATURE_MIN_STREAMS`]
//!   requests were abandoned by the client within [`PREMATURE_WINDOW`] of
//!   arriving is told to go (HTTP/2's GOAWAY): it gets no new streams, and
//!   its streams in flight go on, for a page that aborts requests as its
//!   user types is no attacker, and its long answers must not be cut. A
//!   client that goes on all the same (streams that go on arriving, as they
//!   do until it answers the GOAWAY's ping) until it is judged again is cut.
//!
//! Each request holds a [`Guard`] from its arrival until its response body
//! ends or is dropped; [`Tracked`] carries the guard inside the body.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A request its client abandons sooner than this after it arrived counts
/// as a premature reset.
pub const PREMATURE_WINDOW: Duration = Duration::from_secs(1);
/// Requests a connection has ended before its premature resets are judged.
pub const PREMATURE_MIN_STREAMS: u64 = 100;

/// The requests of one client connection.
pub struct Activity {
    /// Counters; a std `Mutex` held for a few instructions, never across
    /// an `.await`.
    state: Mutex<Counts>,
    /// Cancelled once the connection is judged abusive, then once more.
    abusive: [CancellationToken; 2],
}

struct Counts {
    in_flight: usize,
    ended: u64,
    premature: u64,
    /// `ended` and `premature` when the connection was last judged abusive,
    /// and how many times it was.
    judged_at: (u64, u64),
    verdicts: usize,
    /// When the last request ended (at first, when the connection opened).
    quiet_since: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: Mutex::new(Counts {
                in_flight: 0,
                ended: 0,
                premature: 0,
                judged_at: (0, 0),
                verdicts: 0,
                quiet_since: Instant::now(),
            }),
            abusive: Default::default(),
        }
    }
}

impl Activity {
    /// A request arrived; it is in progress until the guard ends.
    pub fn start(self: &Arc<Self>) -> Guard {
        let mut counts = self.counts();
        counts.in_flight += 1;
        drop(counts);
        Guard {
            activity: Arc::clone(self),
            arrived: Instant::now(),
            done: false,
        }
    }

    /// Resolves once no request has been in progress for `timeout`.
    ///
    /// One timer, moved only when it fires: requests starting and ending
    /// touch nothing but the counters, so a busy connection pays nothing
    /// per request for its idle watch.
    pub async fn idle(&self, timeout: Duration) {
        let timer = tokio::time::sleep(timeout);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            let now = Instant::now();
            let counts = self.counts();
            let deadline = if counts.in_flight > 0 {
                now + timeout
            } else {
                counts.quiet_since + timeout
            };
            drop(counts);
            if deadline <= now {
                return;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// Resolves once the connection's client has reset too many requests
    /// early (`again`: a second time, counting only what ended since the
    /// first); the connection should then be told to go (and then be cut).
    pub async fn abusive(&self, again: bool) {
        self.abusive[usize::from(again)].cancelled().await;
    }

    /// (requests ended, of which premature resets)
    pub fn resets(&self) -> (u64, u64) {
        let counts = self.counts();
        (counts.ended, counts.premature)
    }

    /// A request ended at `now`.
    fn end(&self, now: Instant, premature: bool) {
        let mut counts = self.counts();
        counts.in_flight = counts.in_flight.saturating_sub(1);
        counts.ended += 1;
        counts.premature += u64::from(premature);
        counts.quiet_since = now;
        let ended = counts.ended - counts.judged_at.0;
        let premature = counts.premature - counts.judged_at.1;
        if ended >= PREMATURE_MIN_STREAMS && premature * 2 > ended {
            counts.judged_at = (counts.ended, counts.premature);
            if let Some(verdict) = self.abusive.get(counts.verdicts) {
                verdict.cancel();
            }
            counts.verdicts += 1;
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request in progress. Ending it with [`Guard::finish`] means its
/// response ran to its end; dropping it otherwise means the client left.
pub struct Guard {
    activity: Arc<Activity>,
    arrived: Instant,
    done: bool,
}

impl Guard {
    /// The response ended (cleanly, or because the upstream broke).
    pub fn finish(mut self) {
        self.done = true;
        self.activity.end(Instant::now(), false);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            let now = Instant::now();
            let premature = now.saturating_duration_since(self.arrived) < PREMATURE_WINDOW;
            self.activity.end(now, premature);
        }
    }
}

/// A response body that ends its request's [`Guard`] when it ends.
pub struct Tracked<B: Body> {
    inner: B,
    guard: Option<Guard>,
}

impl<B: Body> Tracked<B> {
    /// Wraps `inner`, in progress until it ends or is dropped.
    pub fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    fn finish(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.finish();
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            this.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Tracked<B> {
    fn drop(&mut self) {
        // A body with nothing (more) to send may never be polled to its end.
        if self.inner.is_end_stream() {
            self.finish();
        }
        // Otherwise the guard, dropped here, counts the client as gone.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_end() {
        let activity = Arc::new(Activity::default());
        let started = Instant::now();
        let guard = activity.start();
        let idle = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "idle while a request was in progress");
        guard.finish();
        idle.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn short_requests_keep_a_connection_from_idling() {
        let activity = Arc::new(Activity::default());
        let started = Instant::now();
        let idle = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(Duration::from_secs(10)).await }
        });
        // A request of 1 s every 7 s: never 10 s without one.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let guard = activity.start();
            tokio::time::sleep(Duration::from_secs(1)).await;
            guard.finish();
        }
        assert!(!idle.is_finished(), "idle between requests 6 s apart");
        idle.await.unwrap();
        // The last request ended at 42 s.
        assert_eq!(started.elapsed(), Duration::from_secs(52));
    }

    #[tokio::test(start_paused = true)]
    async fn most_streams_reset_early_make_a_connection_abusive() {
        let activity = Arc::new(Activity::default());
        for index in 0..PREMATURE_MIN_STREAMS {
            let guard = activity.start();
            if index % 2 == 0 {
                guard.finish();
            } else {
                drop(guard);
            }
        }
        // Half is not more than half.
        assert!(!activity.abusive[0].is_cancelled());
        drop(activity.start());
        assert!(activity.abusive[0].is_cancelled());
        assert_eq!(activity.resets(), (PREMATURE_MIN_STREAMS + 1, 51));

        // Judged again on what ends after the first verdict alone.
        for _ in 0..PREMATURE_MIN_STREAMS - 1 {
            drop(activity.start());
        }
        assert!(!activity.abusive[1].is_cancelled());
        drop(activity.start());
        assert!(activity.abusive[1].is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn late_resets_and_finished_bodies_are_not_premature() {
        let activity = Arc::new(Activity::default());
        for _ in 0..PREMATURE_MIN_STREAMS * 2 {
            let guard = activity.start();
            tokio::time::sleep(PREMATURE_WINDOW).await;
            drop(guard);
        }
        // A body read to its end, and one with nothing to read.
        let mut read = Tracked::new(Full::new(Bytes::from_static(b"x")), activity.start());
        while read.frame().await.is_some() {}
        drop(Tracked::new(Full::new(Bytes::new()), activity.start()));
        assert_eq!(activity.resets(), (PREMATURE_MIN_STREAMS * 2 + 2, 0));
        assert!(!activity.abusive[0].is_cancelled());
    }
}

//! [`MockBody`], every response body of the mock: it yields its frames a
//! pace apart, then finishes, breaks (`mock.break_after`) or stalls
//! (`mock.stall_after`), and reports the outcome to its [`Tracker`].

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::request::{Ending, MAX_DELAY_MS};
use super::stats::{Outcome, Tracker};
use super::stream::EventSource;

/// The error a body ends with when `break_after` cuts it; hyper then aborts the
/// connection (HTTP/1.1) or resets the stream (HTTP/2).
#[derive(Debug)]
pub(super) struct BrokenStream;

impl fmt::Display for BrokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock upstream broke the stream on request (mock.break_after)")
    }
}

impl StdError for BrokenStream {}

/// What a body yields, frame by frame.
pub(super) enum Source {
    /// One frame with a known length (sent with Content-Length).
    Whole(Bytes),
    /// SSE events, one frame each.
    Events(EventSource),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Self::Whole(_) => 1,
            Self::Events(events) => events.len(),
        }
    }

    fn frame(&mut self, index: usize) -> Bytes {
        match self {
            Self::Whole(bytes) => std::mem::take(bytes),
            Self::Events(events) => events.render(index),
        }
    }
}

/// What happens once `limit` frames are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The body ends cleanly.
    Finish,
    /// The body ends with [`BrokenStream`].
    Break,
    /// The body waits for the peer to leave.
    Stall,
}

/// The pause between frames: one timer per body, reset for each frame.
struct Pace {
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Pace {
    fn new(interval: Duration) -> Self {
        Self {
            // Overrides are capped when parsed; this also caps the command-line value.
            interval: interval.min(Duration::from_millis(MAX_DELAY_MS)),
            sleep: None,
            armed: false,
        }
    }

    fn arm(&mut self) {
        if self.interval.is_zero() {
            return;
        }
        // `interval` is at most a day, far from overflowing an Instant.
        let deadline = Instant::now() + self.interval;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed {
            if let Some(sleep) = &mut self.sleep {
                ready!(sleep.as_mut().poll(cx));
            }
            self.armed = false;
        }
        Poll::Ready(())
    }
}

/// Every response body of the mock: a small state machine instead of a task and a
/// channel per request. It yields `limit` frames of `source`, `pace` apart, then
/// ends the way `end` says.
pub(super) struct MockBody {
    source: Source,
    sent: usize,
    limit: usize,
    end: End,
    pace: Pace,
    /// Set once the body has returned `Pending` before breaking, which lets hyper
    /// flush the frames already written before it aborts the connection.
    break_flushed: bool,
    tracker: Option<Tracker>,
}

impl MockBody {
    /// `source`, its frames `interval` apart, ending as `ending` says.
    pub(super) fn new(source: Source, ending: Ending, interval: Duration) -> Self {
        let total = source.len();
        let (limit, end) = match ending {
            Ending::Finish => (total, End::Finish),
            Ending::BreakAfter(after) => (after.min(total), End::Break),
            Ending::StallAfter(after) => (after.min(total), End::Stall),
        };
        Self {
            source,
            sent: 0,
            limit,
            end,
            pace: Pace::new(interval),
            break_flushed: false,
            tracker: None,
        }
    }

    /// `bytes` in one frame, at once.
    pub(super) fn whole(bytes: Bytes) -> Self {
        Self::new(Source::Whole(bytes), Ending::Finish, Duration::ZERO)
    }

    /// Hands the body the request's tracker, to count events and the outcome.
    pub(super) fn track(&mut self, tracker: Tracker) {
        self.tracker = Some(tracker);
    }

    fn close(&mut self, outcome: Outcome) {
        if let Some(tracker) = &mut self.tracker {
            tracker.close(outcome);
        }
    }

    fn poll_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenStream>>> {
        match self.end {
            End::Finish => Poll::Ready(None),
            // Nothing wakes a stalled body: it hangs until hyper drops it because
            // the peer went away.
            End::Stall => Poll::Pending,
            End::Break => {
                ready!(self.pace.poll_ready(cx));
                if !self.break_flushed {
                    self.break_flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.close(Outcome::Broken);
                Poll::Ready(Some(Err(BrokenStream)))
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BrokenStream;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent == this.limit {
            return this.poll_end(cx);
        }
        ready!(this.pace.poll_ready(cx));
        let data = this.source.frame(this.sent);
        this.sent += 1;
        if let (Source::Events(_), Some(tracker)) = (&this.source, &this.tracker) {
            tracker.event_sent();
        }
        if this.is_end_stream() {
            // Counted here: hyper does not poll again once `is_end_stream` holds.
            this.close(Outcome::Completed);
        } else {
            this.pace.arm();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.limit && self.end == End::Finish
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Source::Events(_) if self.is_end_stream() => SizeHint::with_exact(0),
            Source::Events(_) => SizeHint::default(),
        }
    }
}

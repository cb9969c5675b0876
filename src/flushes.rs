//! When a client connection's writes have left the gateway, for the
//! response bodies that end abnormally.
//!
//! A body that breaks (its upstream stopped mid-body) ends abnormally:
//! hyper closes an HTTP/1.1 connection without the last chunk, h2 resets an
//! HTTP/2 stream. Either drops what the server still holds unwritten of the
//! response: the bytes the body gave just before the break (often read from
//! the upstream together with it), even the head. So a break waits until
//! the connection has completed a flush since the body last gave bytes:
//! - HTTP/1.1: one. hyper flushes its I/O only once its own buffer is
//!   written out, and it took the bytes into that buffer as they were given.
//! - HTTP/2: two. h2's connection task writes the frames queued when it
//!   looked, then flushes; a flush that completes after the body's frames
//!   were queued may be of a round that began before, but the next one is
//!   of a round that found them. It comes only if there is more to write,
//!   so after the first the wait is [`SETTLE`] at most.
//!
//! And [`HOLD`] at most in all: a client that reads nothing would never let
//! the flush complete.
use std::future::Future;
use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The longest a break waits for the bytes before it to be written.
pub const HOLD: Duration = Duration::from_secs(5);
/// The longest an HTTP/2 break waits for a second flush after the first.
pub const SETTLE: Duration = Duration::from_millis(50);

/// The completed flushes of one client connection.
#[derive(Default)]
pub struct Flushes {
    count: AtomicU64,
    /// Set while `wakers` holds a waiting body: flushes lock nothing otherwise.
    waiting: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Flushes {
    fn completed(&self) {
        // SeqCst here and in `Written::poll`: either the flush sees the
        // waiter, or the waiter sees the flush.
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let wakers = {
                let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
                self.waiting.store(false, Ordering::SeqCst);
                mem::take(&mut *wakers)
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn wait(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.waiting.store(true, Ordering::SeqCst);
    }
}

/// A client connection's I/O, counting the flushes that complete.
pub struct Counted<I> {
    inner: I,
    flushes: Arc<Flushes>,
}

impl<I> Counted<I> {
    pub fn new(inner: I, flushes: Arc<Flushes>) -> Self {
        Self { inner, flushes }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        if flushed.is_ok() {
            this.flushes.completed();
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether what a response body gave has been written.
pub struct Written {
    flushes: Arc<Flushes>,
    /// The count of flushes when the body last gave bytes, or was first
    /// polled: the server has its head by then.
    since: Option<u64>,
    /// Flushes a break waits for: 1 on HTTP/1.1, 2 on HTTP/2.
    rounds: u64,
    /// Started by the first wait: [`HOLD`], or [`SETTLE`] after a flush.
    deadline: Option<Pin<Box<Sleep>>>,
    settling: bool,
}

impl Written {
    /// For a body on the connection of `flushes`, served over HTTP/1.x
    /// (`http1`) or HTTP/2.
    pub fn new(flushes: &Arc<Flushes>, http1: bool) -> Self {
        Self {
            flushes: Arc::clone(flushes),
            since: None,
            rounds: if http1 { 1 } else { 2 },
            deadline: None,
            settling: false,
        }
    }

    /// The body is polled: the server holds its head to write.
    pub fn polled(&mut self) {
        if self.since.is_none() {
            self.since = Some(self.flushes.count());
        }
    }

    /// The body gave bytes: the next flush to complete writes them.
    pub fn gave(&mut self) {
        self.since = Some(self.flushes.count());
    }

    /// Ready once the flushes that write what the body gave have completed,
    /// or the wait is over.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.since.get_or_insert(self.flushes.count());
        loop {
            let flushed = self.flushes.count().wrapping_sub(since);
            if flushed >= self.rounds {
                return Poll::Ready(());
            }
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(HOLD)));
            if flushed > 0 && !self.settling {
                self.settling = true;
                let settled = tokio::time::Instant::now() + SETTLE;
                if settled < deadline.deadline() {
                    deadline.as_mut().reset(settled);
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.flushes.wait(cx.waker());
            if self.flushes.count().wrapping_sub(since) == flushed {
                return Poll::Pending;
            }
            // A flush completed meanwhile: look again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn poll(written: &mut Written) -> Poll<()> {
        written.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_break_waits_for_one_flush_on_http1_and_two_or_a_settle_on_http2() {
        let flushes = Arc::new(Flushes::default());
        let mut io = Counted::new(tokio::io::sink(), Arc::clone(&flushes));
        let (mut http1, mut http2) = (Written::new(&flushes, true), Written::new(&flushes, false));
        for written in [&mut http1, &mut http2] {
            written.polled();
            io.flush().await.unwrap();
            written.gave();
            assert!(
                poll(written).is_pending(),
                "a flush before the bytes counted"
            );
        }
        io.flush().await.unwrap();
        assert!(poll(&mut http1).is_ready());
        assert!(poll(&mut http2).is_pending());
        tokio::time::advance(SETTLE).await;
        assert!(poll(&mut http2).is_ready());

        let mut again = Written::new(&flushes, false);
        again.polled();
        io.flush().await.unwrap();
        io.flush().await.unwrap();
        assert!(poll(&mut again).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_break_waits_hold_at_most() {
        let flushes = Arc::new(Flushes::default());
        let mut written = Written::new(&flushes, true);
        written.polled();
        assert!(poll(&mut written).is_pending());
        tokio::time::advance(HOLD - Duration::from_millis(1)).await;
        assert!(poll(&mut written).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll(&mut written).is_ready());
    }
}

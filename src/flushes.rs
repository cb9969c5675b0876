//! When a client connection's writes have left the gateway, for the
//! response bodies that end abnormally.
//!
//! A body that breaks (its upstream stopped mid-body) ends abnormally:
//! hyper closes an HTTP/1.1 connection without the last chunk, h2 resets an
//! HTTP/2 stream. Either drops what the server still holds unwritten of the
//! response: the bytes the body gave just before the break (often read from
//! the upstream together with it), even the head. So a break waits for the
//! connection's flushes that complete after the body last gave bytes:
//! - HTTP/1.1: one. hyper flushes its I/O only once its own buffer is
//!   written out, and it took the bytes into that buffer as they were given.
//! - HTTP/2: until the connection's writes settle, no flush completing for
//!   [`SETTLE`] after at least one has. h2 writes a stream's queued frames
//!   in rounds, as flow-control windows and the other streams allow,
//!   flushing after each; the first flush may even be of a round begun
//!   before the body's frames were queued.
//!
//! And [`HOLD`] at most in all: a client that stops reading would never let
//! the flush complete. (One that reads nothing at all is not even polled
//! for its break: `send_timeout` drops it.)

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
/// An HTTP/2 connection's writes have settled once no flush has completed
/// for this long: longer than a distant client's round trip, since a
/// stream stalled on its flow-control window writes nothing until the
/// client's window update comes back (h2's default window is 64 KiB).
pub const SETTLE: Duration = Duration::from_secs(1);

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
    http1: bool,
    /// HTTP/2: the count of flushes last seen while waiting.
    seen: u64,
    /// Started by the first wait: [`HOLD`].
    hold: Option<Pin<Box<Sleep>>>,
    /// HTTP/2: [`SETTLE`] after the last flush seen.
    settle: Option<Pin<Box<Sleep>>>,
}

impl Written {
    /// For a body on the connection of `flushes`, served over HTTP/1.x
    /// (`http1`) or HTTP/2.
    pub fn new(flushes: &Arc<Flushes>, http1: bool) -> Self {
        Self {
            flushes: Arc::clone(flushes),
            since: None,
            http1,
            seen: 0,
            hold: None,
            settle: None,
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

    /// Ready once what the body gave is written (see the module's doc), or
    /// [`HOLD`] after the first wait began.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.since.get_or_insert(self.flushes.count());
        loop {
            // Settled is settled: the resets that other streams' breaks
            // then write must not make each wait for the one before.
            if let Some(settle) = &self.settle
                && settle.deadline() <= tokio::time::Instant::now()
            {
                return Poll::Ready(());
            }
            let count = self.flushes.count();
            if count != since {
                if self.http1 {
                    return Poll::Ready(());
                }
                if self.settle.is_none() || count != self.seen {
                    self.seen = count;
                    let settled = tokio::time::Instant::now() + SETTLE;
                    match &mut self.settle {
                        Some(settle) => settle.as_mut().reset(settled),
                        None => self.settle = Some(Box::pin(tokio::time::sleep_until(settled))),
                    }
                }
            }
            let hold = self
                .hold
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(HOLD)));
            if hold.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(settle) = &mut self.settle
                && settle.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            self.flushes.wait(cx.waker());
            if self.flushes.count() == count {
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
    async fn a_break_waits_for_one_flush_on_http1_and_for_writes_to_settle_on_http2() {
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
        // HTTP/2: each flush within SETTLE of the last one keeps it waiting.
        for _ in 0..5 {
            assert!(poll(&mut http2).is_pending());
            tokio::time::advance(SETTLE / 2).await;
            io.flush().await.unwrap();
        }
        assert!(poll(&mut http2).is_pending());
        tokio::time::advance(SETTLE).await;
        assert!(poll(&mut http2).is_ready());

        // Two breaks on one connection settle together, though the first's
        // reset is written (a flush) before the second is polled.
        let (mut first, mut second) =
            (Written::new(&flushes, false), Written::new(&flushes, false));
        first.polled();
        second.polled();
        io.flush().await.unwrap();
        assert!(poll(&mut first).is_pending() && poll(&mut second).is_pending());
        tokio::time::advance(SETTLE).await;
        assert!(poll(&mut first).is_ready());
        io.flush().await.unwrap();
        assert!(poll(&mut second).is_ready());

        // No flush at all: it waits.
        let mut unflushed = Written::new(&flushes, false);
        unflushed.polled();
        tokio::time::advance(SETTLE * 2).await;
        assert!(poll(&mut unflushed).is_pending());
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

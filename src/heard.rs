//! Whether an upstream HTTP/1.1 connection has heard from the upstream since
//! its last request went out.
//!
//! A kept connection the upstream closes just as a request reaches it (its
//! keep-alive timeout) fails that request without an answer, and the pool
//! sends it once more on a new connection. hyper reports every close before
//! a whole response as the same error, though, whether nothing came or a
//! part of a head, or a `100 Continue`: then the upstream read the request
//! and may have acted on it (billed it), and it must not go twice. The pool
//! asks [`Heard`] which it was.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

/// The most a read takes while nothing has been heard: hyper's first read
/// buffer, so that a whole small answer still comes in one read.
const FIRST_READ: usize = 8 * 1024;

/// What the pool keeps of a connection's ears.
#[derive(Clone, Default)]
pub struct Heard(Arc<AtomicBool>);

impl Heard {
    /// Forgets what was heard: a request is about to go out.
    pub fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Whether any byte came since the last [`Heard::clear`].
    pub fn anything(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection whose reads are watched for the first byte after a request.
pub struct Listening<I> {
    inner: I,
    heard: Heard,
}

impl<I> Listening<I> {
    /// Wraps a connection; `heard` tells what it heard.
    pub fn new(inner: I, heard: Heard) -> Self {
        Self { inner, heard }
    }
}

impl<I: Read + Unpin> Read for Listening<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.heard.anything() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // hyper's cursor does not tell how much a read put in it: until a
        // byte comes, reads go through a buffer whose filling does, and are
        // copied on (one read per request, most often the whole answer).
        let mut scratch = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let room = buf.remaining().min(FIRST_READ);
        let mut own = ReadBuf::uninit(&mut scratch[..room]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, own.unfilled()))?;
        let read = own.filled();
        if !read.is_empty() {
            this.heard.0.store(true, Ordering::Relaxed);
            buf.put_slice(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: Write + Unpin> Write for Listening<I> {
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
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

//! A first reading of HTTP/1.1 request heads, before hyper's: the rules
//! chorus is stricter about, and the gateway's own answer to every head it
//! refuses.
//!
//! hyper frames requests by RFC 9112, leniently where the RFC allows it: a
//! request with both `Content-Length` and `Transfer-Encoding` is read as
//! chunked (the length header is dropped before the handler sees it), a
//! bare LF ends a line, `Transfer-Encoding` may list other codings before
//! `chunked`. At the edge, each of these is a way for a proxy in front of
//! chorus and chorus itself to disagree on where a request ends, which is
//! how requests are smuggled. So chorus refuses them. The rules, for
//! HTTP/1.x heads only (HTTP/2 has no such ambiguity):
//! - not both `Content-Length` and `Transfer-Encoding`;
//! - `Transfer-Encoding`, if present, is one line that says exactly `chunked`;
//! - every line ends in CRLF, never a bare LF; in a chunked body's trailer
//!   section, where hyper would read on to the next CRLF CRLF (taking the
//!   next request's head for trailer lines), a bare LF cuts the connection
//!   before hyper sees it, and the request's body fails;
//! - exactly one `Host` (at most one on HTTP/1.0), a host and an optional
//!   port, as RFC 9112 §3.2 asks.
//!
//! And what hyper would refuse by itself, with a bare status and neither the
//! gateway's JSON nor `x-chorus-role`: a head that does not parse, a request
//! target that is not a URI or is longer than [`MAX_TARGET`] bytes, more
//! than [`MAX_HEADERS`] fields, a `Content-Length` that is not one number, a
//! head longer than the connection reads.
//!
//! [`Watched`] wraps a client connection and follows the framing of each
//! request — the head, then a `Content-Length` or chunked body — exactly as
//! hyper does. A head reaches hyper only once it is whole and judged: most
//! arrive whole in one read and pass as read, unchanged and uncopied; one in
//! parts is held back until it ends. A refused head never reaches hyper: a
//! placeholder request takes its place, marked [`Refused`] with the reason
//! (and the head's method and path, for the access log), which the handler
//! answers (400, 414 or 431) before closing the connection; nothing after
//! it is read. Where the reading meets something
//! hyper handles itself (a bad chunk size: the handler sees a body error) or
//! does not follow (HTTP/2's preface), it stops and leaves the rest to
//! hyper: it never guesses. Requests are matched to heads by their order on
//! the connection, which is the order hyper dispatches them in.
//!
//! A request that asks to upgrade (an HTTP/1.1 `Upgrade` header) may be
//! followed at once by the new protocol's bytes, before its `101`: those
//! reach hyper unread, and so the tunnel, untouched. If it is answered
//! otherwise, the connection goes on as HTTP when nothing had followed the
//! head, and is closed after the answer when something had.
//!
//! This file holds the connection wrapper and the verdicts it shares with
//! the handler; `reader.rs` follows the requests byte by byte, and
//! `head.rs` judges each whole head.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gather;

use reader::{Fed, Reader};

mod head;
mod reader;

pub use head::request_line;

pub(crate) use head::is_host;

/// A request whose head breaks one of the rules: the handler refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspect {
    /// Malformed, or framed in a way chorus does not accept (400).
    Malformed(&'static str),
    /// A head longer than the connection reads (431).
    TooLarge,
    /// More than [`MAX_HEADERS`] header fields (431).
    TooManyFields,
    /// A request target longer than [`MAX_TARGET`] bytes (414).
    TargetTooLong,
}

/// A refused head as the handler gets it: why, and as much of its request
/// line as reads as one, for the access log (hyper is handed a placeholder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub why: Suspect,
    /// The method, where the line starts with a valid one.
    pub method: Option<http::Method>,
    /// The target's path without its query, where it is one of visible
    /// ASCII no longer than [`MAX_TARGET`].
    pub path: Option<Box<str>>,
}

impl Refused {
    /// `why` a head starting with `head`'s bytes (whole or not) is refused.
    fn new(why: Suspect, head: &[u8]) -> Self {
        let (method, path) = head::request_line(head);
        Self { why, method, path }
    }
}

/// Header fields per head, as in hyper's parser.
pub const MAX_HEADERS: usize = 100;
/// The longest request target hyper takes (`http::Uri`'s limit).
pub const MAX_TARGET: usize = u16::MAX as usize - 1;
/// What hyper is handed in place of a refused head: a request the handler
/// answers with the refusal, never one that goes upstream.
const PLACEHOLDER: &[u8] = b"GET / HTTP/1.1\r\nhost: refused\r\n\r\n";
/// What every HTTP/2 connection sends first (RFC 9113 §3.4): left to hyper.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const NOT_HTTP1: &str =
    "the request head is not HTTP/1.1 (a request line, then one header per line)";
const AMBIGUOUS_TRAILER: &str = "a bare LF in the trailer section of a chunked body";
/// Bytes drained from a refused connection per read, before letting hyper
/// write its answer (a client still sending must not starve it).
const DRAIN: usize = 64 * 1024;
const NONE: u64 = u64::MAX;

/// What the reading found, shared between a connection's reader and its
/// request handler.
#[derive(Debug)]
pub struct Verdicts {
    /// Index (0-based, in connection order) of the first suspect head.
    first_suspect: AtomicU64,
    /// Why it is suspect; set once, before `first_suspect`.
    reason: std::sync::OnceLock<Refused>,
    /// Requests handed to the handler so far.
    dispatched: AtomicU64,
    /// The connection became a tunnel (see [`crate::tunnel`]): what follows
    /// is not HTTP and is no longer followed.
    tunnelled: AtomicBool,
    /// Bytes passed to hyper unread since the head of a request asking to
    /// upgrade ([`NONE`] when not waiting on one): the new protocol's,
    /// maybe, sent before its `101`.
    after_upgrade: AtomicU64,
    /// The upgrade was refused before anything followed its head: requests
    /// are followed again.
    resume: AtomicBool,
}

impl Default for Verdicts {
    fn default() -> Self {
        Self {
            first_suspect: AtomicU64::new(NONE),
            reason: std::sync::OnceLock::new(),
            dispatched: AtomicU64::new(0),
            tunnelled: AtomicBool::new(false),
            after_upgrade: AtomicU64::new(NONE),
            resume: AtomicBool::new(false),
        }
    }
}

impl Verdicts {
    /// Called once per request, in the order the connection delivers them:
    /// whether this request's head broke a rule.
    pub fn next_request(&self) -> Option<Refused> {
        let index = self.dispatched.fetch_add(1, Ordering::Relaxed);
        let suspect = self.first_suspect.load(Ordering::Acquire);
        // Requests after a suspect one never come: the refusal closes the
        // connection. Should one come anyway, it is refused too.
        (index >= suspect).then(|| {
            self.reason.get().cloned().unwrap_or(Refused {
                why: Suspect::Malformed("malformed"),
                method: None,
                path: None,
            })
        })
    }

    /// The connection's next bytes are a tunnel's: they pass unread. Called
    /// before the `101` that lets the client send them is written.
    pub fn mark_tunnelled(&self) {
        self.tunnelled.store(true, Ordering::Release);
    }

    /// The request asking to upgrade was answered without a `101`. True
    /// when the connection can go on serving requests: nothing followed
    /// the request's head yet, and what comes next is followed as usual.
    /// False when bytes followed it unread: no request may come after.
    pub fn upgrade_refused(&self) -> bool {
        match self.after_upgrade.load(Ordering::Acquire) {
            0 => {
                self.resume.store(true, Ordering::Release);
                true
            }
            NONE => true,
            _ => false,
        }
    }

    fn suspect(&self, index: u64, reason: Refused) {
        let _ = self.reason.set(reason);
        let _ =
            self.first_suspect
                .compare_exchange(NONE, index, Ordering::Release, Ordering::Relaxed);
    }
}

/// Whether a request asks to upgrade its connection as hyper reads it (an
/// HTTP/1.1 `Upgrade` header): what follows its head is not followed until
/// it is answered (see [`Verdicts::upgrade_refused`]).
pub fn asks_upgrade<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_11
        && request.headers().contains_key(http::header::UPGRADE)
}

/// A client connection whose reads are followed, head by head and body by
/// body, as hyper frames them.
pub struct Watched<I> {
    inner: I,
    reader: Reader,
    /// Bytes judged and due to hyper, waiting for room in its buffer.
    queued: Vec<u8>,
    /// How much of `queued` hyper has had.
    taken: usize,
}

impl<I> Watched<I> {
    /// Wraps `inner`; findings go to `verdicts`. A head longer than
    /// `max_head` bytes is refused.
    pub fn new(inner: I, verdicts: Arc<Verdicts>, max_head: usize) -> Self {
        Self {
            inner,
            reader: Reader::new(verdicts, max_head),
            queued: Vec::new(),
            taken: 0,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.queued.len() {
                let queued = &this.queued[this.taken..];
                let n = queued.len().min(buf.remaining());
                buf.put_slice(&queued[..n]);
                this.taken += n;
                if this.taken == this.queued.len() {
                    this.queued = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.reader.refused() {
                return this.drain(cx);
            }
            if this.reader.cut() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    AMBIGUOUS_TRAILER,
                )));
            }
            if this.reader.tunnelled() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            if read.is_empty() {
                // The end of input. A head held back from hyper was never
                // whole: hyper sees a connection that closed between requests.
                return Poll::Ready(Ok(()));
            }
            let fed = this.reader.feed(read);
            if this.reader.cut() {
                // None of this read reaches hyper: its body fails.
                buf.set_filled(before);
                continue;
            }
            let Fed::Edited {
                released,
                from,
                to,
                refused,
            } = fed
            else {
                return Poll::Ready(Ok(()));
            };
            let mut due = released;
            due.extend_from_slice(&read[from..to]);
            if refused {
                due.extend_from_slice(PLACEHOLDER);
            }
            // Handed over at the top of the loop. When nothing is due (all
            // of it held back), the loop reads on: returning no bytes would
            // tell hyper the client closed.
            buf.set_filled(before);
            this.queued = due;
        }
    }
}

impl<I: AsyncRead + Unpin> Watched<I> {
    /// After a refusal nothing more reaches hyper, which answers the
    /// placeholder and closes. What the client still sends is read and
    /// dropped meanwhile (unread bytes at the close would reset the
    /// connection under the answer), and its end is not passed on, since
    /// hyper would take it for the client gone before the answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN {
            let mut sink = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => drained += sink.filled().len(),
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    /// Gathered when small (see [`crate::gather`]).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().inner;
        gather::gathered(bufs, |joined| Pin::new(&mut *inner).poll_write(cx, joined))
            .unwrap_or_else(|| Pin::new(inner).poll_write_vectored(cx, bufs))
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

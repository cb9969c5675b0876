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
//! - every line ends in CRLF, never a bare LF;
//! - exactly one `Host` (at most one on HTTP/1.0), as RFC 9112 §3.2 asks.
//!
//! And what hyper would refuse by itself, with a bare status and neither the
//! gateway's JSON nor `x-chorus-role`: a head that does not parse, a request
//! target that is not a URI or is over 64 KiB, more than [`MAX_HEADERS`]
//! fields, a `Content-Length` that is not one number, a head longer than the
//! connection reads.
//!
//! [`Watched`] wraps a client connection and follows the framing of each
//! request — the head, then a `Content-Length` or chunked body — exactly as
//! hyper does. A head reaches hyper only once it is whole and judged: most
//! arrive whole in one read and pass as read, unchanged and uncopied; one in
//! parts is held back until it ends. A refused head never reaches hyper: a
//! placeholder request takes its place, marked [`Suspect`] with the reason,
//! which the handler answers (400, 414 or 431) before closing the
//! connection; nothing after it is read. Where the reading meets something
//! hyper handles itself (a bad chunk size: the handler sees a body error) or
//! does not follow (HTTP/2's preface), it stops and leaves the rest to
//! hyper: it never guesses. Requests are matched to heads by their order on
//! the connection, which is the order hyper dispatches them in.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gather;

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
    reason: std::sync::OnceLock<Suspect>,
    /// Requests handed to the handler so far.
    dispatched: AtomicU64,
}

impl Default for Verdicts {
    fn default() -> Self {
        Self {
            first_suspect: AtomicU64::new(NONE),
            reason: std::sync::OnceLock::new(),
            dispatched: AtomicU64::new(0),
        }
    }
}

impl Verdicts {
    /// Called once per request, in the order the connection delivers them:
    /// whether this request's head broke a rule.
    pub fn next_request(&self) -> Option<Suspect> {
        let index = self.dispatched.fetch_add(1, Ordering::Relaxed);
        let suspect = self.first_suspect.load(Ordering::Acquire);
        // Requests after a suspect one never come: the refusal closes the
        // connection. Should one come anyway, it is refused too.
        (index >= suspect).then(|| {
            self.reason
                .get()
                .copied()
                .unwrap_or(Suspect::Malformed("malformed"))
        })
    }

    fn suspect(&self, index: u64, reason: Suspect) {
        let _ = self.reason.set(reason);
        let _ =
            self.first_suspect
                .compare_exchange(NONE, index, Ordering::Release, Ordering::Relaxed);
    }
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
            if this.reader.state == State::Refused {
                return this.drain(cx);
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            if read.is_empty() {
                // The end of input. A head held back from hyper was never
                // whole: hyper sees a connection that closed between requests.
                return Poll::Ready(Ok(()));
            }
            let Fed::Edited {
                released,
                from,
                to,
                refused,
            } = this.reader.feed(read)
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

/// Where the reading is on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Inside a body of known length: this many bytes to go.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Stopped: hyper alone reads the rest.
    Off,
    /// A head was refused: nothing more reaches hyper.
    Refused,
}

/// The steps of a chunked body, as hyper's decoder takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    /// More hex digits, with the size so far.
    Size(u64),
    /// White space after the size.
    SizeLws(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The LF after a size line.
    SizeLf(u64),
    /// Chunk data: this many bytes to go.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: CR of the final line, or a trailer.
    EndCr,
    /// The LF of the final line.
    EndLf,
    /// Inside a trailer line.
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
}

/// What becomes of the bytes of one read.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// They all go to hyper as read.
    Passed,
    /// Hyper gets `released` (a head held back until whole, now judged),
    /// then the read's bytes `from..to`; the rest are held back (the start
    /// of a head) or, when `refused`, replaced by the placeholder.
    Edited {
        released: Vec<u8>,
        from: usize,
        to: usize,
        refused: bool,
    },
}

/// How a complete head is judged.
enum Verdict {
    /// It goes to hyper (whether or not its request is suspect).
    Go,
    /// Hyper never sees it; the placeholder takes its place.
    Refuse,
}

/// Follows the requests on one connection.
struct Reader {
    state: State,
    /// A head begun in an earlier read and held back until it is whole.
    head: Vec<u8>,
    /// Heads read so far.
    heads: u64,
    /// The longest head taken.
    max_head: usize,
    verdicts: Arc<Verdicts>,
}

impl Reader {
    fn new(verdicts: Arc<Verdicts>, max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            max_head,
            verdicts,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut released = Vec::new();
        // Where this read's bytes for hyper begin: past a released head's tail.
        let mut from = 0;
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Off => break,
                State::Refused => return edited(released, from, from, false),
                State::Head if !self.head.is_empty() => {
                    // The rest of a held head (always at the start of a read).
                    let searched = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(bytes);
                    let Some(end) = head_end(&self.head, searched) else {
                        if let Some(why) = self.refusal_of_part() {
                            return self.refuse(why, released, from, 0);
                        }
                        return edited(released, from, 0, false);
                    };
                    let past = self.head.len() - end;
                    let mut head = std::mem::take(&mut self.head);
                    head.truncate(end);
                    if let Verdict::Refuse = self.judge(&head) {
                        return self.refuse_judged(released, from, 0);
                    }
                    released = head;
                    from = bytes.len().saturating_sub(past);
                    at = from;
                }
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112
                    // §2.2), by hyper too: they pass.
                    at += bytes[at..]
                        .iter()
                        .position(|&byte| byte != b'\r' && byte != b'\n')
                        .unwrap_or(bytes.len() - at);
                    let rest = &bytes[at..];
                    if rest.is_empty() {
                        break;
                    }
                    // Most heads arrive whole in one read: judged where they
                    // lie, with no copy.
                    match head_end(rest, 0) {
                        Some(end) if end > self.max_head => {
                            return self.refuse(Suspect::TooLarge, released, from, at);
                        }
                        Some(end) => match self.judge(&rest[..end]) {
                            Verdict::Go => at += end,
                            Verdict::Refuse => return self.refuse_judged(released, from, at),
                        },
                        None => {
                            self.head.extend_from_slice(rest);
                            if let Some(why) = self.refusal_of_part() {
                                return self.refuse(why, released, from, at);
                            }
                            return edited(released, from, at, false);
                        }
                    }
                }
                State::Length(left) => {
                    let take = usize::try_from(left)
                        .map_or(bytes.len() - at, |left| left.min(bytes.len() - at));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    at += take;
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = usize::try_from(left)
                        .map_or(bytes.len() - at, |left| left.min(bytes.len() - at));
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                    at += take;
                }
                State::Chunked(chunk) => {
                    self.state = chunk_step(chunk, bytes[at]);
                    at += 1;
                }
            }
        }
        if released.is_empty() && from == 0 {
            Fed::Passed
        } else {
            edited(released, from, bytes.len(), false)
        }
    }

    /// Why the part of a head held so far is refused already: too long, or
    /// not HTTP/1.1 from its first bytes (as hyper, which parses what it
    /// has after every read, would find: a TLS handshake on the cleartext
    /// port is answered at once, not after `header_read_timeout`).
    fn refusal_of_part(&self) -> Option<Suspect> {
        if self.head.len() > self.max_head {
            return Some(Suspect::TooLarge);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&self.head) {
            Ok(_) => None,
            Err(httparse::Error::TooManyHeaders) => Some(Suspect::TooManyFields),
            Err(_) if H2_PREFACE.starts_with(&self.head) || self.head.starts_with(H2_PREFACE) => {
                None
            }
            Err(_) => Some(Suspect::Malformed(NOT_HTTP1)),
        }
    }

    /// Refuses the head starting at `to` in this read (or held, `to` 0):
    /// hyper gets what came before it, then the placeholder.
    fn refuse(&mut self, why: Suspect, released: Vec<u8>, from: usize, to: usize) -> Fed {
        let index = self.heads;
        self.heads += 1;
        self.verdicts.suspect(index, why);
        self.refuse_judged(released, from, to)
    }

    /// The same, for a head [`Reader::judge`] has counted and marked.
    fn refuse_judged(&mut self, released: Vec<u8>, from: usize, to: usize) -> Fed {
        self.state = State::Refused;
        self.head = Vec::new();
        edited(released, from, to, true)
    }

    fn judge(&mut self, head: &[u8]) -> Verdict {
        let index = self.heads;
        self.heads += 1;
        match read_head(head) {
            Judged::Body(state) => self.state = state,
            Judged::Refused(why) => {
                self.verdicts.suspect(index, why);
                return Verdict::Refuse;
            }
            Judged::LeaveToHyper => self.state = State::Off,
        }
        Verdict::Go
    }
}

/// A [`Fed::Edited`], written short.
fn edited(released: Vec<u8>, from: usize, to: usize, refused: bool) -> Fed {
    Fed::Edited {
        released,
        from,
        to,
        refused,
    }
}

/// The index just past the empty line that ends a head (CRLF CRLF, or any
/// mix with bare LFs, as hyper accepts), searching from `from`.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let lf = at + head.get(at..)?.iter().position(|&byte| byte == b'\n')?;
        match head.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
}

/// What a complete head means for the connection.
enum Judged {
    /// A good head: what follows it.
    Body(State),
    /// A head refused: hyper never sees it.
    Refused(Suspect),
    /// Not ours to judge: HTTP/2's preface.
    LeaveToHyper,
}

fn read_head(head: &[u8]) -> Judged {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let http11 = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => request.version == Some(1),
        Err(httparse::Error::TooManyHeaders) => return Judged::Refused(Suspect::TooManyFields),
        _ if head.starts_with(&H2_PREFACE[..16]) => return Judged::LeaveToHyper,
        Ok(httparse::Status::Partial) | Err(_) => {
            return Judged::Refused(Suspect::Malformed(NOT_HTTP1));
        }
    };
    let target = request.path.unwrap_or_default();
    if target.len() > MAX_TARGET {
        return Judged::Refused(Suspect::TargetTooLong);
    }
    // hyper reads the target as an `http::Uri` (and a name as a `HeaderName`,
    // which is at most 64 KiB). Parsing one copies it: a plain path is
    // known good without.
    if !is_plain_path(target.as_bytes()) && http::Uri::try_from(target).is_err() {
        return Judged::Refused(Suspect::Malformed("the request target is not a valid URI"));
    }
    if head
        .iter()
        .enumerate()
        .any(|(at, &byte)| byte == b'\n' && (at == 0 || head[at - 1] != b'\r'))
    {
        return Judged::Refused(Suspect::Malformed(
            "a line of the request head ends in a bare LF",
        ));
    }

    let headers: &[httparse::Header<'_>] = request.headers;
    if headers.iter().any(|header| header.name.len() > MAX_TARGET) {
        return Judged::Refused(Suspect::TooLarge);
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
    };
    let hosts = named("host").count();
    if hosts > 1 || (http11 && hosts == 0) {
        return Judged::Refused(Suspect::Malformed(
            "a request needs exactly one Host header",
        ));
    }
    let lengths: Vec<&[u8]> = named("content-length").map(|header| header.value).collect();
    let codings: Vec<&[u8]> = named("transfer-encoding")
        .map(|header| header.value)
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Judged::Body(State::Head),
        ([_, ..], [_, ..]) => Judged::Refused(Suspect::Malformed(
            "a request with both Content-Length and Transfer-Encoding",
        )),
        ([], [coding]) if http11 && coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Judged::Body(State::Chunked(Chunk::Start))
        }
        // hyper refuses other codings itself, but not all of them.
        ([], _) => Judged::Refused(Suspect::Malformed(
            "Transfer-Encoding other than a single \"chunked\"",
        )),
        ([first, rest @ ..], []) => match digits(first) {
            Some(length) if rest.iter().all(|other| digits(other) == Some(length)) => {
                Judged::Body(if length == 0 {
                    State::Head
                } else {
                    State::Length(length)
                })
            }
            Some(_) | None => Judged::Refused(Suspect::Malformed(
                "Content-Length is not one decimal number",
            )),
        },
    }
}

/// Whether a target is an origin-form path (and query) of bytes that
/// `http::Uri` always takes: letters, digits and RFC 3986's unreserved,
/// sub-delimiter and path characters, `%`, `/` and `?`.
fn is_plain_path(target: &[u8]) -> bool {
    const PLAIN: [bool; 256] = {
        let mut plain = [false; 256];
        let mut byte = 0;
        while byte < 256 {
            let b = byte as u8;
            plain[byte] = b.is_ascii_alphanumeric();
            byte += 1;
        }
        let others = b"-._~!$&'()*+,;=:@/?%";
        let mut at = 0;
        while at < others.len() {
            plain[others[at] as usize] = true;
            at += 1;
        }
        plain
    };
    target.first() == Some(&b'/') && target.iter().all(|&byte| PLAIN[usize::from(byte)])
}

/// A Content-Length value: decimal digits only, as hyper reads it.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |length, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        length.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn hex(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

/// One byte of chunked framing (not chunk data), as hyper's decoder takes it.
fn chunk_step(chunk: Chunk, byte: u8) -> State {
    let next = match (chunk, byte) {
        (Chunk::Start, _) => hex(byte).map(Chunk::Size),
        (Chunk::Size(size), b' ' | b'\t') => Some(Chunk::SizeLws(size)),
        (Chunk::Size(size) | Chunk::SizeLws(size), b';') => Some(Chunk::Extension(size)),
        (Chunk::Size(size) | Chunk::SizeLws(size) | Chunk::Extension(size), b'\r') => {
            Some(Chunk::SizeLf(size))
        }
        (Chunk::Size(size), _) => hex(byte)
            .and_then(|digit| size.checked_mul(16)?.checked_add(digit))
            .map(Chunk::Size),
        (Chunk::SizeLws(size), b' ' | b'\t') => Some(Chunk::SizeLws(size)),
        (Chunk::SizeLws(_), _) => None,
        (Chunk::Extension(_), b'\n') => None,
        (Chunk::Extension(size), _) => Some(Chunk::Extension(size)),
        (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
        (Chunk::SizeLf(size), b'\n') => Some(Chunk::Data(size)),
        (Chunk::SizeLf(_), _) => None,
        // Data is skipped in bulk by the caller; an empty one ends at once.
        (Chunk::Data(_), _) => None,
        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
        (Chunk::DataCr, _) => None,
        (Chunk::DataLf, b'\n') => Some(Chunk::Start),
        (Chunk::DataLf, _) => None,
        (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
        (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
        (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
        (Chunk::EndLf, b'\n') => return State::Head,
        (Chunk::EndLf, _) => None,
        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
        (Chunk::TrailerLf, _) => None,
    };
    // A byte hyper's decoder refuses: it closes the connection itself.
    next.map_or(State::Off, State::Chunked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest head the tests' readers take.
    const LIMIT: usize = 100_000;

    /// What a connection's reader made of `wire`, fed in pieces of `step`
    /// bytes: the verdicts on the first `requests` requests, the final
    /// state, and the bytes hyper was handed.
    type Outcome = (Vec<Option<Suspect>>, State, Vec<u8>);

    fn read(wire: &[u8], step: usize, requests: usize) -> Outcome {
        let verdicts = Arc::new(Verdicts::default());
        let mut reader = Reader::new(Arc::clone(&verdicts), LIMIT);
        let mut handed = Vec::new();
        for piece in wire.chunks(step) {
            match reader.feed(piece) {
                Fed::Passed => handed.extend_from_slice(piece),
                Fed::Edited {
                    released,
                    from,
                    to,
                    refused,
                } => {
                    handed.extend_from_slice(&released);
                    handed.extend_from_slice(&piece[from..to]);
                    if refused {
                        handed.extend_from_slice(PLACEHOLDER);
                    }
                }
            }
        }
        let found = (0..requests).map(|_| verdicts.next_request()).collect();
        (found, reader.state, handed)
    }

    fn every_step(wire: &[u8], requests: usize) -> Outcome {
        let whole = read(wire, wire.len().max(1), requests);
        for step in 1..wire.len().min(64) {
            assert_eq!(read(wire, step, requests), whole, "in pieces of {step}");
        }
        whole
    }

    #[test]
    fn good_requests_stay_in_step_and_reach_hyper_unchanged() {
        let wire = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\n\r\n\
            5;x=y\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.0\r\n\r\n";
        let (verdicts, state, handed) = every_step(wire, 4);
        assert_eq!(verdicts, [None, None, None, None]);
        assert_eq!(state, State::Head);
        assert_eq!(handed, wire);
    }

    #[test]
    fn a_head_in_parts_reaches_hyper_only_whole() {
        let verdicts = Arc::new(Verdicts::default());
        let mut reader = Reader::new(verdicts, LIMIT);
        let first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHo";
        assert_eq!(
            reader.feed(first),
            edited(Vec::new(), 0, 27, false),
            "the second head is held"
        );
        assert_eq!(reader.feed(b"st: a\r\n"), edited(Vec::new(), 0, 0, false));
        assert_eq!(
            reader.feed(b"\r\nGET"),
            edited(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 2, 2, false),
            "released whole; the third head's start is held"
        );
    }

    #[test]
    fn both_lengths_are_suspect_in_either_order() {
        for wire in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        ] {
            let (verdicts, state, handed) = every_step(wire, 1);
            assert_eq!(
                verdicts,
                [Some(Suspect::Malformed(
                    "a request with both Content-Length and Transfer-Encoding"
                ))]
            );
            assert_eq!(state, State::Refused);
            assert_eq!(handed, PLACEHOLDER);
        }
    }

    #[test]
    fn the_suspect_is_found_after_good_requests() {
        let wire = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
            GET /b HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        let (verdicts, _, _) = every_step(wire, 3);
        assert_eq!(verdicts[0], None);
        assert!(verdicts[1].is_some());
        assert!(verdicts[2].is_some(), "anything after a suspect is refused");
    }

    #[test]
    fn other_rules() {
        let suspect: [&[u8]; 7] = [
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for wire in suspect {
            let (verdicts, _, _) = every_step(wire, 1);
            assert!(verdicts[0].is_some(), "{}", String::from_utf8_lossy(wire));
        }
        // HTTP/1.0 may leave Host out.
        assert_eq!(every_step(b"GET / HTTP/1.0\r\n\r\n", 1).0, [None]);
    }

    #[test]
    fn what_hyper_would_refuse_never_reaches_it() {
        let malformed: [&[u8]; 12] = [
            // A TLS handshake on the cleartext port: refused from its first bytes.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
            b"GET /a{b}|^` HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nA B: c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nA: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nA: b\x01c\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ];
        for wire in malformed {
            let (verdicts, state, handed) = every_step(wire, 2);
            let text = String::from_utf8_lossy(wire);
            assert!(
                matches!(verdicts[..], [Some(Suspect::Malformed(_)), Some(_)]),
                "{text}: {verdicts:?}"
            );
            assert_eq!(state, State::Refused, "{text}");
            assert_eq!(handed, PLACEHOLDER, "{text}");
        }
        // After good requests, hyper gets them, then the placeholder.
        let good = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let wire = [
            &good[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nA B: c\r\n\r\nmore",
        ]
        .concat();
        let (verdicts, _, handed) = every_step(&wire, 2);
        assert!(matches!(verdicts[..], [None, Some(Suspect::Malformed(_))]));
        assert_eq!(handed, [&good[..], PLACEHOLDER].concat());
    }

    #[test]
    fn heads_too_large_or_too_long_are_refused_with_their_status() {
        let fields: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let (verdicts, state, handed) = read(many.as_bytes(), 7, 1);
        assert_eq!(
            (verdicts[0], state),
            (Some(Suspect::TooManyFields), State::Refused)
        );
        assert_eq!(handed, PLACEHOLDER);

        let endless = [&b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..], &[b'y'; 2 * LIMIT]].concat();
        for step in [1000, 4096, endless.len()] {
            let (verdicts, state, handed) = read(&endless, step, 1);
            assert_eq!(
                (verdicts[0], state),
                (Some(Suspect::TooLarge), State::Refused)
            );
            assert_eq!(handed, PLACEHOLDER);
        }

        // The target limit is hyper's, above the tests' head limit.
        let verdicts = Arc::new(Verdicts::default());
        let mut reader = Reader::new(Arc::clone(&verdicts), 1 << 20);
        let target = "/a".repeat(MAX_TARGET / 2 + 1);
        let long = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reader.feed(long.as_bytes()), edited(Vec::new(), 0, 0, true));
        assert_eq!(verdicts.next_request(), Some(Suspect::TargetTooLong));
    }

    #[test]
    fn what_hyper_reads_itself_is_left_to_it() {
        let left: [&[u8]; 3] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n",
        ];
        for wire in left {
            let (verdicts, state, handed) = every_step(wire, 1);
            assert_eq!(verdicts, [None], "{}", String::from_utf8_lossy(wire));
            assert_eq!(state, State::Off, "{}", String::from_utf8_lossy(wire));
            assert_eq!(handed, wire);
        }
    }

    #[test]
    fn large_bodies_are_skipped_not_read() {
        const HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
        let mut wire = HEAD.to_vec();
        // Body bytes that look like a head with both lengths.
        let fake =
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        while wire.len() < 100_000 {
            wire.extend_from_slice(fake);
        }
        wire.truncate(HEAD.len() + 100_000);
        wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (verdicts, state, handed) = read(&wire, 4096, 2);
        assert_eq!(verdicts, [None, None]);
        assert_eq!(state, State::Head);
        assert_eq!(handed, wire);
    }

    #[test]
    fn plain_paths_are_the_uris_hyper_takes() {
        for plain in [
            "/",
            "/v1/chat/completions?stream=true&x=%20",
            "/a:b@c;d=e,f+g*h(i)!$'~",
        ] {
            assert!(is_plain_path(plain.as_bytes()), "{plain}");
            assert!(http::Uri::try_from(plain).is_ok(), "{plain}");
        }
        for other in [
            "",
            "*",
            "a/b",
            "http://a/",
            "/a b",
            "/a#b",
            "/a{b}",
            "/a`b",
            "/\u{e9}",
        ] {
            assert!(!is_plain_path(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(digits(b"123"), Some(123));
        assert_eq!(digits(b"+1"), None);
        assert_eq!(digits(b"99999999999999999999999"), None);
    }
}

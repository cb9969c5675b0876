//! A second reading of HTTP/1.1 request heads, for the rules chorus is
//! stricter about than hyper's parser.
//!
//! hyper frames requests by RFC 9112, leniently where the RFC allows it: a
//! request with both `Content-Length` and `Transfer-Encoding` is read as
//! chunked (the length header is dropped before the handler sees it), a
//! bare LF ends a line, `Transfer-Encoding` may list other codings before
//! `chunked`. At the edge, each of these is a way for a proxy in front of
//! chorus and chorus itself to disagree on where a request ends, which is
//! how requests are smuggled. So chorus refuses them: [`Watched`] wraps a
//! client connection, reads every byte hyper reads (never changing one), and
//! follows the framing of each request — the head, then a `Content-Length`
//! or chunked body — exactly as hyper does. A head that breaks a rule below
//! marks its request [`Suspect`]; the handler answers it with a 400 and
//! closes the connection, and nothing after it on that connection is read.
//!
//! The rules, for HTTP/1.x heads only (HTTP/2 has no such ambiguity):
//! - not both `Content-Length` and `Transfer-Encoding`;
//! - `Transfer-Encoding`, if present, is one line that says exactly `chunked`;
//! - every line ends in CRLF, never a bare LF;
//! - exactly one `Host` (at most one on HTTP/1.0), as RFC 9112 §3.2 asks.
//!
//! Whenever the reading meets something hyper will refuse by itself (a head
//! that does not parse, a bad chunk size), or something it does not follow
//! (HTTP/2's preface), it stops and leaves the rest to hyper: it never
//! guesses. Requests are matched to heads by their order on the connection,
//! which is the order hyper dispatches them in.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gather;

/// A request whose head breaks one of the rules: the handler refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect(pub &'static str);

/// Heads longer than this are left to hyper (which answers 431 well before).
const MAX_HEAD: usize = 1 << 20;
/// Header lines per head, as in hyper's parser.
const MAX_HEADERS: usize = 100;
const NONE: u64 = u64::MAX;

/// What the reading found, shared between a connection's reader and its
/// request handler.
#[derive(Debug)]
pub struct Verdicts {
    /// Index (0-based, in connection order) of the first suspect head.
    first_suspect: AtomicU64,
    /// Why it is suspect; set once, before `first_suspect`.
    reason: std::sync::OnceLock<&'static str>,
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
        (index >= suspect).then(|| Suspect(self.reason.get().copied().unwrap_or("malformed")))
    }

    fn suspect(&self, index: u64, reason: &'static str) {
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
}

impl<I> Watched<I> {
    /// Wraps `inner`; findings go to `verdicts`.
    pub fn new(inner: I, verdicts: Arc<Verdicts>) -> Self {
        Self {
            inner,
            reader: Reader::new(verdicts),
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
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.reader.feed(&buf.filled()[before..]);
        }
        polled
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

/// Follows the requests on one connection.
struct Reader {
    state: State,
    /// The head being collected (leading empty lines skipped).
    head: Vec<u8>,
    /// Heads read so far.
    heads: u64,
    verdicts: Arc<Verdicts>,
}

impl Reader {
    fn new(verdicts: Arc<Verdicts>) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            verdicts,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Off => return,
                State::Head => self.head_bytes(bytes),
                State::Length(left) => {
                    let take =
                        usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    &bytes[take..]
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take =
                        usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                    &bytes[take..]
                }
                State::Chunked(chunk) => {
                    self.state = chunk_step(chunk, bytes[0]);
                    &bytes[1..]
                }
            };
        }
    }

    /// Adds bytes to the head; once it is complete, judges it and returns
    /// the bytes after it.
    fn head_bytes<'a>(&mut self, mut bytes: &'a [u8]) -> &'a [u8] {
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 §2.2).
            let skip = bytes
                .iter()
                .position(|&byte| byte != b'\r' && byte != b'\n')
                .unwrap_or(bytes.len());
            bytes = &bytes[skip..];
            // Most heads arrive whole in one read: judged where they lie,
            // with no copy.
            if let Some(end) = head_end(bytes, 0) {
                self.judge(&bytes[..end]);
                return &bytes[end..];
            }
        }
        let searched = self.head.len().saturating_sub(2);
        self.head.extend_from_slice(bytes);
        let Some(end) = head_end(&self.head, searched) else {
            if self.head.len() > MAX_HEAD {
                self.state = State::Off;
            }
            return &[];
        };
        // The bytes of `bytes` past the head's end.
        let rest = self.head.len() - end;
        let head = std::mem::take(&mut self.head);
        self.judge(&head[..end]);
        &bytes[bytes.len() - rest..]
    }

    fn judge(&mut self, head: &[u8]) {
        let index = self.heads;
        self.heads += 1;
        match read_head(head) {
            Judged::Body(state) => self.state = state,
            Judged::Suspect(reason) => {
                self.verdicts.suspect(index, reason);
                self.state = State::Off;
            }
            Judged::LeaveToHyper => self.state = State::Off,
        }
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
    /// A head that breaks a rule.
    Suspect(&'static str),
    /// Not ours to judge: hyper refuses it, or it is not HTTP/1.
    LeaveToHyper,
}

fn read_head(head: &[u8]) -> Judged {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let http11 = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => request.version == Some(1),
        Ok(httparse::Status::Partial) | Err(_) => return Judged::LeaveToHyper,
    };
    if head
        .iter()
        .enumerate()
        .any(|(at, &byte)| byte == b'\n' && (at == 0 || head[at - 1] != b'\r'))
    {
        return Judged::Suspect("a line of the request head ends in a bare LF");
    }

    let headers: &[httparse::Header<'_>] = request.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
    };
    let hosts = named("host").count();
    if hosts > 1 || (http11 && hosts == 0) {
        return Judged::Suspect("a request needs exactly one Host header");
    }
    let lengths: Vec<&[u8]> = named("content-length").map(|header| header.value).collect();
    let codings: Vec<&[u8]> = named("transfer-encoding")
        .map(|header| header.value)
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Judged::Body(State::Head),
        ([_, ..], [_, ..]) => {
            Judged::Suspect("a request with both Content-Length and Transfer-Encoding")
        }
        ([], [coding]) if http11 && coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Judged::Body(State::Chunked(Chunk::Start))
        }
        // hyper refuses other codings itself, but not all of them.
        ([], _) => Judged::Suspect("Transfer-Encoding other than a single \"chunked\""),
        ([first, rest @ ..], []) => match digits(first) {
            Some(length) if rest.iter().all(|other| digits(other) == Some(length)) => {
                Judged::Body(if length == 0 {
                    State::Head
                } else {
                    State::Length(length)
                })
            }
            // Lengths that disagree or are not numbers: hyper refuses them.
            Some(_) | None => Judged::LeaveToHyper,
        },
    }
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

    /// Feeds `wire` in pieces of `step` bytes; returns the verdict of each
    /// of the first `requests` requests and the final state.
    fn read(wire: &[u8], step: usize, requests: usize) -> (Vec<Option<Suspect>>, State) {
        let verdicts = Arc::new(Verdicts::default());
        let mut reader = Reader::new(Arc::clone(&verdicts));
        for piece in wire.chunks(step) {
            reader.feed(piece);
        }
        let found = (0..requests).map(|_| verdicts.next_request()).collect();
        (found, reader.state)
    }

    fn every_step(wire: &[u8], requests: usize) -> (Vec<Option<Suspect>>, State) {
        let whole = read(wire, wire.len().max(1), requests);
        for step in 1..wire.len().min(64) {
            assert_eq!(read(wire, step, requests), whole, "in pieces of {step}");
        }
        whole
    }

    #[test]
    fn good_requests_stay_in_step() {
        let wire = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\n\r\n\
            5;x=y\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.0\r\n\r\n";
        let (verdicts, state) = every_step(wire, 4);
        assert_eq!(verdicts, [None, None, None, None]);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn both_lengths_are_suspect_in_either_order() {
        for wire in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        ] {
            let (verdicts, state) = every_step(wire, 1);
            assert_eq!(
                verdicts,
                [Some(Suspect("a request with both Content-Length and Transfer-Encoding"))]
            );
            assert_eq!(state, State::Off);
        }
    }

    #[test]
    fn the_suspect_is_found_after_good_requests() {
        let wire = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
            GET /b HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        let (verdicts, _) = every_step(wire, 3);
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
            let (verdicts, _) = every_step(wire, 1);
            assert!(verdicts[0].is_some(), "{}", String::from_utf8_lossy(wire));
        }
        // HTTP/1.0 may leave Host out.
        assert_eq!(every_step(b"GET / HTTP/1.0\r\n\r\n", 1).0, [None]);
    }

    #[test]
    fn what_hyper_refuses_is_left_to_hyper() {
        let refused: [&[u8]; 5] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n",
        ];
        for wire in refused {
            let (verdicts, state) = every_step(wire, 1);
            assert_eq!(verdicts, [None], "{}", String::from_utf8_lossy(wire));
            assert_eq!(state, State::Off, "{}", String::from_utf8_lossy(wire));
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
        let (verdicts, state) = read(&wire, 4096, 2);
        assert_eq!(verdicts, [None, None]);
        assert_eq!(state, State::Head);
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

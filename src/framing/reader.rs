//! Following the requests on one connection as hyper frames them: where
//! each head ends, the body after it (by its length or chunk by chunk), and
//! what of each read hyper gets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::head::{Judged, read_head};
use super::{H2_PREFACE, MAX_HEADERS, NONE, NOT_HTTP1, Refused, Suspect, Verdicts};

/// Where the reading is on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Collecting a request head.
    Head,
    /// Inside a body of known length: this many bytes to go.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Stopped: hyper alone reads the rest.
    Off,
    /// After the head of a request asking to upgrade: bytes pass unread,
    /// counted, until it is answered (see [`Verdicts::upgrade_refused`]).
    Upgrading,
    /// A head was refused: nothing more reaches hyper.
    Refused,
    /// A body framed in a way hyper reads one way and a proxy in front of
    /// chorus may read another: the connection is cut.
    Cut,
}

/// The steps of a chunked body, as hyper's decoder takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
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
pub(super) enum Fed {
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
pub(super) struct Reader {
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
    pub(super) fn new(verdicts: Arc<Verdicts>, max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            max_head,
            verdicts,
        }
    }

    /// Whether a head was refused: nothing more reaches hyper.
    pub(super) fn refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Whether a body's framing was ambiguous: the connection is cut.
    pub(super) fn cut(&self) -> bool {
        self.state == State::Cut
    }

    /// Whether the connection became a tunnel: its bytes are not followed.
    pub(super) fn tunnelled(&self) -> bool {
        self.verdicts.tunnelled.load(Ordering::Acquire)
    }

    /// Follows one read's bytes, and says which of them hyper gets.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut released = Vec::new();
        // Where this read's bytes for hyper begin: past a released head's tail.
        let mut from = 0;
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Off | State::Cut => break,
                State::Upgrading if self.verdicts.resume.swap(false, Ordering::AcqRel) => {
                    self.verdicts.after_upgrade.store(NONE, Ordering::Release);
                    self.state = State::Head;
                }
                State::Upgrading => {
                    let unread = (bytes.len() - at) as u64;
                    self.verdicts
                        .after_upgrade
                        .fetch_add(unread, Ordering::AcqRel);
                    break;
                }
                State::Refused => return edited(released, from, from, false),
                State::Head if !self.head.is_empty() => {
                    // The rest of a held head (always at the start of a read).
                    let searched = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(bytes);
                    let Some(end) = head_end(&self.head, searched) else {
                        if let Some(why) = self.refusal_of_part() {
                            let refused = Refused::new(why, &self.head);
                            return self.refuse(refused, released, from, 0);
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
                            let why = too_large(&rest[..end], self.max_head);
                            let refused = Refused::new(why, &rest[..end]);
                            return self.refuse(refused, released, from, at);
                        }
                        Some(end) => match self.judge(&rest[..end]) {
                            Verdict::Go => at += end,
                            Verdict::Refuse => return self.refuse_judged(released, from, at),
                        },
                        None => {
                            self.head.extend_from_slice(rest);
                            if let Some(why) = self.refusal_of_part() {
                                let refused = Refused::new(why, &self.head);
                                return self.refuse(refused, released, from, at);
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
            return Some(too_large(&self.head, self.max_head));
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
    fn refuse(&mut self, refused: Refused, released: Vec<u8>, from: usize, to: usize) -> Fed {
        let index = self.heads;
        self.heads += 1;
        self.verdicts.suspect(index, refused);
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
                self.verdicts.suspect(index, Refused::new(why, head));
                return Verdict::Refuse;
            }
            Judged::Upgrade => {
                self.verdicts.after_upgrade.store(0, Ordering::Release);
                self.state = State::Upgrading;
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
        let lf = at + memchr::memchr(b'\n', head.get(at..)?)?;
        match head.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
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
        // hyper reads on to the next CRLF CRLF, where a proxy in front that
        // takes a bare LF for a line end (RFC 9112 §2.2 lets it) sees the
        // body end, and the next request's head begin.
        (Chunk::EndCr | Chunk::Trailer, b'\n') => return State::Cut,
        (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
        (Chunk::EndLf, b'\n') => return State::Head,
        (Chunk::EndLf, _) => None,
        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
        (Chunk::TrailerLf, _) => None,
    };
    // A byte hyper's decoder refuses: it closes the connection itself.
    next.map_or(State::Off, State::Chunked)
}

/// Why a head longer than `max_head` is refused: its request line alone is
/// over the limit (414, as nginx answers), or its headers are (431).
fn too_large(head: &[u8], max_head: usize) -> Suspect {
    match memchr::memchr(b'\n', head) {
        Some(line_end) if line_end <= max_head => Suspect::TooLarge,
        _ => Suspect::TargetTooLong,
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

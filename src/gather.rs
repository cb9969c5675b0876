//! Gathered writes: a vectored write of a few small slices goes to the socket
//! as one plain write of their copy.
//!
//! hyper queues a response chunk as three slices (size line, data, CRLF) and
//! a head with its body as two, and writes them with `writev`. The kernel
//! pays for every slice of a `writev` (a copy call and its checks per slice),
//! and writes are most of what a fan-out costs: on this project's benchmark
//! machine a `writev` of three slices per event cost 15-25 % more than one
//! `send` of the same bytes (bench/README.md, the fan-out). Copying a few
//! hundred bytes into a buffer each thread keeps is cheaper, and hyper's
//! zero-copy queue still carries anything larger. [`Gathered`] does it for upstream
//! connections; client connections get it from [`crate::framing::Watched`].

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// Slices adding up to at most this many bytes are gathered.
const LIMIT: usize = 4096;

thread_local! {
    /// Where a thread joins its writes: kept from one write to the next, so
    /// joining neither allocates nor zeroes (a zeroed 4 KiB stack buffer per
    /// write cost more than the copy).
    static JOINED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LIMIT));
}

/// Hands `write` one slice holding all of `bufs` when they are several and
/// small together; `None` when they should be written as they are.
pub fn gathered<R>(bufs: &[IoSlice<'_>], write: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if bufs.len() < 2 {
        return None;
    }
    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
    if total > LIMIT {
        return None;
    }
    JOINED.with(|joined| {
        // Busy only if `write` itself gathered: then this write goes as it is.
        let mut joined = joined.try_borrow_mut().ok()?;
        joined.clear();
        for buf in bufs {
            joined.extend_from_slice(buf);
        }
        Some(write(&joined))
    })
}

/// An upstream connection whose small vectored writes are gathered.
pub struct Gathered<I> {
    inner: I,
}

impl<I> Gathered<I> {
    /// Wraps a connection.
    pub fn new(inner: I) -> Self {
        Self { inner }
    }
}

impl<I: Read + Unpin> Read for Gathered<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for Gathered<I> {
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
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().inner;
        gathered(bufs, |joined| Pin::new(&mut *inner).poll_write(cx, joined))
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

impl<I: Connection> Connection for Gathered<I> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_small_slices_are_joined_in_order() {
        let bufs = [
            IoSlice::new(b"1A\r\n"),
            IoSlice::new(b""),
            IoSlice::new(b"data: {}\n\n"),
            IoSlice::new(b"\r\n"),
        ];
        let joined = gathered(&bufs, <[u8]>::to_vec);
        assert_eq!(joined.as_deref(), Some(&b"1A\r\ndata: {}\n\n\r\n"[..]));
    }

    #[test]
    fn one_slice_or_too_many_bytes_are_left_alone() {
        let big = vec![b'x'; LIMIT];
        assert_eq!(gathered(&[IoSlice::new(b"one")], <[u8]>::len), None);
        assert_eq!(
            gathered(&[IoSlice::new(&big), IoSlice::new(b"!")], <[u8]>::len),
            None
        );
        // Exactly the limit still fits.
        let half = vec![b'y'; LIMIT / 2];
        let bufs = [IoSlice::new(&half), IoSlice::new(&half)];
        assert_eq!(gathered(&bufs, <[u8]>::len), Some(LIMIT));
    }

    #[test]
    fn writes_of_any_size_keep_every_byte() {
        // Larger, then smaller than the last: nothing of an earlier write stays.
        for total in [LIMIT, 600, 512, 20, LIMIT - 1] {
            let head: Vec<u8> = (0..7).collect();
            let tail: Vec<u8> = (0..total - head.len()).map(|i| (i % 251) as u8).collect();
            let joined = gathered(&[IoSlice::new(&head), IoSlice::new(&tail)], <[u8]>::to_vec);
            assert_eq!(joined, Some([head, tail].concat()), "{total} bytes");
        }
    }

    #[test]
    fn a_write_that_gathers_inside_a_gathered_write_goes_as_it_is() {
        let bufs = [IoSlice::new(b"a"), IoSlice::new(b"b")];
        let nested = gathered(&bufs, |outer| {
            (outer.to_vec(), gathered(&bufs, <[u8]>::to_vec))
        });
        assert_eq!(nested, Some((b"ab".to_vec(), None)));
    }
}

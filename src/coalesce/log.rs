//! A flight's chunk log: the body chunks in order, with a count of the
//! readers at each position, so that chunks everyone has read can be
//! released in O(1) per read. The flight keeps it behind its lock.

use std::collections::VecDeque;

use bytes::Bytes;

/// The chunk log with per-position reader counts, so that chunks everyone
/// has read can be released in O(1) per read.
pub(super) struct Log {
    chunks: VecDeque<Bytes>,
    /// Absolute index of `chunks[0]`; earlier chunks were released.
    first: usize,
    /// `readers[i]`: subscribers whose next chunk is `first + i`. One slot
    /// more than `chunks`, for the subscribers that are caught up.
    readers: VecDeque<usize>,
    /// Bytes ever appended.
    pub(super) bytes: u64,
    /// Bytes held now.
    pub(super) held: u64,
}

impl Default for Log {
    fn default() -> Self {
        // Room for a few chunks from the start: most answers that are not
        // streamed are one or two chunks, and growing from empty costs a
        // reallocation per flight.
        let mut readers = VecDeque::with_capacity(Self::START_CHUNKS + 1);
        readers.push_back(0);
        Self {
            chunks: VecDeque::with_capacity(Self::START_CHUNKS),
            first: 0,
            readers,
            bytes: 0,
            held: 0,
        }
    }
}

impl Log {
    const START_CHUNKS: usize = 4;
    /// Room an event stream's log takes at once: streamed answers run to
    /// tens or hundreds of events, and growing from [`Log::START_CHUNKS`]
    /// copies both queues at every doubling.
    const STREAM_CHUNKS: usize = 64;

    /// The body is an event stream: makes room for many chunks.
    pub(super) fn expect_stream(&mut self) {
        self.chunks.reserve(Self::STREAM_CHUNKS);
        self.readers.reserve(Self::STREAM_CHUNKS + 1);
    }

    pub(super) fn len(&self) -> usize {
        self.first + self.chunks.len()
    }

    pub(super) fn get(&self, index: usize) -> Option<&Bytes> {
        self.chunks.get(index.checked_sub(self.first)?)
    }

    pub(super) fn append(&mut self, chunk: Bytes) {
        self.bytes += chunk.len() as u64;
        self.held += chunk.len() as u64;
        self.chunks.push_back(chunk);
        self.readers.push_back(0);
    }

    /// A new reader at the first chunk (only while nothing was released).
    pub(super) fn enter(&mut self) -> usize {
        self.slot(self.first, 1);
        self.first
    }

    pub(super) fn advance(&mut self, from: usize) {
        self.slot(from, -1);
        self.slot(from + 1, 1);
    }

    pub(super) fn leave(&mut self, at: usize) {
        self.slot(at, -1);
    }

    fn slot(&mut self, index: usize, delta: isize) {
        // A reader is never behind `first`: chunks are released only once
        // no reader is at them.
        let slot = index.checked_sub(self.first);
        if let Some(count) = slot.and_then(|slot| self.readers.get_mut(slot)) {
            *count = count.saturating_add_signed(delta);
        }
    }

    pub(super) fn release(&mut self) -> u64 {
        let mut released = 0;
        while !self.chunks.is_empty() && self.readers.front() == Some(&0) {
            if let Some(chunk) = self.chunks.pop_front() {
                released += chunk.len() as u64;
            }
            self.readers.pop_front();
            self.first += 1;
        }
        self.held -= released;
        released
    }

    /// Drops the oldest chunks, read or not, until at most `keep` bytes are
    /// held; readers at the dropped chunks are left behind `first` (cut).
    /// Returns the bytes dropped.
    pub(super) fn cut(&mut self, keep: u64) -> u64 {
        let mut dropped = 0;
        while self.held - dropped > keep {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            dropped += chunk.len() as u64;
            self.readers.pop_front();
            self.first += 1;
        }
        self.held -= dropped;
        dropped
    }

    /// Whether a reader whose next chunk is `next` was cut by [`Log::cut`].
    pub(super) fn was_cut(&self, next: usize) -> bool {
        next < self.first
    }
}

//! A flight's chunk log: the body chunks in order, with a count of the
//! readers at each position, so that chunks everyone has read can be
//! released in O(1) per read. The flight keeps it behind its lock.

use std::collections::VecDeque;

use bytes::Bytes;

/// The chunks of one response body, and where its readers are.
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

    /// Releases the chunks no reader is at any more. Returns the bytes released.
    pub(super) fn release(&mut self) -> u64 {
        let mut released = 0;
        while self.readers.front() == Some(&0) {
            let Some(len) = self.drop_oldest() else { break };
            released += len;
        }
        released
    }

    /// Drops the chunks before the second slowest readers' place, leaving
    /// the slowest behind `first` (cut); nothing when every reader is at
    /// one place. Returns the bytes dropped.
    pub(super) fn cut_slowest(&mut self) -> u64 {
        let mut places = (0..self.readers.len()).filter(|&slot| self.readers[slot] > 0);
        let (Some(_), Some(next)) = (places.next(), places.next()) else {
            return 0;
        };
        (0..next).filter_map(|_| self.drop_oldest()).sum()
    }

    /// Drops the oldest chunk and its reader slot; its length, or None when
    /// no chunk is held.
    fn drop_oldest(&mut self) -> Option<u64> {
        let len = self.chunks.pop_front()?.len() as u64;
        self.readers.pop_front();
        self.first += 1;
        self.held -= len;
        Some(len)
    }

    /// The index of the oldest chunk held: readers before it were cut.
    pub(super) fn first(&self) -> usize {
        self.first
    }

    /// Whether a reader whose next chunk is `next` was cut by [`Log::cut_slowest`].
    pub(super) fn was_cut(&self, next: usize) -> bool {
        next < self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(chunks: &[&'static str]) -> Log {
        let mut log = Log::default();
        for chunk in chunks {
            log.append(Bytes::from_static(chunk.as_bytes()));
        }
        log
    }

    #[test]
    fn a_chunk_is_released_once_no_reader_is_at_it() {
        let mut log = log_of(&["ab", "cd", "ef"]);
        let (slow, fast) = (log.enter(), log.enter());
        assert_eq!((slow, fast, log.len()), (0, 0, 3));
        log.advance(fast);
        log.advance(fast + 1);
        assert_eq!(log.release(), 0, "the slow reader is still at chunk 0");
        log.advance(slow);
        assert_eq!(log.release(), 2, "chunk 0 is read by both");
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(1).map(|chunk| &chunk[..]), Some(&b"cd"[..]));
        log.leave(slow + 1);
        assert_eq!(log.release(), 2, "the slow reader left at chunk 1");
        assert_eq!((log.bytes, log.held, log.len()), (6, 2, 3));
    }

    #[test]
    fn a_cut_drops_the_chunks_only_the_slowest_readers_need() {
        let mut log = log_of(&["abc", "de", "f"]);
        let (slow, middle, fast) = (log.enter(), log.enter(), log.enter());
        log.advance(middle);
        log.advance(fast);
        log.advance(fast + 1);
        assert_eq!(
            log.cut_slowest(),
            3,
            "chunk 0, which only the slowest needs"
        );
        assert!(log.was_cut(slow));
        assert!(!log.was_cut(middle + 1));
        assert_eq!((log.bytes, log.held, log.len()), (6, 3, 3));
        log.leave(slow);
        log.leave(middle + 1);
        assert_eq!(log.cut_slowest(), 0, "the furthest readers are never cut");
    }
}

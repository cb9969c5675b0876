//! A flight: one upstream response shared by every identical request.
//!
//! The flight is an append-only log of body chunks (`log.rs`; each chunk a
//! `Bytes` that every reader shares) plus the response head and how the
//! stream ended. One writer, the pump, appends; any number of
//! [`Subscriber`]s read it, each with its own cursor, so a late joiner starts
//! at chunk 0 (replay) and a slow reader only ever delays itself.
//!
//! Subscribers count themselves in and out: when the count reaches zero the
//! pump is told, and cancels the upstream after `cancel_grace` unless someone
//! rejoined. A subscriber that took nothing for a whole `send_timeout` while
//! chunks waited for it is counted out too (stalled): its client stopped
//! reading without leaving, which over HTTP/2 only the stream itself shows.
//! An HTTP/1.1 subscriber is left to its socket's `TCP_USER_TIMEOUT`
//! ([`Subscriber::leave_stalls_to_its_socket`]).
//! Once a flight is closed to joiners (too many bytes, lingering over,
//! ended), chunks that every remaining subscriber has read are released.
//!
//! The pump reads ahead of the subscribers, but not without end: once even
//! the furthest subscriber is more than `max_replay_bytes` behind the log's
//! tail, the pump waits for one to catch up (a download larger than memory
//! streams at its fastest client's pace, as through nginx). No subscriber
//! waits for another; one behind the others is cut only when the gateway
//! runs short of buffer space (`shed`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::key::{self, Key};
use super::log::Log;
use crate::error::{BodyError, GatewayError};
use crate::headers;
use crate::metrics::RouteMetrics;

/// What every flight of a route shares: its limits and its metrics.
#[derive(Clone)]
pub struct Settings {
    /// Past this many bytes a flight takes no new joiners.
    pub max_replay_bytes: u64,
    /// A flight with this many subscribers takes no more.
    pub max_subscribers: usize,
    /// How long a flight that ended with a 2xx stays joinable.
    pub linger: Duration,
    /// The route's `key_headers`: a lingering answer may vary by them.
    pub key_headers: Vec<HeaderName>,
    /// How long the upstream survives with no subscriber.
    pub cancel_grace: Duration,
    /// `server.send_timeout`: a subscriber that takes nothing for this long,
    /// while chunks wait for it, is counted out.
    pub send_timeout: Duration,
    /// The route's series.
    pub metrics: RouteMetrics,
    /// Bytes held by all flight logs of the gateway (the global budget).
    pub buffered: Gauge,
}

/// The response head every subscriber gets.
#[derive(Debug, Clone)]
pub enum Head {
    /// The upstream answered: status and headers, already rewritten for clients.
    Response(Arc<ResponseHead>),
    /// The upstream was not reached, or not in time, or the flight ended first.
    Failed(GatewayError),
}

/// An upstream status and its headers, ready for clients.
#[derive(Debug)]
pub struct ResponseHead {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's reason phrase, where it was not the status's own.
    pub reason: Option<ReasonPhrase>,
    /// The upstream's headers after the downstream rewrite.
    pub headers: HeaderMap,
}

impl ResponseHead {
    /// Whether a clean end may answer later requests (`linger`): a 2xx, no
    /// `Set-Cookie`, and a `Vary` by nothing but what the key holds.
    /// Subscribers of the live flight asked at the same moment and share the
    /// cookie, as they share everything; a request after the end, maybe
    /// another browser's, must not get a session someone else was given (a
    /// shared cache does not store these either). An answer that varies by
    /// a header the key leaves out (`Accept-Language`, say) is kept by a
    /// cache for requests with the same value only, which the key cannot tell.
    fn lingers(&self, key_headers: &[HeaderName]) -> bool {
        self.status.is_success()
            && !self.headers.contains_key(SET_COOKIE)
            && self
                .headers
                .get_all(VARY)
                .iter()
                .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
                .map(<[u8]>::trim_ascii)
                .all(|name| name.is_empty() || in_the_key(name, key_headers))
    }
}

/// Whether requests that differ in the header `name` never share a key:
/// it is a key header, one always in the key (`Content-Type` among them),
/// or `Accept-Encoding` (a flight asks the upstream for identity whatever
/// the client accepts).
fn in_the_key(name: &[u8], key_headers: &[HeaderName]) -> bool {
    let named = |header: &HeaderName| name.eq_ignore_ascii_case(header.as_str().as_bytes());
    name.eq_ignore_ascii_case(b"accept-encoding")
        || name.eq_ignore_ascii_case(b"content-type")
        || key::CLIENT_BOUND_HEADERS.iter().any(named)
        || key_headers.iter().any(named)
}

/// How a flight's stream ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The upstream body ended cleanly.
    Complete,
    /// The stream stopped short; every subscriber ends abnormally.
    Broken(BodyError),
}

/// One upstream response, shared.
pub struct Flight {
    key: Key,
    settings: Arc<Settings>,
    /// Everything subscribers read. A std `Mutex`: it is held for a few
    /// instructions per chunk and never across an `.await`.
    state: Mutex<State>,
    /// Wakes the pump when the last subscriber leaves; `notify_one` keeps a
    /// permit, so a leave just before the pump starts waiting is not lost.
    deserted: Notify,
    /// Wakes the pump waiting for a subscriber to catch up (see `paced`).
    caught_up: Notify,
}

struct State {
    head: Option<Head>,
    log: Log,
    end: Option<End>,
    /// Whether an identical request may still join.
    joinable: bool,
    subscribers: usize,
    /// Subscribers that ever joined, for the flight's log line.
    joined: usize,
    /// When the subscriber count last dropped to zero (None while anyone is here).
    deserted_since: Option<Instant>,
    /// Subscribers waiting for the next change; drained on every change.
    waiters: Vec<Waker>,
    /// Counts the drains, so a subscriber registers its waker once per change.
    generation: u64,
    /// Each subscriber's place, for the stall check (`Subscriber::slot`).
    places: Vec<Place>,
    /// Slots of `places` free for the next subscriber.
    free: Vec<usize>,
    /// When the next stall check is due (None before the first).
    check_due: Option<Instant>,
    /// The log's length at the last stall check.
    checked_len: usize,
    /// Bytes taken by the subscriber furthest ahead (its departure leaves
    /// this as it was: a lead the others still have to read).
    front: u64,
    /// The pump waits for a subscriber to catch up.
    paced: bool,
}

/// Unread bytes at the end from which a flight watches its subscribers
/// for stalls until they have read it ([`Flight::watch_stalls`]).
const WATCHED_BYTES: u64 = 1 << 20;

/// The stall check reads the clock once every this many appended chunks.
const STALL_CHECK_CHUNKS: usize = 16;

/// The largest frame a subscriber hands its connection at once. A connection
/// asks for the next frame only when it has sent the last, so a chunk larger
/// than this goes out in parts: a client that reads slowly shows progress
/// at least every 16 KiB (HTTP/2's default frame), not once per chunk of up
/// to hundreds of KiB, and is never taken for a stalled one.
const MAX_FRAME: usize = 16 * 1024;

/// One subscriber's place in the log, as the stall check sees it.
#[derive(Clone, Copy)]
enum Place {
    /// The slot is free.
    Free,
    /// Reading: its next chunk, how many frames it has taken, and that count
    /// at the last check (`usize::MAX` before its first); and whether the
    /// stall check watches it (see [`Subscriber::leave_stalls_to_its_socket`]).
    Reading {
        next: usize,
        taken: usize,
        checked: usize,
        watched: bool,
    },
    /// Counted out for taking nothing for a whole `send_timeout`.
    Stalled,
    /// Counted out when the flight shed the chunks it had yet to read.
    Cut,
}

impl Flight {
    /// A new flight with its first subscriber, the leader.
    pub fn lead(key: Key, settings: Arc<Settings>) -> (Arc<Flight>, Subscriber) {
        let flight = Arc::new(Flight {
            key,
            settings,
            state: Mutex::new(State {
                head: None,
                log: Log::default(),
                end: None,
                joinable: true,
                subscribers: 0,
                joined: 0,
                deserted_since: None,
                waiters: Vec::new(),
                generation: 0,
                places: Vec::new(),
                free: Vec::new(),
                check_due: None,
                checked_len: 0,
                front: 0,
                paced: false,
            }),
            deserted: Notify::new(),
            caught_up: Notify::new(),
        });
        let leader = flight.subscribe(flight.state());
        (flight, leader)
    }

    /// Subscribes to this flight, or `None` when it takes no more joiners.
    pub fn join(self: &Arc<Self>) -> Option<Subscriber> {
        let state = self.state();
        if !state.joinable || state.subscribers >= self.settings.max_subscribers {
            return None;
        }
        Some(self.subscribe(state))
    }

    fn subscribe(self: &Arc<Self>, mut state: MutexGuard<'_, State>) -> Subscriber {
        state.subscribers += 1;
        state.joined += 1;
        state.deserted_since = None;
        let next = state.log.enter();
        let replay_until = state.log.len();
        let place = Place::Reading {
            next,
            taken: 0,
            checked: usize::MAX,
            watched: true,
        };
        let slot = match state.free.pop() {
            Some(slot) => {
                state.places[slot] = place;
                slot
            }
            None => {
                state.places.push(place);
                state.places.len() - 1
            }
        };
        drop(state);
        self.settings.metrics.subscribers_active.inc();
        Subscriber {
            flight: Arc::clone(self),
            slot,
            next,
            offset: 0,
            replay_until,
            registered: None,
            at_clean_end: false,
            taken_bytes: 0,
        }
    }

    /// The key this flight answers.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The route's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publishes the response head; `ended` when its body has ended already
    /// (none, or an empty one). Head and clean end are then published in one
    /// step: hyper never polls the body of a 204 or a 304, only asks it
    /// whether it ended when it drops it, and a subscriber that saw the head
    /// without the end would count as a client that reset its stream early.
    pub(crate) fn set_head(&self, head: ResponseHead, ended: bool) {
        let stream = headers::is_event_stream(&head.headers);
        let mut state = self.state();
        if stream {
            state.log.expect_stream();
        }
        state.head = Some(Head::Response(Arc::new(head)));
        if ended {
            self.end(&mut state, End::Complete);
        }
        self.wake(state);
    }

    /// Ends the flight before any head: every subscriber gets this error
    /// (and no body, so the recorded end is never read).
    pub(crate) fn fail(&self, error: GatewayError) {
        let mut state = self.state();
        if state.head.is_none() {
            state.head = Some(Head::Failed(error));
        }
        self.end(&mut state, End::Broken(BodyError::Cancelled));
        self.wake(state);
    }

    /// Appends a chunk; `last` ends the stream cleanly in the same step, so
    /// no request can join between the last byte and the end. Returns
    /// whether the pump is to wait for a subscriber before reading on
    /// (`Flight::caught_up`): even the furthest is more than
    /// `max_replay_bytes` behind.
    ///
    /// Only the flight's pump appends; public so that benchmarks can drive a
    /// flight without an upstream.
    pub fn append(&self, chunk: Bytes, last: bool) -> bool {
        let len = chunk.len() as u64;
        let mut state = self.state();
        state.log.append(chunk);
        // Closed to joiners now: a deserted flight can no longer be rejoined
        // within `cancel_grace`, and its pump is told (see `deserted`).
        let closed = state.joinable && state.log.bytes > self.settings.max_replay_bytes;
        if closed {
            state.joinable = false;
        }
        if last {
            self.end(&mut state, End::Complete);
        }
        let paced = !last && state.log.bytes - state.front > self.settings.max_replay_bytes;
        state.paced = paced;
        self.settings.buffered.inc_by(len as i64);
        // The clock is read every few chunks only (23 ns here, a fifth of a
        // lone subscriber's whole cost per chunk): a stall is counted a
        // `send_timeout` or two after it began, a few chunks make no odds.
        let deserted = state.log.len().is_multiple_of(STALL_CHECK_CHUNKS) && {
            let now = Instant::now();
            state.check_due.is_none_or(|due| now >= due) && self.count_out_stalled(&mut state, now)
        };
        let released = state.release();
        self.wake(state);
        self.settings.buffered.dec_by(released as i64);
        if deserted || closed {
            self.deserted.notify_one();
        }
        paced
    }

    /// Waits, for the pump, until a subscriber has come within half of
    /// `max_replay_bytes` of the tail (true), or for `send_timeout` (false),
    /// after which subscribers that took nothing meanwhile are counted out:
    /// with the pump waiting, no append runs the stall check.
    pub(crate) async fn caught_up(&self) -> bool {
        let send_timeout = self.settings.send_timeout;
        if tokio::time::timeout(send_timeout, self.caught_up.notified())
            .await
            .is_ok()
        {
            return !self.state().paced;
        }
        self.check_stalled();
        false
    }

    /// Runs the stall check now; true while some subscriber still has
    /// chunks to read.
    fn check_stalled(&self) -> bool {
        let mut state = self.state();
        let deserted = self.count_out_stalled(&mut state, Instant::now());
        let released = state.release();
        let behind = state.places.iter().any(|place| {
            matches!(place, Place::Reading { next, watched: true, .. } if *next < state.log.len())
        });
        // Those counted out had chunks to read: none waits for a wake-up.
        drop(state);
        self.settings.buffered.dec_by(released as i64);
        if deserted {
            self.deserted.notify_one();
        }
        behind
    }

    /// Whether the flight, ended, is to be watched for stalls
    /// ([`Flight::watch_stalls`]): [`WATCHED_BYTES`] or more are left to
    /// read. Most answers end with a chunk or two on their way out, and a
    /// timer each would cost more than they hold.
    pub(crate) fn watched(&self) -> bool {
        self.state().log.held >= WATCHED_BYTES
    }

    /// After the end of a large answer, while subscribers still read it:
    /// counts out those that take nothing for a `send_timeout` (no append
    /// runs the stall check any more), so that a stream whose client keeps
    /// its window shut does not hold the answer for as long as its
    /// connection lasts. Each check comes a `send_timeout` after the last
    /// (an append may have made one just before the end).
    pub(crate) async fn watch_stalls(&self) {
        loop {
            tokio::time::sleep(self.settings.send_timeout).await;
            if !self.check_stalled() {
                return;
            }
        }
    }

    /// The stall check, every `send_timeout` while chunks arrive (the first
    /// only notes where everyone is): counts out the subscribers that were
    /// at the same chunk at the last check, with chunks waiting for them
    /// already then. Returns whether that left the flight deserted.
    fn count_out_stalled(&self, state: &mut State, now: Instant) -> bool {
        let waiting = state.checked_len;
        let mut stalled = 0;
        for place in &mut state.places {
            if let Place::Reading {
                next,
                taken,
                checked,
                watched: true,
            } = place
            {
                if *taken == *checked && *next < waiting {
                    state.log.leave(*next);
                    *place = Place::Stalled;
                    stalled += 1;
                } else {
                    *checked = *taken;
                }
            }
        }
        state.checked_len = state.log.len();
        state.check_due = Some(now + self.settings.send_timeout);
        if stalled == 0 {
            return false;
        }
        tracing::debug!(
            key = %self.key.short(),
            stalled,
            "subscribers took nothing for send_timeout: counted out"
        );
        self.count_out(state, stalled, now)
    }

    /// Takes `count` subscribers the flight counted out off its count; true
    /// when nobody is left, the flight deserted from `now`.
    fn count_out(&self, state: &mut State, count: usize, now: Instant) -> bool {
        state.subscribers -= count;
        self.settings
            .metrics
            .subscribers_active
            .dec_by(count as i64);
        let deserted = count > 0 && state.subscribers == 0;
        if deserted {
            state.deserted_since = Some(now);
        }
        deserted
    }

    /// Ends the stream. A clean end of a 2xx stays joinable when the route
    /// lingers, unless it sets a cookie; anything else closes the flight to
    /// joiners.
    ///
    /// Only the flight's pump ends it; public so that benchmarks can drive a
    /// flight without an upstream.
    pub fn finish(&self, end: End) {
        let mut state = self.state();
        self.end(&mut state, end);
        let released = state.release();
        self.wake(state);
        self.settings.buffered.dec_by(released as i64);
    }

    fn end(&self, state: &mut State, end: End) {
        if state.end.is_some() {
            return;
        }
        let lingers = matches!(end, End::Complete)
            && !self.settings.linger.is_zero()
            && matches!(&state.head, Some(Head::Response(head)) if head.lingers(&self.settings.key_headers));
        state.joinable &= lingers;
        if state.head.is_none() {
            let error = match &end {
                End::Broken(error) => error.clone(),
                End::Complete => BodyError::FlightAborted,
            };
            state.head = Some(Head::Failed(GatewayError::Interrupted(error)));
        }
        state.end = Some(end);
    }

    /// Whether the flight ended cleanly and is answering joiners from its log.
    pub fn lingering(&self) -> bool {
        let state = self.state();
        state.joinable && matches!(state.end, Some(End::Complete))
    }

    /// The gateway holds more than `max_buffered_bytes`: the flight takes no
    /// more joiners and keeps only what its subscribers have not read; and
    /// when its slowest subscribers are more than `max_replay_bytes` behind
    /// the furthest, they are cut (their bodies end abnormally with
    /// [`BodyError::Lagged`]), one place at a time while the gateway stays
    /// over. The furthest are never cut: the flight waits for them instead
    /// (see [`Flight::append`]).
    ///
    /// A cut subscriber is counted out at once, not when its body is next
    /// polled: a client that reads nothing is never polled, and the
    /// upstream would be read for it (and paid for) until `send_timeout`.
    pub(crate) fn shed(&self) {
        let mut state = self.state();
        state.joinable = false;
        let mut released = state.release();
        // Released up to the slowest: what is held is what they have to read.
        let ahead_of_slowest = state.log.held - (state.log.bytes - state.front).min(state.log.held);
        if ahead_of_slowest > self.settings.max_replay_bytes {
            released += state.log.cut_slowest();
        }
        let first = state.log.first();
        let mut counted_out = 0;
        for place in &mut state.places {
            if matches!(place, Place::Reading { next, .. } if *next < first) {
                *place = Place::Cut;
                counted_out += 1;
            }
        }
        let deserted = self.count_out(&mut state, counted_out, Instant::now());
        // Cut subscribers waiting for a wake-up learn of it now.
        self.wake(state);
        self.settings.buffered.dec_by(released as i64);
        if deserted {
            self.deserted.notify_one();
        }
    }

    /// Takes no more joiners (the linger is over).
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.joinable = false;
        let released = state.release();
        drop(state);
        self.settings.buffered.dec_by(released as i64);
    }

    /// Resolves once nobody has been subscribed for `grace`, or at once
    /// when nobody is and nobody could join (past `max_replay_bytes`: a
    /// grace would pay for tokens no one can read); the flight is then
    /// closed to joiners, and the caller cancels the upstream.
    pub(crate) async fn deserted(&self, grace: Duration) {
        loop {
            let (since, joinable) = {
                let state = self.state();
                (state.deserted_since, state.joinable)
            };
            match since {
                None => self.deserted.notified().await,
                Some(since) => {
                    // No grace: no timer either (its tick would add a millisecond).
                    if !grace.is_zero() && joinable {
                        tokio::select! {
                            () = tokio::time::sleep_until(since + grace) => {}
                            // Closed to joiners meanwhile, maybe: look again.
                            () = self.deserted.notified() => continue,
                        }
                    }
                    let mut state = self.state();
                    // Nobody rejoined (or left again later) in the meantime.
                    if state.deserted_since == Some(since) {
                        state.joinable = false;
                        return;
                    }
                }
            }
        }
    }

    /// What the flight's log line reports: subscribers that joined, bytes.
    pub(crate) fn tally(&self) -> (usize, u64) {
        let state = self.state();
        (state.joined, state.log.bytes)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one did, the state is
        // still consistent enough to end every subscriber.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes everyone who waits for a change, after unlocking.
    fn wake(&self, mut state: MutexGuard<'_, State>) {
        // The same subscribers will wait again: size the next list for them.
        let room = state.waiters.len();
        let waiters = std::mem::replace(&mut state.waiters, Vec::with_capacity(room));
        state.generation += 1;
        drop(state);
        for waker in waiters {
            waker.wake();
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let held = self.state().log.held;
        self.settings.buffered.dec_by(held as i64);
    }
}

impl State {
    /// Releases chunks every subscriber has read, once nobody can join to
    /// replay them. Returns the bytes released.
    fn release(&mut self) -> u64 {
        if self.joinable { 0 } else { self.log.release() }
    }

    /// Whether a reader whose next chunk is `next` has read everything of a
    /// stream that ended cleanly.
    fn read_to_clean_end(&self, next: usize) -> bool {
        next >= self.log.len() && matches!(self.end, Some(End::Complete))
    }

    /// Registers `waker` for the next change, once per change.
    fn wait(&mut self, registered: &mut Option<(u64, Waker)>, waker: &Waker) {
        if let Some((generation, known)) = registered
            && *generation == self.generation
            && known.will_wake(waker)
        {
            return;
        }
        self.waiters.push(waker.clone());
        *registered = Some((self.generation, waker.clone()));
    }
}

/// One client's view of a flight: an `http_body::Body` that walks the log
/// from the first chunk, then follows the live tail.
pub struct Subscriber {
    flight: Arc<Flight>,
    /// This subscriber's place in `State::places`.
    slot: usize,
    /// Absolute index of the next chunk to hand out.
    next: usize,
    /// How much of that chunk was handed out already (see [`MAX_FRAME`]).
    offset: usize,
    /// Chunks below this index were in the log when this subscriber joined.
    replay_until: usize,
    /// The change generation and waker last registered, to register once.
    registered: Option<(u64, Waker)>,
    /// Whether the last look at the log found it read to a clean end. Kept
    /// here so that `is_end_stream`, asked after every frame, takes no lock;
    /// a stale `false` only costs one more poll.
    at_clean_end: bool,
    /// Bytes handed out so far.
    taken_bytes: u64,
}

impl Subscriber {
    /// Waits for the response head (or the reason there is none).
    pub async fn head(&mut self) -> Head {
        std::future::poll_fn(|cx| {
            let mut state = self.flight.state();
            match &state.head {
                Some(head) => {
                    self.at_clean_end = state.read_to_clean_end(self.next);
                    Poll::Ready(head.clone())
                }
                None => {
                    state.wait(&mut self.registered, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The flight this subscriber reads.
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Leaves this subscriber out of the flight's stall check: its client's
    /// socket carries this one stream (HTTP/1.1) and has `send_timeout` as
    /// its `TCP_USER_TIMEOUT`, so the kernel ends it once it takes nothing
    /// for that long, and sees what the flight cannot: each byte the client
    /// acknowledges. The flight sees what the socket takes, and a full
    /// socket takes more only once a third of its send buffer has drained:
    /// it would count out a client that reads steadily but slowly.
    pub fn leave_stalls_to_its_socket(&self) {
        if let Some(Place::Reading { watched, .. }) = self.flight.state().places.get_mut(self.slot)
        {
            *watched = false;
        }
    }
}

impl Body for Subscriber {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let flight = &*this.flight;
        let mut guard = flight.state();
        let state = &mut *guard;
        let stalled = || Poll::Ready(Some(Err(BodyError::Stalled(flight.settings.send_timeout))));
        // A subscriber counted out was behind: it always finds a chunk here,
        // or was cut. Polls that wait for the next chunk never look.
        if let Some(chunk) = state.log.get(this.next) {
            let Some(Place::Reading {
                next: place, taken, ..
            }) = state.places.get_mut(this.slot)
            else {
                return stalled();
            };
            *taken = taken.wrapping_add(1);
            let index = this.next;
            let end = chunk.len().min(this.offset + MAX_FRAME);
            let (frame, whole) = if this.offset == 0 && end == chunk.len() {
                (chunk.clone(), true)
            } else {
                (chunk.slice(this.offset..end), end == chunk.len())
            };
            this.taken_bytes += frame.len() as u64;
            let mut caught_up = false;
            if this.taken_bytes > state.front {
                state.front = this.taken_bytes;
                // Half way back, so that the pump reads a stretch at a time
                // rather than a chunk per chunk read.
                caught_up = state.paced
                    && state.log.bytes - state.front <= flight.settings.max_replay_bytes / 2;
                if caught_up {
                    state.paced = false;
                }
            }
            let mut released = 0;
            if whole {
                this.offset = 0;
                this.next += 1;
                *place = this.next;
                state.log.advance(index);
                this.at_clean_end = state.read_to_clean_end(this.next);
                released = state.release();
            } else {
                this.offset = end;
            }
            drop(guard);
            flight.settings.buffered.dec_by(released as i64);
            if caught_up {
                flight.caught_up.notify_one();
            }
            if index < this.replay_until {
                flight
                    .settings
                    .metrics
                    .replayed_bytes
                    .inc_by(frame.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if state.log.was_cut(this.next) {
            if let Some(Place::Stalled) = state.places.get(this.slot) {
                return stalled();
            }
            return Poll::Ready(Some(Err(BodyError::Lagged)));
        }
        match &state.end {
            // Caught up with a clean end.
            Some(End::Complete) => Poll::Ready(None),
            // Caught up with a broken stream: end abnormally, like the upstream.
            Some(End::Broken(error)) => Poll::Ready(Some(Err(error.clone()))),
            // Caught up with a live stream: wait for the pump.
            None => {
                state.wait(&mut this.registered, cx.waker());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.at_clean_end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let flight = &*self.flight;
        let mut state = flight.state();
        let place = if self.slot + 1 == state.places.len() {
            // The newest place (a flight's only one, most often): no free list.
            state.places.pop()
        } else {
            state.free.push(self.slot);
            state
                .places
                .get_mut(self.slot)
                .map(|place| std::mem::replace(place, Place::Free))
        };
        if matches!(place, Some(Place::Stalled | Place::Cut)) {
            // Counted out already.
            return;
        }
        state.log.leave(self.next);
        state.subscribers -= 1;
        let deserted = state.subscribers == 0;
        if deserted {
            state.deserted_since = Some(Instant::now());
        }
        let released = state.release();
        drop(state);
        flight.settings.buffered.dec_by(released as i64);
        flight.settings.metrics.subscribers_active.dec();
        if deserted {
            flight.deserted.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "flight_tests.rs"]
mod tests;

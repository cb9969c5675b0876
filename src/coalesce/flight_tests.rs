//! Tests of the flight alone: seeded random interleavings of joins, leaves,
//! slow reads and upstream ends, checked against the flight's invariants.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastrand::Rng;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::coalesce::key::KeyInput;
use crate::metrics::Metrics;

fn key() -> Key {
    Key::compute(&KeyInput {
        route: "test",
        method: &Method::POST,
        path_and_query: "/",
        authority: None,
        headers: &HeaderMap::new(),
        key_headers: &[],
        json_ignore_fields: &[],
        body: b"{}",
    })
}

fn settings(metrics: &Metrics, max_replay_bytes: u64, max_subscribers: usize) -> Arc<Settings> {
    Arc::new(Settings {
        max_replay_bytes,
        max_subscribers,
        linger: Duration::ZERO,
        key_headers: Vec::new(),
        cancel_grace: Duration::ZERO,
        send_timeout: Duration::from_secs(60),
        metrics: metrics.route("test"),
        buffered: metrics.buffered_bytes.clone(),
    })
}

fn ok_head() -> ResponseHead {
    ResponseHead {
        status: StatusCode::OK,
        reason: None,
        headers: HeaderMap::new(),
    }
}

/// How a reader behaves.
#[derive(Clone, Copy)]
enum Pace {
    /// Reads everything as fast as it can.
    Eager,
    /// Yields a few times between frames.
    Slow,
    /// Leaves after this many frames.
    LeavesAfter(usize),
    /// Reads nothing until the writer is done, then everything.
    Stalled,
}

/// What a reader saw: its bytes, and whether it saw the end (clean or not).
struct Seen {
    bytes: Vec<u8>,
    end: Option<Result<(), ()>>,
}

async fn read(
    mut subscriber: Subscriber,
    pace: Pace,
    seed: u64,
    writer_done: CancellationToken,
) -> Seen {
    // Seeded, so a failing seed can be replayed.
    let mut rng = Rng::with_seed(seed);
    let mut seen = Seen {
        bytes: Vec::new(),
        end: None,
    };
    if matches!(pace, Pace::Stalled) {
        writer_done.cancelled().await;
    }
    let mut frames = 0;
    loop {
        if let Pace::LeavesAfter(limit) = pace
            && frames >= limit
        {
            return seen;
        }
        match subscriber.frame().await {
            Some(Ok(frame)) => {
                seen.bytes
                    .extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
                frames += 1;
            }
            Some(Err(_)) => {
                seen.end = Some(Err(()));
                return seen;
            }
            None => {
                seen.end = Some(Ok(()));
                return seen;
            }
        }
        if matches!(pace, Pace::Slow) {
            for _ in 0..rng.u64(..4) {
                tokio::task::yield_now().await;
            }
        }
    }
}

fn pace(rng: &mut Rng) -> Pace {
    match rng.u64(..4) {
        0 => Pace::Eager,
        1 => Pace::Slow,
        2 => Pace::LeavesAfter(rng.u64(..6) as usize),
        _ => Pace::Stalled,
    }
}

/// `exact`: the test runs on one thread, so nothing changes between reading
/// the subscriber count and joining.
async fn scenario(seed: u64, exact: bool) {
    let mut rng = Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let metrics = Metrics::new();
    let max_replay = 1 + rng.u64(..3000);
    let max_subscribers = 1 + rng.u64(..6) as usize;
    let (flight, leader) = Flight::lead(key(), settings(&metrics, max_replay, max_subscribers));
    let writer_done = CancellationToken::new();
    let mut readers = vec![tokio::spawn(read(
        leader,
        pace(&mut rng),
        rng.u64(..),
        writer_done.clone(),
    ))];

    flight.set_head(ok_head(), false);
    // Mostly small chunks; a few larger than a frame, read in parts.
    let chunks: Vec<Bytes> = (0..rng.u64(..25))
        .map(|i| {
            let len = match rng.u8(..100) {
                0..10 => 1 + rng.usize(..3 * MAX_FRAME),
                _ => 1 + rng.usize(..300),
            };
            // Every byte tells its place, so a part out of order shows.
            (0..len)
                .map(|j| ((i as usize * 31 + j) % 251) as u8)
                .collect()
        })
        .collect();
    let broken = rng.u8(..100) < 30;
    let mut appended = 0u64;
    for (index, chunk) in chunks.iter().enumerate() {
        if rng.u8(..100) < 40 {
            let subscribers = metrics.route("test").subscribers_active.get() as usize;
            let joined = flight.join();
            // Joinable exactly while the log is small enough and there is room.
            if exact {
                let expected = appended <= max_replay && subscribers < max_subscribers;
                assert_eq!(
                    joined.is_some(),
                    expected,
                    "seed {seed}: join at {appended} bytes"
                );
            } else if appended > max_replay {
                assert!(
                    joined.is_none(),
                    "seed {seed}: joined past max_replay_bytes"
                );
            }
            if let Some(subscriber) = joined {
                readers.push(tokio::spawn(read(
                    subscriber,
                    pace(&mut rng),
                    rng.u64(..),
                    writer_done.clone(),
                )));
            }
        }
        let last = !broken && index + 1 == chunks.len();
        flight.append(chunk.clone(), last);
        appended += chunk.len() as u64;
        for _ in 0..rng.u64(..3) {
            tokio::task::yield_now().await;
        }
    }
    if broken {
        flight.finish(End::Broken(BodyError::UpstreamIdle(Duration::from_secs(1))));
    } else if chunks.is_empty() {
        flight.finish(End::Complete);
    }
    assert!(
        flight.join().is_none(),
        "seed {seed}: an ended flight takes no joiners"
    );
    writer_done.cancel();

    let whole: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| chunk.iter().copied())
        .collect();
    for reader in readers {
        let seen = reader.await.expect("reader panicked");
        // Never a missed, duplicated or reordered byte: always a prefix from byte 0.
        assert!(
            whole.starts_with(&seen.bytes),
            "seed {seed}: bytes out of order"
        );
        match seen.end {
            Some(Ok(())) => {
                assert!(!broken, "seed {seed}: a clean end on a broken stream");
                assert_eq!(
                    seen.bytes, whole,
                    "seed {seed}: clean end before every byte"
                );
            }
            Some(Err(())) => {
                assert!(broken, "seed {seed}: an abnormal end on a clean stream");
                assert_eq!(seen.bytes, whole, "seed {seed}: error before every byte");
            }
            None => {} // left early
        }
    }
    assert_eq!(metrics.route("test").subscribers_active.get(), 0);
    drop(flight);
    assert_eq!(
        metrics.buffered_bytes.get(),
        0,
        "seed {seed}: bytes still held"
    );
}

#[tokio::test]
async fn random_interleavings_keep_every_byte_in_order() {
    for seed in 0..300 {
        scenario(seed, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_across_threads() {
    for seed in 1000..1100 {
        scenario(seed, false).await;
    }
}

#[tokio::test]
async fn chunks_read_by_everyone_are_released_once_closed() {
    let metrics = Metrics::new();
    let (flight, mut first) = Flight::lead(key(), settings(&metrics, 10, 10));
    let mut second = flight.join().unwrap();
    flight.set_head(ok_head(), false);
    flight.append(Bytes::from_static(b"0123456789"), false);
    flight.append(Bytes::from_static(b"abcdefghij"), false);
    // Past max_replay_bytes: closed, but nobody has read anything yet.
    assert!(flight.join().is_none());
    assert_eq!(metrics.buffered_bytes.get(), 20);

    first.frame().await.unwrap().unwrap();
    assert_eq!(
        metrics.buffered_bytes.get(),
        20,
        "the second reader still needs it"
    );
    second.frame().await.unwrap().unwrap();
    assert_eq!(metrics.buffered_bytes.get(), 10);
    drop(second);
    first.frame().await.unwrap().unwrap();
    assert_eq!(metrics.buffered_bytes.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn deserted_waits_out_the_grace_and_a_rejoin_resets_it() {
    let metrics = Metrics::new();
    let (flight, leader) = Flight::lead(key(), settings(&metrics, 1 << 20, 10));
    let deserted = flight.deserted(Duration::from_secs(5));
    tokio::pin!(deserted);

    drop(leader);
    // Within the grace, someone comes back.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut deserted)
            .await
            .is_err()
    );
    let back = flight.join().expect("rejoin within the grace");
    assert!(
        tokio::time::timeout(Duration::from_secs(30), &mut deserted)
            .await
            .is_err()
    );

    // They leave for good: the grace runs out, and nobody can join after.
    drop(back);
    tokio::time::timeout(Duration::from_secs(6), &mut deserted)
        .await
        .expect("deserted after the grace");
    assert!(flight.join().is_none());
}

#[tokio::test]
async fn a_head_that_never_comes_fails_every_waiting_subscriber() {
    let metrics = Metrics::new();
    let (flight, mut leader) = Flight::lead(key(), settings(&metrics, 1 << 20, 10));
    let mut follower = flight.join().unwrap();
    flight.fail(GatewayError::FirstByteTimeout(Duration::from_secs(1)));
    for subscriber in [&mut leader, &mut follower] {
        match subscriber.head().await {
            Head::Failed(error) => assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT),
            Head::Response(_) => panic!("a failed flight has no response head"),
        }
    }
}

#[tokio::test]
async fn shedding_keeps_what_readers_need_up_to_max_replay_bytes_and_cuts_the_rest() {
    let metrics = Metrics::new();
    let (flight, mut eager) = Flight::lead(key(), settings(&metrics, 10, 10));
    let mut stalled = flight.join().unwrap();
    flight.set_head(ok_head(), false);
    for chunk in [&b"0123456789"[..], b"abcdefghij", b"ABCDEFGHIJ"] {
        flight.append(Bytes::from_static(chunk), false);
        eager.frame().await.unwrap().unwrap();
    }
    assert_eq!(
        metrics.buffered_bytes.get(),
        30,
        "the stalled reader needs all"
    );

    // Over the gateway's budget: the stalled reader is 30 bytes behind, more
    // than the 10 kept; it is cut (and counted out before it is polled
    // again), and what the other read is released.
    let active = metrics.route("test").subscribers_active.clone();
    assert_eq!(active.get(), 2);
    flight.shed();
    assert!(flight.join().is_none());
    assert_eq!(metrics.buffered_bytes.get(), 0);
    assert_eq!(active.get(), 1);
    assert!(matches!(
        stalled.frame().await,
        Some(Err(BodyError::Lagged))
    ));
    // The reader that kept up goes on to the end.
    flight.append(Bytes::from_static(b"tail"), true);
    assert_eq!(
        eager.frame().await.unwrap().unwrap().into_data().unwrap(),
        "tail"
    );
    assert!(eager.frame().await.is_none());
    drop((eager, stalled));
    drop(flight);
    assert_eq!(metrics.buffered_bytes.get(), 0);
    assert_eq!(active.get(), 0);
}

/// Shedding never cuts a flight's furthest subscriber, even a lone one far
/// behind the tail (its flight waits for it instead), nor subscribers within
/// `max_replay_bytes` of the furthest; one further behind is cut, one place
/// at a time.
#[tokio::test]
async fn shedding_cuts_only_the_slowest_far_behind_the_furthest() {
    let metrics = Metrics::new();
    let (flight, mut alone) = Flight::lead(key(), settings(&metrics, 10, 10));
    flight.set_head(ok_head(), false);
    for chunk in [&b"0123456789"[..], b"abcdefghij"] {
        flight.append(Bytes::from_static(chunk), false);
    }
    flight.shed();
    let active = metrics.route("test").subscribers_active.clone();
    assert_eq!(active.get(), 1, "a lone subscriber was cut");
    assert_eq!(
        alone.frame().await.unwrap().unwrap().into_data().unwrap(),
        "0123456789"
    );
    drop(alone);

    let (flight, mut first) = Flight::lead(key(), settings(&metrics, 10, 10));
    let mut second = flight.join().unwrap();
    let mut last = flight.join().unwrap();
    flight.set_head(ok_head(), false);
    for chunk in [&b"0123456789"[..], b"abcdefghij", b"ABCDEFGHIJ"] {
        flight.append(Bytes::from_static(chunk), false);
        first.frame().await.unwrap().unwrap();
    }
    second.frame().await.unwrap().unwrap();
    second.frame().await.unwrap().unwrap();
    // `second` is 10 behind `first`, `last` 30: only `last` is cut.
    flight.shed();
    assert!(matches!(last.frame().await, Some(Err(BodyError::Lagged))));
    flight.shed();
    assert_eq!(
        second.frame().await.unwrap().unwrap().into_data().unwrap(),
        "ABCDEFGHIJ"
    );
    assert_eq!(active.get(), 2);
}

/// Settings whose `send_timeout` is one second.
fn impatient(metrics: &Metrics) -> Arc<Settings> {
    Arc::new(Settings {
        send_timeout: Duration::from_secs(1),
        ..(*settings(metrics, 1 << 20, 10)).clone()
    })
}

/// Appends `count` chunks 100 ms apart; `read` runs after each.
async fn trickle(flight: &Flight, count: usize, mut read: impl AsyncFnMut(usize)) {
    for index in 0..count {
        flight.append(Bytes::from_static(b"x"), false);
        read(index).await;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_takes_nothing_for_send_timeout_is_counted_out() {
    let metrics = Metrics::new();
    let active = metrics.route("test").subscribers_active.clone();
    let (flight, mut stalled) = Flight::lead(key(), impatient(&metrics));
    let mut reader = flight.join().unwrap();
    flight.set_head(ok_head(), false);
    let deserted = flight.deserted(Duration::ZERO);
    tokio::pin!(deserted);

    // It reads nothing for 5 s while chunks wait; the other reads each.
    trickle(&flight, 50, async |_| {
        reader.frame().await.unwrap().unwrap();
    })
    .await;
    assert_eq!(active.get(), 1, "the stalled subscriber counted out");
    assert!(matches!(
        stalled.frame().await,
        Some(Err(BodyError::Stalled(_)))
    ));
    drop(stalled);
    assert_eq!(active.get(), 1, "counted out once");
    // The flight goes on for the reader, and is deserted when it leaves.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), &mut deserted)
            .await
            .is_err()
    );
    drop(reader);
    deserted.await;
    assert_eq!(active.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_left_to_its_socket_is_not_counted_out() {
    let metrics = Metrics::new();
    let active = metrics.route("test").subscribers_active.clone();
    let (flight, watched) = Flight::lead(key(), impatient(&metrics));
    let mut own_socket = flight.join().unwrap();
    own_socket.leave_stalls_to_its_socket();
    flight.set_head(ok_head(), false);

    // Neither reads for 5 s while chunks wait: only the watched one is
    // counted out, and the flight is not deserted.
    trickle(&flight, 50, async |_| {}).await;
    assert_eq!(active.get(), 1);
    assert!(
        tokio::time::timeout(Duration::ZERO, flight.deserted(Duration::ZERO))
            .await
            .is_err()
    );
    drop(watched);
    // It still reads every chunk.
    for _ in 0..50 {
        let frame = own_socket.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_subscriber_counted_out_deserts_the_flight() {
    let metrics = Metrics::new();
    let (flight, _stalled) = Flight::lead(key(), impatient(&metrics));
    flight.set_head(ok_head(), false);
    trickle(&flight, 50, async |_| {}).await;
    tokio::time::timeout(Duration::ZERO, flight.deserted(Duration::ZERO))
        .await
        .expect("deserted while the stalled subscriber is still held");
}

#[tokio::test(start_paused = true)]
async fn slow_readers_and_late_joiners_are_not_counted_out() {
    let metrics = Metrics::new();
    let active = metrics.route("test").subscribers_active.clone();
    let (flight, mut slow) = Flight::lead(key(), impatient(&metrics));
    flight.set_head(ok_head(), false);
    let mut late = None;
    // `slow` takes a chunk every 900 ms; `late` joins at 4 s with 40
    // chunks to replay and takes its first at 5.6 s, then one a second.
    trickle(&flight, 80, async |index| {
        if index % 9 == 0 {
            slow.frame().await.unwrap().unwrap();
        }
        if index == 40 {
            late = flight.join();
        }
        if index >= 56
            && (index - 56) % 10 == 0
            && let Some(late) = &mut late
        {
            late.frame().await.unwrap().unwrap();
        }
    })
    .await;
    assert_eq!(active.get(), 2);
    assert!(slow.frame().await.unwrap().is_ok());
    assert!(late.unwrap().frame().await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_large_chunk_goes_out_in_frames_and_its_slow_reader_is_not_counted_out() {
    let metrics = Metrics::new();
    let active = metrics.route("test").subscribers_active.clone();
    let (flight, mut slow) = Flight::lead(key(), impatient(&metrics));
    flight.set_head(ok_head(), false);
    let large: Bytes = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    flight.append(large.clone(), false);
    // `slow` takes a 16 KiB frame of the large chunk every 900 ms: it is at
    // the same chunk for more than two checks, and never counted out.
    let mut frames = Vec::new();
    trickle(&flight, 40, async |index| {
        if index % 9 == 0 && frames.len() < 4 {
            frames.push(slow.frame().await.unwrap().unwrap().into_data().unwrap());
        }
    })
    .await;
    assert_eq!(active.get(), 1, "a slow reader was counted out");
    assert_eq!(
        frames.iter().map(Bytes::len).collect::<Vec<_>>(),
        [MAX_FRAME; 4]
    );
    assert_eq!(frames.concat(), large);
    // The chunks after it come whole.
    assert_eq!(
        slow.frame().await.unwrap().unwrap().into_data().unwrap(),
        "x"
    );
}

#[tokio::test]
async fn a_head_with_no_body_is_published_with_its_clean_end() {
    let metrics = Metrics::new();
    let (flight, mut leader) = Flight::lead(key(), settings(&metrics, 1 << 20, 10));
    flight.set_head(ok_head(), true);
    assert!(matches!(leader.head().await, Head::Response(_)));
    // hyper drops the body of a 204 or a 304 unpolled: it must say it ended.
    assert!(leader.is_end_stream());
    assert!(leader.frame().await.is_none());
}

/// The pump waits once even the furthest subscriber is more than
/// `max_replay_bytes` behind, not because of a slower one, and goes on once
/// one has come within half of it.
#[tokio::test]
async fn the_pump_waits_for_the_furthest_subscriber_only() {
    let metrics = Metrics::new();
    let (flight, mut fast) = Flight::lead(key(), settings(&metrics, 100, 10));
    let slow = flight.join().expect("joinable");
    flight.set_head(ok_head(), false);
    let chunk = || Bytes::from_static(&[b'x'; 40]);
    // 120 bytes: both are more than 100 behind.
    assert!(!flight.append(chunk(), false));
    assert!(!flight.append(chunk(), false));
    assert!(flight.append(chunk(), false));
    // The fast one reads 40: 80 behind, more than half of 100.
    fast.frame().await.unwrap().unwrap();
    assert!(flight.state().paced);
    // 40 more: 40 behind; the pump is told.
    fast.frame().await.unwrap().unwrap();
    assert!(!flight.state().paced);
    assert!(flight.caught_up().await);
    // The slow one, 120 behind, does not hold the pump back.
    assert!(!flight.append(chunk(), false));
    drop(slow);
}

/// After the end of a large answer the flight still counts out a subscriber
/// that takes nothing (`watch_stalls`), but each check comes a
/// `send_timeout` after the last (the 16th append made one just before the
/// end): one that reads on meanwhile is kept to the end.
#[tokio::test(start_paused = true)]
async fn after_a_large_answer_a_reader_is_kept_and_a_stalled_one_counted_out() {
    let metrics = Metrics::new();
    let settings = Arc::new(Settings {
        send_timeout: Duration::from_secs(1),
        ..(*settings(&metrics, 64 << 20, 10)).clone()
    });
    let (flight, mut reader) = Flight::lead(key(), settings);
    let stalled = flight.join().unwrap();
    flight.set_head(ok_head(), false);
    for index in 0..16 {
        flight.append(Bytes::from(vec![b'x'; 128 << 10]), index == 15);
    }
    assert!(flight.watched());
    let watch = tokio::spawn({
        let flight = Arc::clone(&flight);
        async move { flight.watch_stalls().await }
    });
    // The watch looks first, then a 16 KiB frame every 100 ms: 12.8 s.
    tokio::task::yield_now().await;
    let mut bytes = 0;
    while let Some(frame) = reader.frame().await {
        let frame = frame.expect("the reader was counted out");
        bytes += frame.into_data().unwrap().len();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(bytes, 2 << 20);
    assert_eq!(metrics.route("test").subscribers_active.get(), 1);
    watch.await.unwrap();
    drop((reader, stalled));
}

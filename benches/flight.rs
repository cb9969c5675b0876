//! The flight alone, without sockets or a runtime: `Flight::lead` plus N-1
//! joiners (N = 1, 100, 10,000), then the pump's side (`append`) and every
//! subscriber's side (`poll_frame` until it has caught up and registered its
//! waker again), chunk after chunk, as in a live fan-out.
//!
//! Throughput is in chunk deliveries (chunks × subscribers). Subscribers are
//! polled with a no-op waker, so a wake-up costs what the flight spends on it
//! (taking and dropping the waiter list), not a scheduler's work.
//!
//! `cargo bench --bench flight`

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use chorus::coalesce::flight::{End, Flight, Settings, Subscriber};
use chorus::coalesce::key::{Key, KeyInput};
use chorus::metrics::Metrics;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use http_body::Body;
use prometheus_client::metrics::gauge::Gauge;

/// Chunks per stream: a short completion.
const CHUNKS: usize = 32;
/// Subscriber counts measured.
const FAN_OUT: [usize; 3] = [1, 100, 10_000];

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        max_replay_bytes: 8 << 20,
        max_subscribers: 10_000,
        linger: Duration::ZERO,
        key_headers: Vec::new(),
        cancel_grace: Duration::ZERO,
        send_timeout: Duration::from_secs(60),
        metrics: Metrics::new().route("bench"),
        buffered: Gauge::default(),
    })
}

fn key() -> Key {
    Key::compute(&KeyInput {
        route: "bench",
        method: &Method::POST,
        path_and_query: "/v1/chat/completions",
        authority: None,
        headers: &HeaderMap::new(),
        key_headers: &[],
        json_ignore_fields: &[],
        body: br#"{"stream":true}"#,
    })
}

/// One SSE event of a chat completion, as an upstream sends it.
fn chunk() -> Bytes {
    Bytes::from_static(
        br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{"content":"chorus "},"finish_reason":null}]}

"#,
    )
}

/// A flight with `n` subscribers, each caught up and waiting.
fn flight(n: usize) -> (Arc<Flight>, Vec<Subscriber>) {
    let (flight, leader) = Flight::lead(key(), settings());
    let mut subscribers = Vec::with_capacity(n);
    subscribers.push(leader);
    for _ in 1..n {
        subscribers.push(flight.join().expect("room for every subscriber"));
    }
    let mut cx = Context::from_waker(Waker::noop());
    for subscriber in &mut subscribers {
        assert!(Pin::new(subscriber).poll_frame(&mut cx).is_pending());
    }
    (flight, subscribers)
}

/// The pump appends every chunk; after each, every subscriber takes it and
/// polls once more (waiting again, or seeing the end).
fn stream(flight: &Flight, subscribers: &mut [Subscriber], chunk: &Bytes) {
    let mut cx = Context::from_waker(Waker::noop());
    for index in 0..CHUNKS {
        flight.append(chunk.clone(), index + 1 == CHUNKS);
        for subscriber in subscribers.iter_mut() {
            let mut subscriber = Pin::new(subscriber);
            match subscriber.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    black_box(frame);
                }
                other => panic!("expected a chunk, got {:?}", other.map(|_| ())),
            }
            black_box(subscriber.poll_frame(&mut cx).is_pending());
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let chunk = chunk();
    let mut group = c.benchmark_group("flight_fan_out");
    for n in FAN_OUT {
        group.throughput(Throughput::Elements((CHUNKS * n) as u64));
        if n >= 10_000 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || flight(n),
                |(flight, mut subscribers)| {
                    stream(&flight, &mut subscribers, &chunk);
                    // Dropped outside the measurement.
                    (flight, subscribers)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn join(c: &mut Criterion) {
    let mut group = c.benchmark_group("flight_join");
    for n in FAN_OUT {
        group.throughput(Throughput::Elements(n as u64));
        if n >= 10_000 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || (),
                |()| {
                    let (flight, leader) = Flight::lead(key(), settings());
                    let mut subscribers = Vec::with_capacity(n);
                    subscribers.push(leader);
                    for _ in 1..n {
                        subscribers.push(flight.join().expect("room"));
                    }
                    flight.finish(End::Complete);
                    (flight, subscribers)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out, join);
criterion_main!(benches);

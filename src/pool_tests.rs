//! Tests of the pool alone, against a small hyper upstream on loopback that
//! counts the connections it accepts and the ones that closed.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;

/// A dispatch nobody reads: these tests count on the upstream's side.
fn untracked() -> Dispatch<'static> {
    Dispatch::new(Box::leak(Box::default()), Box::leak(Box::default()))
}

/// No first-byte deadline to speak of: these tests bound their own waits.
fn unbounded() -> FirstByte {
    FirstByte::from_now(Duration::from_secs(3600))
}

/// Connections accepted and closed by the test upstream.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    changed: Notify,
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Counts {
    /// Drops every connection the upstream holds, as an upstream's own idle timeout would.
    fn close_all(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn wait_closed(&self, n: usize) {
        let closed = async {
            loop {
                let changed = self.changed.notified();
                if self.closed.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .unwrap_or_else(|_| panic!("{n} upstream connection(s) never closed"));
    }
}

/// A listener on an ephemeral loopback port, and its URL.
async fn listen() -> (TcpListener, Uri) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    (listener, target)
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/stream` sends one chunk and then nothing, for ever; anything else is a
/// short answer with a length, on a kept-alive connection.
async fn upstream() -> (Uri, Arc<Counts>) {
    let (listener, target) = listen().await;
    let counts = Arc::new(Counts::default());
    let server = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            server.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&server);
            let connection = tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body: TestBody = if request.uri().path() == "/stream" {
                        let first = futures::stream::once(async {
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: 1\n\n")))
                        });
                        BodyExt::boxed(StreamBody::new(first.chain(futures::stream::pending())))
                    } else {
                        BodyExt::boxed(Full::new(Bytes::from_static(b"hello")))
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counts.closed.fetch_add(1, Ordering::SeqCst);
                counts.changed.notify_waiters();
            });
            server
                .connections
                .lock()
                .unwrap()
                .push(connection.abort_handle());
        }
    });
    (target, counts)
}

fn pool(target: Uri) -> Arc<Pool> {
    let tls = crate::tls::client_config(None, None).unwrap();
    Arc::new(Pool::new(tls, target, Duration::from_secs(5)))
}

fn get(path: &str) -> Request<RequestBody> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// Sends a request and reads its body to the end, as a flight does, then
/// gives the connection back.
async fn fetch(pool: &Arc<Pool>, path: &str) -> Bytes {
    let (response, connection) = pool
        .send(get(path), &untracked(), unbounded())
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    pool.check_in(http1_of(connection));
    body
}

fn http1_of(held: Held) -> Http1 {
    match held {
        Held::Http1(connection) => connection,
        Held::Http2(_) => panic!("an HTTP/2 stream, not an HTTP/1.1 connection"),
    }
}

fn idle(pool: &Pool) -> usize {
    pool.lock().http1.len()
}

#[tokio::test]
async fn a_connection_is_reused_once_its_body_has_ended() {
    let (target, counts) = upstream().await;
    let pool = pool(target);
    for _ in 0..5 {
        assert_eq!(fetch(&pool, "/").await, "hello");
    }
    assert_eq!(
        counts.accepted(),
        1,
        "every request after the first reused it"
    );
    assert_eq!(idle(&pool), 1);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let (target, counts) = upstream().await;
    let pool = pool(target);
    let (response, connection) = pool
        .send(get("/stream"), &untracked(), unbounded())
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: 1\n\n");
    // What a cancelled flight does: the body and its connection go.
    drop((body, connection));
    counts.wait_closed(1).await;
    assert_eq!(idle(&pool), 0);
    assert_eq!(fetch(&pool, "/").await, "hello");
    assert_eq!(counts.accepted(), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_handed_out() {
    let (target, counts) = upstream().await;
    let pool = pool(target);
    assert_eq!(fetch(&pool, "/").await, "hello");
    counts.close_all();
    // The connection's task sees the close on its own; no request is needed.
    let closed = async {
        while !pool.lock().http1[0].0.sender.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the pool never saw the close");
    assert_eq!(fetch(&pool, "/").await, "hello");
    assert_eq!(counts.accepted(), 2);
    assert_eq!(idle(&pool), 1, "the closed connection was dropped");
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_for() {
    let (target, counts) = upstream().await;
    let pool = pool(target);
    assert_eq!(fetch(&pool, "/").await, "hello");
    assert_eq!(idle(&pool), 1);
    // Sweep by sweep, so that each one runs at its time.
    tokio::time::pause();
    for _ in 0..=IDLE_FOR.as_secs() / SWEEP_EVERY.as_secs() {
        tokio::time::advance(SWEEP_EVERY).await;
        tokio::task::yield_now().await;
    }
    tokio::time::resume();
    counts.wait_closed(1).await;
    assert_eq!(idle(&pool), 0);
    assert!(
        !pool.lock().sweeping,
        "the sweep stops once nothing is idle"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_naming_the_connect() {
    // Bound and dropped: nothing listens there.
    let (listener, target) = listen().await;
    drop(listener);
    let error = pool(target)
        .send(get("/"), &untracked(), unbounded())
        .await
        .err()
        .unwrap();
    assert_eq!(error.status(), 502);
    assert_eq!(error.kind(), "upstream_unreachable");
}

/// How the raw upstream ends the first connection at its second request.
#[derive(Clone, Copy)]
enum Ending {
    /// A reset (as when the upstream closes with the request unread), after a wait.
    Reset(Duration),
    /// A plain close (FIN), at once.
    Close,
    /// These bytes of an answer, then a plain close.
    Partly(&'static [u8]),
}

/// A raw upstream: answers every request `hello` on kept-alive connections,
/// except that the first connection, at its second request, ends as told
/// instead of answering. Counts connections and request heads read.
async fn closing_upstream(ending: Ending) -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (listener, target) = listen().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(AtomicUsize::new(0));
    let (connections, requests) = (Arc::clone(&accepted), Arc::clone(&heads));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for served in 0.. {
                    // Bodiless GETs: a head ends at the blank line.
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0; 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.clear();
                    requests.fetch_add(1, Ordering::SeqCst);
                    if first && served == 1 {
                        match ending {
                            Ending::Reset(after) => {
                                tokio::time::sleep(after).await;
                                stream.set_zero_linger().unwrap();
                            }
                            Ending::Close => {}
                            Ending::Partly(bytes) => {
                                let _ = stream.write_all(bytes).await;
                            }
                        }
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (target, accepted, heads)
}

#[tokio::test]
async fn a_request_whose_kept_connection_is_reset_under_it_goes_again_on_a_new_one() {
    for ending in [Ending::Reset(Duration::ZERO), Ending::Close] {
        let (target, accepted, heads) = closing_upstream(ending).await;
        let pool = pool(target);
        assert_eq!(fetch(&pool, "/").await, "hello");
        // Unused long enough for an upstream's keep-alive timeout to be at play.
        tokio::time::sleep(CLOSE_AFTER).await;
        assert_eq!(fetch(&pool, "/").await, "hello", "sent again, and answered");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "once more, on a new connection"
        );
        assert_eq!(heads.load(Ordering::SeqCst), 3);
    }
}

#[tokio::test]
async fn a_request_whose_kept_connection_fails_late_is_not_sent_again() {
    // Past CLOSE_RACE the upstream may have acted on the request: a second
    // one could be paid for twice.
    let (target, accepted, heads) = closing_upstream(Ending::Reset(CLOSE_RACE * 2)).await;
    let pool = pool(target);
    assert_eq!(fetch(&pool, "/").await, "hello");
    tokio::time::sleep(CLOSE_AFTER).await;
    let error = pool
        .send(get("/"), &untracked(), unbounded())
        .await
        .err()
        .unwrap();
    assert_eq!(error.status(), 502);
    assert_eq!(error.kind(), "upstream_failed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(heads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_whose_kept_connection_closes_after_part_of_an_answer_is_not_sent_again() {
    // A part of a head, or a `100 Continue`: the upstream read the request.
    for part in [
        &b"HTTP/1.1 200 OK\r\nx-par"[..],
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ] {
        let (target, accepted, heads) = closing_upstream(Ending::Partly(part)).await;
        let pool = pool(target);
        assert_eq!(fetch(&pool, "/").await, "hello");
        tokio::time::sleep(CLOSE_AFTER).await;
        let error = pool
            .send(get("/"), &untracked(), unbounded())
            .await
            .err()
            .unwrap();
        assert_eq!(error.status(), 502);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "sent again");
        assert_eq!(heads.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn a_request_on_a_new_connection_is_never_sent_again() {
    // Reset at the first request of the first connection: nothing was kept,
    // so the failure is the upstream's.
    let (listener, target) = listen().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let connections = Arc::clone(&accepted);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let _ = stream.read(&mut [0; 1024]).await;
            stream.set_zero_linger().unwrap();
        }
    });
    let error = pool(target)
        .send(get("/"), &untracked(), unbounded())
        .await
        .err()
        .unwrap();
    assert_eq!(error.status(), 502);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn at_most_max_idle_connections_are_kept() {
    let (target, counts) = upstream().await;
    let pool = pool(target);
    // All in flight at once: one connection each.
    let dispatch = untracked();
    let sent = futures::future::join_all(
        (0..=MAX_IDLE).map(|_| pool.send(get("/"), &dispatch, unbounded())),
    )
    .await;
    assert_eq!(counts.accepted(), MAX_IDLE + 1);
    for result in sent {
        let (response, connection) = result.unwrap();
        response.into_body().collect().await.unwrap();
        pool.check_in(http1_of(connection));
    }
    counts.wait_closed(1).await;
    assert_eq!(idle(&pool), MAX_IDLE);
}

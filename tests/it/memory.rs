//! Memory bounds across flights: `server.max_buffered_bytes` caps the bytes
//! all flight logs hold together. A flood of distinct large streams cannot
//! grow them past it, and requests that arrive past it are proxied one to one
//! (`bypass`) and still served in full.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const CHUNK: usize = 64 * 1024;
const MIB: u64 = 1 << 20;
const GAUGE: &str = "chorus_buffered_bytes";

/// An upstream that streams `chunks` chunks of 64 KiB, `pause` apart, as
/// SSE; the chunk bytes depend on the request body so streams differ.
async fn streaming(chunks: usize, pause: Duration) -> SocketAddr {
    streaming_after(Duration::ZERO, chunks, pause).await
}

/// [`streaming`], with the response head sent only after `delay`.
async fn streaming_after(delay: Duration, chunks: usize, pause: Duration) -> SocketAddr {
    let (_, open) = tokio::sync::watch::channel(true);
    streaming_held(delay, chunks, pause, open).await
}

/// [`streaming_after`], each stream ending only once `end` says true.
async fn streaming_held(
    delay: Duration,
    chunks: usize,
    pause: Duration,
    end: tokio::sync::watch::Receiver<bool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut end = end.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then a body of Content-Length bytes.
                let seed = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buf[..read]),
                    }
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n")
                        && request.len() > end + 4
                        && request.ends_with(b"}")
                    {
                        break request[end + 4..]
                            .iter()
                            .map(|&b| u32::from(b))
                            .sum::<u32>();
                    }
                };
                tokio::time::sleep(delay).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                for index in 0..chunks {
                    let byte = b'a' + ((seed as usize + index) % 26) as u8;
                    let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
                    chunk.extend(std::iter::repeat_n(byte, CHUNK - 2));
                    chunk.extend_from_slice(b"\n\n\r\n");
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
                let _ = end.wait_for(|end| *end).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

/// A gateway in front of `upstream` whose flights keep `max_replay_bytes`
/// and which holds `cap` bytes in all its flights.
async fn capped(upstream: SocketAddr, max_replay_bytes: u64, cap: u64) -> Gateway {
    Gateway::start(&server_extra(
        &one_route(
            &format!("http://{upstream}"),
            &format!("[routes.coalesce]\nmax_replay_bytes = {max_replay_bytes}"),
        ),
        &format!("max_buffered_bytes = {cap}"),
    ))
    .await
}

/// Samples the gauge every few milliseconds until `stop`; returns the peak.
fn sample_peak(gateway: &Gateway, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    let admin = gateway.admin;
    tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while !stop.load(Ordering::SeqCst) {
            let url = format!("http://{admin}/metrics");
            let response = get(&url).await;
            let text = text(response).await;
            peak = peak.max(metric_value(&text, GAUGE));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    })
}

fn request_body(index: usize) -> String {
    format!(r#"{{"model":"m","stream":true,"n":{index}}}"#)
}

async fn read_all(gateway: &Gateway, client: &HttpClient, index: usize) -> (String, usize) {
    let response = send(
        client,
        post(&gateway.url("/v1/chat/completions"), request_body(index)),
    )
    .await;
    assert_eq!(response.status(), 200);
    let role = header(&response, "x-chorus-role").to_owned();
    let bytes = body(response).await.expect("a stream was cut").len();
    (role, bytes)
}

/// Reads a stream's data, reports when all of it has arrived, then reads
/// to the end; returns the role and the bytes.
async fn read_reporting(
    gateway: &Gateway,
    client: &HttpClient,
    index: usize,
    expected: usize,
    arrived: &tokio::sync::Semaphore,
) -> (String, usize) {
    let request = post(&gateway.url("/v1/chat/completions"), request_body(index));
    let response = send(client, request).await;
    assert_eq!(response.status(), 200);
    let role = header(&response, "x-chorus-role").to_owned();
    let mut body = response.into_body();
    let mut bytes = 0;
    let mut reported = false;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("no frame in time")
    {
        let frame = frame.expect("a stream was cut");
        bytes += frame.data_ref().map_or(0, |data| data.len());
        if bytes == expected && !reported {
            arrived.add_permits(1);
            reported = true;
        }
    }
    (role, bytes)
}

#[tokio::test]
async fn a_flood_of_distinct_large_streams_stays_within_max_buffered_bytes() {
    const STREAMS: usize = 24;
    const CHUNKS: usize = 48; // 3 MiB a stream, 72 MiB in all
    const CAP: u64 = 4 * MIB;
    // Every stream sends all its data, then waits before its end: once
    // every client has read everything, the logs hold only what a flight
    // keeps for joiners that may still come.
    let (end, ends) = tokio::sync::watch::channel(false);
    let upstream = streaming_held(Duration::ZERO, CHUNKS, Duration::from_millis(2), ends).await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&format!("http://{upstream}"), ""),
        &format!("max_buffered_bytes = {CAP}"),
    ))
    .await;
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    let clients = [http1(), http2()];
    let streams = (0..STREAMS).map(|index| {
        let client = clients[index % 2].clone();
        let (gateway, arrived) = (&gateway, Arc::clone(&arrived));
        async move { read_reporting(gateway, &client, index, CHUNKS * CHUNK, &arrived).await }
    });
    let reading = futures::future::join_all(streams);
    let check = async {
        let all = tokio::time::timeout(PATIENCE, arrived.acquire_many(STREAMS as u32))
            .await
            .expect("the data never arrived");
        drop(all);
        let held = gateway.metric(GAUGE).await;
        end.send_replace(true);
        held
    };
    let (streams, held) = futures::join!(reading, check);
    for (role, bytes) in &streams {
        assert!(role == "leader" || role == "bypass", "{role}");
        assert_eq!(*bytes, CHUNKS * CHUNK);
    }
    // A flight keeps bytes for joiners only while the total is under the
    // cap: a chunk per flight at most above it (72 MiB without the cap).
    let bound = (CAP as usize + STREAMS * CHUNK) as f64;
    assert!(
        held <= bound,
        "flight logs held {:.1} MiB against a cap of {} MiB",
        held / MIB as f64,
        CAP / MIB
    );
    assert_eq!(gateway.wait_metric(GAUGE, |held| held == 0.0).await, 0.0);
    gateway.assert_idle().await;
}

/// A client that asks for a stream and then stops reading, with a receive
/// buffer of a few KiB so that the gateway keeps what it has not read.
/// Returns the connection and the body letters read with the head.
async fn stalled_client(gateway: &Gateway, index: usize) -> (TcpStream, usize) {
    let (stream, early, role) = stalled_at(gateway.addr, index).await;
    assert_eq!(role, "leader");
    (stream, early)
}

/// [`stalled_client`] as a follower of a flight another client leads.
async fn stalled_client_at(addr: SocketAddr, index: usize) -> (TcpStream, usize) {
    let (stream, early, role) = stalled_at(addr, index).await;
    assert_eq!(role, "follower");
    (stream, early)
}

async fn stalled_at(addr: SocketAddr, index: usize) -> (TcpStream, usize, String) {
    let mut stream = small_window_post(addr, &request_body(index)).await;
    let mut first = Vec::new();
    let end = loop {
        let mut buf = [0u8; 512];
        let read = stream.read(&mut buf).await.unwrap();
        assert_ne!(read, 0, "closed before the head");
        first.extend_from_slice(&buf[..read]);
        if let Some(end) = first.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&first[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let role = head
        .lines()
        .find_map(|line| line.strip_prefix("x-chorus-role: "))
        .unwrap_or("none")
        .to_owned();
    (stream, letters(&first[end + 4..]), role)
}

fn letters(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .filter(|&&byte| byte.is_ascii_lowercase())
        .count()
}

/// Reads the rest of a raw chunked response; (body bytes, ended cleanly).
async fn drain(stream: &mut TcpStream) -> (usize, bool) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => all.extend_from_slice(&buf[..read]),
            Err(_) => panic!("the stream neither went on nor ended"),
        }
        if all.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let clean = all.ends_with(b"\r\n0\r\n\r\n");
    (letters(&all), clean)
}

/// `max_buffered_bytes` is a limit the flights may reach: with exactly
/// that many bytes held, an identical request still joins (one byte more,
/// and the flight would have shed them).
#[tokio::test]
async fn max_buffered_bytes_turns_requests_away_only_past_it() {
    let (ending, end) = tokio::sync::watch::channel(false);
    let upstream = streaming_held(Duration::ZERO, 1, Duration::ZERO, end).await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&format!("http://{upstream}"), ""),
        &format!("max_buffered_bytes = {CHUNK}"),
    ))
    .await;
    let url = gateway.url("/v1/chat/completions");
    let first = send(&http1(), post(&url, request_body(0))).await;
    assert_eq!(header(&first, "x-chorus-role"), "leader");
    let held = gateway
        .wait_metric(GAUGE, |held| held == CHUNK as f64)
        .await;
    assert_eq!(held, CHUNK as f64);

    let second = send(&http1(), post(&url, request_body(0))).await;
    assert_eq!(header(&second, "x-chorus-role"), "follower");
    ending.send(true).unwrap();
    for response in [first, second] {
        assert_eq!(body(response).await.unwrap().len(), CHUNK);
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn past_max_buffered_bytes_requests_are_bypass_and_still_served() {
    const CHUNKS: usize = 384; // 24 MiB: more than socket buffers hold
    const CAP: u64 = 4 * MIB;
    let upstream = streaming(CHUNKS, Duration::ZERO).await;
    let gateway = capped(upstream, 64 * MIB, CAP).await;
    // The flight keeps every byte its stalled client has not read (it never
    // misses one): past the cap, once the socket buffers (4 MiB at most
    // here) are full and the rest of the 24 MiB has arrived.
    let (mut stalled, early) = stalled_client(&gateway, 0).await;
    let most = (CHUNKS * CHUNK / 2) as f64;
    let held = gateway.wait_metric(GAUGE, |held| held >= most).await;
    assert!(held >= most, "the stalled flight holds only {held} bytes");

    // Identical and distinct requests now go one to one, served in full.
    for index in [0, 1, 2] {
        let (role, bytes) = read_all(&gateway, &http1(), index).await;
        assert_eq!(
            (role.as_str(), bytes),
            ("bypass", CHUNKS * CHUNK),
            "request {index}"
        );
    }
    let bypass = r#"chorus_requests_total{route="llm",role="bypass"}"#;
    assert_eq!(gateway.metric(bypass).await, 3.0);

    // The stalled client still gets every byte once it reads.
    let (late, clean) = drain(&mut stalled).await;
    assert!(clean, "the stalled client's stream was cut");
    assert_eq!(early + late, CHUNKS * (CHUNK - 2));
    assert_eq!(gateway.wait_metric(GAUGE, |held| held == 0.0).await, 0.0);
    gateway.assert_idle().await;
}

/// Past the cap, a flight keeps at most `max_replay_bytes` that its
/// slowest subscriber has not read: a client further behind is cut, and the
/// others are not slowed.
#[tokio::test]
async fn past_max_buffered_bytes_a_client_far_behind_is_cut() {
    const CHUNKS: usize = 384; // 24 MiB
    const CAP: u64 = 2 * MIB;
    // 64 MiB/s: a reader on loopback keeps well within 1 MiB of it.
    let upstream =
        streaming_after(Duration::from_millis(500), CHUNKS, Duration::from_millis(1)).await;
    let gateway = capped(upstream, MIB, CAP).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(&gateway, Arc::clone(&stop));
    // A reader that keeps up, and a client that stalls, on one flight.
    let reader = {
        let client = http2();
        let request = post(&gateway.url("/v1/chat/completions"), request_body(7));
        tokio::spawn(async move { send(&client, request).await })
    };
    gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |n| n == 1.0)
        .await;
    let stalled = tokio::spawn({
        let gateway_addr = gateway.addr;
        async move { stalled_client_at(gateway_addr, 7).await }
    });
    let reader = reader.await.unwrap();
    assert_eq!(header(&reader, "x-chorus-role"), "leader");
    let bytes = body(reader).await.expect("the reader was cut").len();
    assert_eq!(bytes, CHUNKS * CHUNK);
    let (mut stalled, early) = stalled.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let peak = peak.await.unwrap();
    let (late, clean) = drain(&mut stalled).await;
    assert!(!clean, "the stalled client got a clean end");
    assert!(early + late < CHUNKS * (CHUNK - 2));
    // The cap, the one flight's allowance, and a chunk or two in flight.
    let bound = (CAP + MIB) as f64 + 4.0 * CHUNK as f64;
    assert!(peak <= bound, "held {:.1} MiB", peak / MIB as f64);
    assert_eq!(gateway.wait_metric(GAUGE, |held| held == 0.0).await, 0.0);
    gateway.assert_idle().await;
}

/// A coalesced answer far larger than the gateway's buffers reaches a
/// client slower than its upstream whole: once the client is
/// `max_replay_bytes` behind, the flight reads the upstream at the client's
/// pace instead of holding more (and, past `max_buffered_bytes`, cutting
/// it).
#[tokio::test]
async fn a_large_answer_streams_at_its_clients_pace() {
    const CHUNKS: usize = 256; // 16 MiB
    const CAP: u64 = 4 * MIB;
    let upstream = streaming(CHUNKS, Duration::ZERO).await;
    let gateway = capped(upstream, MIB, CAP).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(&gateway, Arc::clone(&stop));
    let mut client = small_window_post(gateway.addr, &request_body(0)).await;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    // 8 KiB a millisecond at most: far slower than the upstream on loopback.
    let mut since_pause = 0;
    while !all.ends_with(b"\r\n0\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, client.read(&mut buf))
            .await
            .expect("the stream stopped")
            .unwrap();
        assert_ne!(read, 0, "the stream was cut");
        all.extend_from_slice(&buf[..read]);
        since_pause += read;
        if since_pause >= 8 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let peak = peak.await.unwrap();
    assert_eq!(dechunked(&all).len(), CHUNKS * CHUNK);
    // The lead it may keep, a chunk past it, and chunks on their way out.
    let bound = (MIB as usize + 4 * CHUNK) as f64;
    assert!(peak <= bound, "held {:.1} MiB", peak / MIB as f64);
    assert_eq!(gateway.wait_metric(GAUGE, |held| held == 0.0).await, 0.0);
    gateway.assert_idle().await;
}

/// The body of a raw HTTP/1.1 answer in chunked coding.
fn dechunked(answer: &[u8]) -> Vec<u8> {
    let start = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut rest = &answer[start..];
    let mut body = Vec::new();
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[line + 2..line + 2 + size]);
        rest = &rest[line + 2 + size + 2..];
    }
}

/// An HTTP/2 client that keeps its stream's window shut is not polled by
/// the server: once the flight has ended, it is still counted out after a
/// `send_timeout` or two (no chunk arrives to run the stall check), and
/// the answer it held is released while its connection stays open.
#[tokio::test]
async fn a_shut_h2_stream_lets_go_of_an_ended_answer() {
    const CHUNKS: usize = 48; // 3 MiB: read whole before the client stalls
    let upstream = streaming(CHUNKS, Duration::ZERO).await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&format!("http://{upstream}"), ""),
        r#"send_timeout = "1s""#,
    ))
    .await;
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let (response, mut sending) = client.send_request(request, false).unwrap();
    sending.send_data(request_body(0).into(), true).unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    // The body is never read: its window (64 KiB) stays shut.
    let subscribers = r#"chorus_subscribers_active{route="llm"}"#;
    assert_eq!(gateway.wait_metric(subscribers, |n| n == 0.0).await, 0.0);
    assert_eq!(gateway.wait_metric(GAUGE, |held| held == 0.0).await, 0.0);
    assert!(!connection.is_finished(), "the connection was closed");
    drop(response);
}

/// A client that reads a large answer steadily but slowly over HTTP/1.1
/// keeps its stream: its socket, full, takes more from the gateway only
/// once a third of its send buffer has drained (seconds apart at this
/// pace), which the flight alone would read as taking nothing for
/// `send_timeout`; the kernel, which sees every byte acknowledged, is
/// left to judge it.
#[tokio::test]
async fn a_steady_slow_reader_of_a_large_answer_keeps_its_stream() {
    const CHUNKS: usize = 256; // 16 MiB, far more than the socket buffers hold
    let upstream = streaming(CHUNKS, Duration::ZERO).await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&format!("http://{upstream}"), ""),
        r#"send_timeout = "3s""#,
    ))
    .await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    write_chat_post(&mut client, &request_body(0)).await;

    // 8 KiB every 100 ms, for four times `send_timeout`.
    let started = tokio::time::Instant::now();
    let mut read = 0;
    let mut buf = vec![0u8; 8 * 1024];
    while started.elapsed() < Duration::from_secs(12) {
        let got = tokio::time::timeout(PATIENCE, client.read(&mut buf))
            .await
            .expect("the stream stopped")
            .unwrap();
        assert_ne!(got, 0, "the stream was cut after {read} bytes");
        read += got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscribers = r#"chorus_subscribers_active{route="llm"}"#;
    assert_eq!(gateway.metric(subscribers).await, 1.0);
    let cancelled = r#"chorus_upstream_cancelled_total{route="llm"}"#;
    assert_eq!(gateway.metric(cancelled).await, 0.0);
    assert!(read > 512 * 1024, "read {read} bytes");
    drop(client);
    gateway.assert_idle().await;
}

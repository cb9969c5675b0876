//! Helpers shared by the hostile tests (`hostile`, `h2_abuse`, `faults`,
//! `memory`, `redaction`): an upstream that records what reached it, raw
//! exchanges on a socket, and the check every hostile test ends with.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// One request as it reached a [`Recorder`].
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An upstream that answers `200 ok` to everything and keeps every request
/// it received, whole.
pub struct Recorder {
    pub upstream: TestUpstream,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        let upstream = TestUpstream::start(move |request: Request<hyper::body::Incoming>| {
            let record = Arc::clone(&record);
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                record.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        })
        .await;
        Self { upstream, seen }
    }

    pub fn url(&self) -> String {
        self.upstream.url()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.upstream.hits()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What a raw exchange came to.
#[derive(Debug)]
pub struct Exchange {
    /// Everything the gateway wrote before it closed.
    pub answer: String,
    /// Whether the gateway closed the connection within the wait.
    pub closed: bool,
}

impl Exchange {
    /// The status of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        self.answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }

    /// How many responses the gateway wrote (status lines: `HTTP/1.1 NNN `).
    pub fn responses(&self) -> usize {
        self.answer
            .match_indices("HTTP/1.1 ")
            .filter(|(at, _)| {
                let status = self.answer.as_bytes().get(at + 9..at + 13);
                status.is_some_and(|s| s[..3].iter().all(u8::is_ascii_digit) && s[3] == b' ')
            })
            .count()
    }
}

/// Writes `wire` on a new connection (the gateway may close before it is all
/// written) and reads until the gateway closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, wire: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = tokio::time::timeout(wait, stream.write_all(wire)).await;
    let (closed, answer) = read_to_close(&mut stream, Instant::now() + wait).await;
    Exchange {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed,
    }
}

/// The check after every hostile test: a normal request is still answered
/// correctly, and no flight or subscriber is left behind.
pub async fn still_serves(gateway: &Gateway) {
    let response = get(&gateway.url("/still-serving")).await;
    assert_eq!(response.status(), 200, "a normal request was not served");
    assert_eq!(text(response).await, "ok");
    gateway.assert_idle().await;
}

/// The same, behind the built-in mock: a short streamed completion arrives
/// whole, through a flight.
pub async fn still_streams(gateway: &Gateway) {
    let body = chat(
        "still streaming",
        serde_json::json!({"tokens": 3, "interval_ms": 1}),
    );
    let response = send(&http1(), post(&gateway.url("/v1/chat/completions"), body)).await;
    assert_eq!(response.status(), 200, "a normal request was not served");
    let body = text(response).await;
    assert_eq!(
        events(body.as_bytes()).last().map(String::as_str),
        Some("[DONE]")
    );
    gateway.assert_idle().await;
}

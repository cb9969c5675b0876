//! WebSocket tunnels in the soak: an upstream that accepts every handshake
//! and echoes bytes, and the scenarios that open tunnels through the
//! gateway's `/ws` route (over HTTP/1.1, and over HTTP/2 as RFC 8441 has
//! it) and end them each way a client does.

use std::time::Duration;

use bytes::Bytes;
use fastrand::Rng;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `listener` until the process ends: answers each handshake with a
/// `101` (and the accept for its key), then sends back every byte until the
/// gateway closes.
pub(crate) async fn echo_upstream(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(head) = read_head(&mut stream).await else {
                return;
            };
            let head = String::from_utf8_lossy(&head);
            let key = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then_some(value.trim())
                })
                .unwrap_or_default();
            let switched = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                 connection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                chorus::tunnel::accept_for(key)
            );
            if stream.write_all(switched.as_bytes()).await.is_err() {
                return;
            }
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }
}

/// Reads through the blank line that ends a message head; nothing is sent
/// after a handshake before its answer, so a buffered read takes no more.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err("closed before a whole head".into()),
            Ok(read) => head.extend_from_slice(&buf[..read]),
        }
        if head.len() > 64 * 1024 {
            return Err("head too long".into());
        }
    }
    Ok(head)
}

/// One tunnel through the gateway at `addr` over HTTP/1.1: the handshake,
/// then [`talk`].
pub(crate) async fn run(addr: &str, id: &str, rng: &mut Rng, silent: bool) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let handshake = format!(
        "GET /ws/{id} HTTP/1.1\r\nhost: soak\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    stream
        .write_all(handshake.as_bytes())
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let head = read_head(&mut stream).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!("answered {}", String::from_utf8_lossy(line)));
    }
    talk(stream, rng, silent).await
}

/// One tunnel through the gateway at `addr` over HTTP/2 (h2c): an extended
/// `CONNECT`, its `200`, then [`talk`] on the stream.
pub(crate) async fn run_h2(addr: &str, id: &str, rng: &mut Rng) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut client, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://soak/ws/{id}"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    request
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let response = client
        .send_request(request)
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let tunnel = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("no tunnel after the 200: {e}"))?;
    talk(TokioIo::new(tunnel), rng, false).await
}

/// A few round trips on an open tunnel, then a clean close (the upstream's
/// side must close too), the client vanishing, or (`silent`) nothing more
/// until the gateway closes it for `idle_timeout`.
async fn talk(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    rng: &mut Rng,
    silent: bool,
) -> Result<(), String> {
    for _ in 0..1 + rng.u64(..5) {
        let sent: Vec<u8> = (0..1 + rng.usize(..4096)).map(|_| rng.u8(..)).collect();
        stream
            .write_all(&sent)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut back = vec![0u8; sent.len()];
        stream
            .read_exact(&mut back)
            .await
            .map_err(|e| format!("echo: {e}"))?;
        if back != sent {
            return Err("the echo differs".into());
        }
    }
    if silent {
        // idle_timeout is 2 s: the gateway must close the tunnel well before 10 s.
        let mut rest = [0u8; 16];
        return match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest)).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(_)) => Err("bytes on a silent tunnel".into()),
            Ok(Err(_)) => Ok(()),
            Err(_) => Err("a silent tunnel stayed open past idle_timeout".into()),
        };
    }
    if rng.bool() {
        // Vanishes: the gateway must close the upstream side by itself.
        return Ok(());
    }
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) if rest.is_empty() => Ok(()),
        Ok(Ok(_)) => Err("bytes after the close".into()),
        Ok(Err(e)) => Err(format!("close: {e}")),
        Err(_) => Err("the upstream side did not close after the client's".into()),
    }
}

//! WebSocket tunnels in the soak: an upstream that accepts every handshake
//! and echoes bytes, and the scenarios that open tunnels through the
//! gateway's `/ws` route and end them each way a client does.

use std::time::Duration;

use fastrand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SWITCHED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
    connection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Serves `listener` until the process ends: answers each handshake with a
/// `101`, then sends back every byte until the gateway closes.
pub(crate) async fn echo_upstream(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            if read_head(&mut stream).await.is_err() || stream.write_all(SWITCHED).await.is_err() {
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

/// One tunnel through the gateway at `addr`: the handshake, a few round
/// trips, then a clean close (the upstream's side must close too), the
/// client vanishing, or (`silent`) nothing more until the gateway closes it
/// for `idle_timeout`.
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

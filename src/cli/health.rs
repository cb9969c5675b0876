//! `chorus health`: one GET to an admin endpoint, for container health
//! checks (a distroless image has no curl).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why `chorus health` could not get an answer.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("only plain http:// URLs with a host are supported")]
    Url,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("cannot build the request: {0}")]
    Request(http::Error),
    #[error("{0}")]
    Http(hyper::Error),
}

/// Asks `url` once within `timeout`: exit 0 on 200 OK, else 1 and the
/// reason on stderr.
pub(crate) async fn health(url: Uri, timeout: Duration) -> ExitCode {
    match tokio::time::timeout(timeout, probe(&url)).await {
        Ok(Ok(StatusCode::OK)) => {
            println!("{url}: 200 OK");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("chorus health: {url}: answered {status}, not 200 OK");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("chorus health: {url}: {error}");
            ExitCode::FAILURE
        }
        Err(_elapsed) => {
            eprintln!(
                "chorus health: {url}: no answer within {}",
                humantime::format_duration(timeout)
            );
            ExitCode::FAILURE
        }
    }
}

/// One GET over HTTP/1.1 on a fresh connection; the status it got.
async fn probe(url: &Uri) -> Result<StatusCode, ProbeError> {
    if url.scheme_str() != Some("http") {
        return Err(ProbeError::Url);
    }
    let authority = url.authority().ok_or(ProbeError::Url)?;
    // An IPv6 literal comes bracketed ("[::1]"); connect wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(ProbeError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Http)?;
    tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |path| path.as_str());
    let request = Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("chorus-health/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Request)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(ProbeError::Http)?;
    Ok(response.status())
}

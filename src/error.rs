//! Errors on the request path, and the one place that turns them into a status
//! and a JSON body.
//!
//! Every error carries its blame: the client (a request we refuse), the route
//! table, or the upstream. [`GatewayError::status`] and
//! [`GatewayError::response_body`] are the only mapping to HTTP; nothing else
//! in the gateway picks an error status.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

/// Why the gateway answers a request itself instead of with the upstream's response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No route's `path_prefix` matches the request path.
    #[error("no route matches this path")]
    NoRoute,
    /// A request the gateway cannot forward as it stands.
    #[error("{0}")]
    BadRequest(&'static str),
    /// A method the gateway never forwards.
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    /// The request head (request line and headers) is over `server.max_header_bytes`.
    #[error("request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// More header fields than the gateway reads.
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// A request target longer than the gateway reads.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The request body is over `server.max_request_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request body did not arrive within `server.request_body_timeout`.
    #[error("request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The request body could not be read (a malformed chunked encoding, a reset).
    #[error("request body could not be read: {0}")]
    BodyUnreadable(Arc<hyper::Error>),
    /// The upstream could not be reached: refused, reset, unresolvable, bad TLS.
    #[error("upstream unreachable: {0}")]
    Unreachable(#[source] Arc<dyn StdError + Send + Sync>),
    /// Connecting to the upstream (TCP and TLS) took longer than `connect_timeout`.
    #[error("connecting to the upstream (TCP and TLS) took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The upstream response head did not arrive within `first_byte_timeout`.
    #[error("upstream sent no response head within {0:?}")]
    FirstByteTimeout(Duration),
    /// The upstream connection failed after it was established (reset, malformed response).
    #[error("upstream failed: {0}")]
    UpstreamFailed(#[source] Arc<dyn StdError + Send + Sync>),
    /// The flight ended before the upstream answered (shutdown, or a fault in the gateway).
    #[error("{0}")]
    Interrupted(BodyError),
}

impl GatewayError {
    /// An upstream that answered, but not as asked: a 502.
    pub(crate) fn upstream_failed(why: impl Into<String>) -> Self {
        let why: Box<dyn StdError + Send + Sync> = why.into().into();
        Self::UpstreamFailed(Arc::from(why))
    }

    /// Classifies a failure to connect: timed out (504) or unreachable (502).
    pub(crate) fn from_connect(error: Box<dyn StdError + Send + Sync>, limit: Duration) -> Self {
        let timed_out = sources(&*error).any(|source| {
            source
                .downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        });
        if timed_out {
            Self::ConnectTimeout(limit)
        } else {
            Self::Unreachable(Arc::from(error))
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::Unreachable(_) | Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::Interrupted(BodyError::Shutdown) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Interrupted(_) => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout(_) | Self::FirstByteTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `error.type` of the JSON body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => "headers_too_large",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout(_) => "request_timeout",
            Self::BadRequest(_) | Self::BodyUnreadable(_) => "bad_request",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::UpstreamFailed(_) => "upstream_failed",
            Self::Interrupted(_) => "interrupted",
            Self::ConnectTimeout(_) | Self::FirstByteTimeout(_) => "upstream_timeout",
        }
    }

    /// `{"error": {"type": ..., "message": ...}}`, the message with its causes.
    pub fn response_body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": { "type": self.kind(), "message": describe(self) }
        });
        Bytes::from(body.to_string())
    }
}

/// Why a response body ended abnormally. Shared by every subscriber of a
/// flight, so it is cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// The upstream connection broke mid-body.
    #[error("upstream stream broke: {0}")]
    UpstreamBroke(Arc<hyper::Error>),
    /// The upstream ended the body this many bytes short of its
    /// `Content-Length`.
    #[error("upstream stream ended {0} bytes short of its Content-Length")]
    UpstreamShort(u64),
    /// The upstream sent nothing for longer than `idle_timeout`.
    #[error("upstream was silent for longer than {0:?}")]
    UpstreamIdle(Duration),
    /// The gateway was shutting down and `shutdown_grace` ran out.
    #[error("gateway shut down before the stream ended")]
    Shutdown,
    /// The task reading the upstream ended without finishing (a panic).
    #[error("the flight ended unexpectedly")]
    FlightAborted,
    /// Nobody was left to read the stream, so the upstream request was closed.
    #[error("the stream was cancelled: no client was left")]
    Cancelled,
    /// The client fell more than `max_replay_bytes` behind while the
    /// gateway held more than `server.max_buffered_bytes`.
    #[error("the client read too slowly while the gateway was short of buffer space")]
    Lagged,
    /// The client took nothing of the stream for `server.send_timeout`, and
    /// was counted out of its flight.
    #[error("the client took nothing for longer than {0:?}")]
    Stalled(Duration),
}

impl BodyError {
    /// The upstream side ended the body: a break, which the client gets
    /// only after every byte before it (see [`crate::flushes`]).
    pub fn is_upstream_break(&self) -> bool {
        matches!(
            self,
            Self::UpstreamBroke(_)
                | Self::UpstreamShort(_)
                | Self::UpstreamIdle(_)
                | Self::FlightAborted
        )
    }
}

/// An error and its causes, joined with ": ", skipping causes whose text the
/// error already repeats.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    for source in sources(err).skip(1) {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_blame() {
        assert_eq!(GatewayError::NoRoute.status(), 404);
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::HeadersTooLarge { limit: 1 }.status(), 431);
        assert_eq!(GatewayError::TooManyHeaders { limit: 1 }.status(), 431);
        assert_eq!(GatewayError::UriTooLong { limit: 1 }.status(), 414);
        assert_eq!(
            GatewayError::FirstByteTimeout(Duration::from_secs(1)).status(),
            504
        );
    }

    #[test]
    fn body_is_the_contract_json() {
        let body = GatewayError::BodyTooLarge { limit: 10 }.response_body();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "body_too_large");
        assert_eq!(
            json["error"]["message"],
            "request body is larger than 10 bytes"
        );
    }

    #[test]
    fn describe_joins_causes_once() {
        let inner = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let outer = io::Error::other(inner);
        assert_eq!(describe(&outer), "refused");
    }
}

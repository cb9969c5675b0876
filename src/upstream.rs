//! A route's upstream: building the upstream request, sending it on the
//! route's [`Pool`], the three timeouts (connect, in the pool; first byte;
//! idle between body chunks), and the response head made the client's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use crate::config::RouteConfig;
use crate::error::{BodyError, GatewayError};
use crate::headers::{self, ClientSide};
use crate::pool::{Dispatch, FirstByte, Held, Pool};
use crate::tls::{self, TlsError};

/// The upstream of one route.
pub struct Upstream {
    pool: Arc<Pool>,
    /// `Host` for upstream requests.
    host: HeaderValue,
    /// `scheme://authority`, lowercased: how the upstream's redirects to
    /// itself begin.
    origin: String,
    /// The upstream URL's own path, without a trailing slash ("" for none).
    base_path: String,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    /// Counts the response bodies that stop short.
    broken: Counter,
}

impl Upstream {
    /// Builds the client for a route, counting its response bodies that stop
    /// short in `broken`; fails only on unusable TLS files.
    pub fn new(route: &RouteConfig, broken: Counter) -> Result<Self, TlsError> {
        let client_cert = route
            .upstream_client_cert
            .as_deref()
            .zip(route.upstream_client_key.as_deref());
        let tls = tls::client_config(route.upstream_ca_file.as_deref(), client_cert)?;

        let upstream = &route.upstream;
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        // The config guarantees an authority; an empty one would fail every
        // request with a clear 502 rather than here.
        let authority = upstream
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let origin = format!("{scheme}://{authority}").to_ascii_lowercase();
        let target = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| Uri::from_static("http://localhost/"));
        Ok(Self {
            pool: Arc::new(Pool::new(tls, target, route.connect_timeout)),
            host,
            origin,
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            extra_headers: route.upstream_headers.clone(),
            first_byte_timeout: route.first_byte_timeout,
            idle_timeout: route.idle_timeout,
            broken,
        })
    }

    /// The upstream request for a client request whose body was read in full.
    pub fn request(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        client: &ClientSide,
        coalesced: bool,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let uri = self.uri_for(&parts.uri)?;
        let had_length = parts.headers.contains_key(CONTENT_LENGTH);
        headers::to_upstream(
            &mut parts.headers,
            &parts.uri,
            client,
            &self.host,
            &self.extra_headers,
            coalesced,
        );
        parts.uri = uri;
        // hyper gives a body it can size its length, but says nothing of an
        // empty one, and a backend may refuse a POST without a length (411).
        if body.is_empty() && (had_length || has_content(&parts.method)) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        // The pool sends HTTP/2 instead where the upstream offers it.
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, Full::new(body)))
    }

    /// Turns an upstream response's headers into the client response's
    /// ([`headers::to_downstream`]); a redirect to the upstream itself
    /// becomes one to the path the client would ask the gateway for (nginx's
    /// `proxy_redirect default` puts the client's `Host` before it; identical
    /// requests from other hosts may share this answer), rather than send
    /// the client around the gateway (and the headers it adds).
    pub fn to_downstream(&self, status: StatusCode, headers: &mut HeaderMap) {
        headers::to_downstream(status, headers);
        let relative = headers
            .get(LOCATION)
            .and_then(|location| self.client_path(location.as_bytes()));
        if let Some(relative) = relative {
            headers.insert(LOCATION, relative);
        }
    }

    /// The client's path for a URL on the upstream (under its own path), if it is one.
    fn client_path(&self, url: &[u8]) -> Option<HeaderValue> {
        let origin = self.origin.as_bytes();
        let on_upstream = url
            .get(..origin.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(origin));
        let rest = url.get(origin.len()..).filter(|_| on_upstream)?;
        let rest = rest.strip_prefix(self.base_path.as_bytes())?;
        let path = match rest {
            // `//` first would make it a URL of another host (`//evil.example/`
            // is scheme-relative), and so would `/\` to a browser, which also
            // drops tabs and line ends: `/.` before it keeps it this path, here.
            [b'/', after @ ..] if reads_as_authority(after) => [b"/.", rest].concat(),
            [b'/', ..] => rest.to_vec(),
            // A query or a fragment alone is of the root; a reference made
            // of it alone would keep the client's own path.
            [] | [b'?' | b'#', ..] => [b"/", rest].concat(),
            // Another port, or a longer path than the upstream's own.
            _ => return None,
        };
        HeaderValue::from_bytes(&path).ok()
    }

    /// The upstream's path for a client's target, in origin form.
    fn uri_for(&self, client_uri: &Uri) -> Result<Uri, GatewayError> {
        let path_and_query = match (client_uri.path_and_query(), self.base_path.is_empty()) {
            // The client's own target, shared rather than copied.
            (Some(path_and_query), true) => path_and_query.clone(),
            (None, true) => PathAndQuery::from_static("/"),
            (client, false) => {
                let client = client.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{client}", self.base_path)).map_err(|_| {
                    GatewayError::BadRequest("the request target cannot be forwarded")
                })?
            }
        };
        Ok(Uri::from(path_and_query))
    }

    /// Sends a request; the response head must arrive within `first_byte_timeout`.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
        dispatch: &Dispatch<'_>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        // Boxed: the wait for a head (checkout, sending, retrying) is over
        // once the head arrives, and a flight streams for far longer; inline,
        // its room would stay in every flight's pump for the whole stream.
        let first_byte = FirstByte::from_now(self.first_byte_timeout);
        let head_only = request.method() == Method::HEAD;
        let sending = Box::pin(self.pool.send(request, dispatch, first_byte));
        // A request that failed counts as sent, wherever it failed.
        let (mut response, held) = first_byte
            .within(sending)
            .await
            .inspect_err(|_| dispatch.mark())?;
        // Dropped with the response, the connection is closed, not reused.
        check_head(&mut response)?;
        let sized = !head_only && !crate::response::bodyless(response.status());
        Ok(response.map(|body| self.body(body, Some(held), sized)))
    }

    /// Sends a WebSocket handshake on a connection of its own (see
    /// [`crate::tunnel`]); the head must arrive within `first_byte_timeout`.
    pub async fn upgrade(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
        dispatch: &Dispatch<'_>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let response = FirstByte::from_now(self.first_byte_timeout)
            .within(Box::pin(self.pool.upgrade(request, dispatch)))
            .await
            .inspect_err(|_| dispatch.mark())?;
        Ok(response.map(|body| self.body(body, None, false)))
    }

    /// The body of a response, holding what it holds of its connection;
    /// `sized` when a `Content-Length` it came with says how long it is.
    fn body(self: &Arc<Self>, inner: Incoming, held: Option<Held>, sized: bool) -> UpstreamBody {
        UpstreamBody {
            inner,
            held,
            upstream: Arc::clone(self),
            sized,
            ended: false,
            broke: false,
            idle: self.idle_timeout,
            timer: None,
            waiting_since: None,
        }
    }

    /// The longest silence a response body or a tunnel is allowed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// Refuses a response head that could not be passed on as it stands, and
/// gives a repeated `Content-Length` one value.
fn check_head<B>(response: &mut Response<B>) -> Result<(), GatewayError> {
    check_status(response.status())?;
    let headers = response.headers_mut();
    if headers.contains_key(TRANSFER_ENCODING) {
        // Only `chunked` is undone on the way in; a body still in another
        // coding (`gzip, chunked`) would reach the client without it.
        let codings = headers.get_all(TRANSFER_ENCODING).iter();
        let other = codings
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if other {
            let why = "the upstream used a transfer coding other than chunked";
            return Err(GatewayError::upstream_failed(why));
        }
        // Its `Content-Length`, if any, is dropped on the way out.
        return Ok(());
    }
    one_length(headers)
}

/// Refuses a status no request but a WebSocket handshake can be answered
/// with: a `101` (RFC 9110 §7.8: only to a client that asked to upgrade;
/// HTTP/2 has none) or one outside 100–599, which RFC 9110 §15 calls
/// invalid.
fn check_status(status: StatusCode) -> Result<(), GatewayError> {
    let why = match status.as_u16() {
        101 => "the upstream switched protocols, which the request did not ask for",
        100..=599 => return Ok(()),
        _ => "the upstream answered with a status outside 100-599",
    };
    Err(GatewayError::upstream_failed(format!("{why} ({status})")))
}

/// Whether requests of `method` carry content, even when it is empty: they
/// say how long it is (RFC 9110 §8.6), as clients and nginx do.
fn has_content(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH].contains(method)
}

/// Makes `Content-Length: 5, 5` (or the header twice) `Content-Length: 5`,
/// as RFC 9110 §8.6 allows: passed on as it came, HTTP/1.1 cannot frame the
/// answer with it and HTTP/2 clients call the repeated field malformed.
/// Values that differ, or are not numbers, are refused.
fn one_length(headers: &mut HeaderMap) -> Result<(), GatewayError> {
    let mut items = 0;
    let length = {
        let mut length: Option<&[u8]> = None;
        let values = headers.get_all(CONTENT_LENGTH).iter();
        for item in values.flat_map(|value| value.as_bytes().split(|&byte| byte == b',')) {
            let item = item.trim_ascii();
            let number = !item.is_empty() && item.iter().all(u8::is_ascii_digit);
            if !number || length.is_some_and(|length| length != item) {
                let why = "the upstream sent an invalid Content-Length";
                return Err(GatewayError::upstream_failed(why));
            }
            length = Some(item);
            items += 1;
        }
        length.map(HeaderValue::from_bytes)
    };
    if items > 1
        && let Some(Ok(length)) = length
    {
        headers.insert(CONTENT_LENGTH, length);
    }
    Ok(())
}

/// An upstream response body that fails when the upstream stays silent for
/// longer than `idle_timeout` while someone is waiting for it. Over HTTP/1.1
/// it gives its connection back to the pool once it has ended; dropped
/// before its end, it closes the connection. Over HTTP/2 it counts as one of
/// its connection's streams for as long as it lives.
pub struct UpstreamBody {
    inner: Incoming,
    /// Its connection (HTTP/1.1), or its stream, counted on its connection
    /// while the body lives (HTTP/2); taken when the body is dropped.
    held: Option<Held>,
    /// Whose pool takes the connection back, and counts a break.
    upstream: Arc<Upstream>,
    /// A `Content-Length` it came with is its length (not a `HEAD`'s, a
    /// `204`'s or a `304`'s).
    sized: bool,
    /// The body was read to its end.
    ended: bool,
    /// The body stopped short (and was counted so).
    broke: bool,
    idle: Duration,
    /// Made on the first wait: a body that never waits never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began; cleared by every frame.
    waiting_since: Option<Instant>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(Held::Http1(connection)) = self.held.take()
            && (self.ended || self.inner.is_end_stream())
        {
            self.upstream.pool.check_in(connection);
        }
    }
}

impl UpstreamBody {
    fn count_broken(&mut self) {
        if !self.broke {
            self.broke = true;
            self.upstream.broken.inc();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                this.waiting_since = None;
                Poll::Ready(Some(Ok(frame)))
            }
            // Trailers, the last frame of a body, end it here: they are not
            // relayed (a flight has no room for them), and hyper's server
            // writes trailers as the end and polls no further.
            Poll::Ready(Some(Ok(_trailers))) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.count_broken();
                Poll::Ready(Some(Err(BodyError::UpstreamBroke(Arc::new(error)))))
            }
            // hyper ends an HTTP/2 body cleanly at a RST_STREAM(NO_ERROR),
            // which only ends a complete answer early (RFC 9113 §8.1); one
            // short of its `Content-Length` broke. (Without one, such a cut
            // cannot be told from the end: README, Proxying.)
            Poll::Ready(None) => match this.inner.size_hint().exact() {
                Some(missing @ 1..) if this.sized => {
                    this.count_broken();
                    Poll::Ready(Some(Err(BodyError::UpstreamShort(missing))))
                }
                _ => {
                    this.ended = true;
                    Poll::Ready(None)
                }
            },
            Poll::Pending => {
                // Silence is measured from when we started waiting, so a slow
                // client that polls late is not mistaken for a silent upstream.
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + this.idle;
                // The timer keeps an earlier wait's deadline until it fires,
                // and only then moves to this wait's: resetting it on every
                // wait would reach into the timer wheel once per chunk.
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    timer.as_mut().reset(deadline);
                    if Instant::now() >= deadline || timer.as_mut().poll(cx).is_ready() {
                        this.count_broken();
                        if let Some(Held::Http2(stream)) = &this.held {
                            stream.retire();
                        }
                        return Poll::Ready(Some(Err(BodyError::UpstreamIdle(this.idle))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether what follows a path's first `/` makes a browser read the path as
/// a host (`//host`, `/\\host`): a second slash or backslash, past the tabs
/// and line ends that URL parsers drop.
fn reads_as_authority(after_slash: &[u8]) -> bool {
    after_slash
        .iter()
        .find(|&&byte| !matches!(byte, b'\t' | b'\n' | b'\r'))
        .is_some_and(|&byte| matches!(byte, b'/' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(url: &str) -> Upstream {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\nupstream = \"{url}\"\n"
        );
        let config = Config::parse(&toml, "test.toml", |_| None).unwrap();
        Upstream::new(&config.routes[0], Counter::default()).unwrap()
    }

    fn location_after(upstream: &Upstream, location: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_str(location).unwrap());
        upstream.to_downstream(StatusCode::FOUND, &mut headers);
        headers[LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn redirects_to_the_upstream_itself_become_the_clients_paths() {
        let plain = upstream("http://127.0.0.1:9000");
        let based = upstream("http://Backend:9000/api/");
        for (upstream, location, sent) in [
            (&plain, "http://127.0.0.1:9000/v1/chat/", "/v1/chat/"),
            (&plain, "HTTP://127.0.0.1:9000?page=2", "/?page=2"),
            (&plain, "http://127.0.0.1:9000", "/"),
            (&based, "http://backend:9000/api?page=2", "/?page=2"),
            (&based, "http://backend:9000/api#top", "/#top"),
            // Never a URL of another host.
            (
                &plain,
                "http://127.0.0.1:9000//evil.example/x/",
                "/.//evil.example/x/",
            ),
            (
                &based,
                "http://backend:9000/api//evil.example",
                "/.//evil.example",
            ),
            (
                &plain,
                "http://127.0.0.1:9000/\\evil.example/x",
                "/./\\evil.example/x",
            ),
            (
                &plain,
                "http://127.0.0.1:9000/\t/evil.example/",
                "/./\t/evil.example/",
            ),
            (&plain, "http://127.0.0.1:9000/a//b", "/a//b"),
            (&based, "http://backend:9000/api/v1/x?y#z", "/v1/x?y#z"),
            (&based, "http://backend:9000/api", "/"),
            // Elsewhere: left as they are.
            (
                &based,
                "http://backend:9000/apix/v1",
                "http://backend:9000/apix/v1",
            ),
            (
                &based,
                "http://backend:9000/other",
                "http://backend:9000/other",
            ),
            (
                &plain,
                "http://127.0.0.1:90001/v1",
                "http://127.0.0.1:90001/v1",
            ),
            (
                &plain,
                "https://127.0.0.1:9000/v1",
                "https://127.0.0.1:9000/v1",
            ),
            (
                &plain,
                "https://example.com/login",
                "https://example.com/login",
            ),
            (&plain, "/already/relative", "/already/relative"),
        ] {
            assert_eq!(location_after(upstream, location), sent, "{location}");
        }
    }
}

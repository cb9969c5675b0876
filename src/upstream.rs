//! A route's upstream: the pooled hyper-util client (HTTP/1.1, or HTTP/2 when
//! an https upstream offers it by ALPN), building the upstream request, and
//! the three timeouts: connect, first byte, and idle between body chunks.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::RouteConfig;
use crate::error::{BodyError, GatewayError};
use crate::gather::Gathered;
use crate::headers::{self, ClientSide};
use crate::tls::{self, TlsError};

type PooledClient = Client<ConnectWithin<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// How long an unused pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The upstream of one route.
pub struct Upstream {
    client: PooledClient,
    scheme: Scheme,
    authority: Authority,
    /// `Host` for upstream requests.
    host: HeaderValue,
    /// The upstream URL's own path, without a trailing slash ("" for none).
    base_path: String,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// Builds the client for a route; fails only on unusable TLS files.
    pub fn new(route: &RouteConfig) -> Result<Self, TlsError> {
        let client_cert = route
            .upstream_client_cert
            .as_deref()
            .zip(route.upstream_client_key.as_deref());
        let tls = tls::client_config(route.upstream_ca_file.as_deref(), client_cert)?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(route.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = ConnectWithin {
            inner: connector,
            timeout: route.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);

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
        Ok(Self {
            client,
            scheme,
            authority,
            host,
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            extra_headers: route.upstream_headers.clone(),
            first_byte_timeout: route.first_byte_timeout,
            idle_timeout: route.idle_timeout,
        })
    }

    /// The upstream request for a client request whose body was read in full.
    pub fn request(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        client: ClientSide,
        coalesced: bool,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let uri = self.uri_for(&parts.uri)?;
        headers::to_upstream(
            &mut parts.headers,
            &parts.uri,
            client,
            &self.host,
            &self.extra_headers,
            coalesced,
        );
        parts.uri = uri;
        // The client library picks HTTP/1.1 or HTTP/2 by what the upstream offers.
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, Full::new(body)))
    }

    fn uri_for(&self, client_uri: &Uri) -> Result<Uri, GatewayError> {
        let unforwardable = GatewayError::BadRequest("the request target cannot be forwarded");
        let path_and_query = match (client_uri.path_and_query(), self.base_path.is_empty()) {
            // The client's own target, shared rather than copied.
            (Some(path_and_query), true) => path_and_query.clone(),
            (None, true) => PathAndQuery::from_static("/"),
            (client, false) => {
                let client = client.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{client}", self.base_path))
                    .map_err(|_| unforwardable.clone())?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| unforwardable)
    }

    /// Sends a request; the response head must arrive within `first_byte_timeout`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(GatewayError::from_client(error)),
            Err(_) => Err(GatewayError::FirstByteTimeout(self.first_byte_timeout)),
        }
    }

    /// Wraps an upstream body with the route's idle timeout.
    pub fn body(&self, body: Incoming) -> UpstreamBody {
        UpstreamBody::new(body, self.idle_timeout)
    }
}

/// Bounds connecting, TCP and TLS handshake together, by the route's
/// `connect_timeout` (`HttpConnector`'s own timeout covers TCP only). Past
/// it the error is a `TimedOut` I/O error, which makes a 504.
#[derive(Clone)]
struct ConnectWithin<C> {
    inner: C,
    timeout: Duration,
}

impl<C> Service<Uri> for ConnectWithin<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Gathered<C::Response>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map(Gathered::new).map_err(Into::into),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting (TCP and TLS) took longer than {timeout:?}"),
                )
                .into()),
            }
        })
    }
}

/// An upstream response body that fails when the upstream stays silent for
/// longer than `idle_timeout` while someone is waiting for it.
pub struct UpstreamBody {
    inner: Incoming,
    idle: Duration,
    /// Made on the first wait: a body that never waits never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began; cleared by every frame.
    waiting_since: Option<Instant>,
}

impl UpstreamBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            waiting_since: None,
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
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting_since = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(BodyError::UpstreamBroke(Arc::new(error)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
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

//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes
//! traffic; 503 while draining) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};
use crate::server::AcceptErrors;

/// What the admin endpoints report on.
pub struct Admin {
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// False once the gateway drains.
    pub ready: Arc<AtomicBool>,
}

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let mut accept_errors = AcceptErrors::new("admin");
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors.accepted();
                    stream
                }
                Err(error) => {
                    accept_errors.failed(&error).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.answer(&request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

impl Admin {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
        if known && request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            // RFC 9110 §15.5.6: a 405 says what is allowed.
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

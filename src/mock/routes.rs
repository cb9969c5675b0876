//! The router: which method and path does what. Completions go through
//! [`Plan`] to a streamed or a whole body; `/v1/models`, `/stats` and `/echo`
//! answer directly; anything else is an OpenAI-style JSON error. Every answer
//! allows any origin (CORS), so a page in a browser can call the demo.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::body::{MockBody, Source};
use super::json::{json_string, push_json_str};
use super::request::Plan;
use super::stats::Tracker;
use super::stream::{EventSource, Kind, plain_completion};
use super::{Shared, unix_now};

/// Largest request body read; the mock only needs a few fields of it.
const MAX_REQUEST_BODY: usize = 16 << 20;

/// The body of `GET /v1/models`.
const MODELS_JSON: &str =
    r#"{"object":"list","data":[{"id":"mock","object":"model","created":0,"owned_by":"chorus"}]}"#;

/// Answers one request, whatever its path, with the CORS headers that let
/// a browser page of any origin read the answer.
pub(super) async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Response<MockBody> {
    let mut response = if request.method() == Method::OPTIONS {
        preflight(&request)
    } else {
        route(request, shared).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // The gateway's role header, readable by the page.
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-chorus-role"),
    );
    response
}

/// The answer to a CORS preflight: any method the mock serves, and whatever
/// request headers the page asked for (`authorization` is never covered by `*`).
fn preflight(request: &Request<Incoming>) -> Response<MockBody> {
    let mut response = Response::new(MockBody::whole(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Answers one request other than a preflight.
async fn route(request: Request<Incoming>, shared: Arc<Shared>) -> Response<MockBody> {
    let path = request.uri().path();
    if path.starts_with("/echo") {
        return echo(request).await;
    }
    if !path.starts_with("/v1/") {
        return match (request.method(), path) {
            (&Method::GET, "/stats") => json_response(StatusCode::OK, shared.stats.snapshot_json()),
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        };
    }
    // Created before any await: if the client leaves while the request is read or
    // delayed, dropping this future drops the tracker, which counts the disconnect.
    let tracker = Tracker::start(Arc::clone(&shared.stats));
    let mut response = api(request, &shared).await;
    response.body_mut().track(tracker);
    response
}

/// The `/v1/` endpoints.
async fn api(request: Request<Incoming>, shared: &Shared) -> Response<MockBody> {
    let kind = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Kind::Chat,
        (&Method::POST, "/v1/completions") => Kind::Text,
        (&Method::GET, "/v1/models") => return json_response(StatusCode::OK, MODELS_JSON),
        (_, "/v1/chat/completions" | "/v1/completions" | "/v1/models") => {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed",
            );
        }
        _ => return error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let plan = match Plan::parse(&body, &shared.options) {
        Ok(plan) => plan,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
    };
    if !plan.first_byte_delay.is_zero() {
        tokio::time::sleep(plan.first_byte_delay).await;
    }
    if let Some(status) = plan.status {
        return mock_error_response(status);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    completion_response(kind, id, unix_now(), &plan)
}

/// The whole request body, up to [`MAX_REQUEST_BODY`]; an error is the answer.
async fn read_body(body: Incoming) -> Result<Bytes, Response<MockBody>> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request body too large",
        )),
        Err(error) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("cannot read the request body: {error}"),
        )),
    }
}

/// A completion: streamed as SSE or whole as JSON, as the plan says.
fn completion_response(kind: Kind, id: u64, created: u64, plan: &Plan) -> Response<MockBody> {
    if plan.stream {
        let events = EventSource::new(kind, id, created, plan);
        let body = MockBody::new(Source::Events(events), plan.ending, plan.interval);
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let json = plain_completion(kind, id, created, plan);
        let body = MockBody::new(Source::Whole(json.into()), plan.ending, Duration::ZERO);
        with_json_headers(StatusCode::OK, body)
    }
}

fn with_json_headers(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, json: impl Into<Bytes>) -> Response<MockBody> {
    with_json_headers(status, MockBody::whole(json.into()))
}

/// An OpenAI-style error, as the real API answers bad requests.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    let message = json_string(message);
    json_response(
        status,
        format!(r#"{{"error":{{"message":{message},"type":"{kind}","param":null,"code":null}}}}"#),
    )
}

/// The answer to a `mock.status` override.
fn mock_error_response(status: StatusCode) -> Response<MockBody> {
    let code = status.as_u16();
    json_response(
        status,
        format!(r#"{{"error":{{"message":"mock error","type":"mock_error","code":{code}}}}}"#),
    )
}

/// `/echo...`: the request as it arrived, as JSON.
async fn echo(request: Request<Incoming>) -> Response<MockBody> {
    let (head, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let path = head
        .uri
        .path_and_query()
        .map_or_else(|| head.uri.path(), |path| path.as_str());
    let mut out = String::with_capacity(256 + body.len());
    out.push_str(r#"{"method":"#);
    push_json_str(&mut out, head.method.as_str());
    out.push_str(r#","path":"#);
    push_json_str(&mut out, path);
    out.push_str(r#","version":"#);
    push_json_str(&mut out, version_name(head.version));
    out.push_str(r#","authority":"#);
    match head.uri.authority() {
        Some(authority) => push_json_str(&mut out, authority.as_str()),
        None => out.push_str("null"),
    }
    out.push_str(r#","headers":["#);
    for (index, (name, value)) in head.headers.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_str(&mut out, name.as_str());
        out.push(',');
        push_json_str(&mut out, &String::from_utf8_lossy(value.as_bytes()));
        out.push(']');
    }
    out.push_str(r#"],"body":"#);
    push_json_str(&mut out, &String::from_utf8_lossy(&body));
    out.push('}');
    json_response(StatusCode::OK, out)
}

/// The HTTP version as `/echo` reports it.
fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

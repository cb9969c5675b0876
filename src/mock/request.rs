//! Parsing a completion request: the few fields the mock reads, and the
//! `"mock"` object that overrides options and injects faults, resolved into a
//! [`Plan`].

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use super::MockOptions;
use super::json::json_string;

/// Largest `mock.tokens`, so that a plain response stays a few megabytes.
const MAX_TOKENS: usize = 1_000_000;
/// Largest `mock.interval_ms` and `mock.first_byte_delay_ms` (one day).
pub(super) const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The fields of an OpenAI completion request that the mock looks at; the rest
/// (messages, prompt, sampling parameters) is skipped unparsed.
#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    mock: Option<Overrides>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The `"mock"` object of a request. Unknown fields are rejected so that a typo in
/// a test fails loudly instead of silently testing nothing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Overrides {
    tokens: Option<usize>,
    interval_ms: Option<u64>,
    first_byte_delay_ms: Option<u64>,
    status: Option<u16>,
    break_after: Option<usize>,
    stall_after: Option<usize>,
    stamp: Option<bool>,
}

/// How one completion request is answered, options and overrides resolved.
#[derive(Debug)]
pub(super) struct Plan {
    /// The model name as a JSON string literal, quotes included.
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) tokens: usize,
    pub(super) prompt_tokens: usize,
    pub(super) interval: Duration,
    pub(super) first_byte_delay: Duration,
    pub(super) status: Option<StatusCode>,
    pub(super) ending: Ending,
    /// Whether streamed events carry `"chorus_sent_ns"`.
    pub(super) stamp: bool,
}

/// What a response body does once its events are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Every event, then a clean end.
    Finish,
    /// Aborted after this many events (`mock.break_after`).
    BreakAfter(usize),
    /// Nothing more after this many events (`mock.stall_after`).
    StallAfter(usize),
}

impl Plan {
    /// Reads `body`, with `options` for what it leaves out; an error is the
    /// message of a 400 answer.
    pub(super) fn parse(body: &[u8], options: &MockOptions) -> Result<Self, String> {
        let request: CompletionRequest<'_> =
            serde_json::from_slice(body).map_err(|error| format!("invalid JSON body: {error}"))?;
        let mock = request.mock.unwrap_or_default();
        let tokens = mock.tokens.unwrap_or(options.tokens);
        if tokens > MAX_TOKENS {
            return Err(format!("mock.tokens must be at most {MAX_TOKENS}"));
        }
        let ending = match (mock.break_after, mock.stall_after) {
            (Some(_), Some(_)) => {
                return Err("set at most one of mock.break_after and mock.stall_after".into());
            }
            (Some(after), None) => Ending::BreakAfter(after),
            (None, Some(after)) => Ending::StallAfter(after),
            (None, None) => Ending::Finish,
        };
        let status = match mock.status {
            None => None,
            Some(code @ 400..=599) => StatusCode::from_u16(code).ok(),
            Some(_) => return Err("mock.status must be between 400 and 599".into()),
        };
        Ok(Self {
            model: json_string(request.model.as_deref().unwrap_or("mock")),
            stream: request.stream.unwrap_or(false),
            include_usage: request
                .stream_options
                .and_then(|options| options.include_usage)
                .unwrap_or(false),
            tokens,
            // Deterministic and roughly proportional, like a tokenizer's count.
            prompt_tokens: (body.len() / 4).max(1),
            interval: delay(mock.interval_ms, options.interval, "interval_ms")?,
            first_byte_delay: delay(
                mock.first_byte_delay_ms,
                options.first_byte_delay,
                "first_byte_delay_ms",
            )?,
            status,
            ending,
            stamp: mock.stamp.unwrap_or(options.stamp),
        })
    }
}

fn delay(override_ms: Option<u64>, default: Duration, field: &str) -> Result<Duration, String> {
    match override_ms {
        None => Ok(default),
        Some(ms) if ms <= MAX_DELAY_MS => Ok(Duration::from_millis(ms)),
        Some(_) => Err(format!("mock.{field} must be at most {MAX_DELAY_MS}")),
    }
}

//! What a completion says: the SSE events of a streamed one, rendered one at a
//! time by [`EventSource`], and the JSON object of a plain one. Content is
//! deterministic: the same plan gives the same words.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::request::Plan;
use super::unix_nanos;

/// The words that tokens cycle through, each followed by a space.
const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "chorus",
    "mock",
    "upstream.",
    "Every",
    "identical",
    "request",
    "shares",
    "one",
    "stream",
    "of",
    "tokens.",
];

/// The event that ends every stream.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// The two completion APIs: chat (`chat.completion`) and legacy text (`text_completion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Text,
}

/// The word of token `index`.
pub(super) fn word(index: usize) -> &'static str {
    WORDS[index % WORDS.len()]
}

fn usage_json(plan: &Plan) -> String {
    format!(
        r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}"#,
        plan.prompt_tokens,
        plan.tokens,
        plan.prompt_tokens + plan.tokens,
    )
}

/// The whole body of a plain (non-stream) completion.
pub(super) fn plain_completion(kind: Kind, id: u64, created: u64, plan: &Plan) -> String {
    let mut content = String::with_capacity(plan.tokens * 8);
    for index in 0..plan.tokens {
        content.push_str(word(index));
        content.push(' ');
    }
    let (model, usage) = (&plan.model, usage_json(plan));
    match kind {
        Kind::Chat => format!(
            r#"{{"id":"chatcmpl-{id}","object":"chat.completion","created":{created},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
        ),
        Kind::Text => format!(
            r#"{{"id":"cmpl-{id}","object":"text_completion","created":{created},"model":{model},"choices":[{{"text":"{content}","index":0,"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
        ),
    }
}

/// One event of a streamed completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The chat opening chunk, `"delta":{"role":"assistant","content":""}`.
    Role,
    /// A content chunk carrying the word of this token.
    Token(usize),
    /// The chunk with `"finish_reason":"stop"`.
    Finish,
    /// The usage chunk (`stream_options.include_usage`).
    Usage,
    /// `data: [DONE]`.
    Done,
}

/// Renders the events of one streamed completion on demand, each into exactly one
/// allocation: the common head of the chunk JSON is built once per request.
pub(super) struct EventSource {
    kind: Kind,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`
    prefix: String,
    tokens: usize,
    usage: Option<String>,
    /// Whether each JSON event starts with `"chorus_sent_ns":N,`.
    stamp: bool,
}

impl EventSource {
    pub(super) fn new(kind: Kind, id: u64, created: u64, plan: &Plan) -> Self {
        let model = &plan.model;
        let prefix = match kind {
            Kind::Chat => format!(
                r#"data: {{"id":"chatcmpl-{id}","object":"chat.completion.chunk","created":{created},"model":{model},"choices":["#
            ),
            Kind::Text => format!(
                r#"data: {{"id":"cmpl-{id}","object":"text_completion","created":{created},"model":{model},"choices":["#
            ),
        };
        Self {
            kind,
            prefix,
            tokens: plan.tokens,
            usage: plan.include_usage.then(|| usage_json(plan)),
            stamp: plan.stamp,
        }
    }

    /// How many events the stream has, `[DONE]` included.
    pub(super) fn len(&self) -> usize {
        let role = usize::from(self.kind == Kind::Chat);
        role + self.tokens + 1 + usize::from(self.usage.is_some()) + 1
    }

    /// Which event stands at `index`.
    fn event(&self, mut index: usize) -> Event {
        if self.kind == Kind::Chat {
            if index == 0 {
                return Event::Role;
            }
            index -= 1;
        }
        if index < self.tokens {
            return Event::Token(index);
        }
        match (index - self.tokens, &self.usage) {
            (0, _) => Event::Finish,
            (1, Some(_)) => Event::Usage,
            _ => Event::Done,
        }
    }

    /// Event `index`, ready for the wire.
    pub(super) fn render(&self, index: usize) -> Bytes {
        match (self.kind, self.event(index)) {
            (_, Event::Done) => Bytes::from_static(DONE_EVENT),
            (Kind::Chat, Event::Role) => self.chunk(&[
                r#"{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            ]),
            (Kind::Chat, Event::Token(token)) => self.chunk(&[
                r#"{"index":0,"delta":{"content":""#,
                word(token),
                r#" "},"finish_reason":null}]}"#,
            ]),
            (Kind::Chat, Event::Finish) => {
                self.chunk(&[r#"{"index":0,"delta":{},"finish_reason":"stop"}]}"#])
            }
            (Kind::Text, Event::Token(token)) => self.chunk(&[
                r#"{"text":""#,
                word(token),
                r#" ","index":0,"logprobs":null,"finish_reason":null}]}"#,
            ]),
            (Kind::Text, Event::Finish) => {
                self.chunk(&[r#"{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}"#])
            }
            (_, Event::Usage) => {
                let usage = self.usage.as_deref().unwrap_or("null");
                self.chunk(&[r#"],"usage":"#, usage, "}"])
            }
            // Text completions have no role chunk; `event` never yields one for them.
            (Kind::Text, Event::Role) => Bytes::new(),
        }
    }

    /// `prefix`, then `parts`, then the blank line that ends an SSE event. With
    /// `stamp`, the send time goes in as the first field of the JSON object.
    fn chunk(&self, parts: &[&str]) -> Bytes {
        const OPEN: &str = "data: {";
        /// `"chorus_sent_ns":` plus at most 20 digits plus `,`.
        const STAMP_MAX: usize = 17 + 20 + 1;
        let len = self.prefix.len()
            + if self.stamp { STAMP_MAX } else { 0 }
            + parts.iter().map(|part| part.len()).sum::<usize>()
            + 2;
        let mut buf = BytesMut::with_capacity(len);
        match self.prefix.strip_prefix(OPEN).filter(|_| self.stamp) {
            Some(rest) => {
                buf.put_slice(OPEN.as_bytes());
                // Writing into a BytesMut cannot fail.
                let _ = write!(buf, r#""chorus_sent_ns":{},"#, unix_nanos());
                buf.put_slice(rest.as_bytes());
            }
            // Unstamped (the prefix always opens an object, so there is always
            // room for a stamp when one is asked for).
            None => buf.put_slice(self.prefix.as_bytes()),
        }
        for part in parts {
            buf.put_slice(part.as_bytes());
        }
        buf.put_slice(b"\n\n");
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::tests::fast;

    #[test]
    fn event_indices_map_to_events() {
        let plan = Plan::parse(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            &fast(),
        )
        .expect("plan");
        let chat = EventSource::new(Kind::Chat, 1, 0, &plan);
        let order: Vec<Event> = (0..chat.len()).map(|index| chat.event(index)).collect();
        let tokens = (0..5).map(Event::Token);
        let expected: Vec<Event> = std::iter::once(Event::Role)
            .chain(tokens)
            .chain([Event::Finish, Event::Usage, Event::Done])
            .collect();
        assert_eq!(order, expected);
        let text = EventSource::new(Kind::Text, 1, 0, &plan);
        assert_eq!(text.len(), 5 + 3);
        assert_eq!(text.event(0), Event::Token(0));
    }
}

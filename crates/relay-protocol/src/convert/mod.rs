//! Typed conversions between dialects. The import path says the direction:
//! `convert::<target>::from_<source>` turns every artifact of the source dialect (a client's
//! request, an upstream's response, stream or error) into the target dialect's.
//!
//! So a Claude Code (Anthropic) client on an OpenAI-compatible upstream is served with
//! [`openai_chat::from_anthropic::request`] on the way up and
//! [`anthropic::from_openai_chat`]'s `response` / `StreamTranslator` / `error` on the way down,
//! and the other way round for an OpenAI client on an Anthropic upstream. A Responses client
//! (Codex CLI) on an Anthropic upstream goes up through
//! [`anthropic::from_openai_responses::request`] and comes back through
//! [`openai_responses::from_anthropic`]; on an OpenAI Chat upstream it goes through Anthropic's
//! form both ways ([`Chain`]), each step a conversion of its own.
//!
//! Conversions are a single pass over a parsed [`serde_json::Value`]. Objects keep the order
//! they are built in, and what passes through (tool schemas, `response_format` schemas) keeps the
//! client's key order (`serde_json`'s `preserve_order`): a model may read a schema's properties
//! in order.

use serde_json::{Map, Value};

pub mod anthropic;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;

/// The signature put on thinking blocks made from another dialect's reasoning text. Anthropic
/// requires a signature on thinking blocks a client echoes back, and only Anthropic can make a
/// real one; this marker lets the relay recognise (and strip) such blocks should the
/// conversation later go to a real Anthropic upstream.
pub const UNSIGNED_THINKING_SIGNATURE: &str = "relay-converted-unsigned";

/// Whether a system text is Claude Code's billing marker (`x-anthropic-billing-header: …`):
/// Anthropic's own accounting, which a converted request to another provider leaves behind
/// (it names the client's version and varies per session).
pub(crate) fn is_billing_marker(text: &str) -> bool {
    text.trim_start().starts_with("x-anthropic-billing-header:")
}

/// The longest upstream error message carried into a converted error body.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// The longest end-user id carried between `metadata.user_id` and OpenAI's `user`.
pub const MAX_USER_ID: usize = 256;

/// How a request is converted.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    /// Replaces the request's model (the account's model mapping).
    pub model: Option<&'a str>,
    /// Anthropic requires `max_tokens`; used when an OpenAI request has none.
    pub default_max_tokens: u64,
}

/// A request or response that cannot be expressed in the target dialect (the relay answers 400
/// in the caller's dialect), or a body that is not what its dialect allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    pub message: String,
}

impl ConvertError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for ConvertError {}

/// A streaming translator: raw upstream SSE bytes in, complete client SSE events out.
pub trait Translate {
    /// Feeds upstream bytes in any chunking; appends whole client events to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>);
    /// The upstream ended cleanly: appends closing events, but only if the upstream stream
    /// really finished (a cut stream stays cut).
    fn finish(&mut self, out: &mut Vec<u8>);
}

/// Two translators in a row: the first's client events are the second's upstream bytes (a
/// Responses client on an OpenAI Chat upstream goes Chat → Anthropic → Responses, each step a
/// conversion that exists and is tested on its own).
#[derive(Debug)]
pub struct Chain<A, B> {
    first: A,
    second: B,
    between: Vec<u8>,
}

impl<A: Translate, B: Translate> Chain<A, B> {
    pub fn new(first: A, second: B) -> Self {
        Self {
            first,
            second,
            between: Vec::new(),
        }
    }
}

impl<A: Translate, B: Translate> Translate for Chain<A, B> {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.first.push(chunk, &mut self.between);
        if !self.between.is_empty() {
            self.second.push(&self.between, out);
            self.between.clear();
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.first.finish(&mut self.between);
        if !self.between.is_empty() {
            self.second.push(&self.between, out);
            self.between.clear();
        }
        self.second.finish(out);
    }
}

pub(crate) type Object = Map<String, Value>;

/// Parses a body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8], what: &str) -> Result<Object, ConvertError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ConvertError::new(format!("{what} must be a JSON object"))),
        Err(error) => Err(ConvertError::new(format!(
            "{what} is not valid JSON: {error}"
        ))),
    }
}

/// The model a converted request names: the account's mapping, else the client's `model`.
pub(crate) fn target_model<'a>(
    source: &'a Object,
    options: &RequestOptions<'a>,
) -> Result<&'a str, ConvertError> {
    match options.model {
        Some(model) => Ok(model),
        None => source
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ConvertError::new("`model` is required")),
    }
}

/// An upstream error body's message (bounded; a generic one when the body says none) and the
/// string its `error.{name_field}` holds, for an error body of another dialect.
pub(crate) fn error_parts(status: u16, body: &[u8], name_field: &str) -> (String, Option<String>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|value| &value["error"]);
    let message = error
        .and_then(|error| error["message"].as_str())
        .map_or_else(
            || format!("the upstream answered {status}"),
            |message| truncated(message, MAX_ERROR_MESSAGE).to_owned(),
        );
    let name = error.and_then(|error| error[name_field].as_str().map(str::to_owned));
    (message, name)
}

pub(crate) fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail (its keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Appends one SSE event (`event:` line only when named).
pub(crate) fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &Value) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Serialized JSON has no raw newlines, so one data line is enough.
    if serde_json::to_writer(&mut *out, data).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// The first `max` bytes of `text`, cut at a character boundary.
pub(crate) fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A count as u64 (absent, negative or fractional counts are 0).
pub(crate) fn count(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(crate) fn finish_reason_of(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new: the model stopped.
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub(crate) fn stop_reason_of(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// An upstream error's message (bounded), `type` and `code`.
pub(crate) struct UpstreamError {
    pub message: String,
    pub kind: Option<String>,
    pub code: Option<String>,
}

/// Reads an upstream error body: `error.message` (both dialects put it there), `error.type`,
/// `error.code`; `None` for a body that is not such JSON (an HTML page is never passed on).
pub(crate) fn upstream_error(body: &[u8]) -> Option<UpstreamError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let message = match error {
        Value::String(message) => message.as_str(),
        _ => error.get("message")?.as_str()?,
    };
    let field = |name: &str| error.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(UpstreamError {
        message: truncated(message, MAX_ERROR_MESSAGE).to_owned(),
        kind: field("type"),
        code: field("code"),
    })
}

/// The message used when an upstream error body has none worth passing on.
pub(crate) fn generic_error_message(status: u16) -> String {
    format!("the upstream answered HTTP {status}")
}

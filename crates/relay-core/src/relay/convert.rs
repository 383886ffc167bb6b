//! Where the relay's pipeline meets `relay_protocol::convert`: the request body in the chosen
//! account's dialect (once per attempt: the dialect depends on the account), the re-framing of
//! its answer into the client's dialect, and the usage reader of the upstream's dialect.
//!
//! Same dialect in and out is a pass-through: the body goes as it came (only the model changes
//! when the account maps it, and an OpenAI stream asks for its usage chunk), the answer comes
//! back byte for byte.

use bytes::Bytes;
use http::StatusCode;
use relay_protocol::anthropic::{MessagesUsageTracker, StreamEnding, UsageFault};
use relay_protocol::convert::anthropic::from_gemini as gemini_to_anthropic;
use relay_protocol::convert::anthropic::from_openai_chat as to_anthropic;
use relay_protocol::convert::anthropic::from_openai_responses as responses_to_anthropic;
use relay_protocol::convert::gemini::from_anthropic as to_gemini;
use relay_protocol::convert::openai_chat::from_anthropic as to_openai_chat;
use relay_protocol::convert::openai_chat::from_openai_responses as responses_to_chat;
use relay_protocol::convert::openai_responses::compaction;
use relay_protocol::convert::openai_responses::from_anthropic as to_openai_responses;
use relay_protocol::convert::openai_responses::from_openai_chat as chat_to_responses;
use relay_protocol::convert::{RequestOptions, Translate};
use relay_protocol::gemini::GeminiUsageTracker;
use relay_protocol::openai::ChatUsageTracker;
use relay_protocol::openai_responses::ResponsesUsageTracker;
use relay_protocol::{Dialect, ErrorKind, Usage};

use super::{RelayBody, RelayError, RelayRequest, RelayResponse, RelaySettings};
use crate::accounts::AccountEntry;

/// The request body for `account`: converted to its dialect, with its model name, in the form
/// its platform takes (the ChatGPT backend's).
pub(super) fn upstream_body(
    request: &RelayRequest,
    account: &AccountEntry,
    settings: &RelaySettings,
) -> Result<Bytes, RelayError> {
    let body = body_in_dialect(request, account, settings)?;
    match account.platform {
        relay_upstream::Platform::Codex => {
            let compact = request.endpoint == super::Endpoint::ResponsesCompact;
            Ok(relay_upstream::chatgpt::backend_body(&body, compact).map_or(body, Bytes::from))
        }
        // Code Assist takes the Gemini request in an envelope naming the model and the
        // account's project.
        relay_upstream::Platform::GeminiOauth => {
            let project = match &account.credential {
                crate::accounts::Credential::Subscription(session) => {
                    session.tokens().account_id.unwrap_or_default()
                }
                crate::accounts::Credential::ApiKey(_) => String::new(),
            };
            let model = account
                .settings
                .map_model(&request.model)
                .unwrap_or(&request.model);
            let count = request.endpoint.counts_tokens();
            Ok(
                relay_upstream::code_assist::wrap(&body, model, &project, count)
                    .map_or(body, Bytes::from),
            )
        }
        _ => Ok(body),
    }
}

fn body_in_dialect(
    request: &RelayRequest,
    account: &AccountEntry,
    settings: &RelaySettings,
) -> Result<Bytes, RelayError> {
    // An Azure deployment names the model upstream, whatever the client asked for.
    let mapped = account
        .settings
        .deployment
        .as_deref()
        .filter(|_| account.platform == relay_upstream::Platform::AzureOpenAi)
        .or_else(|| account.settings.map_model(&request.model));
    let model = mapped.unwrap_or(&request.model);
    let options = RequestOptions {
        model: Some(model),
        // Never more than the estimate reserved for a request without a limit
        // (`output_limit(model, None)`, the model's maximum), which this cannot exceed.
        default_max_tokens: crate::pricing::output_limit(model, Some(DEFAULT_MAX_TOKENS))
            .min(settings.max_tokens_ceiling),
    };
    let converted = match (
        request.endpoint.dialect(),
        account.platform.dialect_for(request.endpoint.dialect()),
    ) {
        (Dialect::AnthropicMessages, Dialect::OpenAiChat) => {
            to_openai_chat::request(&request.body, &options)
        }
        (Dialect::OpenAiChat, Dialect::AnthropicMessages) => {
            to_anthropic::request(&request.body, &options)
        }
        (Dialect::OpenAiResponses, Dialect::AnthropicMessages) => {
            responses_to_anthropic::request(&request.body, &options)
        }
        (Dialect::OpenAiChat, Dialect::OpenAiResponses) => {
            chat_to_responses::request(&request.body, &options)
        }
        // Through Chat's form: Messages → Chat → Responses.
        (Dialect::AnthropicMessages, Dialect::OpenAiResponses) => {
            to_openai_chat::request(&request.body, &options)
                .and_then(|chat| chat_to_responses::request(&chat, &options))
        }
        // Through Anthropic's form: Responses → Messages → Chat.
        (Dialect::OpenAiResponses, Dialect::OpenAiChat) => {
            responses_to_anthropic::request(&request.body, &options)
                .and_then(|messages| to_openai_chat::request(&messages, &options))
        }
        // A Gemini request says whether it streams in its path, not its body.
        (Dialect::Gemini, Dialect::AnthropicMessages) => {
            gemini_to_anthropic::request(&request.body, &options)
                .map(|messages| streamed(messages, request.stream))
        }
        (Dialect::Gemini, Dialect::OpenAiChat) => {
            gemini_to_anthropic::request(&request.body, &options)
                .map(|messages| streamed(messages, request.stream))
                .and_then(|messages| to_openai_chat::request(&messages, &options))
        }
        (Dialect::AnthropicMessages, Dialect::Gemini) => {
            to_gemini::request(&request.body, &options)
        }
        (Dialect::OpenAiChat, Dialect::Gemini) => to_anthropic::request(&request.body, &options)
            .and_then(|messages| to_gemini::request(&messages, &options)),
        // Codex on a Gemini account, through Anthropic's form.
        (Dialect::OpenAiResponses, Dialect::Gemini) => {
            responses_to_anthropic::request(&request.body, &options)
                .and_then(|messages| to_gemini::request(&messages, &options))
        }
        (Dialect::OpenAiChat, Dialect::OpenAiChat) if request.stream && !request.include_usage => {
            return Ok(rewritten(&request.body, mapped, true));
        }
        (Dialect::AnthropicMessages, Dialect::AnthropicMessages) => {
            // Thinking converted from an OpenAI-compatible host earlier in the conversation
            // carries no Anthropic signature; Anthropic would refuse the request with it.
            let body = relay_protocol::convert::anthropic::strip_unsigned_thinking(&request.body)
                .map_or_else(|| request.body.clone(), Bytes::from);
            return Ok(rewritten(&body, mapped, false));
        }
        _ => return Ok(rewritten(&request.body, mapped, false)),
    };
    converted.map(Bytes::from).map_err(|error| {
        RelayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "this request cannot be served by the chosen {} account: {}",
                account.platform.as_str(),
                error.message
            ),
        )
    })
}

/// An Anthropic request body that streams when `stream` says so.
fn streamed(messages: Vec<u8>, stream: bool) -> Vec<u8> {
    if !stream {
        return messages;
    }
    match serde_json::from_slice::<serde_json::Value>(&messages) {
        Ok(serde_json::Value::Object(mut object)) => {
            object.insert("stream".to_owned(), serde_json::Value::Bool(true));
            serde_json::to_vec(&object).unwrap_or(messages)
        }
        _ => messages,
    }
}

/// Whether a Gemini client asked for its stream as SSE (`?alt=sse`) rather than a JSON array.
pub(super) fn gemini_sse(request: &RelayRequest) -> bool {
    request
        .query
        .as_deref()
        .is_some_and(|query| query.split('&').any(|pair| pair == "alt=sse"))
}

/// The body with its `model` replaced and, for an OpenAI stream, the usage chunk requested; the
/// body untouched when neither applies (or it cannot be rewritten).
fn rewritten(body: &Bytes, model: Option<&str>, include_usage: bool) -> Bytes {
    if model.is_none() && !include_usage {
        return body.clone();
    }
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(body) else {
        return body.clone();
    };
    if let Some(model) = model {
        object.insert(
            "model".to_owned(),
            serde_json::Value::String(model.to_owned()),
        );
    }
    if include_usage {
        let options = object
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
        }
    }
    serde_json::to_vec(&object)
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// `count_tokens` served by an account that cannot count: an estimate from the body's size (a
/// quarter of its bytes, as tokenizers average on English and code), flagged in the
/// `x-claude-relay-estimate` header and not sent upstream.
pub(super) fn estimated_token_count(request: &RelayRequest) -> RelayResponse {
    let tokens = request.body.len().div_ceil(4);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-claude-relay-estimate",
        http::HeaderValue::from_static("body-bytes/4"),
    );
    RelayResponse {
        status: StatusCode::OK,
        headers,
        body: RelayBody::Buffered(Bytes::from(
            if request.endpoint.dialect() == Dialect::Gemini {
                format!("{{\"totalTokens\":{tokens}}}")
            } else {
                format!("{{\"input_tokens\":{tokens}}}")
            },
        )),
    }
}

/// Output asked for in a converted request that names no limit (Anthropic requires one).
const DEFAULT_MAX_TOKENS: u64 = 8_192;

/// An upstream error body said in the client's dialect, anything token-like removed first.
pub(super) fn error_body(client: Dialect, upstream: Dialect, status: u16, body: &[u8]) -> Bytes {
    let converted = match (upstream, client) {
        (Dialect::AnthropicMessages, Dialect::OpenAiChat | Dialect::OpenAiResponses) => {
            openai_error(status, body)
        }
        (Dialect::OpenAiChat, Dialect::AnthropicMessages) => anthropic_error(status, body),
        (Dialect::OpenAiChat, Dialect::OpenAiResponses)
        | (Dialect::OpenAiResponses, Dialect::OpenAiChat) => {
            openai_error_between_apis(status, body)
        }
        (Dialect::OpenAiResponses, Dialect::AnthropicMessages) => anthropic_error(status, body),
        _ => relay_protocol::dialect::error_body(
            client,
            ErrorKind::from_status(status),
            "the upstream refused the request",
            "",
        ),
    };
    Bytes::from(converted)
}

/// An Anthropic error body as OpenAI's, its text redacted (the upstream may quote a
/// credential, and the client must never see one).
fn openai_error(status: u16, body: &[u8]) -> Vec<u8> {
    to_openai_chat::error(status, &crate::redact::json_body(body))
}

/// An OpenAI error body as Anthropic's, its text redacted.
fn anthropic_error(status: u16, body: &[u8]) -> Vec<u8> {
    to_anthropic::error(status, &crate::redact::json_body(body))
}

/// An OpenAI error (Chat or Responses: the same shape) for a client of the other API: its kind
/// read as Anthropic's conversions read it, its text redacted.
fn openai_error_between_apis(status: u16, body: &[u8]) -> Vec<u8> {
    to_openai_chat::error(status, &anthropic_error(status, body))
}

/// An Anthropic account's whole answer for a Responses client.
fn anthropic_response_for_responses(_: u16, body: &[u8]) -> Vec<u8> {
    to_openai_responses::response(body)
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiResponses, &error.message))
}

/// A Chat host's whole answer for a Responses client, through Anthropic's form.
fn chat_response_for_responses(_: u16, body: &[u8]) -> Vec<u8> {
    to_anthropic::response(body)
        .and_then(|message| to_openai_responses::response(&message))
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiResponses, &error.message))
}

/// An Anthropic account's answer to a compaction, as the compaction object.
fn anthropic_compaction(_: u16, body: &[u8]) -> Vec<u8> {
    to_openai_responses::compaction(body)
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiResponses, &error.message))
}

/// A Chat account's answer to a compaction, through Anthropic's form.
fn chat_compaction(_: u16, body: &[u8]) -> Vec<u8> {
    to_anthropic::response(body)
        .and_then(|message| to_openai_responses::compaction(&message))
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiResponses, &error.message))
}

/// An Anthropic account's error for a Gemini client, its text redacted.
fn gemini_error(status: u16, body: &[u8]) -> Vec<u8> {
    to_gemini::error(status, &crate::redact::json_body(body))
}

/// A Gemini account's error for an Anthropic client, its text redacted.
fn anthropic_error_from_gemini(status: u16, body: &[u8]) -> Vec<u8> {
    gemini_to_anthropic::error(status, &crate::redact::json_body(body))
}

/// A Chat host's error for a Gemini client, through Anthropic's form.
fn gemini_error_from_chat(status: u16, body: &[u8]) -> Vec<u8> {
    gemini_error(status, &anthropic_error(status, body))
}

/// A Gemini account's error for a Chat client, through Anthropic's form.
fn chat_error_from_gemini(status: u16, body: &[u8]) -> Vec<u8> {
    openai_error(status, &anthropic_error_from_gemini(status, body))
}

/// An Anthropic account's whole answer for a Gemini client.
fn anthropic_response_for_gemini(_: u16, body: &[u8]) -> Vec<u8> {
    to_gemini::response(body).unwrap_or_else(|error| unconvertible(Dialect::Gemini, &error.message))
}

/// A Chat host's whole answer for a Gemini client, through Anthropic's form.
fn chat_response_for_gemini(_: u16, body: &[u8]) -> Vec<u8> {
    to_anthropic::response(body)
        .and_then(|message| to_gemini::response(&message))
        .unwrap_or_else(|error| unconvertible(Dialect::Gemini, &error.message))
}

/// A Gemini account's whole answer for an Anthropic client.
fn gemini_response_for_anthropic(_: u16, body: &[u8]) -> Vec<u8> {
    gemini_to_anthropic::response(body)
        .unwrap_or_else(|error| unconvertible(Dialect::AnthropicMessages, &error.message))
}

/// A Gemini account's whole answer for a Chat client, through Anthropic's form.
fn gemini_response_for_chat(_: u16, body: &[u8]) -> Vec<u8> {
    gemini_to_anthropic::response(body)
        .and_then(|message| to_openai_chat::response(&message))
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiChat, &error.message))
}

/// A Gemini account's error for a Responses client, through Anthropic's form.
fn responses_error_from_gemini(status: u16, body: &[u8]) -> Vec<u8> {
    openai_error(status, &anthropic_error_from_gemini(status, body))
}

/// A Gemini account's whole answer for a Responses client, through Anthropic's form.
fn gemini_response_for_responses(_: u16, body: &[u8]) -> Vec<u8> {
    gemini_to_anthropic::response(body)
        .and_then(|message| to_openai_responses::response(&message))
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiResponses, &error.message))
}

/// A Responses account's whole answer for a Chat client.
fn responses_response_for_chat(_: u16, body: &[u8]) -> Vec<u8> {
    responses_to_chat::response(body)
        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiChat, &error.message))
}

/// A Responses account's whole answer for an Anthropic client, through Chat's form.
fn responses_response_for_anthropic(_: u16, body: &[u8]) -> Vec<u8> {
    responses_to_chat::response(body)
        .and_then(|chat| to_anthropic::response(&chat))
        .unwrap_or_else(|error| unconvertible(Dialect::AnthropicMessages, &error.message))
}

/// A Responses stream's whole response, for a client that did not stream; `convert` says it in
/// the client's dialect.
fn assembled(client: Dialect, body: &[u8], convert: fn(u16, &[u8]) -> Vec<u8>) -> Vec<u8> {
    match relay_protocol::openai_responses::assembled_response(body) {
        Some(whole) => convert(200, &whole),
        None => unconvertible(client, "the stream ended before the response did"),
    }
}

fn responses_stream_for_responses(_: u16, body: &[u8]) -> Vec<u8> {
    assembled(Dialect::OpenAiResponses, body, |_, whole| whole.to_vec())
}

fn responses_stream_for_chat(_: u16, body: &[u8]) -> Vec<u8> {
    assembled(Dialect::OpenAiChat, body, responses_response_for_chat)
}

fn responses_stream_for_anthropic(_: u16, body: &[u8]) -> Vec<u8> {
    assembled(
        Dialect::AnthropicMessages,
        body,
        responses_response_for_anthropic,
    )
}

/// How the answer's bytes reach the client.
pub(crate) enum Reframe {
    /// Byte for byte (zero copy).
    Passthrough,
    /// Event by event through a translator.
    Stream(Box<dyn Translate + Send>),
    /// A whole JSON body, converted at its end.
    Whole {
        convert: fn(u16, &[u8]) -> Vec<u8>,
        status: u16,
        buffer: Vec<u8>,
        /// The client's dialect, for the error that replaces an oversized body.
        client: Dialect,
        oversized: bool,
    },
}

impl std::fmt::Debug for Reframe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Passthrough => "Passthrough",
            Self::Stream(_) => "Stream",
            Self::Whole { .. } => "Whole",
        })
    }
}

/// A converted whole body is kept up to this size (the upstream's non-streamed answers are far
/// smaller); beyond it the client gets an error body instead of a cut document.
const WHOLE_BODY_LIMIT: usize = 32 * 1024 * 1024;

impl Reframe {
    /// Whether the client gets one JSON body (the upstream's, converted at its end).
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self, Self::Whole { .. })
    }

    /// The client's bytes for an upstream chunk; `None` when nothing is ready yet.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        match self {
            Self::Passthrough => Some(chunk),
            Self::Stream(translator) => {
                let mut out = Vec::new();
                translator.push(&chunk, &mut out);
                (!out.is_empty()).then(|| Bytes::from(out))
            }
            Self::Whole {
                buffer, oversized, ..
            } => {
                if *oversized || buffer.len() + chunk.len() > WHOLE_BODY_LIMIT {
                    *oversized = true;
                    *buffer = Vec::new();
                } else {
                    buffer.extend_from_slice(&chunk);
                }
                None
            }
        }
    }

    /// The client's last bytes once the upstream ended cleanly.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        match self {
            Self::Passthrough => None,
            Self::Stream(translator) => {
                let mut out = Vec::new();
                translator.finish(&mut out);
                (!out.is_empty()).then(|| Bytes::from(out))
            }
            Self::Whole {
                convert,
                status,
                buffer,
                client,
                oversized,
            } => Some(Bytes::from(if *oversized {
                unconvertible(*client, "the answer is too large to convert")
            } else {
                convert(*status, buffer)
            })),
        }
    }
}

/// How the answer to `request` from an upstream speaking `upstream` is re-framed for the client;
/// `envelope`: the upstream is Code Assist, whose Gemini answers come in an envelope.
pub(super) fn reframe(
    request: &RelayRequest,
    upstream: Dialect,
    is_sse: bool,
    status: StatusCode,
    envelope: bool,
) -> Reframe {
    let client = request.endpoint.dialect();
    if envelope && status.is_success() {
        return code_assist_reframe(request, is_sse);
    }
    // An upstream that streams what the client asked for whole (the ChatGPT backend streams
    // everything): the stream's response, assembled at its end, in the client's dialect.
    if upstream == Dialect::OpenAiResponses && is_sse && !request.stream && status.is_success() {
        return whole(
            client,
            status,
            match client {
                Dialect::OpenAiChat => responses_stream_for_chat,
                Dialect::AnthropicMessages => responses_stream_for_anthropic,
                _ => responses_stream_for_responses,
            },
        );
    }
    match (upstream, client) {
        (Dialect::OpenAiChat, Dialect::OpenAiChat)
            if is_sse && request.stream && !request.include_usage =>
        {
            Reframe::Stream(Box::new(HideUsageChunk {
                decoder: relay_protocol::sse::SseDecoder::new(),
            }))
        }
        (upstream, client) if upstream == client => Reframe::Passthrough,
        (Dialect::AnthropicMessages, Dialect::OpenAiChat) => {
            if !status.is_success() {
                whole(client, status, openai_error)
            } else if is_sse {
                Reframe::Stream(Box::new(to_openai_chat::StreamTranslator::new(
                    request.include_usage,
                )))
            } else {
                whole(client, status, |_, body| {
                    to_openai_chat::response(body)
                        .unwrap_or_else(|error| unconvertible(Dialect::OpenAiChat, &error.message))
                })
            }
        }
        (Dialect::AnthropicMessages, Dialect::OpenAiResponses) => {
            if !status.is_success() {
                whole(client, status, openai_error)
            } else if request.endpoint == super::Endpoint::ResponsesCompact {
                whole(client, status, anthropic_compaction)
            } else if request.compaction && is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    to_openai_responses::StreamTranslator::new(),
                    compaction::StreamTranslator::new(),
                )))
            } else if request.compaction {
                whole(client, status, |status, body| {
                    compaction::whole(&anthropic_response_for_responses(status, body))
                })
            } else if is_sse {
                Reframe::Stream(Box::new(to_openai_responses::StreamTranslator::new()))
            } else {
                whole(client, status, anthropic_response_for_responses)
            }
        }
        (Dialect::OpenAiResponses, Dialect::OpenAiChat) => {
            if !status.is_success() {
                whole(client, status, openai_error_between_apis)
            } else if is_sse {
                Reframe::Stream(Box::new(responses_to_chat::StreamTranslator::new(
                    request.include_usage,
                )))
            } else {
                whole(client, status, responses_response_for_chat)
            }
        }
        (Dialect::OpenAiResponses, Dialect::AnthropicMessages) => {
            if !status.is_success() {
                whole(client, status, anthropic_error)
            } else if is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    responses_to_chat::StreamTranslator::new(true),
                    to_anthropic::StreamTranslator::new(),
                )))
            } else {
                whole(client, status, responses_response_for_anthropic)
            }
        }
        (Dialect::OpenAiChat, Dialect::OpenAiResponses) => {
            if !status.is_success() {
                whole(client, status, openai_error_between_apis)
            } else if request.endpoint == super::Endpoint::ResponsesCompact {
                whole(client, status, chat_compaction)
            } else if request.compaction && is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    relay_protocol::convert::Chain::new(
                        to_anthropic::StreamTranslator::new(),
                        to_openai_responses::StreamTranslator::new(),
                    ),
                    compaction::StreamTranslator::new(),
                )))
            } else if request.compaction {
                whole(client, status, |status, body| {
                    compaction::whole(&chat_response_for_responses(status, body))
                })
            } else if is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    to_anthropic::StreamTranslator::new(),
                    to_openai_responses::StreamTranslator::new(),
                )))
            } else {
                whole(client, status, chat_response_for_responses)
            }
        }
        (Dialect::OpenAiChat, Dialect::AnthropicMessages) => {
            if !status.is_success() {
                whole(client, status, anthropic_error)
            } else if is_sse {
                Reframe::Stream(Box::new(to_anthropic::StreamTranslator::new()))
            } else {
                whole(client, status, |_, body| {
                    to_anthropic::response(body).unwrap_or_else(|error| {
                        unconvertible(Dialect::AnthropicMessages, &error.message)
                    })
                })
            }
        }
        (Dialect::AnthropicMessages, Dialect::Gemini) => {
            if !status.is_success() {
                whole(client, status, gemini_error)
            } else if is_sse {
                Reframe::Stream(Box::new(to_gemini::StreamTranslator::new(gemini_sse(
                    request,
                ))))
            } else {
                whole(client, status, anthropic_response_for_gemini)
            }
        }
        (Dialect::OpenAiChat, Dialect::Gemini) => {
            if !status.is_success() {
                whole(client, status, gemini_error_from_chat)
            } else if is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    to_anthropic::StreamTranslator::new(),
                    to_gemini::StreamTranslator::new(gemini_sse(request)),
                )))
            } else {
                whole(client, status, chat_response_for_gemini)
            }
        }
        (Dialect::Gemini, Dialect::AnthropicMessages) => {
            if !status.is_success() {
                whole(client, status, anthropic_error_from_gemini)
            } else if is_sse {
                Reframe::Stream(Box::new(gemini_to_anthropic::StreamTranslator::new()))
            } else {
                whole(client, status, gemini_response_for_anthropic)
            }
        }
        (Dialect::Gemini, Dialect::OpenAiChat) => {
            if !status.is_success() {
                whole(client, status, chat_error_from_gemini)
            } else if is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    gemini_to_anthropic::StreamTranslator::new(),
                    to_openai_chat::StreamTranslator::new(request.include_usage),
                )))
            } else {
                whole(client, status, gemini_response_for_chat)
            }
        }
        (Dialect::Gemini, Dialect::OpenAiResponses) => {
            if !status.is_success() {
                whole(client, status, responses_error_from_gemini)
            } else if request.compaction && is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    relay_protocol::convert::Chain::new(
                        gemini_to_anthropic::StreamTranslator::new(),
                        to_openai_responses::StreamTranslator::new(),
                    ),
                    compaction::StreamTranslator::new(),
                )))
            } else if request.compaction {
                whole(client, status, |status, body| {
                    compaction::whole(&gemini_response_for_responses(status, body))
                })
            } else if is_sse {
                Reframe::Stream(Box::new(relay_protocol::convert::Chain::new(
                    gemini_to_anthropic::StreamTranslator::new(),
                    to_openai_responses::StreamTranslator::new(),
                )))
            } else {
                whole(client, status, gemini_response_for_responses)
            }
        }
        // Pairs without a conversion are never scheduled (`schedule::bridges`).
        _ => Reframe::Passthrough,
    }
}

/// A Code Assist answer out of its envelope, then in the client's dialect.
fn code_assist_reframe(request: &RelayRequest, is_sse: bool) -> Reframe {
    use relay_protocol::convert::Chain;
    use relay_upstream::code_assist::Unwrap;
    let client = request.endpoint.dialect();
    let status = StatusCode::OK;
    match (client, is_sse) {
        (Dialect::Gemini, true) => Reframe::Stream(Box::new(Unwrap::new(gemini_sse(request)))),
        (Dialect::Gemini, false) => whole(client, status, |_, body| {
            relay_upstream::code_assist::unwrap(body)
        }),
        (Dialect::AnthropicMessages, true) => Reframe::Stream(Box::new(Chain::new(
            Unwrap::new(true),
            gemini_to_anthropic::StreamTranslator::new(),
        ))),
        (Dialect::AnthropicMessages, false) => whole(client, status, |status, body| {
            gemini_response_for_anthropic(status, &relay_upstream::code_assist::unwrap(body))
        }),
        (Dialect::OpenAiResponses, true) => Reframe::Stream(Box::new(Chain::new(
            Chain::new(
                Unwrap::new(true),
                gemini_to_anthropic::StreamTranslator::new(),
            ),
            to_openai_responses::StreamTranslator::new(),
        ))),
        (Dialect::OpenAiResponses, false) => whole(client, status, |status, body| {
            gemini_response_for_responses(status, &relay_upstream::code_assist::unwrap(body))
        }),
        (_, true) => Reframe::Stream(Box::new(Chain::new(
            Chain::new(
                Unwrap::new(true),
                gemini_to_anthropic::StreamTranslator::new(),
            ),
            to_openai_chat::StreamTranslator::new(request.include_usage),
        ))),
        (_, false) => whole(client, status, |status, body| {
            gemini_response_for_chat(status, &relay_upstream::code_assist::unwrap(body))
        }),
    }
}

fn whole(client: Dialect, status: StatusCode, convert: fn(u16, &[u8]) -> Vec<u8>) -> Reframe {
    Reframe::Whole {
        convert,
        status: status.as_u16(),
        buffer: Vec::new(),
        client,
        oversized: false,
    }
}

/// An OpenAI stream for a client that did not ask for usage: the relay asked for it (to bill
/// the request) and hides the usage-only chunk; every other event passes as it came.
struct HideUsageChunk {
    decoder: relay_protocol::sse::SseDecoder,
}

impl Translate for HideUsageChunk {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.decoder.feed(chunk, &mut |event, data| {
            if relay_protocol::openai::is_usage_only_chunk(data.as_bytes()) {
                return;
            }
            if !event.is_empty() {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(event.as_bytes());
                out.push(b'\n');
            }
            for line in data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
            out.push(b'\n');
        });
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

fn unconvertible(client: Dialect, detail: &str) -> Vec<u8> {
    relay_protocol::dialect::error_body(
        client,
        ErrorKind::BadGateway,
        &format!("the upstream's answer could not be converted: {detail}"),
        "",
    )
}

/// Reads usage from the upstream's dialect, whatever the client speaks.
#[derive(Debug)]
pub(crate) enum UsageReader {
    Messages(MessagesUsageTracker),
    Chat(ChatUsageTracker),
    Responses(ResponsesUsageTracker),
    Gemini(GeminiUsageTracker),
}

impl UsageReader {
    pub(crate) fn new(upstream: Dialect) -> Self {
        match upstream {
            Dialect::OpenAiChat => Self::Chat(ChatUsageTracker::new()),
            Dialect::OpenAiResponses => Self::Responses(ResponsesUsageTracker::new()),
            Dialect::Gemini => Self::Gemini(GeminiUsageTracker::new()),
            _ => Self::Messages(MessagesUsageTracker::new()),
        }
    }

    pub(crate) fn observe_sse_chunk(&mut self, chunk: &[u8]) {
        match self {
            Self::Messages(tracker) => tracker.observe_sse_chunk(chunk),
            Self::Chat(tracker) => tracker.observe_sse_chunk(chunk),
            Self::Responses(tracker) => tracker.observe_sse_chunk(chunk),
            Self::Gemini(tracker) => tracker.observe_sse_chunk(chunk),
        }
    }

    pub(crate) fn observe_json_body(&mut self, body: &[u8]) -> bool {
        match self {
            Self::Messages(tracker) => tracker.observe_json_body(body),
            Self::Chat(tracker) => tracker.observe_json_body(body),
            Self::Responses(tracker) => tracker.observe_json_body(body),
            Self::Gemini(tracker) => tracker.observe_json_body(body),
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        match self {
            Self::Messages(tracker) => tracker.usage(),
            Self::Chat(tracker) => tracker.usage(),
            Self::Responses(tracker) => tracker.usage(),
            Self::Gemini(tracker) => tracker.usage(),
        }
    }

    pub(crate) fn model(&self) -> Option<&str> {
        match self {
            Self::Messages(tracker) => tracker.model(),
            Self::Chat(tracker) => tracker.model(),
            Self::Responses(tracker) => tracker.model(),
            Self::Gemini(tracker) => tracker.model(),
        }
    }

    pub(crate) fn ending(&self) -> &StreamEnding {
        match self {
            Self::Messages(tracker) => tracker.ending(),
            Self::Chat(tracker) => tracker.ending(),
            Self::Responses(tracker) => tracker.ending(),
            Self::Gemini(tracker) => tracker.ending(),
        }
    }

    pub(crate) fn fault(&self) -> Option<UsageFault> {
        match self {
            Self::Messages(tracker) => tracker.fault(),
            Self::Chat(tracker) => tracker.fault(),
            Self::Responses(tracker) => tracker.fault(),
            Self::Gemini(tracker) => tracker.fault(),
        }
    }

    /// The error type an error body of the upstream's dialect names, or `http_<status>`.
    pub(crate) fn error_type(&self, body: &[u8], status: u16) -> String {
        let value = serde_json::from_slice::<serde_json::Value>(body).ok();
        let named = value.as_ref().and_then(|value| {
            let error = &value["error"];
            match self {
                Self::Messages(_) => error["type"].as_str(),
                Self::Chat(_) | Self::Responses(_) => {
                    error["code"].as_str().or_else(|| error["type"].as_str())
                }
                Self::Gemini(_) => error["status"].as_str(),
            }
            .map(str::to_owned)
        });
        named.unwrap_or_else(|| format!("http_{status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_body_is_converted_at_its_end_and_an_oversized_one_becomes_an_error() {
        let mut reframe = whole(Dialect::OpenAiChat, StatusCode::OK, |_, body| {
            to_openai_chat::response(body).unwrap_or_default()
        });
        let message = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#;
        let (head, tail) = message.split_at(40);
        assert_eq!(reframe.push(Bytes::from_static(head)), None);
        assert_eq!(reframe.push(Bytes::from_static(tail)), None);
        let converted: serde_json::Value =
            serde_json::from_slice(&reframe.finish().unwrap()).unwrap();
        assert_eq!(converted["choices"][0]["message"]["content"], "hi");

        let mut reframe = whole(Dialect::OpenAiChat, StatusCode::OK, |_, _| b"{}".to_vec());
        let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
        for _ in 0..=WHOLE_BODY_LIMIT / chunk.len() {
            assert_eq!(reframe.push(chunk.clone()), None);
        }
        let error: serde_json::Value = serde_json::from_slice(&reframe.finish().unwrap()).unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too large"),
            "{error}"
        );
    }
}

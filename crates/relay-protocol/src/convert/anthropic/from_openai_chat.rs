//! OpenAI Chat Completions → Anthropic Messages: an OpenAI client's request for an Anthropic
//! upstream, and an OpenAI-compatible upstream's response, stream and errors for an Anthropic
//! client (Claude Code on other models).
//!
//! What has no equivalent is either dropped on purpose ([`DROPPED_REQUEST_FIELDS`]: sampling
//! knobs and storage options that do not change what the answer may contain) or refused with a
//! [`ConvertError`] ([`REFUSED_REQUEST_FIELDS`], `n > 1`, audio or file input, `json_object`
//! output): the caller gets a 400 rather than a silently different answer. Other unknown
//! top-level fields are dropped.
//!
//! Choices made where the dialects differ:
//! - Every `system`/`developer` message, wherever it stands, goes to the top-level `system`
//!   (as text blocks, in order): Anthropic has no system role inside `messages` outside a beta.
//! - `role: tool` messages become `tool_result` blocks of a user turn; consecutive messages of
//!   one role are merged (Anthropic wants all results of parallel calls in one user turn).
//! - An assistant turn's `reasoning_content` is dropped on the way to Anthropic: Anthropic only
//!   accepts thinking blocks with its own signatures, which an OpenAI client never holds.
//! - `reasoning_effort` becomes `thinking: {type: enabled, budget_tokens}` (low 2048, medium
//!   8192, high 16384, xhigh 32768; `none`/`minimal` are no thinking), the budget kept under
//!   `max_tokens` and dropped below Anthropic's minimum of 1024. With thinking on, `temperature`
//!   and `top_p` are dropped (Anthropic rejects them with thinking). `temperature` is clamped
//!   to Anthropic's 0–1.
//! - On the way back, reasoning text (`reasoning_content`, or `reasoning` as some hosts name it)
//!   becomes a thinking block signed with [`UNSIGNED_THINKING_SIGNATURE`].
//! - Ids are derived: `msg_<completion id>`; tool call ids are kept (`call_<index>` if absent).

use crate::convert::target_model;
use std::collections::HashMap;

use serde_json::{json, Value};

use crate::convert::{
    count, generic_error_message, parse_object, stop_reason_of, to_bytes, truncated,
    upstream_error, write_event, ConvertError, Object, RequestOptions, Translate,
    MAX_ERROR_MESSAGE, MAX_USER_ID, UNSIGNED_THINKING_SIGNATURE,
};
use crate::dialect::ErrorKind;
use crate::sse::SseDecoder;

/// Request fields Anthropic has no place for and that only tune sampling or storage: dropped.
pub const DROPPED_REQUEST_FIELDS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "logit_bias",
    "stream_options",
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "verbosity",
];

/// Request fields that ask for something Anthropic cannot give: refused.
pub const REFUSED_REQUEST_FIELDS: &[&str] = &[
    "audio",
    "prediction",
    "functions",
    "function_call",
    "web_search_options",
];

/// OpenAI Chat client request → Anthropic Messages upstream request.
pub fn request(body: &[u8], options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    if let Some(field) = REFUSED_REQUEST_FIELDS
        .iter()
        .find(|field| source.get(**field).is_some_and(|value| !value.is_null()))
    {
        return Err(ConvertError::new(format!(
            "`{field}` cannot be expressed for an Anthropic upstream"
        )));
    }
    if source.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
        return Err(ConvertError::new(
            "`n` greater than 1 cannot be expressed for an Anthropic upstream",
        ));
    }
    if source.get("logprobs").and_then(Value::as_bool) == Some(true)
        || source
            .get("top_logprobs")
            .is_some_and(|value| !value.is_null())
    {
        return Err(ConvertError::new(
            "`logprobs` cannot be expressed for an Anthropic upstream",
        ));
    }
    if let Some(Value::Array(modalities)) = source.get("modalities") {
        if modalities.iter().any(|modality| modality != "text") {
            return Err(ConvertError::new(
                "only text output can be expressed for an Anthropic upstream",
            ));
        }
    }

    let mut out = Object::new();
    out.insert("model".into(), target_model(&source, options)?.into());
    let max_tokens = source
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| source.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(options.default_max_tokens);
    out.insert("max_tokens".into(), max_tokens.into());

    let Some(Value::Array(turns)) = source.get("messages") else {
        return Err(ConvertError::new("`messages` must be an array"));
    };
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (position, turn) in turns.iter().enumerate() {
        let content = turn.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match turn.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                let text = text_of(content, position)?;
                if !text.is_empty() {
                    system.push(json!({"type": "text", "text": text}));
                }
                continue;
            }
            Some("user") => ("user", user_blocks(content, position)?),
            Some("assistant") => ("assistant", assistant_blocks(turn, position)?),
            Some("tool") => {
                let id = turn
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ConvertError::new(format!("messages[{position}].tool_call_id is missing"))
                    })?;
                let result = match content {
                    Value::String(text) => Value::String(text.clone()),
                    Value::Null => Value::String(String::new()),
                    Value::Array(_) => Value::String(text_of(content, position)?),
                    _ => {
                        return Err(ConvertError::new(format!(
                            "messages[{position}].content must be a string or text parts"
                        )))
                    }
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
                )
            }
            _ => {
                return Err(ConvertError::new(format!(
                    "messages[{position}].role must be system, developer, user, assistant or tool"
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let messages = messages
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    match source.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    let effort = source.get("reasoning_effort").and_then(Value::as_str);
    insert_sampling(&source, &mut out, effort, max_tokens)?;
    let has_tools = match source.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => {
            let converted = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
            out.insert("tools".into(), Value::Array(converted));
            true
        }
        _ => false,
    };
    let choice = source
        .get("tool_choice")
        .filter(|choice| !choice.is_null())
        .map(tool_choice)
        .transpose()?;
    insert_tool_choice(&source, &mut out, choice, has_tools);
    if let Some(format) = source
        .get("response_format")
        .filter(|format| !format.is_null())
    {
        if let Some(format) = output_format(format)? {
            out.insert("output_config".into(), json!({"format": format}));
        }
    }
    if let Some(user) = source
        .get("user")
        .or_else(|| source.get("safety_identifier"))
        .and_then(Value::as_str)
        .filter(|user| !user.is_empty())
    {
        out.insert(
            "metadata".into(),
            json!({"user_id": truncated(user, MAX_USER_ID)}),
        );
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// The thinking budget for `effort` (OpenAI's reasoning effort) or, without thinking, the
/// client's temperature (clamped to Anthropic's range) and `top_p`; and `stream`.
pub(crate) fn insert_sampling(
    source: &Object,
    out: &mut Object,
    effort: Option<&str>,
    max_tokens: u64,
) -> Result<(), ConvertError> {
    let thinking_budget = effort
        .map(|effort| budget_of(effort, max_tokens))
        .transpose()?
        .flatten();
    if let Some(budget) = thinking_budget {
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    } else {
        if let Some(temperature) = source.get("temperature").and_then(Value::as_f64) {
            out.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
        }
        if let Some(top_p) = source.get("top_p").filter(|value| value.is_number()) {
            out.insert("top_p".into(), top_p.clone());
        }
    }
    if let Some(stream) = source.get("stream").and_then(Value::as_bool) {
        out.insert("stream".into(), stream.into());
    }
    Ok(())
}

/// The converted `tool_choice`, with `parallel_tool_calls: false` as Anthropic's
/// `disable_parallel_tool_use` (which needs a choice to sit on).
pub(crate) fn insert_tool_choice(
    source: &Object,
    out: &mut Object,
    mut choice: Option<Value>,
    has_tools: bool,
) {
    if has_tools && source.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = true.into();
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
}

/// The text of a string or of text parts (system, developer and tool messages).
fn text_of(content: &Value, position: usize) -> Result<String, ConvertError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => {
                        return Err(ConvertError::new(format!(
                            "messages[{position}].content may only hold text parts"
                        )))
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(ConvertError::new(format!(
            "messages[{position}].content must be a string or an array"
        ))),
    }
}

/// An OpenAI `image_url` (a `data:` URL or a web URL) → an Anthropic image block.
pub(crate) fn image_block(part: &Value, position: usize) -> Result<Value, ConvertError> {
    let url = part
        .get("image_url")
        .and_then(|image| image.get("url").or(Some(image)))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ConvertError::new(format!("messages[{position}]: image_url.url is missing"))
        })?;
    let source = match url.strip_prefix("data:") {
        Some(rest) => {
            let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
                ConvertError::new(format!(
                    "messages[{position}]: only base64 data URLs can be expressed for Anthropic"
                ))
            })?;
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    };
    Ok(json!({"type": "image", "source": source}))
}

fn user_blocks(content: &Value, position: usize) -> Result<Vec<Value>, ConvertError> {
    match content {
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({
                    "type": "text",
                    "text": part.get("text").and_then(Value::as_str).unwrap_or(""),
                })),
                Some("image_url") => image_block(part, position),
                Some(other) => Err(ConvertError::new(format!(
                    "messages[{position}]: a part of type `{other}` cannot be expressed for an Anthropic upstream"
                ))),
                None => Err(ConvertError::new(format!(
                    "messages[{position}]: a content part needs a type"
                ))),
            })
            .collect(),
        _ => Err(ConvertError::new(format!(
            "messages[{position}].content must be a string or an array"
        ))),
    }
}

fn assistant_blocks(turn: &Value, position: usize) -> Result<Vec<Value>, ConvertError> {
    let mut blocks = Vec::new();
    let mut text = String::new();
    match turn.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(content) => text.push_str(content),
        Value::Array(parts) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("refusal") => {
                        text.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or(""));
                    }
                    _ => {
                        return Err(ConvertError::new(format!(
                            "messages[{position}]: an assistant message may only hold text parts"
                        )))
                    }
                }
            }
        }
        _ => {
            return Err(ConvertError::new(format!(
                "messages[{position}].content must be a string or an array"
            )))
        }
    }
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = turn.get("tool_calls") {
        for (index, call) in calls.iter().enumerate() {
            blocks.push(tool_use(call, index).map_err(|message| {
                ConvertError::new(format!(
                    "messages[{position}].tool_calls[{index}]: {message}"
                ))
            })?);
        }
    }
    Ok(blocks)
}

/// An OpenAI tool call → a `tool_use` block (its arguments must be a JSON object).
fn tool_use(call: &Value, index: usize) -> Result<Value, String> {
    let function = call.get("function").unwrap_or(&Value::Null);
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a tool call needs a function name")?;
    let arguments = function
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("");
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str::<Value>(arguments) {
            Ok(input @ Value::Object(_)) => input,
            _ => return Err(format!("the arguments of `{name}` are not a JSON object")),
        }
    };
    Ok(json!({
        "type": "tool_use",
        "id": call_id(call.get("id").and_then(Value::as_str), index),
        "name": name,
        "input": input,
    }))
}

fn call_id(id: Option<&str>, index: usize) -> String {
    match id {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("call_{index}"),
    }
}

fn tool(definition: &Value) -> Result<Value, ConvertError> {
    if definition.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ConvertError::new(
            "only function tools can be expressed for an Anthropic upstream",
        ));
    }
    let function = definition.get("function").unwrap_or(&Value::Null);
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::new("a function tool needs a name"))?;
    let mut converted = Object::new();
    converted.insert("name".into(), name.into());
    if let Some(description) = function
        .get("description")
        .filter(|value| value.is_string())
    {
        converted.insert("description".into(), description.clone());
    }
    converted.insert(
        "input_schema".into(),
        function
            .get("parameters")
            .filter(|parameters| !parameters.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    Ok(Value::Object(converted))
}

fn tool_choice(choice: &Value) -> Result<Value, ConvertError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            other => Err(ConvertError::new(format!(
                "tool_choice `{other}` is not auto, required or none"
            ))),
        },
        _ => match (
            choice.get("type").and_then(Value::as_str),
            choice
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str),
        ) {
            (Some("function"), Some(name)) => Ok(json!({"type": "tool", "name": name})),
            _ => Err(ConvertError::new(
                "tool_choice must be auto, required, none or a named function",
            )),
        },
    }
}

/// The thinking budget for a `reasoning_effort`, kept under `max_tokens`; `None` for no thinking.
fn budget_of(effort: &str, max_tokens: u64) -> Result<Option<u64>, ConvertError> {
    let budget: u64 = match effort {
        "none" | "minimal" => return Ok(None),
        "low" => 2048,
        "medium" => 8192,
        "high" => 16384,
        "xhigh" => 32768,
        other => {
            return Err(ConvertError::new(format!(
                "reasoning_effort `{other}` is not none, minimal, low, medium, high or xhigh"
            )))
        }
    };
    let budget = budget.min(max_tokens.saturating_sub(1));
    Ok((budget >= 1024).then_some(budget))
}

fn output_format(format: &Value) -> Result<Option<Value>, ConvertError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            match format
                .get("json_schema")
                .and_then(|schema| schema.get("schema"))
            {
                Some(schema) => Ok(Some(json!({"type": "json_schema", "schema": schema}))),
                None => Err(ConvertError::new(
                    "response_format.json_schema.schema is missing",
                )),
            }
        }
        _ => Err(ConvertError::new(
            "only text and json_schema response formats can be expressed for an Anthropic upstream",
        )),
    }
}

/// OpenAI usage → Anthropic usage in the relay's convention: input excludes cached reads.
fn usage_of(usage: &Value) -> Value {
    let prompt = count(usage.get("prompt_tokens"));
    let cached = match usage
        .get("prompt_tokens_details")
        .and_then(|details| details.get("cached_tokens"))
        .and_then(Value::as_u64)
    {
        Some(cached) => cached,
        None => count(usage.get("prompt_cache_hit_tokens")),
    };
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "output_tokens": count(usage.get("completion_tokens")),
    })
}

fn message_id(completion_id: Option<&str>) -> String {
    format!("msg_{}", completion_id.unwrap_or(""))
}

/// Reasoning text of a message or delta: `reasoning_content` (DeepSeek and most hosts) or
/// `reasoning` (OpenRouter and others).
fn reasoning_of(message: &Value) -> Option<&str> {
    message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| message.get("reasoning").and_then(Value::as_str))
}

/// A whole non-streamed `chat.completion` → an Anthropic message.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let completion = parse_object(body, "the upstream response")?;
    let choice = completion
        .get("choices")
        .and_then(|choices| choices.get(0))
        .ok_or_else(|| ConvertError::new("the upstream response has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(reasoning) = reasoning_of(message).filter(|text| !text.is_empty()) {
        content.push(json!({
            "type": "thinking",
            "thinking": reasoning,
            "signature": UNSIGNED_THINKING_SIGNATURE,
        }));
    }
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .or_else(|| message.get("refusal").and_then(Value::as_str));
    if let Some(text) = text.filter(|text| !text.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (index, call) in calls.iter().enumerate() {
            content.push(tool_use(call, index).map_err(|message| {
                ConvertError::new(format!("the upstream's tool call {index}: {message}"))
            })?);
        }
    }
    let stop_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map_or("end_turn", stop_reason_of);
    let converted = json!({
        "id": message_id(completion.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage_of(completion.get("usage").unwrap_or(&Value::Null)),
    });
    Ok(to_bytes(&converted))
}

/// The kind an OpenAI error stands for: its `code` or `type` when they say more than the
/// status (OpenAI sends `invalid_request_error` for 401 and 404 too, so that type says nothing).
fn kind_of(kind: Option<&str>, code: Option<&str>, status: u16) -> ErrorKind {
    for name in [code, kind].into_iter().flatten() {
        match name {
            "insufficient_quota" => return ErrorKind::Billing,
            "invalid_api_key" => return ErrorKind::Authentication,
            "rate_limit_exceeded" => return ErrorKind::RateLimit,
            "overloaded" => return ErrorKind::Overloaded,
            _ => {}
        }
    }
    ErrorKind::from_status(status)
}

fn anthropic_error(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind.anthropic_type(), "message": message}})
}

/// An OpenAI-style upstream error body → an Anthropic error body (message kept, bounded; a
/// body that is not OpenAI's error JSON gets a generic message).
pub fn error(status: u16, body: &[u8]) -> Vec<u8> {
    let (message, kind) = match upstream_error(body) {
        Some(error) => {
            let kind = kind_of(error.kind.as_deref(), error.code.as_deref(), status);
            (error.message, kind)
        }
        None => (
            generic_error_message(status),
            ErrorKind::from_status(status),
        ),
    };
    to_bytes(&anthropic_error(kind, &message))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool,
}

/// OpenAI `chat.completion.chunk` SSE (from the upstream) → Anthropic SSE (for the client).
///
/// Blocks are sequential as Anthropic's are: reasoning, text and each tool call get their own
/// block, a new one closing the previous. Argument deltas of a parallel tool call whose block
/// was already closed (hosts stream them one after another, so this is rare) still go out
/// under that call's block index, which Anthropic's SDKs accumulate by.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    started: bool,
    id: String,
    model: Value,
    open: Option<(Open, u64)>,
    next_index: u64,
    tools: HashMap<u64, u64>,
    stop_reason: Option<&'static str>,
    usage: Value,
    /// `message_stop` or an error was written: nothing more goes out.
    closed: bool,
}

impl Default for StreamTranslator {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamTranslator {
    pub fn new() -> Self {
        Self {
            decoder: SseDecoder::new(),
            started: false,
            id: message_id(None),
            model: Value::Null,
            open: None,
            next_index: 0,
            tools: HashMap::new(),
            stop_reason: None,
            usage: usage_of(&Value::Null),
            closed: false,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = message_id(chunk.get("id").and_then(Value::as_str));
        self.model = chunk.get("model").cloned().unwrap_or(Value::Null);
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = usage_of(usage);
        }
        let start = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": self.usage["input_tokens"],
                    "cache_read_input_tokens": self.usage["cache_read_input_tokens"],
                    "output_tokens": 0,
                },
            },
        });
        write_event(out, Some("message_start"), &start);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if kind == Open::Thinking {
                let delta = json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": UNSIGNED_THINKING_SIGNATURE},
                });
                write_event(out, Some("content_block_delta"), &delta);
            }
            let stop = json!({"type": "content_block_stop", "index": index});
            write_event(out, Some("content_block_stop"), &stop);
        }
    }

    /// The index of the open block of `kind`, opening one (closing the previous) if needed.
    fn block(&mut self, kind: Open, content_block: Value, out: &mut Vec<u8>) -> u64 {
        match self.open {
            Some((open, index)) if open == kind && kind != Open::Tool => index,
            _ => {
                self.close_block(out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((kind, index));
                let start = json!({
                    "type": "content_block_start",
                    "index": index,
                    "content_block": content_block,
                });
                write_event(out, Some("content_block_start"), &start);
                index
            }
        }
    }

    fn delta(out: &mut Vec<u8>, index: u64, delta: Value) {
        let event = json!({"type": "content_block_delta", "index": index, "delta": delta});
        write_event(out, Some("content_block_delta"), &event);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": self.usage,
        });
        write_event(out, Some("message_delta"), &delta);
        write_event(out, Some("message_stop"), &json!({"type": "message_stop"}));
        self.closed = true;
    }

    fn data(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        if data.trim() == "[DONE]" {
            self.start(&Value::Null, out);
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or("upstream stream error", |message| {
                    truncated(message, MAX_ERROR_MESSAGE)
                });
            // A streamed error has no status of its own: a server error unless it says more.
            let kind = kind_of(
                error.get("type").and_then(Value::as_str),
                error.get("code").and_then(Value::as_str),
                500,
            );
            write_event(out, Some("error"), &anthropic_error(kind, message));
            self.closed = true;
            return;
        }
        self.start(&chunk, out);
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = usage_of(usage);
        }
        let Some(choice) = chunk.get("choices").and_then(|choices| choices.get(0)) else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(reasoning) = reasoning_of(delta).filter(|text| !text.is_empty()) {
            let index = self.block(
                Open::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            );
            Self::delta(
                out,
                index,
                json!({"type": "thinking_delta", "thinking": reasoning}),
            );
        }
        for field in ["content", "refusal"] {
            if let Some(text) = delta
                .get(field)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
            {
                let index = self.block(Open::Text, json!({"type": "text", "text": ""}), out);
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
        }
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for call in calls {
                self.tool_call_delta(call, out);
            }
        }
        if let Some(finish_reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason_of(finish_reason));
            self.close_block(out);
        }
    }

    fn tool_call_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let position = count(call.get("index"));
        let function = call.get("function").unwrap_or(&Value::Null);
        let index = match self.tools.get(&position) {
            Some(index) => *index,
            None => {
                let id = call_id(
                    call.get("id").and_then(Value::as_str),
                    usize::try_from(position).unwrap_or(usize::MAX),
                );
                let name = function.get("name").and_then(Value::as_str).unwrap_or("");
                let index = self.block(
                    Open::Tool,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tools.insert(position, index);
                index
            }
        };
        if let Some(arguments) = function
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|arguments| !arguments.is_empty())
        {
            Self::delta(
                out,
                index,
                json!({"type": "input_json_delta", "partial_json": arguments}),
            );
        }
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_name, data| self.data(data, out));
        self.decoder = decoder;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        // A finish_reason but no `[DONE]`: the message is complete.
        if !self.closed && self.stop_reason.is_some() {
            self.end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: RequestOptions<'static> = RequestOptions {
        model: None,
        default_max_tokens: 1024,
    };

    fn refused(body: Value) -> String {
        request(body.to_string().as_bytes(), &OPTIONS)
            .unwrap_err()
            .message
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        body
    }

    fn user(content: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": content}]})
    }

    #[test]
    fn every_request_error_says_what_is_wrong() {
        assert!(request(b"nope", &OPTIONS)
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        let cases = [
            (json!({"messages": []}), "`model` is required"),
            (json!({"model": "m"}), "`messages` must be an array"),
            (with("audio", json!({"voice": "alloy"})), "`audio`"),
            (with("functions", json!([])), "`functions`"),
            (with("n", json!(3)), "`n` greater than 1"),
            (with("logprobs", json!(true)), "`logprobs`"),
            (with("top_logprobs", json!(2)), "`logprobs`"),
            (
                with("modalities", json!(["text", "audio"])),
                "only text output",
            ),
            (
                with(
                    "tools",
                    json!([{"type": "custom", "custom": {"name": "x"}}]),
                ),
                "only function tools",
            ),
            (
                with("tools", json!([{"type": "function", "function": {}}])),
                "needs a name",
            ),
            (
                with("tool_choice", json!("sometimes")),
                "tool_choice `sometimes`",
            ),
            (
                with("tool_choice", json!({"type": "allowed_tools"})),
                "tool_choice must be",
            ),
            (
                with("reasoning_effort", json!("extreme")),
                "reasoning_effort `extreme`",
            ),
            (
                with(
                    "response_format",
                    json!({"type": "json_schema", "json_schema": {"name": "x"}}),
                ),
                "schema is missing",
            ),
            (
                with("response_format", json!({"type": "json_object"})),
                "response formats",
            ),
            (user(json!(3)), "must be a string or an array"),
            (user(json!([{"text": "x"}])), "needs a type"),
            (
                user(json!([{"type": "file", "file": {"file_id": "f"}}])),
                "`file`",
            ),
            (
                user(json!([{"type": "image_url", "image_url": {}}])),
                "image_url.url is missing",
            ),
            (
                user(json!([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])),
                "base64 data URLs",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url"}]}]}),
                "only hold text parts",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": 3}]}),
                "must be a string or an array",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "tool_call_id is missing",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "c", "content": 3}]}),
                "string or text parts",
            ),
            (
                json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}),
                "role must be",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "image_url"}]}]}),
                "only hold text parts",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "content": 3}]}),
                "must be a string or an array",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}),
                "needs a function name",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]}),
                "not a JSON object",
            ),
        ];
        for (body, expected) in cases {
            let message = refused(body.clone());
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn response_errors() {
        assert!(response(b"<html>").is_err());
        assert!(response(b"{\"choices\":[]}").is_err());
        let bad = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}}]});
        assert!(response(bad.to_string().as_bytes())
            .unwrap_err()
            .message
            .contains("not a JSON object"));
    }

    #[test]
    fn budgets_stay_under_max_tokens_and_sampling_is_clamped() {
        let convert = |body: Value| -> Value {
            serde_json::from_slice(&request(body.to_string().as_bytes(), &OPTIONS).unwrap())
                .unwrap()
        };
        let mut body = with("reasoning_effort", json!("high"));
        body["max_completion_tokens"] = json!(4000);
        body["max_tokens"] = json!(100);
        let out = convert(body);
        assert_eq!(out["max_tokens"], 4000);
        assert_eq!(out["thinking"]["budget_tokens"], 3999);
        // The default max_tokens (1024) leaves no room for Anthropic's minimum budget.
        assert!(convert(with("reasoning_effort", json!("high")))
            .get("thinking")
            .is_none());
        let mut body = with("reasoning_effort", json!("low"));
        body["max_tokens"] = json!(500);
        body["temperature"] = json!(0.3);
        let out = convert(body);
        assert!(out.get("thinking").is_none());
        assert_eq!(out["temperature"], 0.3);
        assert!(convert(with("reasoning_effort", json!("minimal")))
            .get("thinking")
            .is_none());
        let out = convert(with("temperature", json!(2.0)));
        assert_eq!(out["temperature"], 1.0);
        let mut body = with("parallel_tool_calls", json!(false));
        body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        body["tool_choice"] = json!("none");
        let out = convert(body);
        assert_eq!(out["tool_choice"], json!({"type": "none"}));
        assert_eq!(out["tools"][0]["input_schema"]["type"], "object");
    }

    #[test]
    fn errors_map_kinds_and_never_pass_html() {
        let rendered: Value = serde_json::from_slice(&error(
            529,
            br#"{"error":{"message":"busy","type":"server_error","code":"overloaded"}}"#,
        ))
        .unwrap();
        assert_eq!(rendered["error"]["type"], "overloaded_error");
        let rendered: Value = serde_json::from_slice(&error(
            404,
            br#"{"error":{"message":"no such model","type":"invalid_request_error"}}"#,
        ))
        .unwrap();
        assert_eq!(rendered["error"]["type"], "not_found_error");
        let long = "x".repeat(MAX_ERROR_MESSAGE * 2);
        let body = json!({"error": {"message": long}});
        let rendered: Value =
            serde_json::from_slice(&error(500, body.to_string().as_bytes())).unwrap();
        assert_eq!(
            rendered["error"]["message"].as_str().unwrap().len(),
            MAX_ERROR_MESSAGE
        );
        let rendered: Value = serde_json::from_slice(&error(500, b"<html>oops</html>")).unwrap();
        assert!(!rendered.to_string().contains("oops"));
    }

    #[test]
    fn a_cut_stream_gets_no_clean_end() {
        let mut translator = StreamTranslator::new();
        let mut out = Vec::new();
        translator.push(
            b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
            &mut out,
        );
        translator.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("message_stop"), "{text}");
        assert!(!text.contains("content_block_stop"), "{text}");
    }
}

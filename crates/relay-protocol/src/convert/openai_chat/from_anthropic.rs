//! Anthropic Messages → OpenAI Chat Completions: an Anthropic client's request for an
//! OpenAI-compatible upstream, and an Anthropic upstream's response, stream and errors for an
//! OpenAI client.
//!
//! What has no equivalent is either dropped on purpose ([`DROPPED_REQUEST_FIELDS`]: it only
//! tunes sampling or caching) or refused with a [`ConvertError`] ([`REFUSED_REQUEST_FIELDS`],
//! server tools, documents): the caller gets a 400 rather than a silently different answer.
//! Other unknown top-level fields are dropped (new Anthropic fields must not break the relay).
//!
//! Choices made where the dialects differ:
//! - `system` (a string or text blocks) becomes one leading `system` message, blocks joined
//!   with a blank line (Claude Code's billing marker, `x-anthropic-billing-header: …`, is
//!   Anthropic's own accounting and stays behind); a `system`-role message in the middle of `messages` (Claude Code's
//!   mid-conversation system beta) becomes a `system` message at the same place.
//! - Text blocks of one assistant turn are concatenated (Anthropic splits text at citations);
//!   `thinking` blocks become DeepSeek-style `reasoning_content` (signatures dropped;
//!   `redacted_thinking` is dropped, it is unreadable outside Anthropic).
//! - `tool_result` blocks become `role: tool` messages placed before the rest of that user turn;
//!   `is_error: true` prefixes the content with `Error: ` (OpenAI has no error flag); images in a
//!   tool result move to the user message that follows (tool messages carry text only).
//! - `max_tokens` becomes `max_tokens`, not `max_completion_tokens`: most OpenAI-compatible hosts
//!   know only the former.
//! - Thinking (`enabled` with `budget_tokens`, or `adaptive` with `output_config.effort`) becomes
//!   `reasoning_effort`; budgets under 4096 are `low`, under 16384 `medium`, else `high`.
//! - Ids are derived, not invented: `chatcmpl-<message id>`; tool call ids are kept. `created`
//!   is 0 (this crate has no clock).

use crate::convert::target_model;
use std::collections::HashMap;

use serde_json::{json, Value};

use crate::convert::{
    count, finish_reason_of, generic_error_message, parse_object, to_bytes, truncated,
    upstream_error, write_event, ConvertError, Object, RequestOptions, Translate, MAX_USER_ID,
};
use crate::dialect::{error_body, Dialect, ErrorKind};
use crate::sse::SseDecoder;

/// Request fields OpenAI Chat has no place for and that only tune sampling, caching or context
/// handling upstream: dropped on purpose.
pub const DROPPED_REQUEST_FIELDS: &[&str] = &[
    "top_k",
    "context_management",
    "cache_control",
    "service_tier",
    "inference_geo",
];

/// Request fields that change what the model can do and cannot be expressed in OpenAI Chat.
pub const REFUSED_REQUEST_FIELDS: &[&str] = &["container", "mcp_servers"];

/// Anthropic client request → OpenAI Chat upstream request.
pub fn request(body: &[u8], options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    if let Some(field) = REFUSED_REQUEST_FIELDS
        .iter()
        .find(|field| source.contains_key(**field))
    {
        return Err(ConvertError::new(format!(
            "`{field}` cannot be expressed for an OpenAI Chat Completions upstream"
        )));
    }
    let mut out = Object::new();
    out.insert("model".into(), target_model(&source, options)?.into());

    let mut messages = Vec::new();
    match source.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let text = text_of(system, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let Some(Value::Array(turns)) = source.get("messages") else {
        return Err(ConvertError::new("`messages` must be an array"));
    };
    for (position, turn) in turns.iter().enumerate() {
        let content = turn.get("content").unwrap_or(&Value::Null);
        match turn.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(content, position, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(content, position)?),
            Some("system") => messages.push(json!({
                "role": "system",
                "content": text_of(content, &format!("messages[{position}].content"))?,
            })),
            _ => {
                return Err(ConvertError::new(format!(
                    "messages[{position}].role must be user, assistant or system"
                )))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(max_tokens) = source.get("max_tokens").and_then(Value::as_u64) {
        out.insert("max_tokens".into(), max_tokens.into());
    }
    match source.get("stop_sequences") {
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    for knob in ["temperature", "top_p"] {
        if let Some(value) = source.get(knob).filter(|value| value.is_number()) {
            out.insert(knob.into(), value.clone());
        }
    }
    if let Some(stream) = source.get("stream").and_then(Value::as_bool) {
        out.insert("stream".into(), stream.into());
        if stream {
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    let has_tools = match source.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => {
            let converted = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
            out.insert("tools".into(), Value::Array(converted));
            true
        }
        _ => false,
    };
    if let Some(choice) = source.get("tool_choice").filter(|choice| !choice.is_null()) {
        let (converted, parallel) = tool_choice(choice)?;
        out.insert("tool_choice".into(), converted);
        if has_tools && !parallel {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    let output_config = source.get("output_config");
    if let Some(effort) = reasoning_effort(source.get("thinking"), output_config)? {
        out.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(format) = output_config
        .and_then(|config| config.get("format"))
        .filter(|format| !format.is_null())
    {
        out.insert("response_format".into(), response_format(format)?);
    }
    if let Some(user) = source
        .get("metadata")
        .and_then(|metadata| metadata.get("user_id"))
        .and_then(Value::as_str)
        .filter(|user| !user.is_empty())
    {
        out.insert("user".into(), truncated(user, MAX_USER_ID).into());
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// The text of a string or an array of text blocks (system prompts, system messages).
fn text_of(value: &Value, what: &str) -> Result<String, ConvertError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for block in blocks {
                match (
                    block.get("type").and_then(Value::as_str),
                    block.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(text)) if crate::convert::is_billing_marker(text) => {}
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => {
                        return Err(ConvertError::new(format!(
                            "{what} may only hold text blocks"
                        )))
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(ConvertError::new(format!(
            "{what} must be a string or an array of text blocks"
        ))),
    }
}

/// An Anthropic image block → an OpenAI `image_url` part.
fn image_part(block: &Value, what: &str) -> Result<Value, ConvertError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                _ => {
                    return Err(ConvertError::new(format!(
                        "{what}: a base64 image needs media_type and data"
                    )))
                }
            }
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(url) => url.to_owned(),
            None => {
                return Err(ConvertError::new(format!(
                    "{what}: an image url is missing"
                )))
            }
        },
        _ => {
            return Err(ConvertError::new(format!(
                "{what}: only base64 and url images can be expressed in OpenAI Chat"
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn user_turn(
    content: &Value,
    position: usize,
    messages: &mut Vec<Value>,
) -> Result<(), ConvertError> {
    let blocks = match content {
        Value::String(text) => {
            messages.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ConvertError::new(format!(
                "messages[{position}].content must be a string or an array"
            )))
        }
    };
    let mut parts = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let what = format!("messages[{position}].content[{index}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": text}));
            }
            Some("image") => parts.push(image_part(block, &what)?),
            Some("tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ConvertError::new(format!("{what}: tool_use_id is missing")))?;
                let mut text = String::new();
                match block.get("content") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(content)) => text.push_str(content),
                    Some(Value::Array(inner)) => {
                        for item in inner {
                            match item.get("type").and_then(Value::as_str) {
                                Some("text") => {
                                    if !text.is_empty() {
                                        text.push_str("\n\n");
                                    }
                                    text.push_str(
                                        item.get("text").and_then(Value::as_str).unwrap_or(""),
                                    );
                                }
                                Some("image") => parts.push(image_part(item, &what)?),
                                _ => {
                                    return Err(ConvertError::new(format!(
                                        "{what}: a tool result may hold only text and images in OpenAI Chat"
                                    )))
                                }
                            }
                        }
                    }
                    Some(_) => {
                        return Err(ConvertError::new(format!(
                            "{what}: tool result content must be a string or an array"
                        )))
                    }
                }
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text.insert_str(0, "Error: ");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some(other) => {
                return Err(ConvertError::new(format!(
                    "{what}: a `{other}` block cannot be expressed in an OpenAI Chat user message"
                )))
            }
            None => return Err(ConvertError::new(format!("{what}: a block needs a type"))),
        }
    }
    match parts.as_slice() {
        [] => {}
        [only] if only["type"] == "text" => {
            messages.push(json!({"role": "user", "content": only["text"]}));
        }
        _ => messages.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn assistant_turn(content: &Value, position: usize) -> Result<Value, ConvertError> {
    let blocks = match content {
        Value::String(text) => return Ok(json!({"role": "assistant", "content": text})),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ConvertError::new(format!(
                "messages[{position}].content must be a string or an array"
            )))
        }
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
            }
            Some("redacted_thinking") => {}
            Some("tool_use") => calls.push(tool_call(block, calls.len(), false)),
            other => {
                return Err(ConvertError::new(format!(
                    "messages[{position}].content[{index}]: a `{}` block cannot be expressed in an OpenAI Chat assistant message",
                    other.unwrap_or("untyped")
                )))
            }
        }
    }
    Ok(assistant_message(text, reasoning, calls))
}

/// An OpenAI assistant message: `content` is null when there are only tool calls.
fn assistant_message(text: String, reasoning: String, calls: Vec<Value>) -> Value {
    let mut message = Object::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(message)
}

/// A `tool_use` block → an OpenAI tool call (`index` only inside stream deltas).
fn tool_call(block: &Value, index: usize, with_index: bool) -> Value {
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(input) => input.to_string(),
    };
    let mut call = json!({
        "id": block.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {
            "name": block.get("name").cloned().unwrap_or(Value::Null),
            "arguments": arguments,
        },
    });
    if with_index {
        call["index"] = index.into();
    }
    call
}

fn tool(definition: &Value) -> Result<Value, ConvertError> {
    let name = definition
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::new("a tool needs a name"))?;
    match definition.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(kind) => {
            return Err(ConvertError::new(format!(
                "the server tool `{name}` ({kind}) cannot be expressed for an OpenAI Chat upstream"
            )))
        }
    }
    let mut function = Object::new();
    function.insert("name".into(), name.into());
    if let Some(description) = definition
        .get("description")
        .filter(|value| value.is_string())
    {
        function.insert("description".into(), description.clone());
    }
    function.insert(
        "parameters".into(),
        definition
            .get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    if let Some(strict) = definition.get("strict").filter(|value| value.is_boolean()) {
        function.insert("strict".into(), strict.clone());
    }
    Ok(json!({"type": "function", "function": function}))
}

/// Anthropic `tool_choice` → OpenAI `tool_choice`, and whether parallel calls stay allowed.
fn tool_choice(choice: &Value) -> Result<(Value, bool), ConvertError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        != Some(true);
    let converted = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => "auto".into(),
        Some("any") => "required".into(),
        Some("none") => "none".into(),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(ConvertError::new("tool_choice of type tool needs a name")),
        },
        _ => {
            return Err(ConvertError::new(
                "tool_choice.type must be auto, any, none or tool",
            ))
        }
    };
    Ok((converted, parallel))
}

fn reasoning_effort(
    thinking: Option<&Value>,
    output_config: Option<&Value>,
) -> Result<Option<&'static str>, ConvertError> {
    let effort = match output_config
        .and_then(|config| config.get("effort"))
        .and_then(Value::as_str)
    {
        None => None,
        Some("low") => Some("low"),
        Some("medium") => Some("medium"),
        Some("high" | "max") => Some("high"),
        Some(other) => {
            return Err(ConvertError::new(format!(
                "output_config.effort `{other}` is not low, medium, high or max"
            )))
        }
    };
    let Some(thinking) = thinking.filter(|thinking| !thinking.is_null()) else {
        return Ok(effort);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            let budget = count(thinking.get("budget_tokens"));
            Ok(Some(effort.unwrap_or(if budget < 4096 {
                "low"
            } else if budget < 16384 {
                "medium"
            } else {
                "high"
            })))
        }
        Some("adaptive") => Ok(effort),
        Some("disabled") => Ok(None),
        _ => Err(ConvertError::new(
            "thinking.type must be enabled, adaptive or disabled",
        )),
    }
}

fn response_format(format: &Value) -> Result<Value, ConvertError> {
    match (
        format.get("type").and_then(Value::as_str),
        format.get("schema"),
    ) {
        (Some("json_schema"), Some(schema)) => Ok(json!({
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": true},
        })),
        _ => Err(ConvertError::new(
            "output_config.format must be a json_schema with a schema",
        )),
    }
}

/// Anthropic usage → OpenAI usage, in the relay's convention (cache writes count as prompt,
/// cache reads are `cached_tokens`).
fn usage_of(input: u64, cache_creation: u64, cache_read: u64, output: u64) -> Value {
    let prompt = input
        .saturating_add(cache_creation)
        .saturating_add(cache_read);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt.saturating_add(output),
        "prompt_tokens_details": {"cached_tokens": cache_read},
    })
}

fn completion_id(message_id: Option<&str>) -> String {
    format!("chatcmpl-{}", message_id.unwrap_or(""))
}

/// A whole non-streamed Anthropic message → a `chat.completion`.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let message = parse_object(body, "the upstream response")?;
    let Some(Value::Array(blocks)) = message.get("content") else {
        return Err(ConvertError::new(
            "the upstream response is not an Anthropic message",
        ));
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => calls.push(tool_call(block, calls.len(), false)),
            // redacted thinking and server tool blocks have no OpenAI form.
            _ => {}
        }
    }
    let finish_reason = message
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason_of);
    let usage = message.get("usage").unwrap_or(&Value::Null);
    let converted = json!({
        "id": completion_id(message.get("id").and_then(Value::as_str)),
        "object": "chat.completion",
        "created": 0,
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": assistant_message(text, reasoning, calls),
            "finish_reason": finish_reason,
            "logprobs": null,
        }],
        "usage": usage_of(
            count(usage.get("input_tokens")),
            count(usage.get("cache_creation_input_tokens")),
            count(usage.get("cache_read_input_tokens")),
            count(usage.get("output_tokens")),
        ),
    });
    Ok(to_bytes(&converted))
}

/// The OpenAI error kind an Anthropic `error.type` stands for.
fn kind_of(anthropic_type: Option<&str>, status: u16) -> ErrorKind {
    match anthropic_type {
        Some("invalid_request_error") => ErrorKind::InvalidRequest,
        Some("authentication_error") => ErrorKind::Authentication,
        Some("billing_error") => ErrorKind::Billing,
        Some("permission_error") => ErrorKind::Permission,
        Some("not_found_error") => ErrorKind::NotFound,
        Some("request_too_large") => ErrorKind::RequestTooLarge,
        Some("rate_limit_error") => ErrorKind::RateLimit,
        Some("timeout_error") => ErrorKind::Timeout,
        Some("overloaded_error") => ErrorKind::Overloaded,
        Some("api_error") => ErrorKind::Api,
        _ => ErrorKind::from_status(status),
    }
}

/// An Anthropic upstream error body → an OpenAI error body (message kept, bounded; a body that
/// is not Anthropic's error JSON gets a generic message).
pub fn error(status: u16, body: &[u8]) -> Vec<u8> {
    let (message, kind) = match upstream_error(body) {
        Some(error) => (error.message, kind_of(error.kind.as_deref(), status)),
        None => (
            generic_error_message(status),
            ErrorKind::from_status(status),
        ),
    };
    error_body(Dialect::OpenAiChat, kind, &message, "")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool(usize),
    Other,
}

/// Anthropic SSE (from the upstream) → OpenAI `chat.completion.chunk` SSE (for the client).
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    include_usage: bool,
    id: String,
    model: Value,
    blocks: HashMap<u64, Block>,
    tool_calls: usize,
    input_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    output_tokens: u64,
    finish_reason: Option<&'static str>,
    /// `[DONE]` or an error was written: nothing more goes out.
    closed: bool,
}

impl StreamTranslator {
    /// `include_usage`: the client asked for `stream_options.include_usage`, so the final
    /// usage chunk (`choices: []`) is sent.
    pub fn new(include_usage: bool) -> Self {
        Self {
            decoder: SseDecoder::new(),
            include_usage,
            id: completion_id(None),
            model: Value::Null,
            blocks: HashMap::new(),
            tool_calls: 0,
            input_tokens: 0,
            cache_creation_tokens: 0,
            cache_read_tokens: 0,
            output_tokens: 0,
            finish_reason: None,
            closed: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        write_event(out, None, &chunk);
    }

    fn apply_usage(&mut self, usage: &Value) {
        for (field, slot) in [
            ("input_tokens", &mut self.input_tokens),
            (
                "cache_creation_input_tokens",
                &mut self.cache_creation_tokens,
            ),
            ("cache_read_input_tokens", &mut self.cache_read_tokens),
            ("output_tokens", &mut self.output_tokens),
        ] {
            if let Some(value) = usage.get(field).and_then(Value::as_u64) {
                *slot = value;
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": usage_of(
                    self.input_tokens,
                    self.cache_creation_tokens,
                    self.cache_read_tokens,
                    self.output_tokens,
                ),
            });
            write_event(out, None, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.closed = true;
    }

    fn event(&mut self, name: &str, data: &str, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        if name == "ping" {
            out.extend_from_slice(b": ping\n\n");
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        // The event name and the data's `type` agree on Anthropic; trust the data.
        let kind = event.get("type").and_then(Value::as_str).unwrap_or(name);
        match kind {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                self.id = completion_id(message.get("id").and_then(Value::as_str));
                self.model = message.get("model").cloned().unwrap_or(Value::Null);
                if let Some(usage) = message.get("usage") {
                    self.apply_usage(usage);
                }
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            "content_block_start" => {
                let index = count(event.get("index"));
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let kind = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            if !text.is_empty() {
                                self.chunk(json!({"content": text}), None, out);
                            }
                        }
                        Block::Text
                    }
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") => {
                        let position = self.tool_calls;
                        self.tool_calls += 1;
                        let mut call = tool_call(block, position, true);
                        call["function"]["arguments"] = "".into();
                        self.chunk(json!({"tool_calls": [call]}), None, out);
                        Block::Tool(position)
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, kind);
            }
            "content_block_delta" => {
                let index = count(event.get("index"));
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let piece = |field: &str| delta.get(field).and_then(Value::as_str).unwrap_or("");
                match (
                    self.blocks.get(&index).copied(),
                    delta.get("type").and_then(Value::as_str),
                ) {
                    (Some(Block::Text), Some("text_delta")) => {
                        self.chunk(json!({"content": piece("text")}), None, out);
                    }
                    (Some(Block::Thinking), Some("thinking_delta")) => {
                        self.chunk(json!({"reasoning_content": piece("thinking")}), None, out);
                    }
                    (Some(Block::Tool(position)), Some("input_json_delta"))
                        if !piece("partial_json").is_empty() =>
                    {
                        let call = json!({"index": position, "function": {"arguments": piece("partial_json")}});
                        self.chunk(json!({"tool_calls": [call]}), None, out);
                    }
                    // Signatures, citations and blocks without an OpenAI form.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = event.get("usage") {
                    self.apply_usage(usage);
                }
                if let Some(stop_reason) = event
                    .get("delta")
                    .and_then(|delta| delta.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    let finish_reason = finish_reason_of(stop_reason);
                    self.finish_reason = Some(finish_reason);
                    self.chunk(json!({}), Some(finish_reason), out);
                }
            }
            "message_stop" => self.end(out),
            "error" => {
                let error = event.get("error").unwrap_or(&Value::Null);
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or("upstream stream error", |message| {
                        truncated(message, crate::convert::MAX_ERROR_MESSAGE)
                    });
                let kind = kind_of(error.get("type").and_then(Value::as_str), 500);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&error_body(Dialect::OpenAiChat, kind, message, ""));
                out.extend_from_slice(b"\n\n");
                self.closed = true;
            }
            _ => {}
        }
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |name, data| self.event(name, data, out));
        self.decoder = decoder;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        // `message_delta` with a stop reason but no `message_stop`: the message is complete.
        if !self.closed && self.finish_reason.is_some() {
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

    fn with_messages(messages: Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "messages": messages})
    }

    fn user(content: Value) -> Value {
        with_messages(json!([{"role": "user", "content": content}]))
    }

    #[test]
    fn every_request_error_says_what_is_wrong() {
        assert!(request(b"{", &OPTIONS)
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(request(b"[]", &OPTIONS)
            .unwrap_err()
            .message
            .contains("JSON object"));
        let cases = [
            (json!({"messages": []}), "`model` is required"),
            (
                json!({"model": "m", "messages": {}}),
                "`messages` must be an array",
            ),
            (
                json!({"model": "m", "messages": [], "container": "c"}),
                "`container`",
            ),
            (
                json!({"model": "m", "messages": [], "system": [{"type": "image"}]}),
                "system may only hold text blocks",
            ),
            (
                json!({"model": "m", "messages": [], "system": 3}),
                "system must be a string",
            ),
            (
                with_messages(json!([{"role": "tool", "content": "x"}])),
                "role must be",
            ),
            (user(json!(3)), "must be a string or an array"),
            (user(json!([{"text": "x"}])), "a block needs a type"),
            (
                user(json!([{"type": "image", "source": {"type": "base64", "data": "x"}}])),
                "needs media_type and data",
            ),
            (
                user(json!([{"type": "image", "source": {"type": "url"}}])),
                "image url is missing",
            ),
            (
                user(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
                "only base64 and url images",
            ),
            (
                user(json!([{"type": "tool_result", "content": "x"}])),
                "tool_use_id is missing",
            ),
            (
                user(
                    json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]),
                ),
                "only text and images",
            ),
            (
                user(json!([{"type": "tool_result", "tool_use_id": "t", "content": 3}])),
                "must be a string or an array",
            ),
            (
                with_messages(json!([{"role": "assistant", "content": 3}])),
                "must be a string or an array",
            ),
            (
                with_messages(
                    json!([{"role": "assistant", "content": [{"type": "server_tool_use"}]}]),
                ),
                "`server_tool_use` block",
            ),
            (
                with_messages(json!([{"role": "system", "content": [{"type": "image"}]}])),
                "may only hold text blocks",
            ),
            (
                json!({"model": "m", "messages": [], "tools": [{"input_schema": {}}]}),
                "a tool needs a name",
            ),
            (
                json!({"model": "m", "messages": [], "tool_choice": {"type": "sometimes"}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "messages": [], "tool_choice": {"type": "tool"}}),
                "needs a name",
            ),
            (
                json!({"model": "m", "messages": [], "output_config": {"effort": "extreme"}}),
                "output_config.effort",
            ),
            (
                json!({"model": "m", "messages": [], "thinking": {"type": "maybe"}}),
                "thinking.type",
            ),
            (
                json!({"model": "m", "messages": [], "output_config": {"format": {"type": "regex"}}}),
                "output_config.format",
            ),
        ];
        for (body, expected) in cases {
            let message = refused(body.clone());
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn response_errors_and_mapped_model() {
        assert!(response(b"<html>").is_err());
        assert!(response(b"{\"content\":\"x\"}").is_err());
        let mapped = RequestOptions {
            model: Some("deepseek-chat"),
            default_max_tokens: 1,
        };
        let out: Value = serde_json::from_slice(
            &request(json!({"messages": []}).to_string().as_bytes(), &mapped).unwrap(),
        )
        .unwrap();
        assert_eq!(out["model"], "deepseek-chat");
        assert!(out.get("stream_options").is_none());
    }

    #[test]
    fn user_ids_are_bounded_and_thinking_budgets_map_to_efforts() {
        let long = "é".repeat(MAX_USER_ID);
        let body = json!({"model": "m", "messages": [], "metadata": {"user_id": long},
                          "thinking": {"type": "enabled", "budget_tokens": 2000}});
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &OPTIONS).unwrap())
                .unwrap();
        assert!(out["user"].as_str().unwrap().len() <= MAX_USER_ID);
        assert_eq!(out["reasoning_effort"], "low");
        let body = json!({"model": "m", "messages": [], "thinking": {"type": "enabled", "budget_tokens": 8000}});
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &OPTIONS).unwrap())
                .unwrap();
        assert_eq!(out["reasoning_effort"], "medium");
    }

    #[test]
    fn a_cut_stream_gets_no_clean_end_and_a_closed_one_ignores_the_rest() {
        let mut translator = StreamTranslator::new(true);
        let mut out = Vec::new();
        translator.push(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"x\"}}\n\n", &mut out);
        translator.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("[DONE]"), "{text}");

        let mut out = Vec::new();
        translator.push(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            &mut out,
        );
        translator.push(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            &mut out,
        );
        translator.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap().matches("[DONE]").count(), 1);
    }
}

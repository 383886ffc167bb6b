//! The Gemini API ↔ an Anthropic client's side: a Gemini request (Gemini CLI, google-genai) → an
//! Anthropic Messages request, for a Gemini client served by an Anthropic account; and a Gemini
//! upstream's answer (whole, streamed as SSE, or an error) → Anthropic's, for an Anthropic client
//! (Claude Code) served by a Gemini account. The other halves are in
//! `convert::gemini::from_anthropic`.
//!
//! What maps: `systemInstruction` → `system`; `contents` (`user` / `model`) → messages; `text`
//! parts, `inlineData` (images, PDFs) and `fileData` (image URLs); `functionCall` → `tool_use`
//! and `functionResponse` → `tool_result` (Gemini calls may carry no id: calls and responses are
//! paired by name, in order); `tools.functionDeclarations` with `parametersJsonSchema` or
//! `parameters` (Gemini CLI's upper-case OpenAPI types lower-cased); `toolConfig`;
//! `generationConfig` (`maxOutputTokens`, `temperature` (at most 1), `topP`, `topK`,
//! `stopSequences`, `thinkingConfig` budgets and levels → thinking, `responseMimeType` JSON with
//! `responseJsonSchema`/`responseSchema` → `output_config.format`).
//!
//! Dropped on purpose: `thought` parts a client sends back (the model's notes; Anthropic would
//! need its own signature on them), `safetySettings` (Gemini's own filters), hosted tools
//! (`googleSearch`, `codeExecution`, `urlContext`: only Google runs them), `cachedContent` (a
//! Gemini cache id).

use serde_json::{json, Value};

use crate::convert::{
    error_parts, parse_object, to_bytes, truncated, write_event, ConvertError, Object,
    RequestOptions, Translate, MAX_ERROR_MESSAGE, UNSIGNED_THINKING_SIGNATURE,
};
use crate::sse::SseDecoder;
use crate::ErrorKind;

/// A Gemini schema (OpenAPI subset, types often upper-case) as JSON Schema: types lower-cased
/// wherever they appear; everything else as it came.
pub(crate) fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("type", Value::String(kind)) => Value::String(kind.to_ascii_lowercase()),
                        ("type", Value::Array(kinds)) => Value::Array(
                            kinds
                                .iter()
                                .map(|kind| match kind {
                                    Value::String(kind) => Value::String(kind.to_ascii_lowercase()),
                                    other => other.clone(),
                                })
                                .collect(),
                        ),
                        _ => json_schema(value),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

/// A thinking budget for a Gemini `thinkingLevel` (Gemini 3's knob).
fn level_budget(level: &str) -> Option<u64> {
    match level.to_ascii_uppercase().as_str() {
        "MINIMAL" => None,
        "LOW" => Some(2_048),
        "MEDIUM" => Some(8_192),
        _ => Some(16_384),
    }
}

/// Pairs Gemini function calls with their responses when they carry no ids.
#[derive(Default)]
struct CallIds {
    issued: u64,
    pending: Vec<(String, String)>,
}

impl CallIds {
    fn call(&mut self, name: &str, id: Option<&str>) -> String {
        let id = match id.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => {
                self.issued += 1;
                format!("toolu_gemini_{}", self.issued)
            }
        };
        self.pending.push((name.to_owned(), id.clone()));
        id
    }

    fn response(&mut self, name: &str, id: Option<&str>) -> String {
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            self.pending.retain(|(_, pending)| pending != id);
            return id.to_owned();
        }
        match self.pending.iter().position(|(pending, _)| pending == name) {
            Some(position) => self.pending.remove(position).1,
            None => {
                self.issued += 1;
                format!("toolu_gemini_{}", self.issued)
            }
        }
    }
}

fn media_block(mime: &str, source: Value, position: usize) -> Result<Value, ConvertError> {
    if mime.starts_with("image/") {
        Ok(json!({"type": "image", "source": source}))
    } else if mime == "application/pdf" {
        Ok(json!({"type": "document", "source": source}))
    } else {
        Err(ConvertError::new(format!(
            "contents[{position}]: `{mime}` data cannot be expressed for an Anthropic upstream"
        )))
    }
}

/// One content's parts → Anthropic blocks.
fn blocks(content: &Value, position: usize, ids: &mut CallIds) -> Result<Vec<Value>, ConvertError> {
    let mut blocks = Vec::new();
    for part in content["parts"].as_array().into_iter().flatten() {
        if part["thought"] == true {
            continue;
        }
        if let Some(text) = part["text"].as_str() {
            if !text.is_empty() {
                blocks.push(json!({"type": "text", "text": text}));
            }
        } else if let Some(call) = part.get("functionCall") {
            let name = call["name"].as_str().ok_or_else(|| {
                ConvertError::new(format!("contents[{position}]: a functionCall needs a name"))
            })?;
            let input = match &call["args"] {
                Value::Object(args) => Value::Object(args.clone()),
                _ => json!({}),
            };
            blocks.push(
                json!({"type": "tool_use", "id": ids.call(name, call["id"].as_str()),
                "name": name, "input": input}),
            );
        } else if let Some(response) = part.get("functionResponse") {
            let name = response["name"].as_str().unwrap_or("");
            let output = &response["response"];
            let (text, is_error) = match (output.get("output"), output.get("error")) {
                (_, Some(error)) if !error.is_null() => (stringify(error), true),
                (Some(output), _) => (stringify(output), false),
                _ => (stringify(output), false),
            };
            let mut block = json!({"type": "tool_result",
                "tool_use_id": ids.response(name, response["id"].as_str()), "content": text});
            if is_error {
                block["is_error"] = json!(true);
            }
            blocks.push(block);
        } else if let Some(data) = part.get("inlineData") {
            let mime = data["mimeType"].as_str().unwrap_or("");
            let source = json!({"type": "base64", "media_type": mime,
                "data": data["data"].as_str().unwrap_or("")});
            blocks.push(media_block(mime, source, position)?);
        } else if let Some(file) = part.get("fileData") {
            let mime = file["mimeType"].as_str().unwrap_or("");
            let source = json!({"type": "url", "url": file["fileUri"].as_str().unwrap_or("")});
            blocks.push(media_block(mime, source, position)?);
        } else {
            return Err(ConvertError::new(format!(
                "contents[{position}]: a part of this kind cannot be expressed for an Anthropic upstream"
            )));
        }
    }
    Ok(blocks)
}

fn stringify(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// A Gemini `generateContent` request → an Anthropic Messages request.
pub fn request(body: &[u8], options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    let model = options
        .model
        .ok_or_else(|| ConvertError::new("the path names no model"))?;
    let config = source.get("generationConfig").unwrap_or(&Value::Null);
    let mut out = Object::new();
    out.insert("model".into(), model.into());
    let mut max_tokens = config["maxOutputTokens"]
        .as_u64()
        .unwrap_or(options.default_max_tokens);

    let system: Vec<Value> = source
        .get("systemInstruction")
        .map(|instruction| instruction["parts"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter_map(|part| part["text"].as_str())
        .filter(|text| !text.is_empty())
        .map(|text| json!({"type": "text", "text": text}))
        .collect();
    let mut ids = CallIds::default();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let contents = match source.get("contents") {
        Some(Value::Array(contents)) => contents.clone(),
        Some(Value::Object(_)) => vec![source["contents"].clone()],
        _ => return Err(ConvertError::new("`contents` must be an array")),
    };
    for (position, content) in contents.iter().enumerate() {
        let role = match content["role"].as_str() {
            Some("model") => "assistant",
            Some("user") | None => "user",
            Some(other) => {
                return Err(ConvertError::new(format!(
                    "contents[{position}].role `{other}` is not user or model"
                )))
            }
        };
        super::push_turn(&mut messages, role, blocks(content, position, &mut ids)?);
    }
    if messages.is_empty() {
        return Err(ConvertError::new("`contents` holds no message to answer"));
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }

    let thinking = &config["thinkingConfig"];
    let budget = match thinking["thinkingBudget"].as_i64() {
        Some(budget) if budget > 0 => Some(budget.unsigned_abs()),
        // -1: dynamic thinking, as much as the model likes.
        Some(-1) => Some(8_192),
        Some(_) => None,
        None => thinking["thinkingLevel"].as_str().and_then(level_budget),
    };
    if let Some(budget) = budget {
        let budget = budget.max(1_024);
        // Anthropic's budget is part of `max_tokens`, Gemini's is on top of its output.
        max_tokens = max_tokens.saturating_add(budget);
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    } else {
        if let Some(temperature) = config["temperature"].as_f64() {
            out.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
        } else if let Some(top_p) = config["topP"].as_f64() {
            out.insert("top_p".into(), json!(top_p));
        }
        if let Some(top_k) = config["topK"].as_u64() {
            out.insert("top_k".into(), json!(top_k));
        }
    }
    out.insert("max_tokens".into(), max_tokens.into());
    if let Some(stops) = config["stopSequences"]
        .as_array()
        .filter(|stops| !stops.is_empty())
    {
        out.insert("stop_sequences".into(), Value::Array(stops.clone()));
    }
    out.insert(
        "messages".into(),
        messages
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect(),
    );

    let tools: Vec<Value> = source
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|tool| {
            tool["functionDeclarations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|declaration| {
            let schema = declaration
                .get("parametersJsonSchema")
                .or_else(|| declaration.get("parameters"))
                .filter(|schema| !schema.is_null())
                .map_or_else(|| json!({"type": "object", "properties": {}}), json_schema);
            let mut tool = json!({"name": declaration["name"], "input_schema": schema});
            if let Some(description) = declaration["description"].as_str() {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    if !tools.is_empty() {
        let calling = &source.get("toolConfig").unwrap_or(&Value::Null)["functionCallingConfig"];
        let allowed = calling["allowedFunctionNames"].as_array();
        let choice = match calling["mode"]
            .as_str()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("ANY") => match allowed.filter(|names| names.len() == 1) {
                Some(names) => Some(json!({"type": "tool", "name": names[0]})),
                None => Some(json!({"type": "any"})),
            },
            Some("NONE") => Some(json!({"type": "none"})),
            _ => None,
        };
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
    }
    if config["responseMimeType"] == "application/json" {
        if let Some(schema) = config
            .get("responseJsonSchema")
            .or_else(|| config.get("responseSchema"))
            .filter(|schema| !schema.is_null())
        {
            out.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": json_schema(schema)}}),
            );
        }
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// Gemini's `usageMetadata` → Anthropic's usage (cached content as cache reads; thoughts are
/// output).
fn usage_of(metadata: &Value) -> Value {
    let count = |name: &str| metadata[name].as_u64().unwrap_or(0);
    let prompt = count("promptTokenCount") + count("toolUsePromptTokenCount");
    let cached = count("cachedContentTokenCount");
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": count("candidatesTokenCount") + count("thoughtsTokenCount"),
    })
}

fn stop_reason_of(finish: &str, called: bool) -> &'static str {
    match finish {
        "MAX_TOKENS" => "max_tokens",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => "refusal",
        _ if called => "tool_use",
        _ => "end_turn",
    }
}

fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => "msg_gemini".to_owned(),
    }
}

/// A whole Gemini response → an Anthropic message.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let response = parse_object(body, "the upstream response")?;
    let candidate = &response
        .get("candidates")
        .and_then(|candidates| candidates.get(0))
        .cloned()
        .unwrap_or(Value::Null);
    let mut ids = CallIds::default();
    let mut content = Vec::new();
    for part in candidate["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(text) = part["text"].as_str().filter(|text| !text.is_empty()) {
            if part["thought"] == true {
                content.push(json!({"type": "thinking", "thinking": text,
                    "signature": UNSIGNED_THINKING_SIGNATURE}));
            } else {
                content.push(json!({"type": "text", "text": text}));
            }
        } else if let Some(call) = part.get("functionCall") {
            let name = call["name"].as_str().unwrap_or("");
            content.push(
                json!({"type": "tool_use", "id": ids.call(name, call["id"].as_str()),
                "name": name, "input": call.get("args").cloned().unwrap_or_else(|| json!({}))}),
            );
        }
    }
    let called = content.iter().any(|block| block["type"] == "tool_use");
    let finish = candidate["finishReason"].as_str().unwrap_or("STOP");
    let converted = json!({
        "id": message_id(response.get("responseId").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": response.get("modelVersion").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason_of(finish, called),
        "stop_sequence": null,
        "usage": usage_of(response.get("usageMetadata").unwrap_or(&Value::Null)),
    });
    Ok(to_bytes(&converted))
}

fn kind_of(status_name: Option<&str>, status: u16) -> ErrorKind {
    match status_name {
        Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimit,
        Some("UNAUTHENTICATED") => ErrorKind::Authentication,
        Some("PERMISSION_DENIED") => ErrorKind::Permission,
        Some("NOT_FOUND") => ErrorKind::NotFound,
        Some("UNAVAILABLE") => ErrorKind::Overloaded,
        Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION") => ErrorKind::InvalidRequest,
        _ => ErrorKind::from_status(status),
    }
}

fn anthropic_error(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind.anthropic_type(), "message": message}})
}

/// A Gemini upstream error body (`{"error":{code,message,status}}`) → Anthropic's.
pub fn error(status: u16, body: &[u8]) -> Vec<u8> {
    let (message, name) = error_parts(status, body, "status");
    to_bytes(&anthropic_error(kind_of(name.as_deref(), status), &message))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

/// A Gemini SSE stream (`?alt=sse`, from the upstream) → Anthropic SSE (for the client). Each
/// chunk's text continues the open text (or thinking) block; a function call is a whole
/// `tool_use` block; the chunk that names a finish reason ends the message with the last
/// usage. A stream cut before it stays cut.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    started: bool,
    open: Option<(Open, u64)>,
    next_index: u64,
    called: bool,
    calls: u64,
    usage: Value,
    finish: Option<String>,
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
            open: None,
            next_index: 0,
            called: false,
            calls: 0,
            usage: usage_of(&Value::Null),
            finish: None,
            closed: false,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let start = json!({"type": "message_start", "message": {
            "id": message_id(chunk["responseId"].as_str()), "type": "message", "role": "assistant",
            "model": chunk.get("modelVersion").cloned().unwrap_or(Value::Null), "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.usage["input_tokens"],
                "cache_read_input_tokens": self.usage["cache_read_input_tokens"], "output_tokens": 0},
        }});
        write_event(out, Some("message_start"), &start);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if kind == Open::Thinking {
                let delta = json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": UNSIGNED_THINKING_SIGNATURE}});
                write_event(out, Some("content_block_delta"), &delta);
            }
            write_event(
                out,
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, block: Value, out: &mut Vec<u8>) -> u64 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        write_event(
            out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn text(&mut self, kind: Open, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some((open, index)) if open == kind => index,
            _ => {
                let block = match kind {
                    Open::Text => json!({"type": "text", "text": ""}),
                    Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                };
                let index = self.open_block(block, out);
                self.open = Some((kind, index));
                index
            }
        };
        let delta = match kind {
            Open::Text => json!({"type": "text_delta", "text": text}),
            Open::Thinking => json!({"type": "thinking_delta", "thinking": text}),
        };
        write_event(
            out,
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let finish = self.finish.as_deref().unwrap_or("STOP");
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason_of(finish, self.called), "stop_sequence": null},
            "usage": self.usage});
        write_event(out, Some("message_delta"), &delta);
        write_event(out, Some("message_stop"), &json!({"type": "message_stop"}));
        self.closed = true;
    }

    fn data(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error").filter(|error| error.is_object()) {
            let message = error["message"]
                .as_str()
                .map_or("upstream stream error", |message| {
                    truncated(message, MAX_ERROR_MESSAGE)
                });
            let kind = kind_of(error["status"].as_str(), 500);
            write_event(out, Some("error"), &anthropic_error(kind, message));
            self.closed = true;
            return;
        }
        if let Some(metadata) = chunk.get("usageMetadata").filter(|usage| usage.is_object()) {
            self.usage = usage_of(metadata);
        }
        self.start(&chunk, out);
        let candidate = &chunk["candidates"][0];
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(text) = part["text"].as_str().filter(|text| !text.is_empty()) {
                let kind = if part["thought"] == true {
                    Open::Thinking
                } else {
                    Open::Text
                };
                self.text(kind, text, out);
            } else if let Some(call) = part.get("functionCall") {
                self.calls += 1;
                self.called = true;
                let id = match call["id"].as_str().filter(|id| !id.is_empty()) {
                    Some(id) => id.to_owned(),
                    None => format!("toolu_gemini_{}", self.calls),
                };
                let index = self.open_block(
                    json!({"type": "tool_use", "id": id, "name": call["name"], "input": {}}),
                    out,
                );
                let arguments = call.get("args").cloned().unwrap_or_else(|| json!({}));
                write_event(
                    out,
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments.to_string()}}),
                );
                write_event(
                    out,
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": index}),
                );
            }
        }
        if let Some(finish) = candidate["finishReason"].as_str() {
            self.finish = Some(finish.to_owned());
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
        // Gemini streams end without a marker: the chunk with a finish reason completes it.
        if !self.closed && self.finish.is_some() {
            self.end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RequestOptions<'static> {
        RequestOptions {
            model: Some("claude-sonnet-4-5"),
            default_max_tokens: 8192,
        }
    }

    /// A Gemini CLI turn after a tool call: system instruction, a user prompt, the model's call
    /// (no id), its response, a thought part echoed back, upper-case schema types.
    #[test]
    fn a_gemini_cli_turn_becomes_an_anthropic_request() {
        let body = json!({
            "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "read it"}]},
                {"role": "model", "parts": [{"text": "planning", "thought": true},
                    {"functionCall": {"name": "read_file", "args": {"absolute_path": "/a.txt"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "read_file", "response": {"output": "hello"}}}]},
            ],
            "tools": [{"functionDeclarations": [{"name": "read_file", "description": "Reads a file",
                "parameters": {"type": "OBJECT", "properties": {"absolute_path": {"type": "STRING"}}, "required": ["absolute_path"]}}]},
                {"googleSearch": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {"temperature": 1.5, "topK": 64, "maxOutputTokens": 500, "stopSequences": ["END"]},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        });
        let converted: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &options()).unwrap())
                .unwrap();
        assert_eq!(
            converted,
            json!({
                "model": "claude-sonnet-4-5",
                "system": [{"type": "text", "text": "You are Gemini CLI."}],
                "temperature": 1.0,
                "top_k": 64,
                "max_tokens": 500,
                "stop_sequences": ["END"],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "read it"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_gemini_1",
                        "name": "read_file", "input": {"absolute_path": "/a.txt"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_gemini_1", "content": "hello"}]},
                ],
                "tools": [{"name": "read_file", "input_schema": {"type": "object",
                    "properties": {"absolute_path": {"type": "string"}}, "required": ["absolute_path"]},
                    "description": "Reads a file"}],
            })
        );
    }

    #[test]
    fn thinking_json_mode_and_tool_choice() {
        let body = json!({
            "contents": [{"parts": [{"text": "route me"}]}],
            "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
            "generationConfig": {"maxOutputTokens": 1000, "temperature": 0.2,
                "thinkingConfig": {"includeThoughts": true, "thinkingLevel": "HIGH"},
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "OBJECT", "properties": {"choice": {"type": "STRING", "enum": ["flash", "pro"]}}}},
        });
        let converted: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &options()).unwrap())
                .unwrap();
        assert_eq!(
            converted["thinking"],
            json!({"type": "enabled", "budget_tokens": 16384})
        );
        assert_eq!(converted["max_tokens"], 17384);
        assert!(
            converted.get("temperature").is_none(),
            "thinking takes its own"
        );
        assert_eq!(
            converted["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
        assert_eq!(
            converted["output_config"]["format"]["schema"]["properties"]["choice"]["type"],
            "string"
        );
        let refused = request(br#"{"contents": 3}"#, &options()).unwrap_err();
        assert!(refused.message.contains("contents"), "{refused:?}");
    }

    #[test]
    fn a_gemini_answer_whole_and_streamed_becomes_anthropics() {
        let whole = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "hmm", "thought": true}, {"text": "Hello"},
            {"functionCall": {"name": "read_file", "args": {"p": 1}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 8, "thoughtsTokenCount": 5},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
        let message: Value =
            serde_json::from_slice(&response(whole.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(message["content"][0]["type"], "thinking");
        assert_eq!(
            message["content"][1],
            json!({"type": "text", "text": "Hello"})
        );
        assert_eq!(message["content"][2]["name"], "read_file");
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 60, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 40, "output_tokens": 13})
        );

        let stream = concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}],\"usageMetadata\":{\"promptTokenCount\":10},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r2\"}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"MAX_TOKENS\"}],\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":2}}\r\n\r\n",
        );
        for size in [1, 9, stream.len()] {
            let mut translator = StreamTranslator::new();
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(size) {
                translator.push(piece, &mut out);
            }
            translator.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let events: Vec<Value> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .map(|data| serde_json::from_str(data).unwrap())
                .collect();
            let kinds: Vec<&str> = events
                .iter()
                .map(|event| event["type"].as_str().unwrap())
                .collect();
            assert_eq!(
                kinds,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "{size}"
            );
            assert_eq!(events[5]["delta"]["stop_reason"], "max_tokens");
            assert_eq!(events[5]["usage"]["output_tokens"], 2);
        }
        // Cut before the finish reason: no end.
        let mut cut = StreamTranslator::new();
        let mut out = Vec::new();
        cut.push(
            &stream.as_bytes()[..stream.find("\r\n\r\n").unwrap() + 4],
            &mut out,
        );
        cut.finish(&mut out);
        assert!(!String::from_utf8(out).unwrap().contains("message_stop"));
    }

    #[test]
    fn gemini_errors_become_anthropics() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        let converted: Value = serde_json::from_slice(&error(429, body)).unwrap();
        assert_eq!(converted["error"]["type"], "rate_limit_error");
        assert!(converted["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exhausted"));
        let html: Value = serde_json::from_slice(&error(502, b"<html>")).unwrap();
        assert_eq!(html["error"]["type"], "api_error");
    }
}

//! The Anthropic Messages API ↔ a Gemini client's side: an Anthropic request (Claude Code) → a
//! Gemini `generateContent` request, for an Anthropic client served by a Gemini account; and an
//! Anthropic upstream's answer (whole, streamed, or an error) → Gemini's, for a Gemini client
//! (Gemini CLI) served by an Anthropic account. The other halves are in
//! `convert::anthropic::from_gemini`.
//!
//! What maps: `system` → `systemInstruction`; messages → `contents` (`assistant` is `model`);
//! text, images (base64 → `inlineData`, URLs → `fileData`) and PDFs; `tool_use` → `functionCall`
//! (with its id) and `tool_result` → `functionResponse` (named after the call it answers);
//! tools → `functionDeclarations` with `parametersJsonSchema`; `tool_choice`; `max_tokens`,
//! `temperature`, `top_p`, `top_k`, `stop_sequences`; thinking → `thinkingConfig`;
//! `output_config.format` json_schema → JSON mode with `responseJsonSchema`.
//!
//! Dropped on purpose: thinking blocks a client sends back (Gemini takes no thoughts as input;
//! Gemini 3 wants its own thought signatures on calls, and the documented placeholder is sent
//! instead), server tools (`web_search_…` and the like, run by Anthropic only), Claude Code's
//! billing marker in `system` (`x-anthropic-billing-header: …`), `metadata`,
//! `cache_control` (Gemini caches implicitly), `context_management`.
//!
//! A Gemini client streams as SSE (`?alt=sse`) or as one JSON array: the translator writes
//! whichever it asked for.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::convert::{
    error_parts, parse_object, to_bytes, truncated, ConvertError, Object, RequestOptions,
    Translate, MAX_ERROR_MESSAGE,
};
use crate::gemini::StreamFraming;
use crate::sse::SseDecoder;
use crate::ErrorKind;

/// What Gemini accepts in place of a thought signature it did not issue (Google's documented
/// value for conversations that come from another model).
const NO_SIGNATURE: &str = "skip_thought_signature_validator";

fn media(source: &Value, position: usize) -> Result<Value, ConvertError> {
    match source["type"].as_str() {
        Some("base64") => Ok(json!({"inlineData": {
            "mimeType": source["media_type"], "data": source["data"]}})),
        Some("url") => {
            let url = source["url"].as_str().unwrap_or("");
            let mime = if url.ends_with(".pdf") {
                "application/pdf"
            } else {
                "image/*"
            };
            Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
        }
        _ => Err(ConvertError::new(format!(
            "messages[{position}]: this image or document source cannot be expressed for a Gemini upstream"
        ))),
    }
}

fn result_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A message's content → Gemini parts; `names` maps tool-use ids to their tools' names.
fn parts(
    content: &Value,
    position: usize,
    names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, ConvertError> {
    let blocks = match content {
        Value::String(text) => return Ok(vec![json!({"text": text})]),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ConvertError::new(format!(
                "messages[{position}].content must be a string or an array"
            )))
        }
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => {
                if let Some(text) = block["text"].as_str().filter(|text| !text.is_empty()) {
                    parts.push(json!({"text": text}));
                }
            }
            Some("image" | "document") => parts.push(media(&block["source"], position)?),
            Some("tool_use") => {
                let id = block["id"].as_str().unwrap_or("");
                let name = block["name"].as_str().unwrap_or("");
                names.insert(id.to_owned(), name.to_owned());
                parts.push(json!({
                    "functionCall": {"id": id, "name": name, "args": block["input"]},
                    "thoughtSignature": NO_SIGNATURE,
                }));
            }
            Some("tool_result") => {
                let id = block["tool_use_id"].as_str().unwrap_or("");
                let name = names.get(id).cloned().unwrap_or_default();
                let text = result_text(&block["content"]);
                let response = if block["is_error"] == true {
                    json!({"error": text})
                } else {
                    json!({"output": text})
                };
                parts.push(json!({"functionResponse": {"id": id, "name": name, "response": response}}));
            }
            Some("thinking" | "redacted_thinking" | "server_tool_use" | "web_search_tool_result") => {}
            Some(other) => {
                return Err(ConvertError::new(format!(
                    "messages[{position}]: a block of type `{other}` cannot be expressed for a Gemini upstream"
                )))
            }
            None => {
                return Err(ConvertError::new(format!(
                    "messages[{position}]: a content block needs a type"
                )))
            }
        }
    }
    Ok(parts)
}

/// An Anthropic Messages request → a Gemini `generateContent` request (the model goes in the
/// path; the body names none).
pub fn request(body: &[u8], _options: &RequestOptions) -> Result<Vec<u8>, ConvertError> {
    let source = parse_object(body, "the request body")?;
    let mut out = Object::new();
    let system: Vec<Value> = match source.get("system") {
        Some(Value::String(text)) if !text.is_empty() => vec![json!({"text": text})],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|block| block["text"].as_str())
            .filter(|text| !text.is_empty() && !crate::convert::is_billing_marker(text))
            .map(|text| json!({"text": text}))
            .collect(),
        _ => Vec::new(),
    };
    let mut names = HashMap::new();
    let mut contents: Vec<Value> = Vec::new();
    let messages = source
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ConvertError::new("`messages` must be an array"))?;
    for (position, message) in messages.iter().enumerate() {
        let (role, parts) = match message["role"].as_str() {
            Some("assistant") => ("model", parts(&message["content"], position, &mut names)?),
            Some("user") => ("user", parts(&message["content"], position, &mut names)?),
            // A system message mid-conversation (Claude Code sends one) is the user's text.
            Some("system") => {
                let text = result_text(&message["content"]);
                (
                    "user",
                    (!text.is_empty())
                        .then(|| json!({"text": text}))
                        .into_iter()
                        .collect(),
                )
            }
            _ => {
                return Err(ConvertError::new(format!(
                    "messages[{position}].role must be user, assistant or system"
                )))
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["parts"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    if contents.is_empty() {
        return Err(ConvertError::new("`messages` holds no message to answer"));
    }
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"role": "user", "parts": system}),
        );
    }
    let declarations: Vec<Value> = source
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        // Server tools have a `type` (`web_search_20250305` …); custom tools none, or `custom`.
        .filter(|tool| tool["type"].is_null() || tool["type"] == "custom")
        .map(|tool| {
            let mut declaration = json!({"name": tool["name"],
                "parametersJsonSchema": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
            if let Some(description) = tool["description"].as_str() {
                declaration["description"] = json!(description);
            }
            declaration
        })
        .collect();
    if !declarations.is_empty() {
        out.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let calling = match source.get("tool_choice") {
            Some(choice) => match choice["type"].as_str() {
                Some("any") => Some(json!({"mode": "ANY"})),
                Some("tool") => {
                    Some(json!({"mode": "ANY", "allowedFunctionNames": [choice["name"]]}))
                }
                Some("none") => Some(json!({"mode": "NONE"})),
                _ => None,
            },
            None => None,
        };
        if let Some(calling) = calling {
            out.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": calling}),
            );
        }
    }
    let mut config = Object::new();
    if let Some(max_tokens) = source.get("max_tokens").and_then(Value::as_u64) {
        config.insert("maxOutputTokens".into(), max_tokens.into());
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
    ] {
        if let Some(value) = source.get(from).filter(|value| value.is_number()) {
            config.insert(to.into(), value.clone());
        }
    }
    if let Some(stops) = source
        .get("stop_sequences")
        .filter(|stops| stops.is_array())
    {
        config.insert("stopSequences".into(), stops.clone());
    }
    match source.get("thinking").map(|thinking| &thinking["type"]) {
        Some(kind) if kind == "enabled" => {
            let budget = source["thinking"]["budget_tokens"]
                .as_u64()
                .unwrap_or(8_192);
            config.insert(
                "thinkingConfig".into(),
                json!({"includeThoughts": true, "thinkingBudget": budget}),
            );
        }
        Some(kind) if kind == "adaptive" => {
            config.insert(
                "thinkingConfig".into(),
                json!({"includeThoughts": true, "thinkingBudget": -1}),
            );
        }
        _ => {}
    }
    if let Some(format) = source
        .get("output_config")
        .map(|config| &config["format"])
        .filter(|format| format["type"] == "json_schema")
    {
        config.insert("responseMimeType".into(), "application/json".into());
        config.insert("responseJsonSchema".into(), format["schema"].clone());
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(to_bytes(&Value::Object(out)))
}

fn finish_of(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "MAX_TOKENS",
        "refusal" => "SAFETY",
        _ => "STOP",
    }
}

/// Anthropic usage → Gemini's `usageMetadata` (the prompt counts every input token, cached or
/// written; thinking is inside the output and not told apart).
fn usage_metadata(usage: &Value) -> Value {
    let count = |name: &str| usage[name].as_u64().unwrap_or(0);
    let cached = count("cache_read_input_tokens");
    let prompt = count("input_tokens") + count("cache_creation_input_tokens") + cached;
    let output = count("output_tokens");
    let mut metadata = json!({"promptTokenCount": prompt, "candidatesTokenCount": output,
        "totalTokenCount": prompt + output});
    if cached > 0 {
        metadata["cachedContentTokenCount"] = json!(cached);
    }
    metadata
}

fn chunk(parts: Value, finish: Option<&str>, usage: &Value, model: &Value, id: &str) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
    }
    json!({"candidates": [candidate], "usageMetadata": usage_metadata(usage),
        "modelVersion": model, "responseId": id})
}

/// A whole Anthropic message → a Gemini response.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let message = parse_object(body, "the upstream response")?;
    let mut parts = Vec::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block["type"].as_str() {
            Some("text") => parts.push(json!({"text": block["text"]})),
            Some("thinking") => parts.push(json!({"text": block["thinking"], "thought": true})),
            Some("tool_use") => parts.push(json!({"functionCall": {
                "id": block["id"], "name": block["name"], "args": block["input"]}})),
            _ => {}
        }
    }
    let finish = finish_of(
        message
            .get("stop_reason")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let converted = chunk(
        Value::Array(parts),
        Some(finish),
        message.get("usage").unwrap_or(&Value::Null),
        message.get("model").unwrap_or(&Value::Null),
        message.get("id").and_then(Value::as_str).unwrap_or("msg"),
    );
    Ok(to_bytes(&converted))
}

fn gemini_error(kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"code": kind.status(), "message": message, "status": kind.gemini_status()}})
}

fn kind_of(kind: Option<&str>, status: u16) -> ErrorKind {
    match kind {
        Some("rate_limit_error") => ErrorKind::RateLimit,
        Some("overloaded_error") => ErrorKind::Overloaded,
        Some("authentication_error") => ErrorKind::Authentication,
        Some("permission_error") => ErrorKind::Permission,
        Some("not_found_error") => ErrorKind::NotFound,
        Some("invalid_request_error") => ErrorKind::InvalidRequest,
        _ => ErrorKind::from_status(status),
    }
}

/// An Anthropic upstream error body → Gemini's (`{"error":{code,message,status}}`).
pub fn error(status: u16, body: &[u8]) -> Vec<u8> {
    let (message, name) = error_parts(status, body, "type");
    to_bytes(&gemini_error(kind_of(name.as_deref(), status), &message))
}

/// Anthropic SSE (from the upstream) → a Gemini stream (for the client): a chunk per text or
/// thinking delta, one per finished tool call, and a last chunk with the finish reason and the
/// usage; as SSE events or as the elements of one JSON array, as the client asked. An error
/// event becomes an error chunk; a cut stream stays cut (an array left open).
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    framing: StreamFraming,
    id: String,
    model: Value,
    usage: Value,
    /// The tool call being streamed: id, name, arguments so far.
    tool: Option<(String, String, String)>,
    stop_reason: Option<String>,
    closed: bool,
}

impl StreamTranslator {
    /// `sse`: the client asked for `?alt=sse`; otherwise it reads one JSON array.
    pub fn new(sse: bool) -> Self {
        Self {
            decoder: SseDecoder::new(),
            framing: StreamFraming::new(sse),
            id: "msg".into(),
            model: Value::Null,
            usage: json!({}),
            tool: None,
            stop_reason: None,
            closed: false,
        }
    }

    fn write(&mut self, value: &Value, out: &mut Vec<u8>) {
        self.framing.chunk(&to_bytes(value), out);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        self.framing.end(out);
        self.closed = true;
    }

    fn parts(&mut self, parts: Value, out: &mut Vec<u8>) {
        let value = chunk(parts, None, &self.usage, &self.model, &self.id);
        self.write(&value, out);
    }

    fn data(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        match event["type"].as_str().unwrap_or("") {
            "message_start" => {
                let message = &event["message"];
                self.id = message["id"].as_str().unwrap_or("msg").to_owned();
                self.model = message["model"].clone();
                self.usage = message["usage"].clone();
            }
            "content_block_start" => {
                let block = &event["content_block"];
                if block["type"] == "tool_use" {
                    self.tool = Some((
                        block["id"].as_str().unwrap_or("").to_owned(),
                        block["name"].as_str().unwrap_or("").to_owned(),
                        String::new(),
                    ));
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => self.parts(json!([{"text": delta["text"]}]), out),
                    Some("thinking_delta") => {
                        self.parts(json!([{"text": delta["thinking"], "thought": true}]), out);
                    }
                    Some("input_json_delta") => {
                        if let Some((_, _, arguments)) = &mut self.tool {
                            arguments.push_str(delta["partial_json"].as_str().unwrap_or(""));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some((id, name, arguments)) = self.tool.take() {
                    let args = serde_json::from_str::<Value>(&arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    self.parts(
                        json!([{"functionCall": {"id": id, "name": name, "args": args}}]),
                        out,
                    );
                }
            }
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = event["usage"].as_object() {
                    for (name, value) in usage {
                        self.usage[name.as_str()] = value.clone();
                    }
                }
            }
            "message_stop" => {
                let finish = finish_of(self.stop_reason.as_deref().unwrap_or(""));
                let last = chunk(
                    json!([{"text": ""}]),
                    Some(finish),
                    &self.usage,
                    &self.model,
                    &self.id,
                );
                self.write(&last, out);
                self.close(out);
            }
            "error" => {
                let error = &event["error"];
                let message = error["message"]
                    .as_str()
                    .map_or("upstream stream error", |message| {
                        truncated(message, MAX_ERROR_MESSAGE)
                    });
                let value = gemini_error(kind_of(error["type"].as_str(), 500), message);
                self.write(&value, out);
                // The error ends the stream; an array is closed so the client can read it.
                self.close(out);
            }
            _ => {}
        }
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_name, data| self.data(data, out));
        self.decoder = decoder;
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RequestOptions<'static> {
        RequestOptions {
            model: Some("gemini-2.5-flash"),
            default_max_tokens: 8192,
        }
    }

    /// A Claude Code turn after a tool call (trimmed): system blocks, the call and its result,
    /// a thinking block, a server tool, thinking and tool choice.
    #[test]
    fn a_claude_code_turn_becomes_a_gemini_request() {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "list", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt", "is_error": false}]},
                {"role": "system", "content": "Available agent types…"},
            ],
            "tools": [{"name": "Bash", "description": "Runs a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
                {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "any"},
            "thinking": {"type": "enabled", "budget_tokens": 4000},
            "metadata": {"user_id": "u"},
        });
        let converted: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), &options()).unwrap())
                .unwrap();
        assert_eq!(
            converted,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "list"}]},
                    {"role": "model", "parts": [{"functionCall": {"id": "toolu_1", "name": "Bash", "args": {"command": "ls"}},
                        "thoughtSignature": NO_SIGNATURE}]},
                    {"role": "user", "parts": [{"functionResponse": {"id": "toolu_1", "name": "Bash", "response": {"output": "a.txt"}}},
                        {"text": "Available agent types…"}]},
                ],
                "systemInstruction": {"role": "user", "parts": [{"text": "You are Claude Code."}]},
                "tools": [{"functionDeclarations": [{"name": "Bash", "description": "Runs a command",
                    "parametersJsonSchema": {"type": "object", "properties": {"command": {"type": "string"}}}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
                "generationConfig": {"maxOutputTokens": 32000,
                    "thinkingConfig": {"includeThoughts": true, "thinkingBudget": 4000}},
            })
        );
    }

    #[test]
    fn an_anthropic_answer_becomes_geminis_whole_streamed_as_sse_or_an_array_and_as_an_error() {
        let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {"absolute_path": "/a"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 7}});
        let whole: Value =
            serde_json::from_slice(&response(message.to_string().as_bytes()).unwrap()).unwrap();
        let parts = &whole["candidates"][0]["content"]["parts"];
        assert_eq!(parts[0], json!({"text": "hm", "thought": true}));
        assert_eq!(parts[2]["functionCall"]["name"], "read_file");
        assert_eq!(whole["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            whole["usageMetadata"],
            json!({"promptTokenCount": 100, "candidatesTokenCount": 7, "totalTokenCount": 107, "cachedContentTokenCount": 90})
        );

        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_3\",\"name\":\"read_file\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"absolute_\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"path\\\":\\\"/a\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        for sse in [true, false] {
            let mut translator = StreamTranslator::new(sse);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(5) {
                translator.push(piece, &mut out);
            }
            translator.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let chunks: Vec<Value> = if sse {
                text.split("\r\n\r\n")
                    .filter_map(|frame| frame.strip_prefix("data: "))
                    .map(|data| serde_json::from_str(data).unwrap())
                    .collect()
            } else {
                serde_json::from_str::<Vec<Value>>(&text).unwrap()
            };
            assert_eq!(chunks.len(), 3, "{text}");
            assert_eq!(
                chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
                "Hi"
            );
            assert_eq!(
                chunks[1]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
                json!({"absolute_path": "/a"})
            );
            assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
            assert_eq!(chunks[2]["usageMetadata"]["candidatesTokenCount"], 9);
            assert_eq!(chunks[2]["usageMetadata"]["promptTokenCount"], 12);
        }
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let converted: Value = serde_json::from_slice(&error(529, overloaded)).unwrap();
        assert_eq!(converted["error"]["status"], "RESOURCE_EXHAUSTED");
    }
}

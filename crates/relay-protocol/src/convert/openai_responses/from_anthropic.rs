//! An Anthropic answer → the Responses API, for a Responses client (Codex CLI) served by an
//! Anthropic account: a whole message → a response object; the message stream → the Responses
//! event sequence (`response.created`, `response.in_progress`, per output item
//! `response.output_item.added` … deltas … `response.output_item.done`, then
//! `response.completed`, or `response.incomplete` when the model hit its output limit, or
//! `response.failed` on an error event); an error body → OpenAI's error shape.
//!
//! Text blocks become a `message` item with `output_text` parts, `tool_use` a `function_call`
//! item (`call_id` = the block's id, `arguments` = its input as JSON text), thinking a
//! `reasoning` item whose summary is the thinking text (no `encrypted_content`: Anthropic's
//! signature means nothing to OpenAI, and the request side drops reasoning items anyway).
//! Usage in the Responses convention: `input_tokens` counts every prompt token (cache reads and
//! writes included), `input_tokens_details.cached_tokens` the cache reads.

use serde_json::{json, Value};

use crate::convert::{count, parse_object, to_bytes, write_event, ConvertError, Translate};
use crate::sse::SseDecoder;

/// Anthropic usage → Responses usage.
fn usage_of(input: u64, cache_creation: u64, cache_read: u64, output: u64) -> Value {
    let input_tokens = input + cache_creation + cache_read;
    json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cache_read},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output,
    })
}

/// A whole Anthropic message's `usage` → Responses usage.
fn message_usage(usage: &Value) -> Value {
    usage_of(
        count(usage.get("input_tokens")),
        count(usage.get("cache_creation_input_tokens")),
        count(usage.get("cache_read_input_tokens")),
        count(usage.get("output_tokens")),
    )
}

/// The response object around `output`, as the Responses API shapes it.
fn response_object(id: &str, model: &Value, status: &str, output: Value, usage: Value) -> Value {
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": id, "object": "response", "created_at": 0, "status": status,
        "model": model, "output": output, "usage": usage, "error": null,
        "incomplete_details": incomplete, "instructions": null, "metadata": {},
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "temperature": null, "top_p": null, "text": {"format": {"type": "text"}},
    })
}

fn response_id(message_id: Option<&str>) -> String {
    format!("resp_{}", message_id.unwrap_or(""))
}

/// `completed`, or `incomplete` when the model stopped at its output limit.
fn status_of(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "incomplete",
        _ => "completed",
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn call_item(block_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call", "id": format!("fc_{block_id}"), "status": status,
        "call_id": block_id, "name": name, "arguments": arguments,
    })
}

fn reasoning_item(id: &str, text: &str) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    json!({"type": "reasoning", "id": id, "summary": summary})
}

/// A whole non-streamed Anthropic message → a response object.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let message = parse_object(body, "the upstream response")?;
    let Some(Value::Array(blocks)) = message.get("content") else {
        return Err(ConvertError::new(
            "the upstream response is not an Anthropic message",
        ));
    };
    let message_id = message.get("id").and_then(Value::as_str).unwrap_or("");
    let mut output = Vec::new();
    let mut text = String::new();
    let flush_text = |text: &mut String, output: &mut Vec<Value>| {
        if !text.is_empty() {
            let id = format!("msg_{message_id}_{}", output.len());
            output.push(message_item(&id, text, "completed"));
            text.clear();
        }
    };
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                flush_text(&mut text, &mut output);
                let id = format!("rs_{message_id}_{}", output.len());
                let thinking = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                output.push(reasoning_item(&id, thinking));
            }
            Some("tool_use") => {
                flush_text(&mut text, &mut output);
                let arguments = block
                    .get("input")
                    .map_or_else(|| "{}".to_owned(), Value::to_string);
                output.push(call_item(
                    block.get("id").and_then(Value::as_str).unwrap_or(""),
                    block.get("name").and_then(Value::as_str).unwrap_or(""),
                    &arguments,
                    "completed",
                ));
            }
            // Redacted thinking and server tool blocks have no Responses form.
            _ => {}
        }
    }
    flush_text(&mut text, &mut output);
    let usage = message.get("usage").unwrap_or(&Value::Null);
    let converted = response_object(
        &response_id(Some(message_id)),
        message.get("model").unwrap_or(&Value::Null),
        status_of(message.get("stop_reason").and_then(Value::as_str)),
        Value::Array(output),
        message_usage(usage),
    );
    Ok(to_bytes(&converted))
}

/// A whole Anthropic message that answered a compaction request (`/responses/compact` sent on
/// as an ordinary request with Codex's compaction instructions) → a compaction object: the
/// conversation's replacement history, one user message holding the model's summary (what
/// Codex's own local compaction keeps, too).
pub fn compaction(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let message = parse_object(body, "the upstream response")?;
    let Some(Value::Array(blocks)) = message.get("content") else {
        return Err(ConvertError::new(
            "the upstream response is not an Anthropic message",
        ));
    };
    let summary: String = blocks
        .iter()
        .filter(|block| block["type"] == "text")
        .filter_map(|block| block["text"].as_str())
        .collect();
    let usage = message.get("usage").unwrap_or(&Value::Null);
    let converted = json!({
        "id": response_id(message.get("id").and_then(Value::as_str)),
        "object": "response.compaction",
        "created_at": 0,
        "output": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": summary}]}],
        "usage": message_usage(usage),
    });
    Ok(to_bytes(&converted))
}

/// An Anthropic upstream error body → OpenAI's error shape (the Responses API's is the same as
/// Chat Completions').
pub fn error(status: u16, body: &[u8]) -> Vec<u8> {
    crate::convert::openai_chat::from_anthropic::error(status, body)
}

/// The output item a content block is being streamed into.
#[derive(Debug)]
struct Open {
    /// Anthropic's block index.
    index: u64,
    output_index: usize,
    kind: OpenKind,
}

#[derive(Debug)]
enum OpenKind {
    Text {
        id: String,
        text: String,
    },
    Call {
        id: String,
        name: String,
        arguments: String,
    },
    Reasoning {
        id: String,
        text: String,
    },
    /// A block with no Responses form: its deltas are skipped.
    Skipped,
}

/// Anthropic SSE (from the upstream) → Responses API SSE events (for the client).
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    sequence: u64,
    id: String,
    /// The Anthropic message's id, which output item ids are made from.
    message_id: String,
    model: Value,
    output: Vec<Value>,
    open: Option<Open>,
    input_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    output_tokens: u64,
    stop_reason: Option<String>,
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
            sequence: 0,
            id: response_id(None),
            message_id: String::new(),
            model: Value::Null,
            output: Vec::new(),
            open: None,
            input_tokens: 0,
            cache_creation_tokens: 0,
            cache_read_tokens: 0,
            output_tokens: 0,
            stop_reason: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, mut data: Value) {
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        let kind = data["type"].as_str().unwrap_or("").to_owned();
        write_event(out, Some(&kind), &data);
    }

    fn usage(&self) -> Value {
        usage_of(
            self.input_tokens,
            self.cache_creation_tokens,
            self.cache_read_tokens,
            self.output_tokens,
        )
    }

    fn snapshot(&self, status: &str, usage: Value) -> Value {
        response_object(
            &self.id,
            &self.model,
            status,
            Value::Array(self.output.clone()),
            usage,
        )
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = &event["message"];
                self.message_id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.id = response_id(Some(&self.message_id));
                self.model = message.get("model").cloned().unwrap_or(Value::Null);
                let usage = &message["usage"];
                self.input_tokens = count(usage.get("input_tokens"));
                self.cache_creation_tokens = count(usage.get("cache_creation_input_tokens"));
                self.cache_read_tokens = count(usage.get("cache_read_input_tokens"));
                self.output_tokens = count(usage.get("output_tokens"));
                let pending = self.snapshot("in_progress", Value::Null);
                self.emit(
                    out,
                    json!({"type": "response.created", "response": pending}),
                );
                self.emit(
                    out,
                    json!({"type": "response.in_progress", "response": pending}),
                );
            }
            Some("content_block_start") => self.open_block(&event, out),
            Some("content_block_delta") => self.delta(&event, out),
            Some("content_block_stop") => self.close_block(out),
            Some("message_delta") => {
                if let Some(reason) = event["delta"].get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                // Cumulative: the latest value wins.
                let usage = &event["usage"];
                if let Some(output) = usage.get("output_tokens").and_then(Value::as_u64) {
                    self.output_tokens = output;
                }
                for (field, slot) in [
                    ("input_tokens", &mut self.input_tokens),
                    (
                        "cache_creation_input_tokens",
                        &mut self.cache_creation_tokens,
                    ),
                    ("cache_read_input_tokens", &mut self.cache_read_tokens),
                ] {
                    if let Some(value) = usage.get(field).and_then(Value::as_u64) {
                        *slot = value;
                    }
                }
            }
            Some("message_stop") => {
                self.close_block(out);
                let status = status_of(self.stop_reason.as_deref());
                let done = self.snapshot(status, self.usage());
                let kind = if status == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.emit(out, json!({"type": kind, "response": done}));
            }
            Some("error") => {
                self.close_block(out);
                let error = &event["error"];
                let mut failed = self.snapshot("failed", self.usage());
                failed["error"] = json!({
                    "code": error.get("type").and_then(Value::as_str).unwrap_or("server_error"),
                    "message": error.get("message").and_then(Value::as_str).unwrap_or("the upstream failed"),
                });
                self.emit(out, json!({"type": "response.failed", "response": failed}));
            }
            // ping and anything new: nothing to say.
            _ => {}
        }
    }

    fn open_block(&mut self, event: &Value, out: &mut Vec<u8>) {
        self.close_block(out);
        let index = count(event.get("index"));
        let block = &event["content_block"];
        let output_index = self.output.len();
        let kind = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let id = format!("msg_{}_{output_index}", self.message_id);
                self.emit(
                    out,
                    json!({"type": "response.output_item.added",
                    "output_index": output_index,
                    "item": {"type": "message", "id": id, "status": "in_progress",
                        "role": "assistant", "content": []}}),
                );
                self.emit(
                    out,
                    json!({"type": "response.content_part.added", "item_id": id,
                    "output_index": output_index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                OpenKind::Text {
                    id,
                    text: block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                }
            }
            Some("tool_use") => {
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.emit(
                    out,
                    json!({"type": "response.output_item.added",
                    "output_index": output_index,
                    "item": call_item(&id, &name, "", "in_progress")}),
                );
                OpenKind::Call {
                    id,
                    name,
                    arguments: String::new(),
                }
            }
            Some("thinking") => {
                let id = format!("rs_{}_{output_index}", self.message_id);
                self.emit(
                    out,
                    json!({"type": "response.output_item.added",
                    "output_index": output_index, "item": reasoning_item(&id, "")}),
                );
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_part.added",
                    "item_id": id, "output_index": output_index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}}),
                );
                OpenKind::Reasoning {
                    id,
                    text: String::new(),
                }
            }
            _ => OpenKind::Skipped,
        };
        if matches!(kind, OpenKind::Skipped) {
            return;
        }
        // The item takes its place in the output now, completed at its stop.
        self.output.push(Value::Null);
        self.open = Some(Open {
            index,
            output_index,
            kind,
        });
    }

    fn delta(&mut self, event: &Value, out: &mut Vec<u8>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if count(event.get("index")) != open.index {
            return;
        }
        let delta = &event["delta"];
        let output_index = open.output_index;
        let message = match (&mut open.kind, delta.get("type").and_then(Value::as_str)) {
            (OpenKind::Text { id, text }, Some("text_delta")) => {
                let piece = delta.get("text").and_then(Value::as_str).unwrap_or("");
                text.push_str(piece);
                json!({"type": "response.output_text.delta", "item_id": id,
                    "output_index": output_index, "content_index": 0, "delta": piece, "logprobs": []})
            }
            (OpenKind::Call { id, arguments, .. }, Some("input_json_delta")) => {
                let piece = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                arguments.push_str(piece);
                json!({"type": "response.function_call_arguments.delta",
                    "item_id": format!("fc_{id}"), "output_index": output_index, "delta": piece})
            }
            (OpenKind::Reasoning { id, text }, Some("thinking_delta")) => {
                let piece = delta.get("thinking").and_then(Value::as_str).unwrap_or("");
                text.push_str(piece);
                json!({"type": "response.reasoning_summary_text.delta", "item_id": id,
                    "output_index": output_index, "summary_index": 0, "delta": piece})
            }
            // Signatures and anything new: nothing for the client.
            _ => return,
        };
        self.emit(out, message);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = open.output_index;
        let item = match open.kind {
            OpenKind::Text { id, text } => {
                self.emit(out, json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(
                    out,
                    json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": output_index, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []}}),
                );
                message_item(&id, &text, "completed")
            }
            OpenKind::Call {
                id,
                name,
                arguments,
            } => {
                let arguments = if arguments.is_empty() {
                    "{}".to_owned()
                } else {
                    arguments
                };
                self.emit(
                    out,
                    json!({"type": "response.function_call_arguments.done",
                    "item_id": format!("fc_{id}"), "output_index": output_index,
                    "arguments": arguments}),
                );
                call_item(&id, &name, &arguments, "completed")
            }
            OpenKind::Reasoning { id, text } => {
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_text.done",
                    "item_id": id, "output_index": output_index, "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_part.done",
                    "item_id": id, "output_index": output_index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}}),
                );
                reasoning_item(&id, &text)
            }
            OpenKind::Skipped => return,
        };
        self.emit(
            out,
            json!({"type": "response.output_item.done",
            "output_index": output_index, "item": item}),
        );
        if let Some(slot) = self.output.get_mut(output_index) {
            *slot = item;
        }
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| self.on_event(data, out));
        self.decoder = decoder;
    }

    /// Nothing to add: a stream that ended without `message_stop` was cut, and stays cut
    /// (the client sees no `response.completed`).
    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A streamed Anthropic answer: thinking, text, then a tool call; usage at start and end.
    fn anthropic_stream() -> String {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "look."}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Running "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ls."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "exec_command", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"ls\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        events
            .iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    }

    /// The same answer whole.
    fn anthropic_message() -> Value {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "EqQB"},
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "toolu_1", "name": "exec_command", "input": {"cmd": "ls"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 42}})
    }

    fn translated(stream: &str, split: usize) -> Vec<Value> {
        let mut translator = StreamTranslator::new();
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(split) {
            translator.push(chunk, &mut out);
        }
        translator.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let mut events = Vec::new();
        for frame in text.split("\n\n").filter(|frame| !frame.is_empty()) {
            let mut lines = frame.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data: Value =
                serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                    .unwrap();
            assert_eq!(
                data["type"], name,
                "the event line names the payload's type"
            );
            events.push(data);
        }
        events
    }

    #[test]
    fn a_message_stream_becomes_the_responses_event_sequence_in_any_chunking() {
        let whole = translated(&anthropic_stream(), usize::MAX);
        let kinds: Vec<&str> = whole
            .iter()
            .map(|event| event["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (number, event) in whole.iter().enumerate() {
            assert_eq!(event["sequence_number"], number as u64);
        }
        for split in [1, 5, 33] {
            assert_eq!(
                translated(&anthropic_stream(), split),
                whole,
                "chunks of {split}"
            );
        }
        let completed = &whole.last().unwrap()["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(
            completed["usage"],
            json!({"input_tokens": 115, "input_tokens_details": {"cached_tokens": 100},
                "output_tokens": 42, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 157})
        );
        assert_eq!(completed["output"][2]["arguments"], "{\"cmd\":\"ls\"}");
    }

    /// The stream, assembled, says what the whole answer says.
    #[test]
    fn the_assembled_stream_equals_the_converted_whole_message() {
        let events = translated(&anthropic_stream(), 7);
        let streamed = &events.last().unwrap()["response"];
        let whole: Value =
            serde_json::from_slice(&response(anthropic_message().to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(streamed, &whole);
        assert_eq!(whole["output"][0]["type"], "reasoning");
        assert_eq!(whole["output"][0]["summary"][0]["text"], "Let me look.");
        assert_eq!(whole["output"][1]["content"][0]["text"], "Running ls.");
        assert_eq!(whole["output"][2]["call_id"], "toolu_1");
        assert_eq!(whole["output"][2]["type"], "function_call");
    }

    #[test]
    fn a_cut_stream_stays_cut_an_error_fails_and_a_limit_is_incomplete() {
        let stream = anthropic_stream();
        let cut = &stream[..stream.find("event: message_delta").unwrap()];
        let events = translated(cut, 64);
        assert!(events
            .iter()
            .all(|event| event["type"] != "response.completed"));

        let failed = format!(
            "{}event: error\ndata: {}\n\n",
            &stream[..stream.find("event: content_block_start").unwrap()],
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let events = translated(&failed, 64);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["error"]["code"], "overloaded_error");

        let mut message = anthropic_message();
        message["stop_reason"] = json!("max_tokens");
        let whole: Value =
            serde_json::from_slice(&response(message.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(whole["status"], "incomplete");
        assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");

        let error: Value = serde_json::from_slice(&error(
            429,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        ))
        .unwrap();
        assert_eq!(error["error"]["message"], "slow down");
        assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    }
}

/// A Chat host's answer reaches a Responses client through Anthropic's form ([`crate::convert::Chain`]).
#[cfg(test)]
mod through_chat {
    use super::*;
    use crate::convert::anthropic::from_openai_chat as chat_to_anthropic;
    use crate::convert::Chain;

    fn chat_stream() -> String {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut frames = vec![
            chunk(json!({"role": "assistant", "content": "On "}), Value::Null),
            chunk(json!({"content": "it."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ];
        frames.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
            "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 20}}}));
        let mut text: String = frames
            .iter()
            .map(|frame| format!("data: {frame}\n\n"))
            .collect();
        text.push_str("data: [DONE]\n\n");
        text
    }

    #[test]
    fn a_chat_stream_becomes_the_responses_events_and_assembles_to_the_whole_answer() {
        let stream = chat_stream();
        let mut seen = None;
        for split in [1, 9, usize::MAX] {
            let mut chain = Chain::new(
                chat_to_anthropic::StreamTranslator::new(),
                StreamTranslator::new(),
            );
            let mut out = Vec::new();
            for chunk in stream.as_bytes().chunks(split) {
                chain.push(chunk, &mut out);
            }
            chain.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let last: Value = serde_json::from_str(
                text.lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .next_back()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(last["type"], "response.completed", "{text}");
            if let Some(seen) = &seen {
                assert_eq!(&last, seen, "chunks of {split}");
            }
            seen = Some(last);
        }
        let completed = &seen.unwrap()["response"];
        assert_eq!(completed["output"][0]["content"][0]["text"], "On it.");
        assert_eq!(completed["output"][1]["name"], "exec_command");
        assert_eq!(completed["output"][1]["arguments"], "{\"cmd\":\"ls\"}");
        assert_eq!(completed["usage"]["input_tokens"], 50);
        assert_eq!(
            completed["usage"]["input_tokens_details"]["cached_tokens"],
            20
        );
        assert_eq!(completed["usage"]["output_tokens"], 9);

        let whole = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "deepseek-chat",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "On it.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 20}}});
        let message = chat_to_anthropic::response(whole.to_string().as_bytes()).unwrap();
        let converted: Value = serde_json::from_slice(&response(&message).unwrap()).unwrap();
        assert_eq!(converted["output"], completed["output"]);
        assert_eq!(converted["usage"], completed["usage"]);
    }
}

//! A Responses API answer → Chat Completions, for a Chat client served by a Responses-only
//! account (and, chained with `anthropic::from_openai_chat`, for an Anthropic client): a whole
//! response → a `chat.completion`; the event stream → `chat.completion.chunk`s (text deltas as
//! `content`, reasoning summaries as `reasoning_content`, function calls as `tool_calls`), a
//! last chunk with the finish reason, the usage chunk when asked for, and `data: [DONE]`; an error
//! body passes in OpenAI's shape (the same for both APIs).
//!
//! Usage in Chat's convention: `prompt_tokens` = the response's `input_tokens` (cached included),
//! `prompt_tokens_details.cached_tokens`, `completion_tokens` = `output_tokens`,
//! `completion_tokens_details.reasoning_tokens`.

use serde_json::{json, Value};

use crate::convert::{count, parse_object, to_bytes, ConvertError, Translate};
use crate::sse::SseDecoder;

fn usage_of(usage: &Value) -> Value {
    let input = count(usage.get("input_tokens"));
    let output = count(usage.get("output_tokens"));
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input + output,
        "prompt_tokens_details": {"cached_tokens": count(usage["input_tokens_details"].get("cached_tokens"))},
        "completion_tokens_details": {"reasoning_tokens": count(usage["output_tokens_details"].get("reasoning_tokens"))},
    })
}

fn completion_id(response_id: Option<&str>) -> String {
    format!("chatcmpl-{}", response_id.unwrap_or(""))
}

/// `length` when the response stopped at its output limit, `tool_calls` when it called one.
fn finish_reason(response: &Value, called: bool) -> &'static str {
    if response["status"] == "incomplete" {
        "length"
    } else if called {
        "tool_calls"
    } else {
        "stop"
    }
}

/// A whole response object → a `chat.completion`.
pub fn response(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let response = Value::Object(parse_object(body, "the upstream response")?);
    let Some(items) = response["output"].as_array() else {
        return Err(ConvertError::new(
            "the upstream response is not a Responses API response",
        ));
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for item in items {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(piece) = part["text"].as_str().or(part["refusal"].as_str()) {
                        text.push_str(piece);
                    }
                }
            }
            Some("reasoning") => {
                for part in item["summary"].as_array().into_iter().flatten() {
                    reasoning.push_str(part["text"].as_str().unwrap_or(""));
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    let called = !calls.is_empty();
    if called {
        message["tool_calls"] = Value::Array(calls);
    }
    let converted = json!({
        "id": completion_id(response["id"].as_str()),
        "object": "chat.completion",
        "created": response["created_at"].as_u64().unwrap_or(0),
        "model": response["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(&response, called), "logprobs": null}],
        "usage": usage_of(&response["usage"]),
    });
    Ok(to_bytes(&converted))
}

/// Responses API SSE (from the upstream) → Chat Completions chunks (for the client).
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    include_usage: bool,
    id: String,
    model: Value,
    started: bool,
    /// Output index of each function call → its position in `tool_calls`.
    calls: Vec<usize>,
}

impl StreamTranslator {
    /// `include_usage`: the client asked for the usage chunk (a chained translator needs it).
    pub fn new(include_usage: bool) -> Self {
        Self {
            decoder: SseDecoder::new(),
            include_usage,
            id: completion_id(None),
            model: Value::Null,
            started: false,
            calls: Vec::new(),
        }
    }

    fn chunk(&self, out: &mut Vec<u8>, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": 0,
            "model": self.model, "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        crate::convert::write_event(out, None, &chunk);
    }

    fn delta(&mut self, out: &mut Vec<u8>, mut delta: Value) {
        if !self.started {
            self.started = true;
            delta["role"] = "assistant".into();
        }
        self.chunk(
            out,
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
        );
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        match event["type"].as_str() {
            Some("response.created") => {
                let response = &event["response"];
                self.id = completion_id(response["id"].as_str());
                self.model = response["model"].clone();
            }
            Some("response.output_text.delta") => {
                let piece = event["delta"].as_str().unwrap_or("").to_owned();
                self.delta(out, json!({"content": piece}));
            }
            Some("response.reasoning_summary_text.delta") => {
                let piece = event["delta"].as_str().unwrap_or("").to_owned();
                self.delta(out, json!({"reasoning_content": piece}));
            }
            Some("response.output_item.added") if event["item"]["type"] == "function_call" => {
                let index = self.calls.len();
                self.calls
                    .push(event["output_index"].as_u64().unwrap_or(0) as usize);
                let item = &event["item"];
                self.delta(
                    out,
                    json!({"tool_calls": [{"index": index, "id": item["call_id"], "type": "function",
                        "function": {"name": item["name"], "arguments": ""}}]}),
                );
            }
            Some("response.function_call_arguments.delta") => {
                let output_index = event["output_index"].as_u64().unwrap_or(0) as usize;
                let Some(index) = self.calls.iter().position(|at| *at == output_index) else {
                    return;
                };
                let piece = event["delta"].as_str().unwrap_or("").to_owned();
                self.delta(
                    out,
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                );
            }
            Some("response.completed" | "response.incomplete") => {
                let response = &event["response"];
                if !self.started {
                    self.delta(out, json!({"content": ""}));
                }
                let reason = finish_reason(response, !self.calls.is_empty());
                self.chunk(
                    out,
                    json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
                    None,
                );
                if self.include_usage {
                    self.chunk(out, json!([]), Some(usage_of(&response["usage"])));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Some("response.failed" | "error") => {
                let error = if event["type"] == "error" {
                    &event
                } else {
                    &event["response"]["error"]
                };
                let failure = json!({"error": {
                    "message": error["message"].as_str().unwrap_or("the upstream failed"),
                    "type": "api_error",
                    "code": error["code"].as_str().unwrap_or("server_error"),
                }});
                crate::convert::write_event(out, None, &failure);
            }
            _ => {}
        }
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| self.on_event(data, out));
        self.decoder = decoder;
    }

    /// Nothing to add: a stream cut before `response.completed` stays cut (no `[DONE]`).
    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses_stream() -> String {
        let events = [
            json!({"type": "response.created", "response": {"id": "resp_1", "model": "gpt-5-mini", "status": "in_progress", "output": [], "usage": null}}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "Think."}),
            json!({"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "id": "m", "role": "assistant", "content": []}}),
            json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "On "}),
            json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "it."}),
            json!({"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "id": "fc", "call_id": "call_1", "name": "Bash", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{\"command\":"}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "\"ls\"}"}),
            json!({"type": "response.completed", "response": {"id": "resp_1", "model": "gpt-5-mini", "status": "completed",
                "output": [
                    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Think."}]},
                    {"type": "message", "id": "m", "role": "assistant", "content": [{"type": "output_text", "text": "On it."}]},
                    {"type": "function_call", "id": "fc", "call_id": "call_1", "name": "Bash", "arguments": "{\"command\":\"ls\"}"},
                ],
                "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 3}}}}),
        ];
        events
            .iter()
            .map(|event| {
                format!(
                    "event: {}\ndata: {event}\n\n",
                    event["type"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// The chunks, reassembled the way a Chat client does, say what the whole answer says.
    #[test]
    fn the_stream_reassembles_to_the_converted_whole_response_in_any_chunking() {
        let stream = responses_stream();
        for split in [1, 11, usize::MAX] {
            let mut translator = StreamTranslator::new(true);
            let mut out = Vec::new();
            for chunk in stream.as_bytes().chunks(split) {
                translator.push(chunk, &mut out);
            }
            translator.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            assert_eq!(data.last(), Some(&"[DONE]"));
            let chunks: Vec<Value> = data[..data.len() - 1]
                .iter()
                .map(|chunk| serde_json::from_str(chunk).unwrap())
                .collect();
            let (mut content, mut reasoning, mut arguments, mut finish) =
                (String::new(), String::new(), String::new(), Value::Null);
            for chunk in &chunks {
                if let Some(choice) = chunk["choices"].get(0) {
                    let delta = &choice["delta"];
                    content.push_str(delta["content"].as_str().unwrap_or(""));
                    reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                    if let Some(call) = delta["tool_calls"].get(0) {
                        arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                    }
                    if !choice["finish_reason"].is_null() {
                        finish = choice["finish_reason"].clone();
                    }
                }
            }
            let usage = &chunks.last().unwrap()["usage"];
            let completed: Value = serde_json::from_str(
                stream
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .next_back()
                    .unwrap(),
            )
            .unwrap();
            let whole: Value = serde_json::from_slice(
                &response(completed["response"].to_string().as_bytes()).unwrap(),
            )
            .unwrap();
            let message = &whole["choices"][0]["message"];
            assert_eq!(
                content,
                message["content"].as_str().unwrap(),
                "chunks of {split}"
            );
            assert_eq!(reasoning, message["reasoning_content"].as_str().unwrap());
            assert_eq!(
                arguments,
                message["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            );
            assert_eq!(finish, whole["choices"][0]["finish_reason"]);
            assert_eq!(finish, "tool_calls");
            assert_eq!(usage, &whole["usage"]);
            assert_eq!(usage["prompt_tokens"], 50);
            assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 20);
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        }
    }

    #[test]
    fn a_cut_stream_has_no_done_and_a_failure_is_an_error_chunk() {
        let stream = responses_stream();
        let cut = &stream[..stream.find("event: response.completed").unwrap()];
        let mut translator = StreamTranslator::new(false);
        let mut out = Vec::new();
        translator.push(cut.as_bytes(), &mut out);
        translator.finish(&mut out);
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));

        let mut translator = StreamTranslator::new(false);
        let mut out = Vec::new();
        translator.push(
            b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\"error\"") && text.contains("boom"),
            "{text}"
        );
    }
}

//! The mock OpenAI upstream's Responses API (`POST /v1/responses`, what Codex CLI speaks): a whole
//! response object, or the event stream the Responses API sends (`response.created` …
//! `response.output_text.delta` / `response.function_call_arguments.delta` …
//! `response.completed`, each as `event: <type>` + `data: <json>`).
//!
//! Deterministic answers read from `input`: a last item of type `function_call_output` gets
//! `TOOL_DONE: <output>`; `USE_TOOL:Bash NONCE-<nonce>` in the last `user` message gets a
//! function call (`call_id: call_mock_<nonce>`) of `exec_command` with
//! `{"cmd":"echo TOOLRESULT-<nonce>"}` when the request offers that tool (Codex does), else of
//! `Bash` with `{"command":…}`; a last item of type `compaction_trigger` (Codex's remote
//! compaction) gets one `compaction` item, its `encrypted_content` opaque as OpenAI's is;
//! anything else `MOCK_OK from <model>.`. Usage is a pure function of the request body:
//! [`expected_responses_usage`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use crate::anthropic::tool_nonce;
use crate::behavior::{openai_error_body, Delivery, Script};
use crate::openai::{admit, json_response, sse_response, unix_now};

/// The usage the mock reports for a Responses body: `input_tokens` includes `cached_tokens`,
/// `output_tokens` includes `reasoning_tokens` (none here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockResponsesUsage {
    pub input_tokens: u64,
    /// Half the input once the conversation has a tool result in it; none on a first turn.
    pub cached_tokens: u64,
    pub output_tokens: u64,
}

impl MockResponsesUsage {
    pub fn to_json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }
}

/// The usage the mock reports for this Responses body (a pure function of it).
pub fn expected_responses_usage(body: &Value) -> MockResponsesUsage {
    let input_tokens = 3 + body.to_string().len() as u64 / 64;
    let later_turn = items(body)
        .iter()
        .any(|item| item["type"] == "function_call_output");
    MockResponsesUsage {
        input_tokens,
        cached_tokens: if later_turn { input_tokens / 2 } else { 0 },
        output_tokens: reply_for(body).tokens(),
    }
}

enum Reply {
    Text(String),
    Call {
        call_id: String,
        name: &'static str,
        arguments: String,
    },
    /// What OpenAI answers a compaction trigger with (here: the number of items it replaced,
    /// encoded).
    Compaction(String),
}

impl Reply {
    fn tokens(&self) -> u64 {
        match self {
            Self::Text(text) => text.split_whitespace().count() as u64 + 1,
            Self::Call { arguments, .. } => 10 + arguments.len() as u64 / 4,
            Self::Compaction(content) => 5 + content.len() as u64 / 4,
        }
    }
}

/// `input` as items (a plain string is one user message).
fn items(body: &Value) -> Vec<Value> {
    match &body["input"] {
        Value::String(text) => vec![json!({"role": "user", "content": text})],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    }
}

/// A message item's text: a string, or the `text` of its content parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

fn offers(body: &Value, tool: &str) -> bool {
    body["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|candidate| candidate["name"] == tool))
}

fn reply_for(body: &Value) -> Reply {
    let items = items(body);
    if items
        .last()
        .is_some_and(|item| item["type"] == "compaction_trigger")
    {
        let replaced = format!("COMPACTED {} items", items.len() - 1);
        return Reply::Compaction(format!(
            "gAAAAmock{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(replaced)
        ));
    }
    if let Some(last) = items
        .last()
        .filter(|item| item["type"] == "function_call_output")
    {
        let output = match &last["output"] {
            Value::String(text) => text.clone(),
            other => text_of(other),
        };
        return Reply::Text(format!("TOOL_DONE: {}", output.trim()));
    }
    let last_user = items.iter().rposition(|item| item["role"] == "user");
    // A compacted history answers its summary: the prompt before it was dealt with.
    let compacted = items
        .iter()
        .skip(last_user.map_or(0, |position| position + 1))
        .any(|item| item["type"] == "compaction");
    let prompt = last_user
        .filter(|_| !compacted)
        .map(|position| text_of(&items[position]["content"]))
        .unwrap_or_default();
    if let Some(nonce) = tool_nonce(&prompt) {
        let command = format!("echo TOOLRESULT-{nonce}");
        let (name, arguments) = if offers(body, "exec_command") {
            ("exec_command", json!({"cmd": command}))
        } else {
            ("Bash", json!({"command": command}))
        };
        return Reply::Call {
            call_id: format!("call_mock_{nonce}"),
            name,
            arguments: arguments.to_string(),
        };
    }
    let model = body["model"].as_str().unwrap_or("unknown");
    Reply::Text(format!("MOCK_OK from {model}."))
}

/// The response object, as `status` (`in_progress` has no output and no usage yet).
fn response_object(
    body: &Value,
    created_at: u64,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    json!({
        "id": "resp_mock", "object": "response", "created_at": created_at, "status": status,
        "model": body["model"], "output": output, "usage": usage, "error": null,
        "incomplete_details": null, "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
        "metadata": {}, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}},
    })
}

fn output_item(reply: &Reply) -> Value {
    match reply {
        Reply::Text(text) => json!({
            "type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }),
        Reply::Call {
            call_id,
            name,
            arguments,
        } => json!({
            "type": "function_call", "id": "fc_mock", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments,
        }),
        Reply::Compaction(content) => json!({
            "type": "compaction", "id": "cmp_mock", "encrypted_content": content,
        }),
    }
}

/// The SSE frames of one streamed answer.
fn frames(body: &Value, created_at: u64, reply: &Reply, usage: &MockResponsesUsage) -> Vec<String> {
    let mut frames = Vec::new();
    let mut sequence = 0;
    let mut event = |data: Value| {
        let mut data = data;
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        let kind = data["type"].as_str().unwrap_or("").to_owned();
        frames.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    let pending = response_object(body, created_at, "in_progress", json!([]), Value::Null);
    event(json!({"type": "response.created", "response": pending}));
    event(json!({"type": "response.in_progress", "response": pending}));
    let done = output_item(reply);
    match reply {
        Reply::Compaction(_) => {
            event(json!({"type": "response.output_item.added", "output_index": 0, "item": done}));
        }
        Reply::Text(text) => {
            event(
                json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "message", "id": "msg_mock", "status": "in_progress",
                    "role": "assistant", "content": []}}),
            );
            event(
                json!({"type": "response.content_part.added", "item_id": "msg_mock",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for word in text.split_inclusive(' ') {
                event(
                    json!({"type": "response.output_text.delta", "item_id": "msg_mock",
                    "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}),
                );
            }
            event(
                json!({"type": "response.output_text.done", "item_id": "msg_mock",
                "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            event(
                json!({"type": "response.content_part.done", "item_id": "msg_mock",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
        Reply::Call {
            call_id,
            name,
            arguments,
        } => {
            event(
                json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "function_call", "id": "fc_mock", "status": "in_progress",
                    "call_id": call_id, "name": name, "arguments": ""}}),
            );
            let chars: Vec<char> = arguments.chars().collect();
            for piece in chars.chunks(chars.len().div_ceil(3).max(1)) {
                let piece: String = piece.iter().collect();
                event(json!({"type": "response.function_call_arguments.delta",
                    "item_id": "fc_mock", "output_index": 0, "delta": piece}));
            }
            event(
                json!({"type": "response.function_call_arguments.done", "item_id": "fc_mock",
                "output_index": 0, "arguments": arguments}),
            );
        }
    }
    event(json!({"type": "response.output_item.done", "output_index": 0, "item": done}));
    let completed = response_object(
        body,
        created_at,
        "completed",
        json!([done]),
        usage.to_json(),
    );
    event(json!({"type": "response.completed", "response": completed}));
    frames
}

pub(crate) async fn responses(State(script): State<Arc<Script>>, request: Request) -> Response {
    match admit(&script, request).await {
        Ok((body, delivery)) => answer(&body, &delivery),
        Err(reply) => reply,
    }
}

/// The answer to an admitted Responses request: a whole response, or its stream.
pub(crate) fn answer(body: &Value, delivery: &Delivery) -> Response {
    if !body["model"].is_string() {
        return json_response(
            400,
            &[],
            openai_error_body(
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                Some("missing_required_parameter"),
            ),
        );
    }
    let reply = reply_for(body);
    let usage = expected_responses_usage(body);
    let created_at = unix_now();
    if body["stream"] != json!(true) {
        let response = response_object(
            body,
            created_at,
            "completed",
            json!([output_item(&reply)]),
            usage.to_json(),
        );
        return json_response(200, &delivery.headers, response.to_string());
    }
    sse_response(frames(body, created_at, &reply, &usage), delivery)
}

/// `POST /v1/responses/compact`: the conversation's replacement history, one user message
/// naming how many items it replaced (`COMPACTED <n> items`), with usage as for a response.
pub(crate) async fn compact(State(script): State<Arc<Script>>, request: Request) -> Response {
    match admit(&script, request).await {
        Ok((body, delivery)) => compaction(&body, &delivery),
        Err(reply) => reply,
    }
}

/// The answer to an admitted compaction.
pub(crate) fn compaction(body: &Value, delivery: &Delivery) -> Response {
    let summary = format!("COMPACTED {} items", items(body).len());
    let usage = MockResponsesUsage {
        input_tokens: 3 + body.to_string().len() as u64 / 64,
        cached_tokens: 0,
        output_tokens: summary.split_whitespace().count() as u64 + 1,
    };
    let compaction = json!({
        "id": "resp_mock_compact", "object": "response.compaction", "created_at": unix_now(),
        "output": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": summary}]}],
        "usage": usage.to_json(),
    });
    json_response(200, &delivery.headers, compaction.to_string())
}

//! Codex's remote compaction (`remote_compaction_v2`) for upstreams that do not offer it. Codex
//! with its built-in OpenAI provider compacts by sending an ordinary `POST /responses` whose input
//! ends with `{"type": "compaction_trigger"}`, and takes from the answer exactly one output item of
//! type `compaction`, whose opaque `encrypted_content` it sends back in later turns in place of
//! the history it replaced. OpenAI's own items are encrypted, and only OpenAI can read them.
//!
//! For an Anthropic or Chat upstream the relay does it with the account's model: the trigger
//! becomes a request for a hand-off summary ([`PROMPT`], tools not to be called), the answer's
//! text becomes one `compaction` item whose `encrypted_content` is the summary, marked as the
//! relay's ([`summary_item`]), and a later turn's relay-made item becomes that summary again, as
//! a user message ([`summary_of`]). An OpenAI-encrypted item cannot be read here and is dropped
//! (the conversation moved from an OpenAI account keeps what follows it).

use base64::Engine;
use serde_json::{json, Value};

use super::super::{write_event, Translate};
use crate::sse::SseDecoder;

/// The input item that asks for a compaction.
pub const TRIGGER: &str = "compaction_trigger";

/// What the account's model is asked in place of the trigger.
pub const PROMPT: &str = "Pause the task: the conversation so far will be replaced by your \
summary. Write a hand-off summary for whoever continues the work without seeing this \
conversation: the goal and the constraints the user gave, what has been done and decided, the \
files, commands and results that matter, what remains to do and what to try next. Be complete \
and concise; do not call any tool.";

/// Marks an `encrypted_content` the relay wrote (version 1: base64 of the summary's UTF-8).
const MARK: &str = "claude-relay-summary-v1:";

/// Whether a Responses request body asks for a compaction: a cheap scan first (almost no request
/// mentions the trigger), then the input's items.
pub fn is_trigger_request(body: &[u8]) -> bool {
    if memchr::memmem::find(body, TRIGGER.as_bytes()).is_none() {
        return false;
    }
    serde_json::from_slice::<Value>(body).is_ok_and(|request| {
        request["input"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["type"] == TRIGGER))
    })
}

/// The compaction item that carries `summary`.
pub fn summary_item(summary: &str) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(summary);
    json!({"type": "compaction", "id": "cmp_relay", "encrypted_content": format!("{MARK}{encoded}")})
}

/// The summary in a compaction item the relay made; `None` for OpenAI's own.
pub fn summary_of(item: &Value) -> Option<String> {
    let encoded = item["encrypted_content"].as_str()?.strip_prefix(MARK)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The text of a response's message items.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().into_iter().flatten())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// A whole response (converted from the upstream's) → the same with its output one compaction
/// item of the text it held. Anything else (an error body) as it came.
pub fn whole(response: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(response) else {
        return response.to_vec();
    };
    if value["object"] != "response" {
        return response.to_vec();
    }
    let summary = output_text(&value);
    value["output"] = json!([summary_item(&summary)]);
    serde_json::to_vec(&value).unwrap_or_else(|_| response.to_vec())
}

/// A Responses stream (converted from the upstream's) → the stream Codex expects for a
/// compaction: the response's start as it came, then, at its end, the one compaction item of the
/// text streamed and the terminal event with that item as the output. Text and other item
/// events are held back; an error or a failure passes as it came; a cut stream stays cut.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    summary: String,
    sequence: u64,
}

impl StreamTranslator {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, out: &mut Vec<u8>, mut event: Value) {
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let kind = event["type"].as_str().unwrap_or("").to_owned();
        write_event(out, Some(&kind), &event);
    }
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| {
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                return;
            };
            match event["type"].as_str().unwrap_or("") {
                "response.created" | "response.in_progress" | "response.failed" | "error" => {
                    self.emit(out, event);
                }
                "response.output_text.delta" => {
                    if let Some(delta) = event["delta"].as_str() {
                        self.summary.push_str(delta);
                    }
                }
                "response.completed" | "response.incomplete" => {
                    let item = summary_item(&std::mem::take(&mut self.summary));
                    self.emit(
                        out,
                        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
                    );
                    self.emit(
                        out,
                        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                    );
                    // A summary cut at the output limit is still the summary Codex can use.
                    let mut response = event["response"].clone();
                    response["status"] = json!("completed");
                    response["incomplete_details"] = Value::Null;
                    response["output"] = json!([item]);
                    self.emit(
                        out,
                        json!({"type": "response.completed", "response": response}),
                    );
                }
                _ => {}
            }
        });
        self.decoder = decoder;
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_is_found_only_as_an_input_item() {
        assert!(is_trigger_request(
            br#"{"input":[{"type":"message","role":"user","content":"hi"},{"type":"compaction_trigger"}]}"#
        ));
        assert!(!is_trigger_request(
            br#"{"input":[{"type":"message","role":"user","content":"what is a compaction_trigger?"}]}"#
        ));
        assert!(!is_trigger_request(br#"{"input":"hi"}"#));
    }

    #[test]
    fn a_summary_survives_its_item_and_openai_items_are_not_read() {
        let item = summary_item("Done: parsed the logs. Next: fix src/main.rs — “ü”.");
        assert_eq!(item["type"], "compaction");
        assert_eq!(
            summary_of(&item).as_deref(),
            Some("Done: parsed the logs. Next: fix src/main.rs — “ü”.")
        );
        assert_eq!(
            summary_of(&json!({"type": "compaction", "encrypted_content": "gAAAAB…"})),
            None
        );
    }

    #[test]
    fn the_stream_and_the_whole_response_carry_exactly_one_compaction_item() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
            "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"message\"}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Goal: X. \"}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Next: Y.\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[{\"type\":\"message\"}],\"usage\":{\"input_tokens\":9,\"output_tokens\":4}}}\n\n",
        );
        let mut translator = StreamTranslator::new();
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
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
                "response.created",
                "response.output_item.added",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let done = &events[2]["item"];
        assert_eq!(summary_of(done).as_deref(), Some("Goal: X. Next: Y."));
        let completed = &events[3]["response"];
        assert_eq!(completed["output"].as_array().unwrap().len(), 1);
        assert_eq!(completed["usage"]["output_tokens"], 4);

        let response = json!({"object": "response", "status": "completed",
            "output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "S."}]}]});
        let whole: Value = serde_json::from_slice(&whole(response.to_string().as_bytes())).unwrap();
        assert_eq!(whole["output"].as_array().unwrap().len(), 1);
        assert_eq!(summary_of(&whole["output"][0]).as_deref(), Some("S."));
    }
}

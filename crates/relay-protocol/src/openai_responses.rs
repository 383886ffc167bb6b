//! The OpenAI Responses API (`/v1/responses`, Codex CLI's protocol): the usage it reports,
//! streamed or not.
//!
//! A streamed response is a sequence of typed events (`response.created`, …
//! `response.output_text.delta`, …) that ends with `response.completed` (or
//! `response.incomplete`, a normal end at a limit, or `response.failed`); each of those carries
//! the whole response object, whose `usage` is the request's usage. A stream may also end with an
//! `error` event. A whole (non-streamed) response is that same object.
//!
//! Counts are mapped to the relay's convention ([`Usage`]): `input_tokens` is the response's
//! `input_tokens` minus `input_tokens_details.cached_tokens`, which is `cache_read_tokens`;
//! `output_tokens` includes `output_tokens_details.reasoning_tokens`, which is also kept as
//! `reasoning_tokens`. The last usage seen wins.

use serde::Deserialize;

use crate::sse::SseDecoder;
use crate::usage::{Reported, StreamEnding, UsageFault};
use crate::Usage;

/// The `usage` object of a response.
#[derive(Debug, Default, Clone, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<InputDetails>,
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct InputDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct OutputDetails {
    reasoning_tokens: Option<u64>,
}

/// A response object (a whole body, or inside a terminal event), or an error body.
#[derive(Deserialize)]
struct WireResponse {
    model: Option<String>,
    usage: Option<WireUsage>,
    status: Option<String>,
    error: Option<WireError>,
}

/// One streamed event's payload: its type and, for the lifecycle events, the response.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    response: Option<WireResponse>,
    code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

/// The first non-empty string of `values`, at most 64 characters, else `unknown`.
fn error_name<'a>(values: impl IntoIterator<Item = &'a Option<serde_json::Value>>) -> String {
    values
        .into_iter()
        .flatten()
        .find_map(|value| value.as_str().filter(|name| !name.is_empty()))
        .map_or_else(
            || "unknown".to_owned(),
            |name| name.chars().take(64).collect(),
        )
}

/// Accumulates usage from a Responses response: feed it SSE chunks or a whole JSON body.
#[derive(Debug)]
pub struct ResponsesUsageTracker {
    decoder: SseDecoder,
    usage: Usage,
    reported: Reported,
    ending: StreamEnding,
}

impl Default for ResponsesUsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponsesUsageTracker {
    pub fn new() -> Self {
        Self {
            decoder: SseDecoder::new(),
            usage: Usage::default(),
            reported: Reported::default(),
            ending: StreamEnding::Open,
        }
    }

    /// Observes one chunk of an SSE response body.
    pub fn observe_sse_chunk(&mut self, chunk: &[u8]) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| self.observe_data(data));
        self.decoder = decoder;
    }

    fn observe_data(&mut self, data: &str) {
        // Deltas are most of a stream: only lifecycle and error events can say something here.
        let lifecycle = data.contains("\"response.created\"")
            || data.contains("\"response.completed\"")
            || data.contains("\"response.incomplete\"")
            || data.contains("\"response.failed\"")
            || data.contains("\"error\"");
        if !lifecycle {
            return;
        }
        let Ok(event) = serde_json::from_str::<WireEvent>(data) else {
            return;
        };
        let kind = event.kind.as_deref().unwrap_or("");
        if kind == "error" {
            self.ending = StreamEnding::Error(error_name([&event.code]));
            return;
        }
        let Some(response) = event.response else {
            return;
        };
        self.apply(&response);
        match kind {
            "response.completed" | "response.incomplete" => {
                self.ending = StreamEnding::Completed;
            }
            "response.failed" => {
                let error = response.error.as_ref();
                self.ending = StreamEnding::Error(error_name(
                    error
                        .map(|error| [&error.code, &error.kind])
                        .into_iter()
                        .flatten(),
                ));
            }
            _ => {}
        }
    }

    /// Observes a complete non-streaming response body. Returns false if it was not a response
    /// (or an error body, which sets the ending to `Error`).
    pub fn observe_json_body(&mut self, body: &[u8]) -> bool {
        match serde_json::from_slice::<WireResponse>(body) {
            Ok(WireResponse {
                error: Some(error),
                status,
                ..
            }) if status.is_none() => {
                self.ending = StreamEnding::Error(error_name([&error.code, &error.kind]));
                false
            }
            Ok(response) => {
                self.apply(&response);
                self.ending = StreamEnding::Completed;
                true
            }
            Err(_) => false,
        }
    }

    fn apply(&mut self, response: &WireResponse) {
        if self.reported.model.is_none() {
            self.reported.set_model(response.model.clone());
        }
        let Some(usage) = &response.usage else {
            return;
        };
        let input = usage.input_tokens.map(|value| self.reported.bounded(value));
        let cached = usage
            .input_tokens_details
            .as_ref()
            .and_then(|details| details.cached_tokens)
            .map(|value| self.reported.bounded(value));
        if input.is_some() || cached.is_some() {
            let cached = cached.unwrap_or(0);
            self.usage.input_tokens = input.unwrap_or(0).saturating_sub(cached);
            self.usage.cache_read_tokens = cached;
        }
        if let Some(value) = usage.output_tokens {
            self.usage.output_tokens = self.reported.bounded(value);
        }
        if let Some(value) = usage
            .output_tokens_details
            .as_ref()
            .and_then(|details| details.reasoning_tokens)
        {
            self.usage.reasoning_tokens = self.reported.bounded(value);
        }
    }

    /// Whether the usage could not be read whole, or was clamped.
    pub fn fault(&self) -> Option<UsageFault> {
        self.reported.fault(self.decoder.overflowed())
    }

    /// The usage seen so far (the Responses API has no cache writes: those fields stay 0).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn model(&self) -> Option<&str> {
        self.reported.model.as_deref()
    }

    pub fn ending(&self) -> &StreamEnding {
        &self.ending
    }
}

/// The whole response a stream carries, for a client that did not stream from an upstream that
/// only streams (the ChatGPT backend): the response object of its terminal event
/// (`response.completed`, `.incomplete` or `.failed`), its `output` taken from the
/// `response.output_item.done` events when the terminal event leaves it empty. An `error` event
/// becomes that error's body. `None`: the stream ended before the response did.
pub fn assembled_response(sse: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = SseDecoder::new();
    let mut items: Vec<(u64, serde_json::Value)> = Vec::new();
    let mut last: Option<serde_json::Value> = None;
    decoder.feed(sse, &mut |_event, data| {
        let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str(data) else {
            return;
        };
        match event.get("type").and_then(serde_json::Value::as_str) {
            Some("response.output_item.done") => {
                let index = event
                    .get("output_index")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(items.len() as u64);
                if let Some(item) = event.remove("item") {
                    items.push((index, item));
                }
            }
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                last = event.remove("response");
            }
            Some("error") => {
                event.remove("sequence_number");
                last = Some(serde_json::json!({ "error": event }));
            }
            _ => {}
        }
    });
    let mut response = last?;
    let empty = response
        .get("output")
        .and_then(serde_json::Value::as_array)
        .is_none_or(Vec::is_empty);
    if empty && response.get("error").is_none_or(serde_json::Value::is_null) {
        items.sort_by_key(|(index, _)| *index);
        response["output"] = items.into_iter().map(|(_, item)| item).collect();
    }
    serde_json::to_vec(&response).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream as the Responses API sends it (shortened): created, a text delta, completed.
    const STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-5-codex\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"usage \\\"error\\\" hi\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-5-codex\",\"status\":\"completed\",\"usage\":{\"input_tokens\":120,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":30,\"output_tokens_details\":{\"reasoning_tokens\":12},\"total_tokens\":150}}}\n\n",
    );

    fn expected() -> Usage {
        Usage {
            input_tokens: 20,
            cache_read_tokens: 100,
            output_tokens: 30,
            reasoning_tokens: 12,
            ..Usage::default()
        }
    }

    #[test]
    fn a_stream_reports_the_completed_responses_usage_in_any_chunking() {
        for split in [1, 7, 64, STREAM.len()] {
            let mut tracker = ResponsesUsageTracker::new();
            for chunk in STREAM.as_bytes().chunks(split) {
                tracker.observe_sse_chunk(chunk);
            }
            assert_eq!(tracker.usage(), expected(), "chunks of {split}");
            assert_eq!(tracker.model(), Some("gpt-5-codex"));
            assert_eq!(tracker.ending(), &StreamEnding::Completed);
            assert_eq!(tracker.fault(), None);
        }
    }

    #[test]
    fn a_stream_cut_before_completion_is_open_and_a_failure_names_its_code() {
        let cut = &STREAM[..STREAM.find("event: response.completed").unwrap()];
        let mut tracker = ResponsesUsageTracker::new();
        tracker.observe_sse_chunk(cut.as_bytes());
        assert_eq!(tracker.ending(), &StreamEnding::Open);
        assert_eq!(tracker.usage(), Usage::default());

        let mut failed = ResponsesUsageTracker::new();
        failed.observe_sse_chunk(
            b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"x\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        );
        assert_eq!(failed.ending(), &StreamEnding::Error("server_error".into()));
        assert_eq!(failed.usage().input_tokens, 5);

        let mut error = ResponsesUsageTracker::new();
        error.observe_sse_chunk(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"slow down\"}\n\n",
        );
        assert_eq!(
            error.ending(),
            &StreamEnding::Error("rate_limit_exceeded".into())
        );
    }

    #[test]
    fn a_whole_response_and_an_error_body() {
        let mut tracker = ResponsesUsageTracker::new();
        assert!(tracker.observe_json_body(
            br#"{"id":"resp_1","object":"response","model":"gpt-5-codex","status":"completed","error":null,"output":[],"usage":{"input_tokens":120,"input_tokens_details":{"cached_tokens":100},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":12}}}"#
        ));
        assert_eq!(tracker.usage(), expected());
        assert_eq!(tracker.ending(), &StreamEnding::Completed);

        let mut error = ResponsesUsageTracker::new();
        assert!(!error.observe_json_body(
            br#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#
        ));
        assert_eq!(
            error.ending(),
            &StreamEnding::Error("invalid_api_key".into())
        );
    }

    #[test]
    fn counts_beyond_reason_are_clamped_and_flagged() {
        let mut tracker = ResponsesUsageTracker::new();
        tracker.observe_json_body(
            br#"{"object":"response","status":"completed","usage":{"input_tokens":99999999999999,"output_tokens":1}}"#,
        );
        assert_eq!(
            tracker.usage().input_tokens,
            crate::usage::MAX_REPORTED_TOKENS
        );
        assert_eq!(tracker.fault(), Some(UsageFault::OutOfRange));
    }

    #[test]
    fn a_stream_is_assembled_into_its_whole_response() {
        let whole: serde_json::Value =
            serde_json::from_slice(&assembled_response(STREAM.as_bytes()).unwrap()).unwrap();
        assert_eq!(whole["id"], "resp_1");
        assert_eq!(whole["status"], "completed");
        assert_eq!(whole["usage"]["input_tokens"], 120);
        // The terminal event gave no output: it comes from the items streamed.
        let with_items = STREAM.replace(
            "event: response.completed",
            "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"type\":\"message\",\"id\":\"b\"}}\n\nevent: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"reasoning\",\"id\":\"a\"}}\n\nevent: response.completed",
        );
        let whole: serde_json::Value =
            serde_json::from_slice(&assembled_response(with_items.as_bytes()).unwrap()).unwrap();
        assert_eq!(whole["output"][0]["id"], "a");
        assert_eq!(whole["output"][1]["id"], "b");
        let error = "event: error\ndata: {\"type\":\"error\",\"sequence_number\":2,\"code\":\"server_error\",\"message\":\"boom\"}\n\n";
        let body: serde_json::Value =
            serde_json::from_slice(&assembled_response(error.as_bytes()).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "server_error");
        assert!(body["error"].get("sequence_number").is_none());
        let cut = &STREAM[..STREAM.find("event: response.completed").unwrap()];
        assert_eq!(assembled_response(cut.as_bytes()), None);
    }
}

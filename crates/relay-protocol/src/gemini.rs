//! The Gemini API (`/v1beta/models/{model}:generateContent`, Gemini CLI's and google-genai's
//! protocol): the usage it reports, streamed or not.
//!
//! A response (`GenerateContentResponse`) carries `usageMetadata`; a stream is a sequence of such
//! responses, as SSE events (`?alt=sse`: `data: {…}`) or as one JSON array whose elements arrive
//! over time (the default). Every chunk's metadata is the running total: the last one wins. A
//! stream has no end marker of its own: it is complete when a candidate names its
//! `finishReason`. An error comes as `{"error":{"code","message","status"}}`, whole or as the last
//! element of a stream.
//!
//! Counts are mapped to the relay's convention ([`Usage`]): `input_tokens` is `promptTokenCount`
//! (plus `toolUsePromptTokenCount`) minus `cachedContentTokenCount`, which is
//! `cache_read_tokens`; `output_tokens` is `candidatesTokenCount` plus `thoughtsTokenCount`, the
//! latter also kept as `reasoning_tokens`. Code Assist's envelope (`{"response": …}`) is read
//! through.

use serde::Deserialize;

use crate::sse::SseDecoder;
use crate::usage::{Reported, StreamEnding, UsageFault};
use crate::Usage;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireError {
    status: Option<String>,
    code: Option<u64>,
}

/// One response (a whole body or a stream chunk), or an error.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    usage_metadata: Option<WireUsage>,
    model_version: Option<String>,
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    error: Option<WireError>,
    /// Code Assist's envelope: the response inside.
    response: Option<Box<WireResponse>>,
}

/// How a Gemini stream reaches a client: SSE events (`?alt=sse`), or the elements of one JSON
/// array arriving over time (the default).
#[derive(Debug)]
pub struct StreamFraming {
    sse: bool,
    written: u64,
}

impl StreamFraming {
    pub fn new(sse: bool) -> Self {
        Self { sse, written: 0 }
    }

    /// Appends one response (its JSON).
    pub fn chunk(&mut self, json: &[u8], out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json);
            out.extend_from_slice(b"\r\n\r\n");
        } else {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
            out.extend_from_slice(json);
        }
        self.written += 1;
    }

    /// Ends the stream: an array is closed (an empty one too).
    pub fn end(&self, out: &mut Vec<u8>) {
        if !self.sse {
            if self.written == 0 {
                out.push(b'[');
            }
            out.push(b']');
        }
    }
}

/// Accumulates usage from a Gemini response: feed it SSE chunks, or a whole JSON body (a
/// response, or a JSON-array stream read whole).
#[derive(Debug)]
pub struct GeminiUsageTracker {
    decoder: SseDecoder,
    usage: Usage,
    reported: Reported,
    ending: StreamEnding,
}

impl Default for GeminiUsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl GeminiUsageTracker {
    pub fn new() -> Self {
        Self {
            decoder: SseDecoder::new(),
            usage: Usage::default(),
            reported: Reported::default(),
            ending: StreamEnding::Open,
        }
    }

    /// Observes one chunk of an SSE response body (`?alt=sse`).
    pub fn observe_sse_chunk(&mut self, chunk: &[u8]) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| {
            if let Ok(response) = serde_json::from_str::<WireResponse>(data) {
                self.apply(&response);
            }
        });
        self.decoder = decoder;
    }

    /// Observes a complete JSON body: one response, or the array a default stream is. Returns
    /// false if it held no response (an error body sets the ending to `Error`).
    pub fn observe_json_body(&mut self, body: &[u8]) -> bool {
        let responses: Vec<WireResponse> = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| serde_json::from_value(item).ok())
                .collect(),
            Ok(object @ serde_json::Value::Object(_)) => {
                serde_json::from_value(object).into_iter().collect()
            }
            _ => return false,
        };
        let mut any = false;
        for response in &responses {
            any |= response.error.is_none();
            self.apply(response);
        }
        if any && self.ending == StreamEnding::Open {
            // A whole body (or an array read to its end) is complete.
            self.ending = StreamEnding::Completed;
        }
        any
    }

    fn apply(&mut self, response: &WireResponse) {
        if let Some(inner) = &response.response {
            return self.apply(inner);
        }
        if let Some(error) = &response.error {
            let name = error
                .status
                .clone()
                .or_else(|| error.code.map(|code| format!("http_{code}")))
                .unwrap_or_else(|| "unknown".to_owned());
            self.ending = StreamEnding::Error(name.chars().take(64).collect());
            return;
        }
        if self.reported.model.is_none() {
            self.reported.set_model(response.model_version.clone());
        }
        if response
            .candidates
            .iter()
            .any(|candidate| candidate.finish_reason.is_some())
        {
            self.ending = StreamEnding::Completed;
        }
        let Some(usage) = &response.usage_metadata else {
            return;
        };
        let prompt = usage
            .prompt_token_count
            .map(|value| self.reported.bounded(value));
        let tool_prompt = usage
            .tool_use_prompt_token_count
            .map_or(0, |value| self.reported.bounded(value));
        let cached = usage
            .cached_content_token_count
            .map_or(0, |value| self.reported.bounded(value));
        if let Some(prompt) = prompt {
            self.usage.input_tokens = prompt.saturating_add(tool_prompt).saturating_sub(cached);
            self.usage.cache_read_tokens = cached;
        }
        let thoughts = usage
            .thoughts_token_count
            .map(|value| self.reported.bounded(value));
        if usage.candidates_token_count.is_some() || thoughts.is_some() {
            let candidates = usage
                .candidates_token_count
                .map_or(0, |value| self.reported.bounded(value));
            self.usage.output_tokens = candidates.saturating_add(thoughts.unwrap_or(0));
            self.usage.reasoning_tokens = thoughts.unwrap_or(0);
        }
    }

    /// Whether the usage could not be read whole, or was clamped.
    pub fn fault(&self) -> Option<UsageFault> {
        self.reported.fault(self.decoder.overflowed())
    }

    /// The usage seen so far (Gemini reports no cache writes: those fields stay 0).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str, finish: Option<&str>, usage: &str) -> String {
        let finish = finish.map_or(String::new(), |reason| {
            format!(",\"finishReason\":\"{reason}\"")
        });
        format!(
            "{{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{text}\"}}]}}{finish},\"index\":0}}],\"usageMetadata\":{usage},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}}"
        )
    }

    const FIRST: &str =
        r#"{"promptTokenCount":1200,"candidatesTokenCount":2,"totalTokenCount":1202}"#;
    const LAST: &str = r#"{"promptTokenCount":1200,"cachedContentTokenCount":1000,"candidatesTokenCount":30,"thoughtsTokenCount":12,"totalTokenCount":1242}"#;

    fn expected() -> Usage {
        Usage {
            input_tokens: 200,
            cache_read_tokens: 1000,
            output_tokens: 42,
            reasoning_tokens: 12,
            ..Usage::default()
        }
    }

    #[test]
    fn an_sse_stream_is_read_in_any_chunking_and_its_last_chunk_wins() {
        let stream = format!(
            "data: {}\r\n\r\ndata: {}\r\n\r\n",
            chunk("Hel", None, FIRST),
            chunk("lo", Some("STOP"), LAST)
        );
        for size in [1, 5, 64, stream.len()] {
            let mut tracker = GeminiUsageTracker::new();
            for piece in stream.as_bytes().chunks(size) {
                tracker.observe_sse_chunk(piece);
            }
            assert_eq!(tracker.usage(), expected(), "chunks of {size}");
            assert_eq!(tracker.ending(), &StreamEnding::Completed);
            assert_eq!(tracker.model(), Some("gemini-2.5-flash"));
        }
        // Cut before the finish reason: open.
        let mut cut = GeminiUsageTracker::new();
        cut.observe_sse_chunk(format!("data: {}\n\n", chunk("Hel", None, FIRST)).as_bytes());
        assert_eq!(cut.ending(), &StreamEnding::Open);
    }

    #[test]
    fn a_whole_response_a_json_array_stream_and_an_error() {
        let mut whole = GeminiUsageTracker::new();
        assert!(whole.observe_json_body(chunk("Hello", Some("STOP"), LAST).as_bytes()));
        assert_eq!(whole.usage(), expected());
        assert_eq!(whole.ending(), &StreamEnding::Completed);

        let array = format!(
            "[{},\r\n{}]",
            chunk("Hel", None, FIRST),
            chunk("lo", Some("STOP"), LAST)
        );
        let mut streamed = GeminiUsageTracker::new();
        assert!(streamed.observe_json_body(array.as_bytes()));
        assert_eq!(streamed.usage(), expected());

        let error = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        let mut failed = GeminiUsageTracker::new();
        assert!(!failed.observe_json_body(error.as_bytes()));
        assert_eq!(
            failed.ending(),
            &StreamEnding::Error("RESOURCE_EXHAUSTED".into())
        );
        // A stream that fails after some chunks ends with the error.
        let broken = format!("[{},\r\n{error}]", chunk("Hel", None, FIRST));
        let mut broken_tracker = GeminiUsageTracker::new();
        broken_tracker.observe_json_body(broken.as_bytes());
        assert_eq!(
            broken_tracker.ending(),
            &StreamEnding::Error("RESOURCE_EXHAUSTED".into())
        );
        assert_eq!(broken_tracker.usage().input_tokens, 1200);
    }
}

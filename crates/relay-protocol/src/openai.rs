//! The OpenAI Chat Completions API: the usage it reports, streamed or not.
//!
//! A streamed response carries usage only when the request asked for it
//! (`stream_options.include_usage`): then the last chunk before `data: [DONE]` has `choices: []`
//! and a `usage` object. Usage is applied as "latest value wins", so hosts that repeat a
//! cumulative `usage` on every chunk are not counted twice.
//!
//! Counts are mapped to the relay's convention ([`Usage`]): `input_tokens` is `prompt_tokens`
//! minus the cached part, `cache_read_tokens` is `prompt_tokens_details.cached_tokens` (or
//! DeepSeek's `prompt_cache_hit_tokens` when the details are absent), `output_tokens` is
//! `completion_tokens` (reasoning included) and `reasoning_tokens` is
//! `completion_tokens_details.reasoning_tokens`.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::sse::SseDecoder;
use crate::usage::{Reported, StreamEnding, UsageFault};
use crate::Usage;

/// The `usage` object of a Chat Completions response or chunk.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct WireUsage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// DeepSeek's name for cached prompt tokens.
    pub prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// The cached part of the prompt: `prompt_tokens_details.cached_tokens`, else DeepSeek's
    /// `prompt_cache_hit_tokens`.
    pub fn cached_tokens(&self) -> Option<u64> {
        match &self.prompt_tokens_details {
            Some(PromptTokensDetails {
                cached_tokens: Some(cached),
            }) => Some(*cached),
            _ => self.prompt_cache_hit_tokens,
        }
    }

    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.completion_tokens_details
            .as_ref()
            .and_then(|details| details.reasoning_tokens)
    }
}

#[derive(Deserialize)]
struct WireChunk {
    model: Option<String>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

impl WireError {
    fn name(&self) -> String {
        [&self.kind, &self.code]
            .into_iter()
            .flatten()
            .find_map(|value| value.as_str().filter(|name| !name.is_empty()))
            .map_or_else(
                || "unknown".to_owned(),
                |name| name.chars().take(64).collect(),
            )
    }
}

#[derive(Deserialize)]
struct UsageProbe {
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<IgnoredAny>,
}

/// Whether an SSE `data` payload is a usage-only chunk (`choices: []` and a `usage` object), the
/// one `stream_options.include_usage` adds; the relay hides it from a client that did not ask.
pub fn is_usage_only_chunk(data: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<UsageProbe>(data),
        Ok(UsageProbe { choices: Some(choices), usage: Some(_) }) if choices.is_empty()
    )
}

/// Accumulates usage from a Chat Completions response: feed it SSE chunks or a whole JSON body.
#[derive(Debug)]
pub struct ChatUsageTracker {
    decoder: SseDecoder,
    usage: Usage,
    reported: Reported,
    ending: StreamEnding,
    saw_usage: bool,
}

impl Default for ChatUsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatUsageTracker {
    pub fn new() -> Self {
        Self {
            decoder: SseDecoder::new(),
            usage: Usage::default(),
            reported: Reported::default(),
            ending: StreamEnding::Open,
            saw_usage: false,
        }
    }

    /// Observes one chunk of an SSE response body.
    pub fn observe_sse_chunk(&mut self, chunk: &[u8]) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |_event, data| self.observe_data(data));
        self.decoder = decoder;
    }

    fn observe_data(&mut self, data: &str) {
        let data = data.trim();
        if data == "[DONE]" {
            if self.ending == StreamEnding::Open {
                self.ending = StreamEnding::Completed;
            }
            return;
        }
        // Most chunks are content deltas: parse only those that can say something new.
        if self.reported.model.is_some()
            && !data.contains("\"usage\"")
            && !data.contains("\"error\"")
        {
            return;
        }
        if let Ok(chunk) = serde_json::from_str::<WireChunk>(data) {
            if let Some(error) = chunk.error {
                self.ending = StreamEnding::Error(error.name());
                return;
            }
            if self.reported.model.is_none() {
                self.reported.set_model(chunk.model);
            }
            if let Some(usage) = chunk.usage {
                self.apply(&usage);
            }
        }
    }

    /// Observes a complete non-streaming response body. Returns false if it was not a chat
    /// completion (or an error body, which sets the ending to `Error`).
    pub fn observe_json_body(&mut self, body: &[u8]) -> bool {
        match serde_json::from_slice::<WireChunk>(body) {
            Ok(WireChunk {
                error: Some(error), ..
            }) => {
                self.ending = StreamEnding::Error(error.name());
                false
            }
            Ok(chunk) => {
                self.reported.set_model(chunk.model);
                if let Some(usage) = chunk.usage {
                    self.apply(&usage);
                }
                self.ending = StreamEnding::Completed;
                true
            }
            Err(_) => false,
        }
    }

    fn apply(&mut self, usage: &WireUsage) {
        self.saw_usage = true;
        let prompt = usage
            .prompt_tokens
            .map(|value| self.reported.bounded(value));
        let cached = usage
            .cached_tokens()
            .map(|value| self.reported.bounded(value));
        if prompt.is_some() || cached.is_some() {
            let cached = cached.unwrap_or(0);
            let prompt = prompt.unwrap_or(0);
            // A host reporting more cached than prompt tokens is believed on the cached count.
            self.usage.input_tokens = prompt.saturating_sub(cached);
            self.usage.cache_read_tokens = cached;
        }
        if let Some(value) = usage.completion_tokens {
            self.usage.output_tokens = self.reported.bounded(value);
        }
        if let Some(value) = usage.reasoning_tokens() {
            self.usage.reasoning_tokens = self.reported.bounded(value);
        }
    }

    /// Whether the usage could not be read whole, or was clamped.
    pub fn fault(&self) -> Option<UsageFault> {
        self.reported.fault(self.decoder.overflowed())
    }

    /// The usage seen so far (OpenAI has no cache writes: those fields stay 0).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn model(&self) -> Option<&str> {
        self.reported.model.as_deref()
    }

    pub fn ending(&self) -> &StreamEnding {
        &self.ending
    }

    pub fn saw_usage(&self) -> bool {
        self.saw_usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::MAX_REPORTED_TOKENS;

    const STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",",
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",",
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",",
        "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",",
        "\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":80,\"total_tokens\":1280,",
        "\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},",
        "\"completion_tokens_details\":{\"reasoning_tokens\":64,\"audio_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn stream_usage_chunk_is_read_in_any_chunking() {
        for size in [1, 3, 7, 64, STREAM.len()] {
            let mut tracker = ChatUsageTracker::new();
            for chunk in STREAM.as_bytes().chunks(size) {
                tracker.observe_sse_chunk(chunk);
            }
            assert_eq!(
                tracker.usage(),
                Usage {
                    input_tokens: 176,
                    output_tokens: 80,
                    cache_read_tokens: 1024,
                    reasoning_tokens: 64,
                    ..Usage::default()
                }
            );
            // Reasoning is inside output: the total is the upstream's total.
            assert_eq!(tracker.usage().total_tokens(), 1280);
            assert_eq!(tracker.model(), Some("gpt-4.1"));
            assert_eq!(tracker.ending(), &StreamEnding::Completed);
            assert!(tracker.saw_usage());
            assert_eq!(tracker.fault(), None);
        }
    }

    #[test]
    fn stream_without_done_stays_open() {
        let cut = STREAM.find("data: [DONE]").unwrap();
        let mut tracker = ChatUsageTracker::new();
        tracker.observe_sse_chunk(&STREAM.as_bytes()[..cut]);
        assert_eq!(tracker.ending(), &StreamEnding::Open);
        assert_eq!(tracker.usage().output_tokens, 80);
    }

    #[test]
    fn stream_without_usage_reports_nothing() {
        let mut tracker = ChatUsageTracker::new();
        tracker.observe_sse_chunk(
            b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n",
        );
        assert!(!tracker.saw_usage());
        assert!(tracker.usage().is_empty());
        assert_eq!(tracker.ending(), &StreamEnding::Completed);
    }

    #[test]
    fn json_body_with_cached_and_reasoning_tokens() {
        let mut tracker = ChatUsageTracker::new();
        assert!(tracker.observe_json_body(
            br#"{"id":"chatcmpl-2","object":"chat.completion","model":"o4-mini","choices":[],
               "usage":{"prompt_tokens":50,"completion_tokens":30,"total_tokens":80,
               "prompt_tokens_details":{"cached_tokens":20},
               "completion_tokens_details":{"reasoning_tokens":25}}}"#
        ));
        assert_eq!(
            tracker.usage(),
            Usage {
                input_tokens: 30,
                output_tokens: 30,
                cache_read_tokens: 20,
                reasoning_tokens: 25,
                ..Usage::default()
            }
        );
        assert_eq!(tracker.usage().prompt_tokens(), 50);
        assert_eq!(tracker.ending(), &StreamEnding::Completed);
        assert_eq!(tracker.model(), Some("o4-mini"));
    }

    #[test]
    fn deepseek_cache_fields_count_when_details_are_absent() {
        let mut tracker = ChatUsageTracker::new();
        assert!(tracker.observe_json_body(
            br#"{"model":"deepseek-chat","usage":{"prompt_tokens":100,"completion_tokens":9,
               "prompt_cache_hit_tokens":60,"prompt_cache_miss_tokens":40}}"#
        ));
        assert_eq!(tracker.usage().cache_read_tokens, 60);
        assert_eq!(tracker.usage().input_tokens, 40);

        // With both, the OpenAI details win.
        let mut tracker = ChatUsageTracker::new();
        assert!(tracker.observe_json_body(
            br#"{"model":"deepseek-chat","usage":{"prompt_tokens":100,"completion_tokens":9,
               "prompt_cache_hit_tokens":60,"prompt_tokens_details":{"cached_tokens":70}}}"#
        ));
        assert_eq!(tracker.usage().cache_read_tokens, 70);
        assert_eq!(tracker.usage().input_tokens, 30);
    }

    #[test]
    fn impossible_counts_are_clamped_and_flagged() {
        let mut tracker = ChatUsageTracker::new();
        let body = format!(
            "{{\"model\":\"m\",\"usage\":{{\"prompt_tokens\":{max},\"completion_tokens\":{max},\
             \"completion_tokens_details\":{{\"reasoning_tokens\":{max}}}}}}}",
            max = u64::MAX
        );
        assert!(tracker.observe_json_body(body.as_bytes()));
        let usage = tracker.usage();
        assert_eq!(usage.input_tokens, MAX_REPORTED_TOKENS);
        assert_eq!(usage.output_tokens, MAX_REPORTED_TOKENS);
        assert_eq!(usage.reasoning_tokens, MAX_REPORTED_TOKENS);
        assert_eq!(tracker.fault(), Some(UsageFault::OutOfRange));
    }

    #[test]
    fn streamed_error_chunk_ends_with_its_type() {
        let mut tracker = ChatUsageTracker::new();
        tracker.observe_sse_chunk(
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n",
        );
        assert_eq!(
            tracker.ending(),
            &StreamEnding::Error("server_error".into())
        );

        let mut tracker = ChatUsageTracker::new();
        tracker.observe_sse_chunk(
            b"data: {\"error\":{\"message\":\"x\",\"code\":\"rate_limit_exceeded\"}}\n\n",
        );
        assert_eq!(
            tracker.ending(),
            &StreamEnding::Error("rate_limit_exceeded".into())
        );

        let mut tracker = ChatUsageTracker::new();
        assert!(!tracker.observe_json_body(br#"{"error":{"message":"x"}}"#));
        assert_eq!(tracker.ending(), &StreamEnding::Error("unknown".into()));
        assert!(!ChatUsageTracker::new().observe_json_body(b"<html>"));
    }

    #[test]
    fn oversized_event_is_a_fault() {
        let mut tracker = ChatUsageTracker::new();
        let big = vec![b'x'; crate::sse::MAX_EVENT_BYTES + 10];
        tracker.observe_sse_chunk(b"data: ");
        tracker.observe_sse_chunk(&big);
        tracker.observe_sse_chunk(b"\n\n");
        assert_eq!(tracker.fault(), Some(UsageFault::Unreadable));
    }

    #[test]
    fn usage_only_chunks_are_recognised() {
        assert!(is_usage_only_chunk(
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_usage_only_chunk(
            br#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_usage_only_chunk(
            br#"{"id":"c","choices":[],"usage":null}"#
        ));
        assert!(!is_usage_only_chunk(
            br#"{"id":"c","usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_usage_only_chunk(b"[DONE]"));
    }
}

//! Reads usage from Anthropic Messages responses, streamed or not.
//!
//! `message_start` carries the prompt-side counts; `message_delta` carries the cumulative output
//! count and *repeats* the prompt-side counts. Both are therefore applied as "latest value wins",
//! never summed, which is what keeps a streamed request from being billed twice for its input.

use serde::Deserialize;

use crate::sse::SseDecoder;
use crate::usage::{Reported, StreamEnding, UsageFault};
use crate::Usage;

#[derive(Deserialize, Default)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<WireCacheCreation>,
}

#[derive(Deserialize)]
struct WireCacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessage {
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct MessageStart {
    message: WireMessage,
}

#[derive(Deserialize)]
struct MessageDelta {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StreamError {
    error: StreamErrorDetail,
}

#[derive(Deserialize)]
struct StreamErrorDetail {
    #[serde(rename = "type")]
    kind: String,
}

/// Accumulates usage from a Messages response: feed it SSE chunks or a whole JSON body.
#[derive(Debug)]
pub struct MessagesUsageTracker {
    decoder: SseDecoder,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_total: u64,
    cache_creation_1h: Option<u64>,
    cache_creation_5m: Option<u64>,
    cache_read_tokens: u64,
    reported: Reported,
    ending: StreamEnding,
    saw_usage: bool,
}

impl Default for MessagesUsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl MessagesUsageTracker {
    pub fn new() -> Self {
        Self {
            decoder: SseDecoder::new(),
            input_tokens: 0,
            output_tokens: 0,
            cache_creation_total: 0,
            cache_creation_1h: None,
            cache_creation_5m: None,
            cache_read_tokens: 0,
            reported: Reported::default(),
            ending: StreamEnding::Open,
            saw_usage: false,
        }
    }

    /// Observes one chunk of an SSE response body.
    pub fn observe_sse_chunk(&mut self, chunk: &[u8]) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |event, data| self.observe_event(event, data));
        self.decoder = decoder;
    }

    fn observe_event(&mut self, event: &str, data: &str) {
        match event {
            "message_start" => {
                if let Ok(start) = serde_json::from_str::<MessageStart>(data) {
                    self.reported.set_model(start.message.model);
                    if let Some(usage) = start.message.usage {
                        self.apply(&usage);
                    }
                }
            }
            "message_delta" => {
                if let Ok(MessageDelta { usage: Some(usage) }) = serde_json::from_str(data) {
                    self.apply(&usage);
                }
            }
            "message_stop" => self.ending = StreamEnding::Completed,
            "error" => {
                let kind = serde_json::from_str::<StreamError>(data)
                    .map(|error| error.error.kind)
                    .unwrap_or_else(|_| "unknown".to_owned());
                self.ending = StreamEnding::Error(kind);
            }
            _ => {}
        }
    }

    /// Observes a complete non-streaming response body. Returns false if it was not a message.
    pub fn observe_json_body(&mut self, body: &[u8]) -> bool {
        match serde_json::from_slice::<WireMessage>(body) {
            Ok(message) => {
                self.reported.set_model(message.model);
                if let Some(usage) = message.usage {
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
        if let Some(value) = usage.input_tokens {
            self.input_tokens = self.reported.bounded(value);
        }
        if let Some(value) = usage.output_tokens {
            self.output_tokens = self.reported.bounded(value);
        }
        if let Some(value) = usage.cache_creation_input_tokens {
            self.cache_creation_total = self.reported.bounded(value);
        }
        if let Some(value) = usage.cache_read_input_tokens {
            self.cache_read_tokens = self.reported.bounded(value);
        }
        if let Some(split) = &usage.cache_creation {
            if let Some(value) = split.ephemeral_1h_input_tokens {
                self.cache_creation_1h = Some(self.reported.bounded(value));
            }
            if let Some(value) = split.ephemeral_5m_input_tokens {
                self.cache_creation_5m = Some(self.reported.bounded(value));
            }
        }
    }

    /// Whether the usage could not be read whole, or was clamped.
    pub fn fault(&self) -> Option<UsageFault> {
        self.reported.fault(self.decoder.overflowed())
    }

    /// The usage seen so far. Without a 5m/1h split every cache write counts as 5-minute (the
    /// API's default lifetime); with a split, the total is authoritative and 5m is the remainder.
    pub fn usage(&self) -> Usage {
        let one_hour = self.cache_creation_1h.unwrap_or(0);
        let total = self
            .cache_creation_total
            .max(one_hour.saturating_add(self.cache_creation_5m.unwrap_or(0)));
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_creation_5m_tokens: total.saturating_sub(one_hour),
            cache_creation_1h_tokens: one_hour.min(total),
            cache_read_tokens: self.cache_read_tokens,
            reasoning_tokens: 0,
        }
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

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5-20250929\",",
        "\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":4000,",
        "\"cache_creation\":{\"ephemeral_5m_input_tokens\":100,\"ephemeral_1h_input_tokens\":200},\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":12,",
        "\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":4000,\"output_tokens\":57}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn cumulative_delta_usage_is_not_counted_twice() {
        let mut tracker = MessagesUsageTracker::new();
        for chunk in STREAM.as_bytes().chunks(7) {
            tracker.observe_sse_chunk(chunk);
        }
        assert_eq!(
            tracker.usage(),
            Usage {
                input_tokens: 12,
                output_tokens: 57,
                cache_creation_5m_tokens: 100,
                cache_creation_1h_tokens: 200,
                cache_read_tokens: 4000,
                reasoning_tokens: 0,
            }
        );
        assert_eq!(tracker.model(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(tracker.ending(), &StreamEnding::Completed);
    }

    #[test]
    fn cut_stream_keeps_what_was_seen_and_stays_open() {
        let cut = STREAM.find("event: message_delta").unwrap();
        let mut tracker = MessagesUsageTracker::new();
        tracker.observe_sse_chunk(&STREAM.as_bytes()[..cut]);
        assert_eq!(tracker.usage().input_tokens, 12);
        assert_eq!(tracker.usage().output_tokens, 1);
        assert_eq!(tracker.ending(), &StreamEnding::Open);
    }

    #[test]
    fn error_event_is_reported() {
        let mut tracker = MessagesUsageTracker::new();
        tracker.observe_sse_chunk(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n",
        );
        assert_eq!(
            tracker.ending(),
            &StreamEnding::Error("overloaded_error".into())
        );
    }

    #[test]
    fn json_body_without_split_counts_cache_writes_as_5m() {
        let mut tracker = MessagesUsageTracker::new();
        assert!(tracker.observe_json_body(
            br#"{"id":"m","type":"message","model":"claude-haiku-4-5","content":[],
               "usage":{"input_tokens":5,"output_tokens":7,"cache_creation_input_tokens":9,"cache_read_input_tokens":null}}"#
        ));
        let usage = tracker.usage();
        assert_eq!(usage.cache_creation_5m_tokens, 9);
        assert_eq!(usage.cache_creation_1h_tokens, 0);
        assert_eq!(usage.cache_read_tokens, 0);
        assert_eq!(usage.output_tokens, 7);
    }

    #[test]
    fn a_reported_model_is_believed_only_if_it_could_be_a_requested_one() {
        for (reported, believed) in [
            ("claude-sonnet-4-5-20250929", true),
            ("", false),
            ("claude\u{7}", false),
            ("模型", false),
            ("with space", false),
        ] {
            let mut tracker = MessagesUsageTracker::new();
            let body = serde_json::json!({"model": reported, "usage": {"input_tokens": 1}});
            assert!(tracker.observe_json_body(body.to_string().as_bytes()));
            assert_eq!(tracker.model().is_some(), believed, "{reported:?}");
        }
    }

    #[test]
    fn impossible_counts_are_clamped_and_flagged() {
        let mut tracker = MessagesUsageTracker::new();
        let body = format!(
            "{{\"model\":\"claude-sonnet-4-5\",\"usage\":{{\"input_tokens\":{},\"output_tokens\":{},\"cache_creation\":{{\"ephemeral_1h_input_tokens\":{},\"ephemeral_5m_input_tokens\":{}}}}}}}",
            u64::MAX, u64::MAX, u64::MAX, u64::MAX
        );
        assert!(tracker.observe_json_body(body.as_bytes()));
        let usage = tracker.usage();
        assert_eq!(usage.input_tokens, crate::usage::MAX_REPORTED_TOKENS);
        assert_eq!(usage.output_tokens, crate::usage::MAX_REPORTED_TOKENS);
        assert!(usage.total_tokens() < u64::MAX / 2);
        assert_eq!(tracker.fault(), Some(UsageFault::OutOfRange));
        assert_eq!(MessagesUsageTracker::new().fault(), None);
    }
}

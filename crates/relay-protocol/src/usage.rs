//! Token usage of one request, in the units every provider's bill is made of.

use serde::{Deserialize, Serialize};

/// The most tokens of one kind a single response is believed to report; more is an upstream
/// fault, clamped to this and flagged.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// Tokens of one request by kind. Cache writes are split by lifetime because they are priced
/// differently (5-minute writes at 1.25×, 1-hour writes at 2× the input price).
///
/// One convention for every dialect: `input_tokens` excludes cached reads and cache writes, so
/// `input_tokens + cache_read_tokens + cache_creation_tokens()` is what the upstream counted as
/// prompt (OpenAI's `prompt_tokens`, whose `prompt_tokens_details.cached_tokens` is
/// `cache_read_tokens`). `output_tokens` includes reasoning tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_5m_tokens: u64,
    pub cache_creation_1h_tokens: u64,
    pub cache_read_tokens: u64,
    /// The part of `output_tokens` the model spent reasoning, when the upstream says (OpenAI's
    /// `completion_tokens_details.reasoning_tokens`). Informational only: it is already inside
    /// `output_tokens`, so it is never added to [`Usage::total_tokens`] or
    /// [`Usage::prompt_tokens`], nor priced on its own.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn cache_creation_tokens(&self) -> u64 {
        self.cache_creation_5m_tokens
            .saturating_add(self.cache_creation_1h_tokens)
    }

    /// All tokens that were read as prompt, cached or not (what decides long-context pricing).
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_tokens())
            .saturating_add(self.cache_read_tokens)
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.output_tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.total_tokens() == 0
    }
}

/// How a streamed response ended, as far as its events tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnding {
    /// No end marker (yet): the stream is unfinished or was cut.
    Open,
    /// The end marker arrived (Anthropic `message_stop`, OpenAI `data: [DONE]`).
    Completed,
    /// An error event arrived, with its type (e.g. `overloaded_error`).
    Error(String),
}

/// What went wrong reading usage, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFault {
    /// An event was too large to read: the counts may be incomplete.
    Unreadable,
    /// The upstream reported an impossible count, clamped.
    OutOfRange,
}

impl UsageFault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "usage_unreadable",
            Self::OutOfRange => "usage_out_of_range",
        }
    }
}

/// What every usage reader keeps besides the counts: the model the upstream reported (held to
/// the rules a request's model follows; anything else is not believed) and whether a count was
/// clamped to [`MAX_REPORTED_TOKENS`].
#[derive(Debug, Default)]
pub(crate) struct Reported {
    pub(crate) model: Option<String>,
    clamped: bool,
}

impl Reported {
    pub(crate) fn set_model(&mut self, model: Option<String>) {
        if let Some(model) = model.filter(|model| crate::is_model_name(model)) {
            self.model = Some(model);
        }
    }

    /// A reported count, clamped to what one response can hold.
    pub(crate) fn bounded(&mut self, value: u64) -> u64 {
        if value > MAX_REPORTED_TOKENS {
            self.clamped = true;
        }
        value.min(MAX_REPORTED_TOKENS)
    }

    /// Why the usage read may be wrong: an event too long to read, or a count out of range.
    pub(crate) fn fault(&self, decoder_overflowed: bool) -> Option<UsageFault> {
        if decoder_overflowed {
            Some(UsageFault::Unreadable)
        } else if self.clamped {
            Some(UsageFault::OutOfRange)
        } else {
            None
        }
    }
}

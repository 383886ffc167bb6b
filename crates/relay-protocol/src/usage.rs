//! Token usage of one request, in the units every provider's bill is made of.

use serde::{Deserialize, Serialize};

/// The most tokens of one kind a single response is believed to report; more is an upstream
/// fault, clamped to this and flagged.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// Tokens of one request by kind. Cache writes are split by lifetime because they are priced
/// differently (5-minute writes at 1.25×, 1-hour writes at 2× the input price).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_5m_tokens: u64,
    pub cache_creation_1h_tokens: u64,
    pub cache_read_tokens: u64,
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

//! Upstream accounts as the request path sees them, with their runtime state.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::crypto::SecretString;

/// Where an account's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Anthropic's API with a Console key, or any Anthropic-compatible relay via a base URL.
    Anthropic,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "anthropic" => Some(Self::Anthropic),
            _ => None,
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Anthropic => "https://api.anthropic.com",
        }
    }
}

/// What may change between requests without a reload: kept across snapshot rebuilds by id.
#[derive(Debug, Default)]
pub struct AccountRuntime {
    /// A monotonically increasing use stamp: smaller means less recently used.
    last_used: AtomicU64,
    /// Unix ms until which the account is rate limited (0 = not cooling).
    cooling_until_ms: AtomicI64,
}

impl AccountRuntime {
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub fn mark_used(&self, stamp: u64) {
        self.last_used.store(stamp, Ordering::Relaxed);
    }

    pub fn cooling_until_ms(&self) -> i64 {
        self.cooling_until_ms.load(Ordering::Relaxed)
    }

    pub fn cool_until(&self, until_ms: i64) {
        self.cooling_until_ms.fetch_max(until_ms, Ordering::Relaxed);
    }
}

/// One upstream account with its credential opened, ready to send with.
#[derive(Debug)]
pub struct AccountEntry {
    pub id: String,
    pub name: String,
    pub platform: Platform,
    /// Without a trailing slash.
    pub base_url: String,
    /// Lower is tried first.
    pub priority: i64,
    pub active: bool,
    pub api_key: SecretString,
    pub runtime: Arc<AccountRuntime>,
}

impl AccountEntry {
    pub fn is_cooling(&self, now_ms: i64) -> bool {
        self.runtime.cooling_until_ms() > now_ms
    }
}

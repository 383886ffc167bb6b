//! Plain rows and records that cross the storage boundary.

use relay_protocol::Usage;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub key_hint: String,
    /// The key's policy as JSON (see `relay-core::policy`).
    pub policy: String,
    pub meta: KeyMeta,
    pub created_at_ms: i64,
}

/// What an operator notes about a key; no effect on the request path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyMeta {
    pub description: String,
    pub owner: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub key_hash: Vec<u8>,
    pub key_hint: String,
    pub status: String,
    #[serde(skip)]
    pub policy: String,
    #[serde(flatten)]
    pub meta: KeyMeta,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Set while the key is in the trash.
    pub deleted_at_ms: Option<i64>,
}

/// What one key spent, for seeding the in-memory limits at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpend {
    pub key_id: String,
    pub total_cost_nano_usd: i64,
    pub total_tokens: i64,
    pub first_used_ms: Option<i64>,
}

/// Where a sealed value is kept. Each is sealed with associated data naming its row, so a
/// rotation needs to know which row it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedField {
    /// `accounts.secret_sealed`, by account id.
    AccountCredential,
    /// `accounts.proxy_sealed`, by account id.
    AccountProxy,
    /// `oauth_pending.verifier_sealed`, by account name.
    OAuthVerifier,
    /// `installation_secrets.sealed`, by secret name.
    Installation,
}

/// One sealed value and the row it belongs to.
#[derive(Debug, Clone)]
pub struct SealedValue {
    pub field: SealedField,
    /// The account id, pending account name or secret name.
    pub row: String,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub base_url: Option<String>,
    pub priority: i64,
    pub secret_sealed: Vec<u8>,
    pub secret_hint: String,
    /// Scheduling settings as JSON.
    pub settings: String,
    pub proxy_sealed: Option<Vec<u8>>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub base_url: Option<String>,
    pub priority: i64,
    pub status: String,
    #[serde(skip)]
    pub secret_sealed: Vec<u8>,
    pub secret_hint: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// When an operator last reset the account's health marks.
    pub health_reset_at_ms: i64,
    /// Scheduling settings as JSON (see `relay-core::account_settings`).
    #[serde(skip)]
    pub settings: String,
    /// The outbound proxy URL, sealed (it may carry a password).
    #[serde(skip)]
    pub proxy_sealed: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct AdminRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub created_at_ms: i64,
}

/// One request that reached an upstream, whatever its ending.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub created_at_ms: i64,
    pub key_id: String,
    pub account_id: Option<String>,
    pub platform: String,
    pub endpoint: String,
    pub model: String,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub usage: Usage,
    /// `None` when the model has no price: the tokens are kept and the record is flagged
    /// unpriced rather than silently costing nothing.
    pub cost_nano_usd: Option<i64>,
    /// What the key's cost limits were charged, when it is not the cost: an unpriced request at
    /// its stand-in price. Read back to seed the limits after a restart.
    pub charged_nano_usd: Option<i64>,
    pub status: u16,
    /// `ok`, `partial` (client went away), `upstream_error`, `upstream_interrupted`.
    pub outcome: String,
    pub error_kind: Option<String>,
    pub attempts: u32,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub key_id: Option<String>,
    pub since_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_creation_5m_input_tokens: i64,
    pub cache_creation_1h_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cost_nano_usd: i64,
    pub unpriced_requests: i64,
    pub partial_requests: i64,
    pub failed_requests: i64,
}

/// A change of an account's health, with what caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountEvent {
    pub account_id: String,
    pub at_ms: i64,
    /// `rate_limited`, `unauthorized`, `blocked`, `ejected`, `refresh_failed`, `reset`.
    pub kind: String,
    pub until_ms: Option<i64>,
    /// Status, reset headers and a body excerpt; never a credential.
    pub evidence: String,
}

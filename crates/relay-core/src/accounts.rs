//! Upstream accounts as the request path sees them, with their runtime state.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::account_settings::AccountSettings;
use crate::crypto::SecretString;
use crate::oauth::{OAuthSession, OAuthTokens};
use crate::proxy::ProxyConfig;

pub use relay_upstream::Platform;

/// What may change between requests without a reload: kept across snapshot rebuilds by id.
#[derive(Debug, Default)]
pub struct AccountRuntime {
    /// A monotonically increasing use stamp: smaller means less recently used.
    last_used: AtomicU64,
    /// Unix ms until which the account is rate limited (0 = not cooling).
    cooling_until_ms: AtomicI64,
    /// The same, per model family (opus, sonnet, haiku), for family-level limits.
    family_cooling_until_ms: [AtomicI64; 3],
    /// Out of rotation until an operator resets it (e.g. the organization was disabled).
    blocked: AtomicBool,
    /// Server errors and connect failures in a row, and how often the account was ejected.
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// The store's reset stamp last applied (see `SnapshotStore::reload`).
    reset_seen_ms: AtomicI64,
    /// A subscription account's live tokens (kept across reloads so a refresh is never lost).
    oauth: std::sync::Mutex<Option<Arc<OAuthSession>>>,
    /// Requests in flight on this account (held by [`AccountSlot`]s).
    in_flight: AtomicU32,
    /// The subscription windows as the last response reported them.
    windows: std::sync::Mutex<Option<UsageWindows>>,
    /// A window is close to its limit (`allowed_warning`): prefer other accounts.
    window_warning: AtomicBool,
    /// Cost served today (UTC), for the account's daily cost limit: `(day, nano-USD)`.
    day_cost: std::sync::Mutex<(i64, i64)>,
    /// The last health change: kind and evidence.
    reason: std::sync::Mutex<Option<String>>,
}

pub use relay_upstream::windows::UsageWindows;

/// One request's place on an account, for the account's concurrency limit; released on drop,
/// whatever the request's ending.
#[derive(Debug)]
pub struct AccountSlot {
    runtime: Arc<AccountRuntime>,
    /// The same place counted on every instance, when they share a Redis.
    shared: Option<crate::coord::SharedSlot>,
}

impl AccountSlot {
    pub fn take(runtime: &Arc<AccountRuntime>) -> Self {
        runtime.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            runtime: runtime.clone(),
            shared: None,
        }
    }

    pub(crate) fn counted_everywhere(mut self, shared: crate::coord::SharedSlot) -> Self {
        self.shared = Some(shared);
        self
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        self.runtime.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub use crate::model::FAMILIES;

fn family_index(family: &str) -> Option<usize> {
    FAMILIES.iter().position(|known| *known == family)
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

    pub fn cool_family_until(&self, family: &str, until_ms: i64) {
        if let Some(index) = family_index(family) {
            self.family_cooling_until_ms[index].fetch_max(until_ms, Ordering::Relaxed);
        }
    }

    /// When the account can next serve a request of `family` (0 or past: now).
    pub fn available_at_ms(&self, family: Option<&str>) -> i64 {
        let family_until = family.and_then(family_index).map_or(0, |index| {
            self.family_cooling_until_ms[index].load(Ordering::Relaxed)
        });
        self.cooling_until_ms().max(family_until)
    }

    pub fn family_cooling_until_ms(&self) -> Vec<(&'static str, i64)> {
        FAMILIES
            .iter()
            .zip(&self.family_cooling_until_ms)
            .map(|(family, until)| (*family, until.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn set_reason(&self, kind: &str, evidence: &str) {
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(format!("{kind}: {evidence}"));
    }

    pub fn set_reason_text(&self, reason: &str) {
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.to_owned());
    }

    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes today's cost (UTC), starting from zero on a new day.
    fn update_day_cost(&self, now_ms: i64, update: impl FnOnce(i64) -> i64) {
        let today = now_ms.div_euclid(86_400_000);
        let mut day = self
            .day_cost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if day.0 != today {
            *day = (today, 0);
        }
        day.1 = update(day.1);
    }

    pub fn add_day_cost(&self, cost_nano_usd: i64, now_ms: i64) {
        self.update_day_cost(now_ms, |cost| cost.saturating_add(cost_nano_usd.max(0)));
    }

    /// Takes the cost of today that other instances report, if it is more than this one knows.
    pub fn raise_day_cost(&self, total_nano_usd: i64, now_ms: i64) {
        self.update_day_cost(now_ms, |cost| cost.max(total_nano_usd));
    }

    pub fn day_cost(&self, now_ms: i64) -> i64 {
        let day = self
            .day_cost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if day.0 == now_ms.div_euclid(86_400_000) {
            day.1
        } else {
            0
        }
    }

    /// Records the windows a response reported.
    pub fn observe_windows(&self, windows: UsageWindows) {
        self.window_warning
            .store(windows.warning(), Ordering::Relaxed);
        *self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(windows);
    }

    pub fn windows(&self) -> Option<UsageWindows> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a subscription window is near its limit.
    pub fn window_warning(&self) -> bool {
        self.window_warning.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn block(&self) {
        self.blocked.store(true, Ordering::Relaxed);
    }

    /// Counts a server error or connect failure; returns how many in a row.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts an ejection; returns how many before this one.
    pub fn record_ejection(&self) -> u32 {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed)
    }

    /// A success: the failure streak and the ejection history end.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// The account's OAuth session, created from the stored tokens the first time and then
    /// only updated by them when they are newer.
    pub fn oauth_session(&self, stored: OAuthTokens) -> Arc<OAuthSession> {
        let mut session = self
            .oauth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match session.as_ref() {
            Some(existing) => {
                existing.adopt_if_newer(&stored);
                existing.clone()
            }
            None => {
                let created = Arc::new(OAuthSession::new(stored));
                *session = Some(created.clone());
                created
            }
        }
    }

    /// The last operator reset applied (marks made before it no longer count).
    pub fn reset_seen_ms(&self) -> i64 {
        self.reset_seen_ms.load(Ordering::Relaxed)
    }

    /// Clears every health mark, once per operator reset stamp.
    pub fn apply_reset(&self, reset_at_ms: i64) {
        if reset_at_ms > self.reset_seen_ms.swap(reset_at_ms, Ordering::Relaxed) {
            self.cooling_until_ms.store(0, Ordering::Relaxed);
            for family in &self.family_cooling_until_ms {
                family.store(0, Ordering::Relaxed);
            }
            self.blocked.store(false, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            *self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some("reset by an operator".to_owned());
        }
    }
}

/// An account's credential, opened: one variant per kind of sign-in. A platform that needs more
/// than a key (Bedrock's key pair and region, Azure's deployment) adds its variant here.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An API key, sent the way its platform expects (`x-api-key` for Anthropic, a bearer token
    /// for OpenAI-compatible hosts).
    ApiKey(SecretString),
    /// A subscription's live tokens (Claude or ChatGPT; refreshed ahead of expiry, one refresh
    /// at a time).
    Subscription(Arc<OAuthSession>),
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
    /// Breaks ties of priority: older first.
    pub created_at_ms: i64,
    pub active: bool,
    pub credential: Credential,
    pub settings: AccountSettings,
    /// The outbound proxy this account's requests go through.
    pub proxy: Option<ProxyConfig>,
    pub runtime: Arc<AccountRuntime>,
}

/// An account's live state, as this process sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountStatus {
    pub name: String,
    pub platform: &'static str,
    /// `active`, `cooling`, `blocked`, `unschedulable` or `disabled`.
    pub state: &'static str,
    pub cooling_until_ms: Option<i64>,
    pub family_cooling_until_ms: Vec<(&'static str, i64)>,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    /// Subscription windows from the last response (Claude's 5-hour and weekly statuses,
    /// Codex's used percentages, and their resets).
    pub windows: Option<UsageWindows>,
    /// The last health change and its evidence.
    pub reason: Option<String>,
}

impl AccountEntry {
    /// The account's live state in this process, for operators.
    pub fn status(&self, now: i64) -> AccountStatus {
        let runtime = &self.runtime;
        let cooling_until = runtime.cooling_until_ms();
        let state = if !self.active {
            "disabled"
        } else if runtime.is_blocked() {
            "blocked"
        } else if cooling_until > now {
            "cooling"
        } else if !self.settings.schedulable() {
            "unschedulable"
        } else {
            "active"
        };
        AccountStatus {
            name: self.name.clone(),
            platform: self.platform.as_str(),
            state,
            cooling_until_ms: (cooling_until > now).then_some(cooling_until),
            family_cooling_until_ms: runtime
                .family_cooling_until_ms()
                .into_iter()
                .filter(|(_, until)| *until > now)
                .collect(),
            in_flight: runtime.in_flight(),
            consecutive_failures: runtime.consecutive_failures(),
            windows: runtime.windows(),
            reason: runtime.reason(),
        }
    }

    /// A copy sharing the credential's session and a fresh runtime (for tests and tools).
    pub fn clone_shallow(&self) -> Self {
        Self {
            id: self.id.clone(),
            name: self.name.clone(),
            platform: self.platform,
            base_url: self.base_url.clone(),
            priority: self.priority,
            created_at_ms: self.created_at_ms,
            active: self.active,
            credential: self.credential.clone(),
            settings: self.settings.clone(),
            proxy: self.proxy.clone(),
            runtime: Arc::new(AccountRuntime::default()),
        }
    }

    /// Whether the account cannot take a request of `family` now: cooling, blocked, switched
    /// out of scheduling, or at its concurrency limit.
    pub fn is_out(&self, family: Option<&str>, now_ms: i64) -> bool {
        self.runtime.is_blocked()
            || !self.settings.schedulable()
            || self.runtime.available_at_ms(family) > now_ms
            || self
                .settings
                .concurrency
                .is_some_and(|limit| self.runtime.in_flight() >= limit)
            || self
                .settings
                .daily_cost_nano_usd
                .is_some_and(|limit| self.runtime.day_cost(now_ms) >= limit)
    }
}

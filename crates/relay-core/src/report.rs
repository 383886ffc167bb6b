//! A key holder's view of their own key: its limits, where each stands, when each resets, and
//! the most recent requests. Served by the self-service endpoints, authenticated by the key.

use serde::Serialize;

use crate::keys::KeyEntry;
use crate::limits::Standing;
use crate::policy::KeyPolicy;

#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub name: String,
    pub status: &'static str,
    pub limits: KeyPolicy,
    pub concurrency: Gauge,
    pub total_cost: Budget,
    pub token_quota: Budget,
    /// The current day, week and month (UTC), and the family week if the key has one.
    pub periods: Vec<PeriodReport>,
    pub rate_window: Option<WindowReport>,
    pub expires_at_ms: Option<i64>,
    pub recent_requests: Vec<RecentRequest>,
}

#[derive(Debug, Serialize)]
pub struct Gauge {
    pub in_flight: u32,
    pub limit: Option<u32>,
}

/// Money in USD (as a number, for display) and in exact nano-USD.
#[derive(Debug, Serialize)]
pub struct Budget {
    pub used: f64,
    pub used_exact: i64,
    pub limit: Option<f64>,
    pub remaining: Option<f64>,
}

impl Budget {
    fn money(used: i64, limit: Option<i64>) -> Self {
        Self {
            used: usd(used),
            used_exact: used,
            limit: limit.map(usd),
            remaining: limit.map(|limit| usd((limit - used).max(0))),
        }
    }

    fn count(used: u64, limit: Option<u64>) -> Self {
        Self {
            used: used as f64,
            used_exact: i64::try_from(used).unwrap_or(i64::MAX),
            limit: limit.map(|limit| limit as f64),
            remaining: limit.map(|limit| limit.saturating_sub(used) as f64),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PeriodReport {
    pub period: String,
    pub cost: Budget,
    pub resets_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub seconds: u64,
    pub requests: Budget,
    pub tokens: Budget,
    pub cost: Budget,
}

#[derive(Debug, Serialize)]
pub struct RecentRequest {
    pub at_ms: i64,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// `None` when the model has no price.
    pub cost_usd: Option<f64>,
    pub status: u16,
    pub outcome: String,
}

fn usd(nano_usd: i64) -> f64 {
    nano_usd as f64 / 1e9
}

/// Builds the report from the limiter's live figures and the recorded requests.
pub fn build(
    key: &KeyEntry,
    standing: Standing,
    recent: Vec<relay_store::UsageRecord>,
) -> KeyReport {
    let policy = &key.policy;
    let periods = standing
        .periods
        .iter()
        .map(|(period, cost, resets_at_ms)| {
            let limit = match period {
                crate::limits::Period::Day => policy.daily_cost_nano_usd,
                crate::limits::Period::Week => policy.weekly_cost_nano_usd,
                crate::limits::Period::Month => policy.monthly_cost_nano_usd,
                crate::limits::Period::FamilyWeek { .. } => policy
                    .family_weekly
                    .as_ref()
                    .map(|limit| limit.cost_nano_usd),
            };
            PeriodReport {
                period: period.label(),
                cost: Budget::money(*cost, limit),
                resets_at_ms: *resets_at_ms,
            }
        })
        .collect();
    let rate_window = standing
        .window
        .map(|(requests, tokens, cost)| WindowReport {
            seconds: policy.rate_window_secs.unwrap_or(0),
            requests: Budget::count(requests, policy.rate_requests),
            tokens: Budget::count(tokens, policy.rate_tokens),
            cost: Budget::money(cost, policy.rate_cost_nano_usd),
        });
    let expires_after_first_use = policy
        .expires_after_first_use_secs
        .zip(standing.first_used_ms)
        .map(|(secs, first)| {
            first.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
        });
    let expires_at_ms = match (policy.expires_at_ms, expires_after_first_use) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    KeyReport {
        name: key.name.clone(),
        status: if key.active { "active" } else { "disabled" },
        // Limits and usage only: how the key is routed (its dedicated account or group) and
        // which addresses may use it are the operator's business.
        limits: KeyPolicy {
            dedicated_account: None,
            account_group: None,
            allowed_ips: None,
            ..KeyPolicy::clone(policy)
        },
        concurrency: Gauge {
            in_flight: standing.inflight,
            limit: policy.concurrency,
        },
        total_cost: Budget::money(standing.total_cost_nano_usd, policy.total_cost_nano_usd),
        token_quota: Budget::count(standing.total_tokens, policy.token_quota),
        periods,
        rate_window,
        expires_at_ms,
        recent_requests: recent
            .into_iter()
            .map(|record| RecentRequest {
                at_ms: record.created_at_ms,
                model: record.upstream_model.unwrap_or(record.model),
                input_tokens: record.usage.input_tokens,
                output_tokens: record.usage.output_tokens,
                cache_creation_input_tokens: record.usage.cache_creation_tokens(),
                cache_read_input_tokens: record.usage.cache_read_tokens,
                cost_usd: record.cost_nano_usd.map(usd),
                status: record.status,
                outcome: record.outcome,
            })
            .collect(),
    }
}

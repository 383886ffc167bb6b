//! Enforcing key policies under concurrency: every request reserves its estimated cost and
//! tokens (and a concurrency slot) atomically before it goes upstream, and settles the real
//! figures when it ends. An [`Admission`] is a lease: settled once, or released by `Drop` on any
//! other ending (error, timeout, client gone, panic), so nothing leaks.
//!
//! *Architecture Invariant*: with estimates that are not below the real cost (the relay
//! reserves the worst case: the whole prompt as uncached input plus `max_tokens` of output), a
//! limit is never overdrawn, however many requests race for it.
//!
//! Every sum is a [`Quantity`] (128-bit, saturating): no estimate, limit or reported usage can
//! make a sum wrap and admit what it should refuse.
//!
//! In one process the state is in memory, behind one short mutex per key. Instances that share
//! a Redis keep each key's ledger there instead (`shared`), with the same three operations
//! (admit, settle, release) as atomic scripts and every reservation a lease that expires if its
//! instance dies.

mod allotment;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

pub use shared::{SharedLedgers, Unavailable};

use crate::policy::KeyPolicy;
use crate::quantity::Quantity;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-05, the first Monday of the Unix epoch.
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

/// What a request is expected to cost at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub cost_nano_usd: i64,
    pub tokens: u64,
}

impl Estimate {
    fn cost(self) -> Quantity {
        Quantity::from_i64(self.cost_nano_usd)
    }

    fn tokens(self) -> Quantity {
        Quantity::from_u64(self.tokens)
    }
}

/// A calendar period a cost limit applies to (all in UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    /// Starting Monday 00:00.
    Week,
    Month,
    /// One model family's week, starting on a chosen weekday and hour.
    FamilyWeek {
        family: &'static str,
        weekday: u8,
        hour: u8,
    },
}

impl Period {
    /// The start of the period containing `now_ms`.
    pub fn start(self, now_ms: i64) -> i64 {
        match self {
            Self::Day => now_ms.div_euclid(DAY_MS) * DAY_MS,
            Self::Week => week_start(now_ms, 0),
            Self::Month => {
                let (year, month, _) = crate::clock::civil_from_days(now_ms.div_euclid(DAY_MS));
                crate::clock::days_from_civil(year, month, 1) * DAY_MS
            }
            Self::FamilyWeek { weekday, hour, .. } => week_start(
                now_ms,
                i64::from(weekday) * DAY_MS + i64::from(hour) * HOUR_MS,
            ),
        }
    }

    /// The start of the next period: when a limit of this period frees up.
    pub fn next_start(self, now_ms: i64) -> i64 {
        match self {
            Self::Day => self.start(now_ms) + DAY_MS,
            Self::Week | Self::FamilyWeek { .. } => self.start(now_ms) + WEEK_MS,
            Self::Month => {
                let (year, month, _) = crate::clock::civil_from_days(now_ms.div_euclid(DAY_MS));
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                crate::clock::days_from_civil(year, month, 1) * DAY_MS
            }
        }
    }

    pub fn label(self) -> String {
        match self {
            Self::Day => "daily".to_owned(),
            Self::Week => "weekly".to_owned(),
            Self::Month => "monthly".to_owned(),
            Self::FamilyWeek { family, .. } => format!("weekly {family}"),
        }
    }
}

fn week_start(now_ms: i64, offset_ms: i64) -> i64 {
    let origin = FIRST_MONDAY_MS + offset_ms;
    (now_ms - origin).div_euclid(WEEK_MS) * WEEK_MS + origin
}

/// The cost limits of a policy that apply to a request of `family`.
fn period_limits<'a>(
    policy: &'a KeyPolicy,
    family: Option<&'static str>,
) -> impl Iterator<Item = (Period, i64)> + 'a {
    let fixed = [
        (Period::Day, policy.daily_cost_nano_usd),
        (Period::Week, policy.weekly_cost_nano_usd),
        (Period::Month, policy.monthly_cost_nano_usd),
    ];
    let family_limit = policy.family_weekly.as_ref().and_then(|limit| {
        let wanted = crate::model::family(&limit.family)?;
        (family == Some(wanted)).then_some((
            Period::FamilyWeek {
                family: wanted,
                weekday: limit.reset_weekday,
                hour: limit.reset_hour,
            },
            Some(limit.cost_nano_usd),
        ))
    });
    fixed
        .into_iter()
        .chain(family_limit)
        .filter_map(|(period, limit)| Some((period, limit?)))
}

/// Why a request was refused. Each says which limit, and when waiting helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Expired,
    Concurrency {
        limit: u32,
    },
    RateRequests {
        limit: u64,
        retry_after_ms: i64,
    },
    RateTokens {
        limit: u64,
        retry_after_ms: i64,
    },
    RateCost {
        limit: i64,
        retry_after_ms: i64,
    },
    PeriodCost {
        period: Period,
        limit: i64,
        resets_at_ms: i64,
    },
    TotalCost {
        limit: i64,
    },
    TokenQuota {
        limit: u64,
    },
    /// The shared ledgers do not answer, and the operator chose to refuse rather than count
    /// per instance.
    LimitsUnavailable,
}

/// Spend a key had before this process started (from the usage records).
#[derive(Debug, Clone, Default)]
pub struct PriorSpend {
    pub total_cost_nano_usd: i64,
    pub total_tokens: u64,
    pub first_used_ms: Option<i64>,
    /// `(at_ms, tokens, cost, model)` of the requests of the last month or so, oldest first.
    pub recent: Vec<(i64, u64, i64, String)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PeriodCost {
    start_ms: i64,
    cost: Quantity,
}

#[derive(Debug, Default)]
struct Ledger {
    inflight: u32,
    reserved_cost: Quantity,
    reserved_tokens: Quantity,
    /// Reserved cost of requests per model family, for family limits.
    reserved_by_family: HashMap<&'static str, Quantity>,
    total_cost: Quantity,
    total_tokens: Quantity,
    first_used_ms: Option<i64>,
    periods: HashMap<Period, PeriodCost>,
    window: SlidingWindow,
}

/// Requests, tokens and cost over a sliding window, kept in at most [`WINDOW_BUCKETS`] time
/// buckets with running totals: O(1) per request and bounded memory at any request rate. A
/// bucket leaves the window only once all of it is older than the window, so the window errs
/// by at most one bucket (1/120 of its length, at least a second) on the safe side: it may
/// refuse slightly longer, never admit more.
#[derive(Debug, Default)]
struct SlidingWindow {
    buckets: VecDeque<Bucket>,
    requests: Quantity,
    tokens: Quantity,
    cost: Quantity,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    end_ms: i64,
    requests: Quantity,
    tokens: Quantity,
    cost: Quantity,
}

const WINDOW_BUCKETS: i64 = 120;

impl SlidingWindow {
    fn trim(&mut self, window_ms: i64, now_ms: i64) {
        while let Some(bucket) = self.buckets.front().copied() {
            if bucket.end_ms > now_ms - window_ms {
                break;
            }
            self.buckets.pop_front();
            self.requests -= bucket.requests;
            self.tokens -= bucket.tokens;
            self.cost -= bucket.cost;
        }
    }

    /// The bucket that `now_ms` falls in, opened if needed.
    fn current(&mut self, window_ms: i64, now_ms: i64) -> &mut Bucket {
        let open = self
            .buckets
            .back()
            .is_some_and(|bucket| now_ms < bucket.end_ms);
        if !open {
            let width = (window_ms / WINDOW_BUCKETS).max(1000);
            self.buckets.push_back(Bucket {
                end_ms: now_ms - now_ms.rem_euclid(width) + width,
                requests: Quantity::ZERO,
                tokens: Quantity::ZERO,
                cost: Quantity::ZERO,
            });
        }
        // Just ensured to exist.
        self.buckets
            .back_mut()
            .unwrap_or_else(|| unreachable!("a bucket was just pushed"))
    }

    fn add(
        &mut self,
        window_ms: i64,
        now_ms: i64,
        requests: Quantity,
        tokens: Quantity,
        cost: Quantity,
    ) {
        let bucket = self.current(window_ms, now_ms);
        bucket.requests += requests;
        bucket.tokens += tokens;
        bucket.cost += cost;
        self.requests += requests;
        self.tokens += tokens;
        self.cost += cost;
    }

    /// When the oldest bucket leaves the window.
    fn retry_after_ms(&self, window_ms: i64, now_ms: i64) -> i64 {
        self.buckets
            .front()
            .map_or(1000, |bucket| (bucket.end_ms + window_ms - now_ms).max(1))
    }
}

impl Ledger {
    /// A key's ledger as its usage records left it.
    fn seeded(policy: &KeyPolicy, prior: &PriorSpend, now_ms: i64) -> Self {
        let mut ledger = Ledger {
            first_used_ms: prior.first_used_ms,
            ..Ledger::default()
        };
        let family_period = policy.family_weekly.as_ref().and_then(|limit| {
            Some(Period::FamilyWeek {
                family: crate::model::family(&limit.family)?,
                weekday: limit.reset_weekday,
                hour: limit.reset_hour,
            })
        });
        if let Some(period) = family_period {
            ledger.period(period, now_ms);
        }
        let window_ms = window_ms(policy);
        for (at_ms, tokens, cost, model) in &prior.recent {
            let family = crate::model::family(model);
            for period in [Period::Day, Period::Week, Period::Month]
                .into_iter()
                .chain(family_period.filter(|period| {
                    matches!(period, Period::FamilyWeek { family: named, .. } if Some(*named) == family)
                }))
            {
                if *at_ms >= period.start(now_ms) {
                    ledger.period(period, now_ms).cost += Quantity::from_i64(*cost);
                }
            }
            if let Some(window) = window_ms.filter(|window| *at_ms > now_ms - window) {
                ledger.window.add(
                    window,
                    *at_ms,
                    Quantity::from_u64(1),
                    Quantity::from_u64(*tokens),
                    Quantity::from_i64(*cost),
                );
            }
        }
        ledger.total_cost = Quantity::from_i64(prior.total_cost_nano_usd);
        ledger.total_tokens = Quantity::from_u64(prior.total_tokens);
        ledger
    }

    /// The current period's cost, starting the period afresh when it has turned over.
    fn period(&mut self, period: Period, now_ms: i64) -> &mut PeriodCost {
        let start_ms = period.start(now_ms);
        let entry = self.periods.entry(period).or_insert(PeriodCost {
            start_ms,
            cost: Quantity::ZERO,
        });
        if entry.start_ms != start_ms {
            *entry = PeriodCost {
                start_ms,
                cost: Quantity::ZERO,
            };
        }
        entry
    }

    fn admit(
        &mut self,
        policy: &KeyPolicy,
        estimate: Estimate,
        family: Option<&'static str>,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        if let (Some(lifetime), Some(first_used)) =
            (policy.expires_after_first_use_secs, self.first_used_ms)
        {
            let lifetime_ms = i64::try_from(lifetime.saturating_mul(1000)).unwrap_or(i64::MAX);
            if now_ms >= first_used.saturating_add(lifetime_ms) {
                return Err(Refusal::Expired);
            }
        }
        if let Some(limit) = policy.concurrency {
            if self.inflight >= limit {
                return Err(Refusal::Concurrency { limit });
            }
        }
        let (estimate_cost, estimate_tokens) = (estimate.cost(), estimate.tokens());
        let used_tokens = self.total_tokens.plus(self.reserved_tokens);
        if let Some(limit) = policy.token_quota {
            if used_tokens.would_exceed(estimate_tokens, Quantity::from_u64(limit)) {
                return Err(Refusal::TokenQuota { limit });
            }
        }
        let used_cost = self.total_cost.plus(self.reserved_cost);
        if let Some(limit) = policy.total_cost_nano_usd {
            if used_cost.would_exceed(estimate_cost, Quantity::from_i64(limit)) {
                return Err(Refusal::TotalCost { limit });
            }
        }
        for (period, limit) in period_limits(policy, family) {
            let reserved = match period {
                Period::FamilyWeek { family, .. } => self
                    .reserved_by_family
                    .get(family)
                    .copied()
                    .unwrap_or_default(),
                _ => self.reserved_cost,
            };
            let used = self.period(period, now_ms).cost.plus(reserved);
            if used.would_exceed(estimate_cost, Quantity::from_i64(limit)) {
                return Err(Refusal::PeriodCost {
                    period,
                    limit,
                    resets_at_ms: period.next_start(now_ms),
                });
            }
        }
        if let Some(window_ms) = window_ms(policy) {
            self.window.trim(window_ms, now_ms);
            let retry_after_ms = self.window.retry_after_ms(window_ms, now_ms);
            if let Some(limit) = policy.rate_requests {
                if self.window.requests >= Quantity::from_u64(limit) {
                    return Err(Refusal::RateRequests {
                        limit,
                        retry_after_ms,
                    });
                }
            }
            if let Some(limit) = policy.rate_tokens {
                let used = self.window.tokens.plus(self.reserved_tokens);
                if used.would_exceed(estimate_tokens, Quantity::from_u64(limit)) {
                    return Err(Refusal::RateTokens {
                        limit,
                        retry_after_ms,
                    });
                }
            }
            if let Some(limit) = policy.rate_cost_nano_usd {
                let used = self.window.cost.plus(self.reserved_cost);
                if used.would_exceed(estimate_cost, Quantity::from_i64(limit)) {
                    return Err(Refusal::RateCost {
                        limit,
                        retry_after_ms,
                    });
                }
            }
            self.window.add(
                window_ms,
                now_ms,
                Quantity::from_u64(1),
                Quantity::ZERO,
                Quantity::ZERO,
            );
        }
        self.inflight = self.inflight.saturating_add(1);
        self.reserved_cost += estimate_cost;
        self.reserved_tokens += estimate_tokens;
        if let Some(family) = family {
            *self.reserved_by_family.entry(family).or_default() += estimate_cost;
        }
        self.first_used_ms.get_or_insert(now_ms);
        Ok(())
    }

    fn release(&mut self, estimate: Estimate, family: Option<&'static str>) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reserved_cost -= estimate.cost();
        self.reserved_tokens -= estimate.tokens();
        if let Some(reserved) = family.and_then(|family| self.reserved_by_family.get_mut(family)) {
            *reserved -= estimate.cost();
        }
    }

    /// Adds a finished request's real figures to every counter it belongs to.
    fn record(
        &mut self,
        cost: Quantity,
        tokens: Quantity,
        family: Option<&'static str>,
        window_ms: Option<i64>,
        now_ms: i64,
    ) {
        self.total_cost += cost;
        self.total_tokens += tokens;
        let periods: Vec<Period> = [Period::Day, Period::Week, Period::Month]
            .into_iter()
            .chain(self.periods.keys().copied().filter(|period| {
                matches!(period, Period::FamilyWeek { family: named, .. } if Some(*named) == family)
            }))
            .collect();
        for period in periods {
            self.period(period, now_ms).cost += cost;
        }
        if let Some(window_ms) = window_ms {
            self.window
                .add(window_ms, now_ms, Quantity::ZERO, tokens, cost);
        }
    }
}

/// How far back the usage records matter to a ledger: a month, or a week that started in the
/// previous month, reaches at most 31 days back; rate windows longer than that are uncommon and
/// count from the seeding on.
fn seed_since(now_ms: i64) -> i64 {
    Period::Month
        .start(now_ms)
        .min(Period::Week.start(now_ms) - WEEK_MS)
}

/// The rate window of a policy in ms, if it has rate limits.
fn window_ms(policy: &KeyPolicy) -> Option<i64> {
    policy
        .rate_window_secs
        .filter(|_| policy.has_rate_limits())
        .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2))
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    // A poisoned ledger still holds consistent numbers: every update is a few plain writes.
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ledgers of all keys: in this process, or shared by every instance through Redis.
#[derive(Debug, Default)]
pub struct Limiter {
    ledgers: Mutex<HashMap<String, Arc<Mutex<Ledger>>>>,
    shared: Option<Arc<SharedLedgers>>,
}

/// A reservation and a concurrency slot, held for the life of one request.
#[derive(Debug)]
pub struct Admission {
    holder: Holder,
    estimate: Estimate,
    family: Option<&'static str>,
    /// The key's rate window, if it has one: the real figures go into it at settlement.
    window_ms: Option<i64>,
    open: bool,
}

/// Where the reservation is held.
#[derive(Debug)]
enum Holder {
    Local(Arc<Mutex<Ledger>>),
    Shared(shared::SharedLease),
}

impl Admission {
    /// Replaces the reservation by what the request really used.
    pub fn settle(mut self, cost_nano_usd: i64, tokens: u64, now_ms: i64) {
        self.open = false;
        match &self.holder {
            Holder::Local(ledger) => {
                let mut ledger = lock(ledger);
                ledger.release(self.estimate, self.family);
                ledger.record(
                    Quantity::from_i64(cost_nano_usd),
                    Quantity::from_u64(tokens),
                    self.family,
                    self.window_ms,
                    now_ms,
                );
            }
            Holder::Shared(lease) => lease.finish(Some((cost_nano_usd, tokens)), now_ms),
        }
    }

    /// What was reserved for the request: its worst case.
    pub fn reserved(&self) -> Estimate {
        self.estimate
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.open {
            match &self.holder {
                Holder::Local(ledger) => lock(ledger).release(self.estimate, self.family),
                Holder::Shared(lease) => lease.finish(None, crate::clock::now_ms()),
            }
        }
    }
}

/// A key's standing, for the key holder's own view and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub inflight: u32,
    pub reserved_cost_nano_usd: i64,
    pub reserved_tokens: u64,
    pub total_cost_nano_usd: i64,
    pub total_tokens: u64,
    pub first_used_ms: Option<i64>,
    /// Cost in the current day, week and month, and the family week if the policy has one:
    /// `(period, cost, resets_at_ms)`.
    pub periods: Vec<(Period, i64, i64)>,
    /// Requests, tokens and cost inside the rate window, if the policy has one.
    pub window: Option<(u64, u64, i64)>,
}

impl Limiter {
    fn ledger(&self, key_id: &str) -> Arc<Mutex<Ledger>> {
        let mut ledgers = self
            .ledgers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ledgers.entry(key_id.to_owned()).or_default().clone()
    }

    /// Seeds a key's ledger with what it spent before this process started.
    pub fn seed(&self, key_id: &str, policy: &KeyPolicy, prior: PriorSpend, now_ms: i64) {
        let ledger = self.ledger(key_id);
        *lock(&ledger) = Ledger::seeded(policy, &prior, now_ms);
    }

    /// Counts every key's requests in the shared ledgers from now on.
    pub fn share(&mut self, shared: Arc<SharedLedgers>) {
        self.shared = Some(shared);
    }

    pub fn shared(&self) -> Option<&Arc<SharedLedgers>> {
        self.shared.as_ref()
    }

    /// Admits a request for `model` under `policy`, reserving `estimate`, or says which limit
    /// refuses it.
    pub async fn admit(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        model: &str,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        let family = crate::model::family(model);
        if let Some(shared) = &self.shared {
            match shared.admit(key_id, policy, family, estimate, now_ms).await {
                Ok(lease) => {
                    return Ok(Admission {
                        holder: Holder::Shared(lease),
                        estimate,
                        family,
                        window_ms: window_ms(policy),
                        open: true,
                    })
                }
                Err(shared::SharedRefusal::Refused(refusal)) => return Err(refusal),
                Err(shared::SharedRefusal::Unreachable) => match shared.on_unavailable() {
                    Unavailable::Refuse => return Err(Refusal::LimitsUnavailable),
                    // Counted in this process, as if it were alone.
                    Unavailable::CountLocally => {}
                },
            }
        }
        self.admit_locally(key_id, policy, family, estimate, now_ms)
    }

    /// [`Limiter::admit`] in this process only, for tests.
    #[cfg(test)]
    fn admit_local(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        model: &str,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        self.admit_locally(
            key_id,
            policy,
            crate::model::family(model),
            estimate,
            now_ms,
        )
    }

    fn admit_locally(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        family: Option<&'static str>,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        let ledger = self.ledger(key_id);
        lock(&ledger).admit(policy, estimate, family, now_ms)?;
        Ok(Admission {
            holder: Holder::Local(ledger),
            estimate,
            family,
            window_ms: window_ms(policy),
            open: true,
        })
    }

    /// Seeds every key's ledger from the usage records, so limits survive a restart: lifetime
    /// totals, the current day, week and month, and the requests inside each rate window.
    pub async fn seed_from_store(
        &self,
        store: &relay_store::Store,
        snapshot: &crate::snapshot::Snapshot,
        now_ms: i64,
    ) -> Result<(), relay_store::StoreError> {
        let since = seed_since(now_ms);
        let mut recent: HashMap<String, Vec<(i64, u64, i64, String)>> = HashMap::new();
        for (key_id, at_ms, tokens, cost, model) in store.recent_spend(since, None).await? {
            let tokens = u64::try_from(tokens).unwrap_or(0);
            recent
                .entry(key_id)
                .or_default()
                .push((at_ms, tokens, cost, model));
        }
        let policies: HashMap<&str, &KeyPolicy> = snapshot
            .keys
            .values()
            .map(|key| (key.id.as_str(), &*key.policy))
            .collect();
        let default_policy = KeyPolicy::default();
        for spend in store.key_spend(None).await? {
            let policy = policies
                .get(spend.key_id.as_str())
                .copied()
                .unwrap_or(&default_policy);
            let prior = PriorSpend {
                total_cost_nano_usd: spend.total_cost_nano_usd,
                total_tokens: u64::try_from(spend.total_tokens).unwrap_or(0),
                first_used_ms: spend.first_used_ms,
                recent: recent.remove(&spend.key_id).unwrap_or_default(),
            };
            self.seed(&spend.key_id, policy, prior, now_ms);
        }
        Ok(())
    }

    /// The key's standing: on every instance when they share a Redis (this instance's own if it
    /// does not answer), else this instance's.
    pub async fn current_standing(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        now_ms: i64,
    ) -> Standing {
        if let Some(shared) = &self.shared {
            if let Some(standing) = shared
                .standing(key_id, policy, reported_periods(policy), now_ms)
                .await
            {
                return standing;
            }
        }
        self.standing(key_id, policy, now_ms)
    }

    /// The key's standing in this instance's ledger.
    pub fn standing(&self, key_id: &str, policy: &KeyPolicy, now_ms: i64) -> Standing {
        let ledger = self.ledger(key_id);
        let mut ledger = lock(&ledger);
        let periods = reported_periods(policy)
            .into_iter()
            .map(|period| {
                (
                    period,
                    ledger.period(period, now_ms).cost.to_i64(),
                    period.next_start(now_ms),
                )
            })
            .collect();
        let window = window_ms(policy).map(|window_ms| {
            ledger.window.trim(window_ms, now_ms);
            (
                ledger.window.requests.to_u64(),
                ledger.window.tokens.to_u64(),
                ledger.window.cost.to_i64(),
            )
        });
        Standing {
            inflight: ledger.inflight,
            reserved_cost_nano_usd: ledger.reserved_cost.to_i64(),
            reserved_tokens: ledger.reserved_tokens.to_u64(),
            total_cost_nano_usd: ledger.total_cost.to_i64(),
            total_tokens: ledger.total_tokens.to_u64(),
            first_used_ms: ledger.first_used_ms,
            periods,
            window,
        }
    }
}

/// The periods a key's report shows: day, week, month, and the family week if it has one.
fn reported_periods(policy: &KeyPolicy) -> Vec<Period> {
    let mut periods: Vec<Period> = vec![Period::Day, Period::Week, Period::Month];
    if let Some(limit) = &policy.family_weekly {
        if let Some(family) = crate::model::family(&limit.family) {
            periods.push(Period::FamilyWeek {
                family,
                weekday: limit.reset_weekday,
                hour: limit.reset_hour,
            });
        }
    }
    periods
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn estimate(cost: i64, tokens: u64) -> Estimate {
        Estimate {
            cost_nano_usd: cost,
            tokens,
        }
    }

    #[test]
    fn concurrency_slots_are_released_on_settle_and_on_drop() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            concurrency: Some(2),
            ..KeyPolicy::default()
        };
        let first = limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 0)
            .unwrap();
        let second = limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 0)
            .unwrap();
        assert_eq!(
            limiter
                .admit_local("k", &policy, "m", estimate(0, 0), 0)
                .unwrap_err(),
            Refusal::Concurrency { limit: 2 }
        );
        first.settle(0, 0, 0);
        drop(second);
        assert_eq!(limiter.standing("k", &KeyPolicy::default(), 0).inflight, 0);
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 0)
            .is_ok());
    }

    #[test]
    fn total_budget_admits_exactly_what_fits() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(100),
            ..KeyPolicy::default()
        };
        let held: Vec<Admission> = (0..10)
            .map(|_| {
                limiter
                    .admit_local("k", &policy, "m", estimate(10, 0), 0)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            limiter
                .admit_local("k", &policy, "m", estimate(10, 0), 0)
                .unwrap_err(),
            Refusal::TotalCost { limit: 100 }
        );
        for admission in held {
            admission.settle(7, 0, 0);
        }
        // 70 spent, 30 left: three more of 10 fit, the fourth does not.
        for _ in 0..3 {
            limiter
                .admit_local("k", &policy, "m", estimate(10, 0), 0)
                .unwrap()
                .settle(10, 0, 0);
        }
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(10, 0), 0)
            .is_err());
        // A free request (counting tokens) still passes an exhausted budget; unpriced models
        // are never estimated at zero (see `pricing::limit_cost_nano_usd`).
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 0)
            .is_ok());
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(1, 0), 0)
            .is_err());
    }

    #[test]
    fn daily_budget_resets_at_utc_midnight() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            daily_cost_nano_usd: Some(50),
            ..KeyPolicy::default()
        };
        let late = DAY_MS - 1;
        limiter
            .admit_local("k", &policy, "m", estimate(50, 0), late)
            .unwrap()
            .settle(50, 0, late);
        assert_eq!(
            limiter
                .admit_local("k", &policy, "m", estimate(1, 0), late)
                .unwrap_err(),
            Refusal::PeriodCost {
                period: Period::Day,
                limit: 50,
                resets_at_ms: DAY_MS
            }
        );
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(1, 0), DAY_MS)
            .is_ok());
    }

    #[test]
    fn sliding_window_admits_again_once_the_oldest_bucket_has_left_it() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            rate_window_secs: Some(60),
            rate_requests: Some(3),
            ..KeyPolicy::default()
        };
        for at in [0, 10_000, 20_000] {
            limiter
                .admit_local("k", &policy, "m", estimate(0, 0), at)
                .unwrap()
                .settle(0, 0, at);
        }
        assert_eq!(
            limiter
                .admit_local("k", &policy, "m", estimate(0, 0), 59_999)
                .unwrap_err(),
            // The first request sits in the bucket [0 s, 1 s): it leaves the window at 61 s.
            Refusal::RateRequests {
                limit: 3,
                retry_after_ms: 1_001
            }
        );
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 60_999)
            .is_err());
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 61_000)
            .is_ok());
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 61_001)
            .is_err());
    }

    #[test]
    fn token_windows_count_settled_and_reserved_tokens() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            rate_window_secs: Some(10),
            rate_tokens: Some(1_000),
            ..KeyPolicy::default()
        };
        let held = limiter
            .admit_local("k", &policy, "m", estimate(0, 600), 0)
            .unwrap();
        assert!(matches!(
            limiter.admit_local("k", &policy, "m", estimate(0, 600), 0),
            Err(Refusal::RateTokens { .. })
        ));
        held.settle(0, 300, 1_000);
        let second = limiter
            .admit_local("k", &policy, "m", estimate(0, 600), 2_000)
            .unwrap();
        second.settle(0, 600, 2_000);
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 200), 3_000)
            .is_err());
        // The first settlement (bucket [1 s, 2 s)) leaves the 10 s window at 12 s.
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 300), 11_999)
            .is_err());
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 300), 12_000)
            .is_ok());
    }

    #[test]
    fn prior_spend_counts_after_a_restart() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(100),
            token_quota: Some(6),
            ..KeyPolicy::default()
        };
        limiter.seed(
            "k",
            &policy,
            PriorSpend {
                total_cost_nano_usd: 90,
                total_tokens: 5,
                first_used_ms: Some(0),
                recent: Vec::new(),
            },
            0,
        );
        assert!(matches!(
            limiter.admit_local("k", &policy, "m", estimate(20, 0), 0),
            Err(Refusal::TotalCost { .. })
        ));
        assert!(matches!(
            limiter.admit_local("k", &policy, "m", estimate(1, 2), 0),
            Err(Refusal::TokenQuota { .. })
        ));
    }

    /// 2026-11-22 (a Sunday) 12:00 UTC.
    const SUNDAY_NOON: i64 = 1_795_348_800_000;

    #[test]
    fn calendar_periods_start_where_the_calendar_says() {
        assert_eq!(
            crate::clock::civil_from_days(crate::clock::days_from_civil(2026, 2, 28)),
            (2026, 2, 28)
        );
        assert_eq!(crate::clock::days_from_civil(1970, 1, 1), 0);
        assert_eq!(
            crate::clock::civil_from_days(SUNDAY_NOON / DAY_MS),
            (2026, 11, 22)
        );
        // The week started on Monday the 16th; the month on the 1st; next month on Dec 1.
        assert_eq!(
            Period::Week.start(SUNDAY_NOON),
            crate::clock::days_from_civil(2026, 11, 16) * DAY_MS
        );
        assert_eq!(
            Period::Month.start(SUNDAY_NOON),
            crate::clock::days_from_civil(2026, 11, 1) * DAY_MS
        );
        assert_eq!(
            Period::Month.next_start(SUNDAY_NOON),
            crate::clock::days_from_civil(2026, 12, 1) * DAY_MS
        );
        let december = crate::clock::days_from_civil(2026, 12, 31) * DAY_MS;
        assert_eq!(
            Period::Month.next_start(december),
            crate::clock::days_from_civil(2027, 1, 1) * DAY_MS
        );
        // A family week resetting on Sundays at 10:00 started this morning.
        let sunday_ten = Period::FamilyWeek {
            family: "opus",
            weekday: 6,
            hour: 10,
        };
        assert_eq!(sunday_ten.start(SUNDAY_NOON), SUNDAY_NOON - 2 * HOUR_MS);
        assert_eq!(
            sunday_ten.next_start(SUNDAY_NOON),
            SUNDAY_NOON - 2 * HOUR_MS + WEEK_MS
        );
    }

    #[test]
    fn weekly_and_monthly_budgets_reset_at_their_boundaries() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            weekly_cost_nano_usd: Some(10),
            monthly_cost_nano_usd: Some(15),
            ..KeyPolicy::default()
        };
        limiter
            .admit_local("k", &policy, "m", estimate(10, 0), SUNDAY_NOON)
            .unwrap()
            .settle(10, 0, SUNDAY_NOON);
        assert!(matches!(
            limiter.admit_local("k", &policy, "m", estimate(1, 0), SUNDAY_NOON),
            Err(Refusal::PeriodCost {
                period: Period::Week,
                ..
            })
        ));
        let monday = Period::Week.next_start(SUNDAY_NOON);
        limiter
            .admit_local("k", &policy, "m", estimate(5, 0), monday)
            .unwrap()
            .settle(5, 0, monday);
        // 15 spent this month: the monthly limit refuses until December.
        let refusal = limiter
            .admit_local("k", &policy, "m", estimate(1, 0), monday)
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::PeriodCost {
                period: Period::Month,
                limit: 15,
                resets_at_ms: crate::clock::days_from_civil(2026, 12, 1) * DAY_MS
            }
        );
        let december = crate::clock::days_from_civil(2026, 12, 1) * DAY_MS;
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(1, 0), december)
            .is_ok());
    }

    #[test]
    fn a_family_limit_counts_only_its_family() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            family_weekly: Some(crate::policy::FamilyWeeklyLimit {
                family: "opus".into(),
                cost_nano_usd: 100,
                reset_weekday: 6,
                reset_hour: 10,
            }),
            ..KeyPolicy::default()
        };
        let opus = "claude-opus-4-8";
        limiter
            .admit_local("k", &policy, opus, estimate(100, 0), SUNDAY_NOON)
            .unwrap()
            .settle(100, 0, SUNDAY_NOON);
        assert!(matches!(
            limiter.admit_local("k", &policy, opus, estimate(1, 0), SUNDAY_NOON),
            Err(Refusal::PeriodCost {
                period: Period::FamilyWeek { family: "opus", .. },
                ..
            })
        ));
        assert!(limiter
            .admit_local(
                "k",
                &policy,
                "claude-sonnet-4-5",
                estimate(500, 0),
                SUNDAY_NOON
            )
            .is_ok());
        // Next Sunday at 10:00 the family week starts over.
        let next = SUNDAY_NOON - 2 * HOUR_MS + WEEK_MS;
        assert!(limiter
            .admit_local("k", &policy, opus, estimate(1, 0), next - 1)
            .is_err());
        assert!(limiter
            .admit_local("k", &policy, opus, estimate(1, 0), next)
            .is_ok());
    }

    #[test]
    fn a_key_can_expire_a_while_after_its_first_use() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            expires_after_first_use_secs: Some(60),
            ..KeyPolicy::default()
        };
        limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 5_000)
            .unwrap()
            .settle(0, 0, 5_000);
        assert!(limiter
            .admit_local("k", &policy, "m", estimate(0, 0), 64_999)
            .is_ok());
        assert_eq!(
            limiter
                .admit_local("k", &policy, "m", estimate(0, 0), 65_000)
                .unwrap_err(),
            Refusal::Expired
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { estimate: i64 },
        Settle { index: usize, fraction_pct: i64 },
        Release { index: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..40).prop_map(|estimate| Op::Admit { estimate }),
            (0usize..16, 0i64..=100).prop_map(|(index, fraction_pct)| Op::Settle {
                index,
                fraction_pct
            }),
            (0usize..16).prop_map(|index| Op::Release { index }),
        ]
    }

    proptest! {
        /// Whatever the interleaving of admissions, settlements (at or below the estimate) and
        /// releases, spent + reserved never exceeds the budget, and everything returns to zero.
        #[test]
        fn budget_is_never_overdrawn_and_reservations_return_to_zero(
            ops in proptest::collection::vec(op(), 1..200),
            budget in 0i64..500,
            concurrency in 1u32..8,
        ) {
            let limiter = Limiter::default();
            let policy = KeyPolicy {
                total_cost_nano_usd: Some(budget),
                concurrency: Some(concurrency),
                ..KeyPolicy::default()
            };
            let mut open: Vec<(Admission, i64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { estimate: cost } => {
                        if let Ok(admission) = limiter.admit_local("k", &policy, "m", estimate(cost, 0), 0) {
                            open.push((admission, cost));
                        }
                    }
                    Op::Settle { index, fraction_pct } if !open.is_empty() => {
                        let (admission, cost) = open.remove(index % open.len());
                        admission.settle(cost * fraction_pct / 100, 0, 0);
                    }
                    Op::Release { index } if !open.is_empty() => {
                        drop(open.remove(index % open.len()));
                    }
                    _ => {}
                }
                let standing = limiter.standing("k", &KeyPolicy::default(), 0);
                prop_assert!(standing.total_cost_nano_usd + standing.reserved_cost_nano_usd <= budget);
                prop_assert!(standing.inflight <= concurrency);
                prop_assert_eq!(standing.inflight as usize, open.len());
            }
            open.clear();
            let standing = limiter.standing("k", &KeyPolicy::default(), 0);
            prop_assert_eq!(standing.inflight, 0);
            prop_assert_eq!(standing.reserved_cost_nano_usd, 0);
        }
    }

    fn extreme_cost() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(i64::MAX),
            Just(i64::MAX - 1),
            Just(i64::MAX / 2 + 1),
            0i64..1_000,
            (i64::MAX - 1_000)..=i64::MAX,
        ]
    }

    fn extreme_tokens() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(u64::MAX / 2 + 1),
            0u64..1_000,
        ]
    }

    proptest! {
        /// With estimates, settlements and limits at and near `i64::MAX`/`u64::MAX`, nothing
        /// wraps: spent + reserved never passes a limit, in cost or in tokens.
        #[test]
        fn extreme_values_never_wrap_a_limit_open(
            ops in proptest::collection::vec(
                (extreme_cost(), extreme_tokens(), 0usize..4, 0i64..=100),
                1..60,
            ),
            budget in extreme_cost(),
            quota in extreme_tokens(),
        ) {
            let limiter = Limiter::default();
            let policy = KeyPolicy {
                total_cost_nano_usd: Some(budget),
                daily_cost_nano_usd: Some(budget),
                token_quota: Some(quota),
                rate_window_secs: Some(60),
                rate_cost_nano_usd: Some(budget),
                rate_tokens: Some(quota),
                ..KeyPolicy::default()
            };
            let mut open: Vec<(Admission, i64, u64)> = Vec::new();
            for (cost, tokens, action, fraction_pct) in ops {
                match action {
                    0 | 1 => {
                        if let Ok(admission) = limiter.admit_local("k", &policy, "m", estimate(cost, tokens), 0) {
                            open.push((admission, cost, tokens));
                        }
                    }
                    2 if !open.is_empty() => {
                        let (admission, cost, tokens) = open.remove(0);
                        let settled_cost = i64::try_from(i128::from(cost) * i128::from(fraction_pct) / 100).unwrap();
                        let settled_tokens = u64::try_from(u128::from(tokens) * u128::try_from(fraction_pct).unwrap() / 100).unwrap();
                        admission.settle(settled_cost, settled_tokens, 0);
                    }
                    _ => drop(open.pop()),
                }
                let standing = limiter.standing("k", &KeyPolicy::default(), 0);
                let used_cost = i128::from(standing.total_cost_nano_usd) + i128::from(standing.reserved_cost_nano_usd);
                prop_assert!(used_cost <= i128::from(budget), "cost {used_cost} > {budget}");
                let used_tokens = u128::from(standing.total_tokens) + u128::from(standing.reserved_tokens);
                prop_assert!(used_tokens <= u128::from(quota), "tokens {used_tokens} > {quota}");
            }
            open.clear();
            prop_assert_eq!(limiter.standing("k", &KeyPolicy::default(), 0).reserved_cost_nano_usd, 0);
        }
    }
}

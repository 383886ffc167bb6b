//! Enforcing key policies under concurrency: every request reserves its estimated cost and
//! tokens (and a concurrency slot) atomically before it goes upstream, and settles the real
//! figures when it ends. An [`Admission`] is a lease: settled once, or released by `Drop` on any
//! other ending (error, timeout, client gone, panic), so nothing leaks.
//!
//! *Architecture Invariant*: with estimates that are not below the real cost (the relay
//! reserves the worst case: the whole prompt as uncached input plus `max_tokens` of output), a
//! limit is never overdrawn, however many requests race for it.
//!
//! All state is in memory, behind one short mutex per key; the shared-Redis mode will keep the
//! same ledger in a Lua-scripted hash with the same three operations (admit, settle, release).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::policy::KeyPolicy;

const DAY_MS: i64 = 86_400_000;

/// What a request is expected to cost at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub cost_nano_usd: i64,
    pub tokens: u64,
}

/// Why a request was refused. Each says which limit, and when waiting helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Concurrency { limit: u32 },
    RateRequests { limit: u64, retry_after_ms: i64 },
    RateTokens { limit: u64, retry_after_ms: i64 },
    RateCost { limit: i64, retry_after_ms: i64 },
    DailyCost { limit: i64, resets_at_ms: i64 },
    TotalCost { limit: i64 },
    TokenQuota { limit: u64 },
}

/// Spend a key had before this process started (from the usage records).
#[derive(Debug, Clone, Default)]
pub struct PriorSpend {
    pub total_cost_nano_usd: i64,
    pub total_tokens: u64,
    /// Cost since the start of the current UTC day.
    pub day_cost_nano_usd: i64,
    /// `(at_ms, tokens, cost)` of recent requests, for the sliding windows.
    pub recent: Vec<(i64, u64, i64)>,
}

#[derive(Debug, Default)]
struct Ledger {
    inflight: u32,
    reserved_cost: i64,
    reserved_tokens: u64,
    total_cost: i64,
    total_tokens: u64,
    day_index: i64,
    day_cost: i64,
    /// Admission times inside the rate window (request counting).
    admitted_at: VecDeque<i64>,
    /// Settled `(at_ms, tokens, cost)` inside the rate window.
    settled: VecDeque<(i64, u64, i64)>,
}

impl Ledger {
    fn roll_day(&mut self, now_ms: i64) {
        let today = now_ms.div_euclid(DAY_MS);
        if today != self.day_index {
            self.day_index = today;
            self.day_cost = 0;
        }
    }

    fn trim_window(&mut self, window_ms: i64, now_ms: i64) {
        let horizon = now_ms - window_ms;
        while self.admitted_at.front().is_some_and(|at| *at <= horizon) {
            self.admitted_at.pop_front();
        }
        while self
            .settled
            .front()
            .is_some_and(|(at, _, _)| *at <= horizon)
        {
            self.settled.pop_front();
        }
    }

    fn admit(
        &mut self,
        policy: &KeyPolicy,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        if let Some(limit) = policy.concurrency {
            if self.inflight >= limit {
                return Err(Refusal::Concurrency { limit });
            }
        }
        let used_tokens = self.total_tokens + self.reserved_tokens;
        if let Some(limit) = policy.token_quota {
            if used_tokens >= limit || used_tokens + estimate.tokens > limit {
                return Err(Refusal::TokenQuota { limit });
            }
        }
        let used_cost = self.total_cost + self.reserved_cost;
        if let Some(limit) = policy.total_cost_nano_usd {
            if used_cost >= limit || used_cost + estimate.cost_nano_usd > limit {
                return Err(Refusal::TotalCost { limit });
            }
        }
        self.roll_day(now_ms);
        if let Some(limit) = policy.daily_cost_nano_usd {
            let used_today = self.day_cost + self.reserved_cost;
            if used_today >= limit || used_today + estimate.cost_nano_usd > limit {
                return Err(Refusal::DailyCost {
                    limit,
                    resets_at_ms: (self.day_index + 1) * DAY_MS,
                });
            }
        }
        let window_ms = policy
            .rate_window_secs
            .filter(|_| policy.has_rate_limits())
            .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX));
        if let Some(window_ms) = window_ms {
            self.trim_window(window_ms, now_ms);
            let retry_after =
                |oldest: Option<i64>| oldest.map_or(1000, |at| (at + window_ms - now_ms).max(1));
            if let Some(limit) = policy.rate_requests {
                if self.admitted_at.len() as u64 >= limit {
                    return Err(Refusal::RateRequests {
                        limit,
                        retry_after_ms: retry_after(self.admitted_at.front().copied()),
                    });
                }
            }
            let oldest_settled = self.settled.front().map(|(at, _, _)| *at);
            if let Some(limit) = policy.rate_tokens {
                let used: u64 = self
                    .settled
                    .iter()
                    .map(|(_, tokens, _)| tokens)
                    .sum::<u64>()
                    + self.reserved_tokens;
                if used >= limit || used + estimate.tokens > limit {
                    return Err(Refusal::RateTokens {
                        limit,
                        retry_after_ms: retry_after(oldest_settled),
                    });
                }
            }
            if let Some(limit) = policy.rate_cost_nano_usd {
                let used: i64 =
                    self.settled.iter().map(|(_, _, cost)| cost).sum::<i64>() + self.reserved_cost;
                if used >= limit || used + estimate.cost_nano_usd > limit {
                    return Err(Refusal::RateCost {
                        limit,
                        retry_after_ms: retry_after(oldest_settled),
                    });
                }
            }
            self.admitted_at.push_back(now_ms);
        }
        self.inflight += 1;
        self.reserved_cost += estimate.cost_nano_usd;
        self.reserved_tokens += estimate.tokens;
        Ok(())
    }

    fn release(&mut self, estimate: Estimate) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reserved_cost -= estimate.cost_nano_usd;
        self.reserved_tokens = self.reserved_tokens.saturating_sub(estimate.tokens);
    }

    fn settle(
        &mut self,
        estimate: Estimate,
        cost: i64,
        tokens: u64,
        keep_window: bool,
        now_ms: i64,
    ) {
        self.release(estimate);
        self.total_cost += cost;
        self.total_tokens += tokens;
        self.roll_day(now_ms);
        self.day_cost += cost;
        if keep_window {
            self.settled.push_back((now_ms, tokens, cost));
        }
    }
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    // A poisoned ledger still holds consistent numbers: every update is a few plain writes.
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ledgers of all keys.
#[derive(Debug, Default)]
pub struct Limiter {
    ledgers: Mutex<HashMap<String, Arc<Mutex<Ledger>>>>,
}

/// A reservation and a concurrency slot, held for the life of one request.
#[derive(Debug)]
pub struct Admission {
    ledger: Arc<Mutex<Ledger>>,
    estimate: Estimate,
    keep_window: bool,
    open: bool,
}

impl Admission {
    /// Replaces the reservation by what the request really used.
    pub fn settle(mut self, cost_nano_usd: i64, tokens: u64, now_ms: i64) {
        self.open = false;
        lock(&self.ledger).settle(
            self.estimate,
            cost_nano_usd,
            tokens,
            self.keep_window,
            now_ms,
        );
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.open {
            lock(&self.ledger).release(self.estimate);
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
    pub day_cost_nano_usd: i64,
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
    pub fn seed(&self, key_id: &str, prior: PriorSpend, now_ms: i64) {
        let ledger = self.ledger(key_id);
        let mut ledger = lock(&ledger);
        ledger.total_cost = prior.total_cost_nano_usd;
        ledger.total_tokens = prior.total_tokens;
        ledger.day_index = now_ms.div_euclid(DAY_MS);
        ledger.day_cost = prior.day_cost_nano_usd;
        ledger.settled = prior.recent.into_iter().collect();
        ledger.admitted_at = ledger.settled.iter().map(|(at, _, _)| *at).collect();
    }

    /// Admits a request under `policy`, reserving `estimate`, or says which limit refuses it.
    pub fn admit(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        let ledger = self.ledger(key_id);
        lock(&ledger).admit(policy, estimate, now_ms)?;
        Ok(Admission {
            ledger,
            estimate,
            keep_window: policy.has_rate_limits(),
            open: true,
        })
    }

    /// Seeds every key's ledger from the usage records, so limits survive a restart: lifetime
    /// totals, today's cost, and the requests inside each key's rate window.
    pub async fn seed_from_store(
        &self,
        store: &relay_store::Store,
        snapshot: &crate::snapshot::Snapshot,
        now_ms: i64,
    ) -> Result<(), relay_store::StoreError> {
        let day_start = now_ms.div_euclid(DAY_MS) * DAY_MS;
        let windows: HashMap<&str, i64> = snapshot
            .keys
            .values()
            .filter(|key| key.policy.has_rate_limits())
            .filter_map(|key| {
                let secs = key.policy.rate_window_secs?;
                Some((
                    key.id.as_str(),
                    i64::try_from(secs.saturating_mul(1000)).ok()?,
                ))
            })
            .collect();
        let mut recent: HashMap<String, Vec<(i64, u64, i64)>> = HashMap::new();
        if let Some(longest) = windows.values().max() {
            for (key_id, at_ms, tokens, cost) in store.recent_spend(now_ms - longest).await? {
                let Some(window) = windows.get(key_id.as_str()) else {
                    continue;
                };
                if at_ms > now_ms - window {
                    let tokens = u64::try_from(tokens).unwrap_or(0);
                    recent
                        .entry(key_id)
                        .or_default()
                        .push((at_ms, tokens, cost));
                }
            }
        }
        for spend in store.key_spend(day_start).await? {
            let prior = PriorSpend {
                total_cost_nano_usd: spend.total_cost_nano_usd,
                total_tokens: u64::try_from(spend.total_tokens).unwrap_or(0),
                day_cost_nano_usd: spend.since_cost_nano_usd,
                recent: recent.remove(&spend.key_id).unwrap_or_default(),
            };
            self.seed(&spend.key_id, prior, now_ms);
        }
        Ok(())
    }

    pub fn standing(&self, key_id: &str, now_ms: i64) -> Standing {
        let ledger = self.ledger(key_id);
        let mut ledger = lock(&ledger);
        ledger.roll_day(now_ms);
        Standing {
            inflight: ledger.inflight,
            reserved_cost_nano_usd: ledger.reserved_cost,
            reserved_tokens: ledger.reserved_tokens,
            total_cost_nano_usd: ledger.total_cost,
            total_tokens: ledger.total_tokens,
            day_cost_nano_usd: ledger.day_cost,
        }
    }
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
        let first = limiter.admit("k", &policy, estimate(0, 0), 0).unwrap();
        let second = limiter.admit("k", &policy, estimate(0, 0), 0).unwrap();
        assert_eq!(
            limiter.admit("k", &policy, estimate(0, 0), 0).unwrap_err(),
            Refusal::Concurrency { limit: 2 }
        );
        first.settle(0, 0, 0);
        drop(second);
        assert_eq!(limiter.standing("k", 0).inflight, 0);
        assert!(limiter.admit("k", &policy, estimate(0, 0), 0).is_ok());
    }

    #[test]
    fn total_budget_admits_exactly_what_fits() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(100),
            ..KeyPolicy::default()
        };
        let held: Vec<Admission> = (0..10)
            .map(|_| limiter.admit("k", &policy, estimate(10, 0), 0).unwrap())
            .collect();
        assert_eq!(
            limiter.admit("k", &policy, estimate(10, 0), 0).unwrap_err(),
            Refusal::TotalCost { limit: 100 }
        );
        for admission in held {
            admission.settle(7, 0, 0);
        }
        // 70 spent, 30 left: three more of 10 fit, the fourth does not.
        for _ in 0..3 {
            limiter
                .admit("k", &policy, estimate(10, 0), 0)
                .unwrap()
                .settle(10, 0, 0);
        }
        assert!(limiter.admit("k", &policy, estimate(10, 0), 0).is_err());
        // An exhausted budget refuses even a request estimated at zero (an unpriced model).
        assert!(limiter.admit("k", &policy, estimate(0, 0), 0).is_err());
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
            .admit("k", &policy, estimate(50, 0), late)
            .unwrap()
            .settle(50, 0, late);
        assert_eq!(
            limiter
                .admit("k", &policy, estimate(1, 0), late)
                .unwrap_err(),
            Refusal::DailyCost {
                limit: 50,
                resets_at_ms: DAY_MS
            }
        );
        assert!(limiter.admit("k", &policy, estimate(1, 0), DAY_MS).is_ok());
    }

    #[test]
    fn sliding_window_admits_again_exactly_when_the_oldest_request_leaves_it() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            rate_window_secs: Some(60),
            rate_requests: Some(3),
            ..KeyPolicy::default()
        };
        for at in [0, 10_000, 20_000] {
            limiter
                .admit("k", &policy, estimate(0, 0), at)
                .unwrap()
                .settle(0, 0, at);
        }
        assert_eq!(
            limiter
                .admit("k", &policy, estimate(0, 0), 59_999)
                .unwrap_err(),
            Refusal::RateRequests {
                limit: 3,
                retry_after_ms: 1
            }
        );
        assert!(limiter.admit("k", &policy, estimate(0, 0), 60_000).is_ok());
        assert!(limiter.admit("k", &policy, estimate(0, 0), 60_001).is_err());
    }

    #[test]
    fn token_windows_count_settled_and_reserved_tokens() {
        let limiter = Limiter::default();
        let policy = KeyPolicy {
            rate_window_secs: Some(10),
            rate_tokens: Some(1_000),
            ..KeyPolicy::default()
        };
        let held = limiter.admit("k", &policy, estimate(0, 600), 0).unwrap();
        assert!(matches!(
            limiter.admit("k", &policy, estimate(0, 600), 0),
            Err(Refusal::RateTokens { .. })
        ));
        held.settle(0, 300, 1_000);
        let second = limiter
            .admit("k", &policy, estimate(0, 600), 2_000)
            .unwrap();
        second.settle(0, 600, 2_000);
        assert!(limiter
            .admit("k", &policy, estimate(0, 200), 3_000)
            .is_err());
        // The first settlement (at 1 s) leaves the 10 s window at 11 s.
        assert!(limiter
            .admit("k", &policy, estimate(0, 300), 11_000)
            .is_ok());
    }

    #[test]
    fn prior_spend_counts_after_a_restart() {
        let limiter = Limiter::default();
        limiter.seed(
            "k",
            PriorSpend {
                total_cost_nano_usd: 90,
                total_tokens: 5,
                day_cost_nano_usd: 0,
                recent: Vec::new(),
            },
            0,
        );
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(100),
            token_quota: Some(6),
            ..KeyPolicy::default()
        };
        assert!(matches!(
            limiter.admit("k", &policy, estimate(20, 0), 0),
            Err(Refusal::TotalCost { .. })
        ));
        assert!(matches!(
            limiter.admit("k", &policy, estimate(1, 2), 0),
            Err(Refusal::TokenQuota { .. })
        ));
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
                        if let Ok(admission) = limiter.admit("k", &policy, estimate(cost, 0), 0) {
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
                let standing = limiter.standing("k", 0);
                prop_assert!(standing.total_cost_nano_usd + standing.reserved_cost_nano_usd <= budget);
                prop_assert!(standing.inflight <= concurrency);
                prop_assert_eq!(standing.inflight as usize, open.len());
            }
            open.clear();
            let standing = limiter.standing("k", 0);
            prop_assert_eq!(standing.inflight, 0);
            prop_assert_eq!(standing.reserved_cost_nano_usd, 0);
        }
    }
}

//! Key ledgers shared by every instance, on Redis (`relay_coord`): the same admit, settle and
//! release as the local ledger, as atomic scripts. A reservation is a lease that this instance
//! renews every [`RENEW_EVERY`] while its request runs; if the instance dies, its leases expire
//! after [`relay_coord::LEASE_TTL`] and their reservations come back by themselves.
//!
//! Worst case after a crash: requests that were in flight on the dead instance and finished
//! upstream are never settled in Redis, so until their usage records are read again (a reseed)
//! the key may spend up to their reservations once more — at most the sum of the estimates of
//! the requests the instance had in flight. Nothing is overdrawn while instances live.
//!
//! Finishing a lease (settle or release) never waits on Redis: it goes to the coordinator's
//! worker (`crate::coord`), which sends writes in pipelined batches and retries while Redis is
//! away.

use std::sync::Arc;
use std::time::Duration;

use relay_coord::{
    Admit, Admitted, Finish, Lease, Limits, PeriodLimit, Redis, Refused, Seed, Window, Write,
};

use crate::coord::Coordinator;

use super::{period_limits, window_ms, Estimate, Ledger, Period, PriorSpend, Refusal};
use crate::policy::KeyPolicy;

/// How long a refused admission waits for this instance's pending finishes before it stands.
const FLUSH_WAIT: Duration = Duration::from_millis(100);

/// What to do with a request when the shared ledgers do not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unavailable {
    /// Refuse it (503): no request is served without its key's limits. The default, because it
    /// protects the operator's money.
    #[default]
    Refuse,
    /// Count it in this instance's own ledger, as if it ran alone: the service stays up, and
    /// each instance may spend a key's whole budget while Redis is away.
    CountLocally,
}

impl std::str::FromStr for Unavailable {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "refuse" => Ok(Self::Refuse),
            "local" => Ok(Self::CountLocally),
            other => Err(format!(
                "'{other}' is not a choice for when Redis is unavailable: refuse or local"
            )),
        }
    }
}

pub(super) enum SharedRefusal {
    Refused(Refusal),
    Unreachable,
}

#[derive(Debug)]
pub struct SharedLedgers {
    coord: Arc<Coordinator>,
    store: relay_store::Store,
    on_unavailable: Unavailable,
}

/// A request's lease in the shared ledger.
#[derive(Debug)]
pub(super) struct SharedLease {
    ledgers: Arc<SharedLedgers>,
    id: u64,
    lease: Lease,
    family: Option<&'static str>,
    family_period: Option<Period>,
    window_ms: Option<i64>,
}

impl SharedLease {
    /// Ends the lease: `settled` is what the request really used, `None` gives the reservation
    /// back. Never waits.
    pub(super) fn finish(&self, settled: Option<(i64, u64)>, now_ms: i64) {
        let coord = &self.ledgers.coord;
        coord.let_go_lease(self.id);
        let periods = [Period::Day, Period::Week, Period::Month]
            .into_iter()
            .chain(self.family_period.filter(|period| {
                matches!(period, Period::FamilyWeek { family, .. } if Some(*family) == self.family)
            }))
            .map(|period| (period_name(period), period.start(now_ms)))
            .collect();
        let finish = Finish {
            lease: self.lease.clone(),
            now_ms,
            settled,
            window: self.window_ms.map(|window| (window, bucket_width(window))),
            periods,
        };
        coord.send(Write::Finish(finish));
    }
}

/// The ledger's name for a period: stable for a policy, different when its reset moves.
pub(super) fn period_name(period: Period) -> String {
    match period {
        Period::Day => "day".to_owned(),
        Period::Week => "week".to_owned(),
        Period::Month => "month".to_owned(),
        Period::FamilyWeek {
            family,
            weekday,
            hour,
        } => format!("fw:{family}:{weekday}:{hour}"),
    }
}

/// The rate window's bucket width, as the local ledger has it.
fn bucket_width(window_ms: i64) -> i64 {
    (window_ms / super::WINDOW_BUCKETS).max(1000)
}

impl SharedLedgers {
    pub fn new(
        coord: Arc<Coordinator>,
        store: relay_store::Store,
        on_unavailable: Unavailable,
    ) -> Arc<Self> {
        Arc::new(Self {
            coord,
            store,
            on_unavailable,
        })
    }

    pub fn redis(&self) -> &Redis {
        self.coord.redis()
    }

    pub fn on_unavailable(&self) -> Unavailable {
        self.on_unavailable
    }

    pub(super) async fn admit(
        self: &Arc<Self>,
        key_id: &str,
        policy: &KeyPolicy,
        family: Option<&'static str>,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<SharedLease, SharedRefusal> {
        let (id, member) = self.coord.next_id();
        let lease = Lease::new(
            key_id,
            &member,
            estimate.cost_nano_usd,
            estimate.tokens,
            family,
        );
        let limited: Vec<(Period, i64)> = period_limits(policy, family).collect();
        let window = window_ms(policy);
        // Built again for a second attempt (rare) rather than cloned for every first one.
        let request = || Admit {
            now_ms,
            lease: lease.clone(),
            limits: Limits {
                concurrency: policy.concurrency,
                token_quota: policy.token_quota,
                total_cost: policy.total_cost_nano_usd,
                lifetime_ms: policy
                    .expires_after_first_use_secs
                    .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
                periods: limited
                    .iter()
                    .map(|&(period, limit)| PeriodLimit {
                        name: period_name(period),
                        start_ms: period.start(now_ms),
                        limit,
                        family: match period {
                            Period::FamilyWeek { family, .. } => Some(family),
                            _ => None,
                        },
                    })
                    .collect(),
                window: window.map(|window_ms| Window {
                    window_ms,
                    bucket_ms: bucket_width(window_ms),
                    requests: policy.rate_requests,
                    tokens: policy.rate_tokens,
                    cost: policy.rate_cost_nano_usd,
                }),
            },
        };
        for attempt in 0..2 {
            let admitted = self
                .coord
                .admit(request())
                .await
                .map_err(|()| SharedRefusal::Unreachable)?;
            match admitted {
                Admitted::Yes => {
                    self.coord.hold_lease(id, lease.clone());
                    return Ok(SharedLease {
                        ledgers: self.clone(),
                        id,
                        lease,
                        family,
                        family_period: family_period(policy),
                        window_ms: window,
                    });
                }
                // This instance's own finishes may still be on their way (a client that sends
                // its next request the moment the last one ended): let them land, ask again.
                Admitted::No(_) if attempt == 0 && self.coord.pending() > 0 => {
                    self.coord.flushed_within(FLUSH_WAIT).await;
                }
                Admitted::No(refused) => {
                    return Err(SharedRefusal::Refused(refusal(
                        refused, policy, &limited, now_ms,
                    )))
                }
                Admitted::Unseeded if attempt == 0 => self.seed(key_id, policy, now_ms).await?,
                Admitted::Unseeded => break,
            }
        }
        Err(SharedRefusal::Unreachable)
    }

    /// The key's standing on every instance, as Redis holds it (seeding the ledger first if
    /// Redis does not have it); `None` when Redis does not answer.
    pub(super) async fn standing(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        periods: Vec<Period>,
        now_ms: i64,
    ) -> Option<super::Standing> {
        let named: Vec<(String, i64)> = periods
            .iter()
            .map(|period| (period_name(*period), period.start(now_ms)))
            .collect();
        let window = window_ms(policy);
        for attempt in 0..2 {
            let view = match self
                .redis()
                .ledger_view(key_id, now_ms, &named, window)
                .await
            {
                Ok(view) => view,
                Err(error) => {
                    tracing::warn!(%error, "cannot read a key's shared ledger for its report");
                    return None;
                }
            };
            let Some(view) = view else {
                if attempt == 0 {
                    self.seed(key_id, policy, now_ms).await.ok()?;
                }
                continue;
            };
            return Some(super::Standing {
                inflight: view.in_flight,
                reserved_cost_nano_usd: view.reserved_cost,
                reserved_tokens: view.reserved_tokens,
                total_cost_nano_usd: view.total_cost,
                total_tokens: view.total_tokens,
                first_used_ms: view.first_used_ms,
                periods: periods
                    .iter()
                    .zip(view.periods)
                    .map(|(period, cost)| (*period, cost, period.next_start(now_ms)))
                    .collect(),
                window: view.window,
            });
        }
        None
    }

    /// Writes a key's ledger from its usage records: on its first use, and after Redis lost
    /// its data (it keeps nothing on disk here, and need not).
    async fn seed(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        now_ms: i64,
    ) -> Result<(), SharedRefusal> {
        let read = async {
            let spend = self.store.key_spend(Some(key_id)).await?;
            let recent = self
                .store
                .recent_spend(super::seed_since(now_ms), Some(key_id))
                .await?;
            Ok::<_, relay_store::StoreError>((spend, recent))
        };
        let (spend, recent) = read.await.map_err(|error| {
            tracing::warn!(%error, key_id, "cannot read a key's usage to seed its shared ledger");
            SharedRefusal::Unreachable
        })?;
        let spend = spend.into_iter().next().unwrap_or_default();
        let prior = PriorSpend {
            total_cost_nano_usd: spend.total_cost_nano_usd,
            total_tokens: u64::try_from(spend.total_tokens).unwrap_or(0),
            first_used_ms: spend.first_used_ms,
            recent: recent
                .into_iter()
                .map(|(_, at_ms, tokens, cost, model)| {
                    (at_ms, u64::try_from(tokens).unwrap_or(0), cost, model)
                })
                .collect(),
        };
        let ledger = Ledger::seeded(policy, &prior, now_ms);
        let seed = Seed {
            total_cost: ledger.total_cost.to_i64(),
            total_tokens: ledger.total_tokens.to_u64(),
            first_used_ms: ledger.first_used_ms,
            periods: ledger
                .periods
                .iter()
                .map(|(period, cost)| (period_name(*period), cost.start_ms, cost.cost.to_i64()))
                .collect(),
            buckets: ledger
                .window
                .buckets
                .iter()
                .map(|bucket| {
                    (
                        bucket.end_ms,
                        bucket.requests.to_u64(),
                        bucket.tokens.to_u64(),
                        bucket.cost.to_i64(),
                    )
                })
                .collect(),
        };
        self.redis().seed(key_id, &seed).await.map_err(|error| {
            tracing::warn!(%error, "the shared key ledgers do not answer");
            SharedRefusal::Unreachable
        })
    }
}

fn family_period(policy: &KeyPolicy) -> Option<Period> {
    policy.family_weekly.as_ref().and_then(|limit| {
        Some(Period::FamilyWeek {
            family: crate::model::family(&limit.family)?,
            weekday: limit.reset_weekday,
            hour: limit.reset_hour,
        })
    })
}

/// The local refusal for what the shared ledger refused.
fn refusal(
    refused: Refused,
    policy: &KeyPolicy,
    periods: &[(Period, i64)],
    now_ms: i64,
) -> Refusal {
    match refused {
        Refused::Expired => Refusal::Expired,
        Refused::Concurrency => Refusal::Concurrency {
            limit: policy.concurrency.unwrap_or(0),
        },
        Refused::TokenQuota => Refusal::TokenQuota {
            limit: policy.token_quota.unwrap_or(0),
        },
        Refused::TotalCost => Refusal::TotalCost {
            limit: policy.total_cost_nano_usd.unwrap_or(0),
        },
        Refused::Period(index) => {
            let (period, limit) = periods.get(index).copied().unwrap_or((Period::Day, 0));
            Refusal::PeriodCost {
                period,
                limit,
                resets_at_ms: period.next_start(now_ms),
            }
        }
        Refused::RateRequests { retry_after_ms } => Refusal::RateRequests {
            limit: policy.rate_requests.unwrap_or(0),
            retry_after_ms,
        },
        Refused::RateTokens { retry_after_ms } => Refusal::RateTokens {
            limit: policy.rate_tokens.unwrap_or(0),
            retry_after_ms,
        },
        Refused::RateCost { retry_after_ms } => Refusal::RateCost {
            limit: policy.rate_cost_nano_usd.unwrap_or(0),
            retry_after_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Admission, Limiter};
    use crate::policy::FamilyWeeklyLimit;

    /// A small deterministic generator, so a failure replays.
    struct Steps(u64);

    impl Steps {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % below
        }
    }

    /// The same operations on a local and a shared limiter give the same answers.
    #[tokio::test]
    async fn the_shared_ledger_decides_as_the_local_one() {
        let Some((redis, _)) = relay_coord::testing::redis().await else {
            return;
        };
        let database = relay_store::testing::sqlite().await;
        let (coord, tasks) = Coordinator::start(redis);
        let ledgers =
            SharedLedgers::new(coord.clone(), database.store.clone(), Unavailable::Refuse);
        let mut shared = Limiter::default();
        shared.share(ledgers.clone());
        let local = Limiter::default();
        let policy = KeyPolicy {
            concurrency: Some(3),
            rate_window_secs: Some(60),
            rate_requests: Some(12),
            rate_tokens: Some(9_000),
            daily_cost_nano_usd: Some(12_000),
            total_cost_nano_usd: Some(30_000),
            token_quota: Some(250_000),
            family_weekly: Some(FamilyWeeklyLimit {
                family: "opus".into(),
                cost_nano_usd: 4_000,
                reset_weekday: 2,
                reset_hour: 5,
            }),
            ..KeyPolicy::default()
        };
        for seed in [7, 11, 42] {
            let key = format!("k{seed}");
            let mut steps = Steps(seed);
            let mut now = 1_700_000_000_000;
            let mut held: Vec<(Admission, Admission)> = Vec::new();
            let mut decisions = [0; 2];
            for step in 0..400 {
                now += i64::try_from(steps.next(9_000)).unwrap();
                // As the worker does every 10 s of real time.
                coord.renew_at(now).await;
                match steps.next(2) {
                    0 => {
                        let model =
                            ["claude-opus-4-1", "claude-sonnet-4-5"][steps.next(2) as usize];
                        let estimate = Estimate {
                            cost_nano_usd: i64::try_from(steps.next(300)).unwrap(),
                            tokens: steps.next(2_000),
                        };
                        let a = local.admit(&key, &policy, model, estimate, now).await;
                        let b = shared.admit(&key, &policy, model, estimate, now).await;
                        assert_eq!(
                            a.as_ref().err(),
                            b.as_ref().err(),
                            "seed {seed}, step {step}: {model} {estimate:?}"
                        );
                        decisions[usize::from(a.is_ok())] += 1;
                        if let (Ok(a), Ok(b)) = (a, b) {
                            held.push((a, b));
                        }
                    }
                    _ if !held.is_empty() => {
                        let (a, b) = held.remove(steps.next(held.len() as u64) as usize);
                        if steps.next(4) == 0 {
                            drop((a, b));
                        } else {
                            let (cost, tokens) =
                                (i64::try_from(steps.next(200)).unwrap(), steps.next(1_500));
                            a.settle(cost, tokens, now);
                            b.settle(cost, tokens, now);
                        }
                        while coord.pending() > 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    _ => {}
                }
            }
            assert!(
                decisions[0] > 20 && decisions[1] > 20,
                "seed {seed}: both answers were exercised: {decisions:?}"
            );
            // The key's report reads the same figures from either ledger.
            assert_eq!(
                shared.current_standing(&key, &policy, now).await,
                local.standing(&key, &policy, now),
                "seed {seed}"
            );
            drop(held);
        }
        tasks.stop(&coord).await;
    }
}

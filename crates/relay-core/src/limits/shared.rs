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

use super::allotment::{allottable, Allotment, Allotments, TICK};
use crate::coord::{CoordTasks, Coordinator};

use super::{period_limits, window_ms, Estimate, Ledger, Period, PriorSpend, Refusal};
use crate::policy::KeyPolicy;

/// How long a refused admission waits for this instance's pending finishes before it stands.
const FLUSH_WAIT: Duration = Duration::from_millis(100);
/// How many times a refused admission asks again while some instance holds a spare of the key
/// (each after two ticks, in which every holder's call shrinks a spare that no longer fits).
const SPARE_WAITS: u32 = 3;

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
    allotments: Arc<Allotments>,
}

/// A request's reservation in the shared ledger.
#[derive(Debug)]
pub(super) enum SharedLease {
    /// A lease of its own.
    Own {
        ledgers: Arc<SharedLedgers>,
        id: u64,
        lease: Lease,
        family: Option<&'static str>,
        family_period: Option<Period>,
        window_ms: Option<i64>,
    },
    /// Part of this instance's allotment of the key.
    Allotted {
        allotment: Arc<Allotment>,
        estimate: Estimate,
    },
}

impl SharedLease {
    /// Ends the lease: `settled` is what the request really used, `None` gives the reservation
    /// back. Never waits.
    pub(super) fn finish(&self, settled: Option<(i64, u64)>, now_ms: i64) {
        match self {
            Self::Own {
                ledgers,
                id,
                lease,
                family,
                family_period,
                window_ms,
            } => {
                let coord = &ledgers.coord;
                coord.let_go_lease(*id);
                let finish = Finish {
                    lease: lease.clone(),
                    now_ms,
                    settled,
                    window: window_ms.map(|window| (window, bucket_width(window))),
                    periods: settled_periods(*family, *family_period, now_ms),
                };
                coord.send(Write::Finish(finish));
            }
            Self::Allotted {
                allotment,
                estimate,
            } => allotment.finish(*estimate, settled),
        }
    }
}

/// `(name, start)` of the periods a request's settled cost counts in: day, week, month, and
/// the family week if the request is of that family.
pub(super) fn settled_periods(
    family: Option<&'static str>,
    family_period: Option<Period>,
    now_ms: i64,
) -> Vec<(String, i64)> {
    [Period::Day, Period::Week, Period::Month]
        .into_iter()
        .chain(family_period.filter(
            |period| matches!(period, Period::FamilyWeek { family: of, .. } if Some(*of) == family),
        ))
        .map(|period| (period_name(period), period.start(now_ms)))
        .collect()
}

/// The limits of `policy` that an admission of `family` is checked against at `now_ms`.
pub(super) fn limits(policy: &KeyPolicy, family: Option<&'static str>, now_ms: i64) -> Limits {
    let window = window_ms(policy);
    Limits {
        concurrency: policy.concurrency,
        token_quota: policy.token_quota,
        total_cost: policy.total_cost_nano_usd,
        lifetime_ms: policy
            .expires_after_first_use_secs
            .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
        periods: period_limits(policy, family)
            .map(|(period, limit)| PeriodLimit {
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
    /// The ledgers, and their allotter among the coordination's `tasks`.
    pub fn new(
        coord: Arc<Coordinator>,
        store: relay_store::Store,
        on_unavailable: Unavailable,
        tasks: &mut CoordTasks,
    ) -> Arc<Self> {
        let allotments = Arc::new(Allotments::default());
        let closing = Arc::new(tokio::sync::Notify::new());
        #[allow(clippy::disallowed_methods)] // joined at shutdown by `CoordTasks::stop`
        let allotter = tokio::spawn(allotments.clone().run(coord.clone(), closing.clone()));
        tasks.add_allotter(allotter, closing);
        Arc::new(Self {
            coord,
            store,
            on_unavailable,
            allotments,
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
        if let Some(allotment) = self.allotments.admit(key_id, policy, family, estimate) {
            self.redis()
                .stats()
                .allotted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(SharedLease::Allotted {
                allotment,
                estimate,
            });
        }
        let (id, member) = self.coord.next_id();
        let lease = Lease::new(
            key_id,
            &member,
            estimate.cost_nano_usd,
            estimate.tokens,
            family,
        );
        let limits = limits(policy, family, now_ms);
        let (mut seeded, mut flushed, mut spare_waits) = (false, false, 0);
        loop {
            // Cloned for a second attempt (rare) rather than for every first one.
            let request = Admit {
                now_ms,
                lease: lease.clone(),
                limits: limits.clone(),
            };
            let admitted = self
                .coord
                .admit(request)
                .await
                .map_err(|()| SharedRefusal::Unreachable)?;
            match admitted {
                Admitted::Yes => {
                    self.coord.hold_lease(id, lease.clone());
                    return Ok(SharedLease::Own {
                        ledgers: self.clone(),
                        id,
                        lease,
                        family,
                        family_period: family_period(policy),
                        window_ms: window_ms(policy),
                    });
                }
                // This instance's own finishes may still be on their way (a client that sends
                // its next request the moment the last one ended): let them land, ask again.
                Admitted::No(_) if !flushed && self.coord.pending() > 0 => {
                    flushed = true;
                    self.coord.flushed_within(FLUSH_WAIT).await;
                }
                // Room another instance (or this one) holds as a spare comes back within a
                // tick once the key is this close to its limit.
                Admitted::No(_)
                    if spare_waits < SPARE_WAITS
                        && allottable(policy)
                        && self.redis().spare_held(key_id).await.unwrap_or(false) =>
                {
                    spare_waits += 1;
                    tokio::time::sleep(TICK * 2).await;
                }
                Admitted::No(refused) => {
                    let limited: Vec<(Period, i64)> = period_limits(policy, family).collect();
                    return Err(SharedRefusal::Refused(refusal(
                        refused, policy, &limited, now_ms,
                    )));
                }
                Admitted::Unseeded if !seeded => {
                    seeded = true;
                    self.seed(key_id, policy, now_ms).await?;
                }
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

pub(super) fn family_period(policy: &KeyPolicy) -> Option<Period> {
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
        let (coord, mut tasks) = Coordinator::start(redis);
        let ledgers = SharedLedgers::new(
            coord.clone(),
            database.store.clone(),
            Unavailable::Refuse,
            &mut tasks,
        );
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

    /// Two instances admitting a busy key's requests as fast as they can: many come from the
    /// instances' allotments, and the budget admits exactly what it holds, no more (the spares
    /// are reserved) and no less (refusals wait for spares to shrink).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allotments_on_two_instances_admit_exactly_the_budget() {
        let Some((redis, _)) = relay_coord::testing::redis().await else {
            return;
        };
        let database = relay_store::testing::sqlite().await;
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(3_000_000),
            concurrency: Some(10_000),
            ..KeyPolicy::default()
        };
        let estimate = Estimate {
            cost_nano_usd: 100,
            tokens: 10,
        };
        let mut instances = Vec::new();
        for _ in 0..2 {
            let (coord, mut tasks) = Coordinator::start(redis.clone());
            let ledgers = SharedLedgers::new(
                coord.clone(),
                database.store.clone(),
                Unavailable::Refuse,
                &mut tasks,
            );
            let mut limiter = Limiter::default();
            limiter.share(ledgers);
            instances.push((Arc::new(limiter), coord, tasks));
        }
        let mut workers = Vec::new();
        for (limiter, _, _) in &instances {
            for _ in 0..16 {
                let (limiter, policy) = (limiter.clone(), policy.clone());
                #[allow(clippy::disallowed_methods)] // joined below
                workers.push(tokio::spawn(async move {
                    let mut admitted = 0u32;
                    loop {
                        let now = crate::clock::now_ms();
                        match limiter
                            .admit("busy", &policy, "claude-sonnet-4-5", estimate, now)
                            .await
                        {
                            Ok(admission) => {
                                admitted += 1;
                                tokio::task::yield_now().await;
                                admission.settle(100, 10, now);
                            }
                            Err(Refusal::TotalCost { .. }) => return admitted,
                            Err(other) => panic!("refused for {other:?}"),
                        }
                    }
                }));
            }
        }
        let mut admitted = 0;
        for worker in workers {
            admitted += worker.await.unwrap();
        }
        assert_eq!(admitted, 30_000, "the budget holds 30,000 requests of 100");
        let allotted = redis
            .stats()
            .allotted
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            allotted > 6_000,
            "a good share came from allotments (a spare needs room for 8 times itself, so the \
             last two thirds of this small budget go mostly one by one): {allotted} of {admitted}"
        );
        for (_, coord, tasks) in instances {
            tasks.stop(&coord).await;
        }
        let standing = redis
            .ledger_view("busy", crate::clock::now_ms(), &[], None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                standing.total_cost,
                standing.reserved_cost,
                standing.in_flight
            ),
            (3_000_000, 0, 0),
            "everything settled, nothing left reserved"
        );
    }
}

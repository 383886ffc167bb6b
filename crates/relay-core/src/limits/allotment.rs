//! Allotments: the part of a busy key's shared ledger that this instance holds, so that most of
//! the key's requests are admitted here without a round trip to Redis.
//!
//! A key that sees at least [`BUSY`] admissions on this instance within one [`TICK`] gets an
//! allotment: one lease in its ledger (`allot.lua`) that reserves what the allotment's requests
//! have in flight plus a **spare** sized for the next two ticks of its traffic. Requests whose
//! estimate fits in the spare are admitted against it here, in memory; every tick one pipelined
//! call per instance settles what the allotment's requests used, gives back what they no
//! longer hold and takes the next spare. The rest go to Redis one by one, as before.
//!
//! Why this stays exact:
//! - Redis reserves the spare like any request's reservation, so what the other instances may
//!   admit already excludes it, and what this instance admits from it never exceeds it: here a
//!   request fits only while in-flight estimates plus the cost settled since the last call fit
//!   in what the lease reserves.
//! - A spare is taken only where [`relay_coord::SPARE_RATIO`] times it fits in every limit.
//!   Close to a limit no spare is granted and every spare shrinks at its holder's next call
//!   (within a tick), so the last requests are admitted one by one in Redis's order; a request
//!   refused while some instance still holds a spare waits for the spares to shrink and asks
//!   once more (`shared.rs`), so no request is refused for room another instance holds idle.
//! - While a call is under way no request is admitted from the spare (the call reserves what
//!   is in flight at its start), and a lease the call ends is given back only if it is still
//!   there: one that lapsed (its holder could not renew it) gave its reservation back once.
//!
//! Only keys without a rate window or a lifetime get allotments: their admissions change the
//! window or start the lifetime, which must happen in Redis's order.
//!
//! Worst case after a crash: what an allotment's requests settled since its last call (at most
//! a tick of traffic, bounded by its lease) is not in the ledger until the key is seeded again;
//! the lease itself lapses after [`relay_coord::LEASE_TTL`], like any request's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use relay_coord::{Allot, Allotted, Amounts, Lease};

use super::shared::{limits, settled_periods};
use super::Estimate;
use crate::coord::Coordinator;
use crate::policy::KeyPolicy;

/// How often allotments are settled and resized.
pub(super) const TICK: Duration = Duration::from_millis(25);
/// Admissions of a key within a tick that make it busy enough for a spare.
const BUSY: u32 = 4;
/// Ticks without demand after which an allotment that holds nothing is forgotten.
const FORGET_AFTER: u32 = 40;

/// This instance's allotments, by key and model family.
#[derive(Debug, Default)]
pub(super) struct Allotments {
    /// By key id, one per family (looked up by `&str`: no allocation per request).
    map: Mutex<HashMap<String, Vec<Arc<Allotment>>>>,
    /// Wakes the allotter when the first allotment appears.
    wake: tokio::sync::Notify,
}

#[derive(Debug)]
pub(super) struct Allotment {
    key_id: String,
    family: Option<&'static str>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The key's limits as last seen; a change stops admissions from the spare until the next
    /// call has taken one under the new limits.
    policy: KeyPolicy,
    /// The lease in Redis and its holder id here (renewed by the coordinator).
    lease: Option<(u64, Lease)>,
    /// What the lease reserves for requests in flight at its call.
    leased_in_flight: Amounts,
    /// The spare the lease reserves besides (zero if it got none).
    leased_spare: Amounts,
    /// What requests here may hold in all (in flight plus settled since the last call): what
    /// the lease reserves, or while a call is under way what that call keeps reserved.
    limit: Amounts,
    /// Whether requests may be admitted against `limit` now.
    usable: bool,
    /// Whether the last call got a new spare (only then is part of it carried into the next).
    spare_granted: bool,
    in_flight: Amounts,
    /// Cost and tokens settled since the last call (they count against what the lease reserves).
    settled: (i64, u64),
    /// Admissions of the key since the last call, here or in Redis.
    demand: u32,
    /// The most requests in flight under the allotment since the last call.
    peak: u32,
    /// The largest estimate since the last call.
    largest: Estimate,
    idle: u32,
}

fn one(estimate: Estimate) -> Amounts {
    Amounts {
        slots: 1,
        cost: estimate.cost_nano_usd,
        tokens: estimate.tokens,
    }
}

/// Whether a key under `policy` may get allotments.
pub(super) fn allottable(policy: &KeyPolicy) -> bool {
    super::window_ms(policy).is_none() && policy.expires_after_first_use_secs.is_none()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update is a few plain writes: a poisoned state is still consistent.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Allotment {
    /// Ends a request admitted from the allotment: `settled` is what it really used.
    pub(super) fn finish(&self, estimate: Estimate, settled: Option<(i64, u64)>) {
        let mut state = lock(&self.state);
        state.in_flight = state.in_flight.minus(one(estimate));
        if let Some((cost, tokens)) = settled {
            state.settled.0 = state.settled.0.saturating_add(cost.max(0));
            state.settled.1 = state.settled.1.saturating_add(tokens);
        }
    }
}

/// One allotment's call under way: what it was taken from.
struct Pending {
    allotment: Arc<Allotment>,
    in_flight: Amounts,
    carry: Amounts,
    settled: (i64, u64),
    id: u64,
    /// The limits the spare was asked under.
    policy: KeyPolicy,
}

impl Allotments {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Allotment>>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a request from this instance's allotment of its key if the spare has room;
    /// counts the key's demand either way (a key admitted often gets a spare at the next tick).
    pub(super) fn admit(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        family: Option<&'static str>,
        estimate: Estimate,
    ) -> Option<Arc<Allotment>> {
        if !allottable(policy) {
            return None;
        }
        let allotment = {
            let mut map = self.map();
            let first = map.is_empty();
            let found = map.get(key_id).and_then(|of_key| {
                of_key
                    .iter()
                    .find(|allotment| allotment.family == family)
                    .cloned()
            });
            let allotment = match found {
                Some(allotment) => allotment,
                None => {
                    let allotment = Arc::new(Allotment {
                        key_id: key_id.to_owned(),
                        family,
                        state: Mutex::new(State {
                            policy: policy.clone(),
                            lease: None,
                            leased_in_flight: Amounts::default(),
                            leased_spare: Amounts::default(),
                            limit: Amounts::default(),
                            usable: false,
                            spare_granted: false,
                            in_flight: Amounts::default(),
                            settled: (0, 0),
                            demand: 0,
                            peak: 0,
                            largest: Estimate::default(),
                            idle: 0,
                        }),
                    });
                    map.entry(key_id.to_owned())
                        .or_default()
                        .push(allotment.clone());
                    allotment
                }
            };
            if first {
                self.wake.notify_one();
            }
            allotment
        };
        let mut state = lock(&allotment.state);
        state.demand = state.demand.saturating_add(1);
        state.largest = Estimate {
            cost_nano_usd: state.largest.cost_nano_usd.max(estimate.cost_nano_usd),
            tokens: state.largest.tokens.max(estimate.tokens),
        };
        if state.policy != *policy {
            state.policy = policy.clone();
            state.usable = false;
        }
        let in_flight = state.in_flight.plus(one(estimate));
        let used = Amounts {
            cost: in_flight.cost.saturating_add(state.settled.0),
            tokens: in_flight.tokens.saturating_add(state.settled.1),
            ..in_flight
        };
        if !(state.usable && used.within(state.limit)) {
            return None;
        }
        state.in_flight = in_flight;
        state.peak = state.peak.max(in_flight.slots);
        drop(state);
        Some(allotment)
    }

    /// Settles and resizes every allotment each tick, until `closing`; then gives every spare
    /// back.
    pub(super) async fn run(
        self: Arc<Self>,
        coord: Arc<Coordinator>,
        closing: Arc<tokio::sync::Notify>,
    ) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let empty = self.map().is_empty();
            tokio::select! {
                () = closing.notified() => break,
                () = self.wake.notified(), if empty => continue,
                _ = ticks.tick(), if !empty => {}
            }
            self.call(&coord, false).await;
        }
        self.call(&coord, true).await;
    }

    /// One pipelined call for every allotment that needs one (`last`: no spares).
    async fn call(&self, coord: &Coordinator, last: bool) {
        let now_ms = crate::clock::now_ms();
        let allotments: Vec<Arc<Allotment>> = {
            let mut map = self.map();
            map.retain(|_, of_key| {
                of_key.retain(|allotment| {
                    let state = lock(&allotment.state);
                    !(state.idle > FORGET_AFTER
                        && state.lease.is_none()
                        && state.in_flight.is_zero()
                        && state.settled == (0, 0))
                });
                !of_key.is_empty()
            });
            map.values().flatten().cloned().collect()
        };
        let mut calls = Vec::new();
        let mut pending = Vec::new();
        for allotment in allotments {
            let mut state = lock(&allotment.state);
            let busy = !last && state.demand >= BUSY;
            state.idle = if state.demand == 0 { state.idle + 1 } else { 0 };
            if !busy
                && state.leased_spare.is_zero()
                && state.settled == (0, 0)
                && state.in_flight == state.leased_in_flight
            {
                state.demand = 0;
                state.peak = 0;
                continue;
            }
            let spare = if busy {
                // Two ticks of the key's traffic, and places for twice its peak.
                let requests = u64::from(state.demand.max(state.peak)).saturating_mul(2);
                Amounts {
                    slots: state.peak.saturating_mul(2).max(BUSY),
                    cost: state
                        .largest
                        .cost_nano_usd
                        .saturating_mul(i64::try_from(requests).unwrap_or(i64::MAX)),
                    tokens: state.largest.tokens.saturating_mul(requests),
                }
            } else {
                Amounts::default()
            };
            // Half of the room left goes on being admitted from while the call is under way:
            // the call keeps it reserved (it comes out of the lease the call ends). Only after a
            // call that got a spare, so that near a limit every spare is gone a call later.
            let used = Amounts {
                cost: state.in_flight.cost.saturating_add(state.settled.0),
                tokens: state.in_flight.tokens.saturating_add(state.settled.1),
                ..state.in_flight
            };
            let carry = if busy && state.usable && state.spare_granted {
                let room = state.limit.minus(used);
                Amounts {
                    slots: room.slots / 2,
                    cost: room.cost / 2,
                    tokens: room.tokens / 2,
                }
            } else {
                Amounts::default()
            };
            let (id, member) = coord.next_id();
            let family_period = super::shared::family_period(&state.policy);
            calls.push(Allot {
                now_ms,
                key_id: allotment.key_id.clone(),
                held: state.lease.as_ref().map(|(_, lease)| lease.clone()),
                id: member,
                family: allotment.family,
                in_flight: state.in_flight,
                carry,
                spare,
                settled: state.settled,
                periods: settled_periods(allotment.family, family_period, now_ms),
                limits: limits(&state.policy, allotment.family, now_ms),
            });
            pending.push(Pending {
                allotment: allotment.clone(),
                in_flight: state.in_flight,
                carry,
                settled: state.settled,
                id,
                policy: state.policy.clone(),
            });
            state.limit = state.in_flight.plus(carry);
            state.usable = !carry.is_zero();
            state.settled = (0, 0);
            state.demand = 0;
            state.peak = state.in_flight.slots;
            state.largest = Estimate::default();
        }
        if calls.is_empty() {
            return;
        }
        let answers = coord.redis().allot(&calls).await;
        if let Err(error) = &answers {
            tracing::warn!(%error, allotments = calls.len(), "cannot settle this instance's allotments on Redis yet");
        }
        for (index, call) in pending.into_iter().enumerate() {
            let answer = answers.as_ref().ok().and_then(|answers| answers.get(index));
            let mut state = lock(&call.allotment.state);
            match answer {
                Some(Allotted::Taken { lease, spare }) => {
                    if let Some((held, _)) = state.lease.take() {
                        coord.let_go_lease(held);
                    }
                    if let Some(lease) = lease {
                        coord.hold_lease(call.id, lease.clone());
                        state.lease = Some((call.id, lease.clone()));
                    }
                    state.leased_in_flight = call.in_flight;
                    state.leased_spare = if *spare {
                        call.carry.plus(calls[index].spare)
                    } else {
                        call.carry
                    };
                    state.limit = state.leased_in_flight.plus(state.leased_spare);
                    state.spare_granted = *spare;
                    // Not under limits changed meanwhile: the next call asks under the new.
                    state.usable = !state.leased_spare.is_zero() && state.policy == call.policy;
                }
                // Redis lost the ledger (and the lease with it): it is seeded again from the
                // records, which hold what was settled.
                Some(Allotted::Unseeded) => {
                    if let Some((held, _)) = state.lease.take() {
                        coord.let_go_lease(held);
                    }
                    state.leased_in_flight = Amounts::default();
                    state.leased_spare = Amounts::default();
                    state.limit = Amounts::default();
                    state.usable = false;
                    state.spare_granted = false;
                }
                // Not answered: the settled cost goes with the next call, which also ends the
                // lease still held (if it has not lapsed meanwhile).
                None => {
                    state.usable = false;
                    state.spare_granted = false;
                    state.settled.0 = state.settled.0.saturating_add(call.settled.0);
                    state.settled.1 = state.settled.1.saturating_add(call.settled.1);
                }
            }
        }
    }
}

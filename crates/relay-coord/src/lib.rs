//! Runtime state that several relay instances share, on Redis: each key's ledger (reservations,
//! lifetime and calendar spend, the rate window) behind atomic Lua scripts, with every
//! reservation held as a **lease** that expires by itself if its instance dies.
//!
//! *Architecture Invariant*: a request costs at most two round trips here — one script to
//! admit it (shared with the other admissions of its key sent in the same batch), one
//! (pipelined with others, off the response path) to finish its lease — and writes a bounded
//! number of bytes: a lease member, a few hash fields, one bucket. A request admitted from its
//! instance's allotment of a busy key (`allot.lua`, [`Allot`]) costs none of its own: one call
//! per allotment and tick settles all of them.
//! Leases are renewed in one pipeline per instance, not per request.
//!
//! Numbers travel as integers and are computed in Redis's Lua, whose numbers are doubles: they
//! are exact up to 2^53 (nano-USD: about $9 million), and the caller clamps to that, so a sum
//! can lose precision far beyond any real budget but can never wrap.
//!
//! The scripts know nothing of policies: the caller (relay-core's limiter) passes each limit,
//! period start and window as plain numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Script};

/// Lease lifetime: a crashed instance's reservations come back after at most this long.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// The largest number the scripts compute exactly.
pub const MAX_EXACT: i64 = 1 << 53;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Unexpected(String),
}

/// One calendar period a cost limit applies to: a name stable for the policy (`day`,
/// `week`, `month`, `fw:opus:1:0`), where the current period started, and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodLimit {
    pub name: String,
    pub start_ms: i64,
    pub limit: i64,
    /// The family whose reservations count against it; `None` counts all.
    pub family: Option<&'static str>,
}

/// A rate window and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub window_ms: i64,
    pub bucket_ms: i64,
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub cost: Option<i64>,
}

/// What one admission asks of a key's ledger.
#[derive(Debug, Clone)]
pub struct Admit {
    pub now_ms: i64,
    pub lease: Lease,
    pub limits: Limits,
}

/// The limits an admission is checked against (admissions of one key under equal limits share
/// a script, which gets them once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub concurrency: Option<u32>,
    pub token_quota: Option<u64>,
    pub total_cost: Option<i64>,
    pub lifetime_ms: Option<i64>,
    pub periods: Vec<PeriodLimit>,
    pub window: Option<Window>,
}

/// Why a ledger refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Expired,
    Concurrency,
    TokenQuota,
    TotalCost,
    /// The period at this index of [`Admit::periods`].
    Period(usize),
    RateRequests {
        retry_after_ms: i64,
    },
    RateTokens {
        retry_after_ms: i64,
    },
    RateCost {
        retry_after_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Yes,
    No(Refused),
    /// The ledger is not in Redis (first use, or Redis lost its data): seed it and ask again.
    Unseeded,
}

/// A reservation held in a key's ledger: what it reserved, under an id unique to this
/// instance and request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key_id: String,
    /// `id|cost|tokens|family`, as stored in the ledger's lease set.
    member: String,
}

impl Lease {
    pub fn new(key_id: &str, id: &str, cost: i64, tokens: u64, family: Option<&str>) -> Self {
        Self {
            key_id: key_id.to_owned(),
            member: format!(
                "{id}|{}|{}|{}",
                exact(cost),
                exact_u64(tokens),
                family.unwrap_or("")
            ),
        }
    }

    /// An instance's allotment of a key: one lease reserving `in_flight` (what its requests
    /// under the allotment hold) and `spare` (what it may admit more requests from).
    pub fn allotment(
        key_id: &str,
        id: &str,
        in_flight: Amounts,
        spare: Amounts,
        family: Option<&str>,
    ) -> Self {
        let total = in_flight.plus(spare);
        Self {
            key_id: key_id.to_owned(),
            member: format!(
                "{id}|{}|{}|{}|{}|{}|{}|{}",
                exact(total.cost),
                exact_u64(total.tokens),
                family.unwrap_or(""),
                total.slots,
                spare.slots,
                exact(spare.cost),
                exact_u64(spare.tokens)
            ),
        }
    }

    /// Request places this lease holds (an allotment holds several).
    fn slots(&self) -> u32 {
        self.field(4).parse().unwrap_or(1)
    }

    fn spare_slots(&self) -> u32 {
        self.field(5).parse().unwrap_or(0)
    }

    fn field(&self, index: usize) -> &str {
        self.member.split('|').nth(index).unwrap_or("")
    }

    fn cost(&self) -> &str {
        self.field(1)
    }

    fn tokens(&self) -> &str {
        self.field(2)
    }

    fn family(&self) -> &str {
        self.field(3)
    }
}

/// Request places, cost and tokens, as an allotment reserves them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    pub slots: u32,
    pub cost: i64,
    pub tokens: u64,
}

impl Amounts {
    pub fn plus(self, other: Self) -> Self {
        Self {
            slots: self.slots.saturating_add(other.slots),
            cost: self.cost.saturating_add(other.cost),
            tokens: self.tokens.saturating_add(other.tokens),
        }
    }

    pub fn minus(self, other: Self) -> Self {
        Self {
            slots: self.slots.saturating_sub(other.slots),
            cost: self.cost.saturating_sub(other.cost).max(0),
            tokens: self.tokens.saturating_sub(other.tokens),
        }
    }

    /// Whether every amount of `self` is at most that of `other`.
    pub fn within(self, other: Self) -> bool {
        self.slots <= other.slots && self.cost <= other.cost && self.tokens <= other.tokens
    }

    pub fn is_zero(self) -> bool {
        self == Self::default()
    }
}

/// How much room a spare needs: it is reserved only if this many times it fits in every limit.
pub const SPARE_RATIO: i64 = 8;

/// One call for an instance's allotment of a key (see `allot.lua`): settles what the requests
/// under it used since the last call, ends the lease held and takes the next, with `spare` if
/// the ledger has room for [`SPARE_RATIO`] times it.
#[derive(Debug, Clone)]
pub struct Allot {
    pub now_ms: i64,
    pub key_id: String,
    /// The allotment's lease now, if it has one.
    pub held: Option<Lease>,
    /// The next lease's id, unique across instances.
    pub id: String,
    pub family: Option<&'static str>,
    pub in_flight: Amounts,
    /// Part of the spare the held lease has, kept whatever the limits say (the instance may
    /// admit from it while this call is under way); counted as spare.
    pub carry: Amounts,
    /// The new spare, besides the carry: reserved only if the ledger has room for it.
    pub spare: Amounts,
    /// Cost and tokens used by the requests that ended since the last call.
    pub settled: (i64, u64),
    /// `(name, start)` of every period the settled cost counts in.
    pub periods: Vec<(String, i64)>,
    /// Only the concurrency, token quota, total cost and periods count: an allotment is not
    /// taken for a key with a rate window or a lifetime.
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allotted {
    /// The allotment's lease now (`None` when it holds nothing), and whether it has the spare.
    Taken { lease: Option<Lease>, spare: bool },
    /// The ledger is not in Redis: nothing was written.
    Unseeded,
}

/// How a lease ends.
#[derive(Debug, Clone)]
pub struct Finish {
    pub lease: Lease,
    pub now_ms: i64,
    /// What the request really used, if it settled; `None` gives the reservation back only.
    pub settled: Option<(i64, u64)>,
    pub window: Option<(i64, i64)>,
    /// `(name, start)` of every period the request's cost counts in.
    pub periods: Vec<(String, i64)>,
}

/// A ledger rebuilt from the usage records.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub total_cost: i64,
    pub total_tokens: u64,
    pub first_used_ms: Option<i64>,
    /// `(name, start, cost)`.
    pub periods: Vec<(String, i64, i64)>,
    /// `(end, requests, tokens, cost)`, oldest first.
    pub buckets: Vec<(i64, u64, u64, i64)>,
}

/// A key's ledger as Redis holds it, for the key's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerView {
    pub in_flight: u32,
    pub reserved_cost: i64,
    pub reserved_tokens: u64,
    pub total_cost: i64,
    pub total_tokens: u64,
    pub first_used_ms: Option<i64>,
    /// The cost of each period asked about (0 once the period turned over).
    pub periods: Vec<i64>,
    /// Requests, tokens and cost inside the window asked about.
    pub window: Option<(u64, u64, i64)>,
}

/// Counters of the traffic with Redis, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    /// Bytes of arguments sent (keys and values), a bound on what is written.
    pub bytes_sent: AtomicU64,
    pub latency_micros: AtomicU64,
    /// Admissions that needed no round trip: counted by the caller, from its allotments.
    pub allotted: AtomicU64,
}

/// A connection to the shared Redis, reconnecting by itself, and the scripts.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: ConnectionManager,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
    stats: std::sync::Arc<Stats>,
}

struct Scripts {
    admit: Script,
    allot: Script,
    finish: Script,
    seed: Script,
    mark: Script,
    day: Script,
    slot: Script,
    unlock: Script,
    failed: Script,
}

/// A write that need not be waited for: sent by the caller's worker, many in one pipeline.
#[derive(Debug, Clone)]
pub enum Write {
    /// Ends a key ledger's lease.
    Finish(Finish),
    /// Gives an account's place back.
    Release(Slot),
    /// Adds to an account's cost today (UTC day number); crossing `limit` tells every instance.
    DayCost {
        account_id: String,
        day: i64,
        cost: i64,
        limit: Option<i64>,
    },
    /// Binds a conversation to an account for `ttl_ms`.
    Bind {
        session: String,
        account_id: String,
        ttl_ms: i64,
    },
    /// Counts a failed credential from `address`: `max` within `window_ms` block it for
    /// `block_ms` on every instance ([`Notice::Blocked`]).
    Failure {
        address: String,
        now_ms: i64,
        window_ms: i64,
        max: u32,
        block_ms: i64,
    },
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A ledger script: the shared functions, then its own part.
macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!($file)
        ))
    };
}

/// Adds the limits of a group of admissions to an admit script.
fn add_limits(invocation: &mut redis::ScriptInvocation<'_>, limits: &Limits) {
    invocation
        .arg(limits.concurrency.map_or(-1, i64::from))
        .arg(limits.token_quota.map_or(-1, exact_u64))
        .arg(limit_arg(limits.total_cost))
        .arg(limits.lifetime_ms.map_or(-1, |ms| ms.max(0)))
        .arg(limits.periods.len());
    for period in &limits.periods {
        invocation
            .arg(&period.name)
            .arg(period.start_ms)
            .arg(exact(period.limit))
            .arg(period.family.unwrap_or(""));
    }
    match limits.window {
        None => invocation.arg(-1).arg(1).arg(-1).arg(-1).arg(-1),
        Some(window) => invocation
            .arg(window.window_ms)
            .arg(window.bucket_ms.max(1))
            .arg(window.requests.map_or(-1, exact_u64))
            .arg(window.tokens.map_or(-1, exact_u64))
            .arg(limit_arg(window.cost)),
    };
}

/// Adds one admission's own arguments to a batched admit script; the bytes it sends.
fn add_admission(invocation: &mut redis::ScriptInvocation<'_>, admit: &Admit) -> usize {
    let expiry = admit.now_ms + LEASE_TTL.as_millis() as i64;
    invocation
        .arg(admit.now_ms)
        .arg(&admit.lease.member)
        .arg(expiry)
        .arg(admit.lease.cost())
        .arg(admit.lease.tokens())
        .arg(admit.lease.family());
    admit.lease.member.len() + 40
}

/// A refusal as the admit script gives it: the reason and its detail.
fn refused(reason: i64, detail: i64) -> Result<Refused, CoordError> {
    Ok(match reason {
        1 => Refused::Expired,
        2 => Refused::Concurrency,
        3 => Refused::TokenQuota,
        4 => Refused::TotalCost,
        5 => Refused::Period(usize::try_from(detail - 1).unwrap_or(0)),
        6 => Refused::RateRequests {
            retry_after_ms: detail,
        },
        7 => Refused::RateTokens {
            retry_after_ms: detail,
        },
        8 => Refused::RateCost {
            retry_after_ms: detail,
        },
        other => return Err(CoordError::Unexpected(format!("refusal {other}"))),
    })
}

fn exact(value: i64) -> i64 {
    value.clamp(0, MAX_EXACT)
}

fn exact_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX).min(MAX_EXACT)
}

fn limit_arg(limit: Option<i64>) -> i64 {
    limit.map_or(-1, exact)
}

impl Redis {
    /// Connects to `url` (`redis://…`); every key this instance writes starts with `prefix:`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, CoordError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        // Lazily: an instance starts while Redis is down and connects when it is back.
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            connection,
            prefix: prefix.to_owned(),
            scripts: std::sync::Arc::new(Scripts {
                admit: script!("lua/admit.lua"),
                allot: script!("lua/allot.lua"),
                finish: script!("lua/finish.lua"),
                seed: script!("lua/seed.lua"),
                mark: Script::new(include_str!("lua/mark.lua")),
                day: Script::new(include_str!("lua/day.lua")),
                slot: Script::new(include_str!("lua/slot.lua")),
                unlock: Script::new(include_str!("lua/unlock.lua")),
                failed: Script::new(include_str!("lua/failed.lua")),
            }),
            stats: std::sync::Arc::default(),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A key's ledger hash, lease set and window list, in the scripts' `KEYS` order.
    fn keys(&self, key_id: &str) -> [String; 3] {
        let ledger = format!("{}:ledger:{key_id}", self.prefix);
        let leases = format!("{ledger}:leases");
        let window = format!("{ledger}:window");
        [ledger, leases, window]
    }

    /// Times one exchange and counts it.
    async fn exchange<T>(
        &self,
        sent: usize,
        exchange: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CoordError> {
        let started = Instant::now();
        let result = exchange.await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats
            .latency_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(result?)
    }

    /// Reserves `admit.lease` in its key's ledger if every limit allows it: one round trip.
    pub async fn admit(&self, admit: &Admit) -> Result<Admitted, CoordError> {
        let mut answers = self.admit_many(std::slice::from_ref(admit)).await?;
        answers
            .pop()
            .ok_or_else(|| CoordError::Unexpected("no answer".to_owned()))
    }

    /// Admits each of `admits` as [`Redis::admit`] would, in order, in one pipelined round
    /// trip: one script per key, with all of that key's admissions (a script's fixed cost is
    /// paid once per key, not per request).
    pub async fn admit_many(&self, admits: &[Admit]) -> Result<Vec<Admitted>, CoordError> {
        // One group per key and limits (a policy changed, or a period turned over, mid-batch
        // makes a second group): the limits go once per script.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (index, admit) in admits.iter().enumerate() {
            match groups.iter_mut().find(|group| {
                let first = &admits[group[0]];
                first.lease.key_id == admit.lease.key_id && first.limits == admit.limits
            }) {
                Some(group) => group.push(index),
                None => groups.push(vec![index]),
            }
        }
        let mut pipeline = Pipeline::new();
        let mut sent = 0;
        for group in &groups {
            let first = &admits[group[0]];
            let keys = self.keys(&first.lease.key_id);
            let mut invocation = self.scripts.admit.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation.arg(group.len());
            add_limits(&mut invocation, &first.limits);
            sent += keys.iter().map(String::len).sum::<usize>() + 64;
            for &index in group {
                sent += add_admission(&mut invocation, &admits[index]);
            }
            pipeline.invoke_script(&invocation);
        }
        let replies: Vec<Vec<i64>> = self
            .query_loading(&pipeline, sent, &[&self.scripts.admit])
            .await?;
        let mut answers = vec![Admitted::Yes; admits.len()];
        for (group, reply) in groups.iter().zip(&replies) {
            if reply[..] == [-1] {
                for &index in group {
                    answers[index] = Admitted::Unseeded;
                }
                continue;
            }
            if reply.len() % 3 != 0 {
                return Err(CoordError::Unexpected(format!("{reply:?}")));
            }
            for refusal in reply.chunks(3) {
                let index = usize::try_from(refusal[0] - 1)
                    .ok()
                    .and_then(|position| group.get(position))
                    .ok_or_else(|| CoordError::Unexpected(format!("{reply:?}")))?;
                answers[*index] = Admitted::No(refused(refusal[1], refusal[2])?);
            }
        }
        Ok(answers)
    }

    /// Sends `pipeline`, whose scripts go by hash only: after a Redis restart (`NOSCRIPT`),
    /// loads `scripts` and sends it again.
    async fn query_loading<T: redis::FromRedisValue>(
        &self,
        pipeline: &Pipeline,
        sent: usize,
        scripts: &[&Script],
    ) -> Result<T, CoordError> {
        let mut connection = self.connection.clone();
        match self
            .exchange(sent, pipeline.query_async(&mut connection))
            .await
        {
            Err(CoordError::Redis(error))
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                for script in scripts {
                    let _: String = self
                        .exchange(64, script.load_async(&mut connection))
                        .await?;
                }
                self.exchange(sent, pipeline.query_async(&mut connection))
                    .await
            }
            other => other,
        }
    }

    /// Takes each allotment's next lease (see [`Allot`]), one script each, in one pipelined
    /// round trip.
    pub async fn allot(&self, allots: &[Allot]) -> Result<Vec<Allotted>, CoordError> {
        if allots.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = Pipeline::new();
        let mut sent = 0;
        let mut next = Vec::with_capacity(allots.len());
        for allot in allots {
            let keys = self.keys(&allot.key_id);
            let with_spare = Lease::allotment(
                &allot.key_id,
                &allot.id,
                allot.in_flight,
                allot.carry.plus(allot.spare),
                allot.family,
            );
            let without = (!allot.in_flight.plus(allot.carry).is_zero()).then(|| {
                Lease::allotment(
                    &allot.key_id,
                    &allot.id,
                    allot.in_flight,
                    allot.carry,
                    allot.family,
                )
            });
            let held = allot
                .held
                .as_ref()
                .map_or("", |lease| lease.member.as_str());
            let mut invocation = self.scripts.allot.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation
                .arg(allot.now_ms)
                .arg(held)
                .arg(allot.now_ms + LEASE_TTL.as_millis() as i64)
                .arg(&with_spare.member)
                .arg(without.as_ref().map_or("", |lease| lease.member.as_str()))
                .arg(allot.family.unwrap_or(""))
                .arg(SPARE_RATIO);
            for amounts in [allot.in_flight, allot.carry, allot.spare] {
                invocation
                    .arg(amounts.slots)
                    .arg(exact(amounts.cost))
                    .arg(exact_u64(amounts.tokens));
            }
            invocation
                .arg(exact(allot.settled.0))
                .arg(exact_u64(allot.settled.1))
                .arg(allot.periods.len());
            for (name, start) in &allot.periods {
                invocation.arg(name).arg(start);
            }
            add_limits(&mut invocation, &allot.limits);
            sent += keys.iter().map(String::len).sum::<usize>()
                + held.len()
                + 2 * with_spare.member.len()
                + 128;
            pipeline.invoke_script(&invocation);
            next.push((with_spare, without));
        }
        let replies: Vec<Vec<i64>> = self
            .query_loading(&pipeline, sent, &[&self.scripts.allot])
            .await?;
        replies
            .iter()
            .zip(next)
            .map(|(reply, (with_spare, without))| match reply[..] {
                [-1] => Ok(Allotted::Unseeded),
                [1] => Ok(Allotted::Taken {
                    lease: Some(with_spare),
                    spare: true,
                }),
                [0] => Ok(Allotted::Taken {
                    lease: without,
                    spare: false,
                }),
                _ => Err(CoordError::Unexpected(format!("{reply:?}"))),
            })
            .collect()
    }

    /// Whether some instance holds a spare of `key_id`'s ledger (a refused request may be
    /// admitted once the spares shrink).
    pub async fn spare_held(&self, key_id: &str) -> Result<bool, CoordError> {
        let [ledger, _, _] = self.keys(key_id);
        let mut connection = self.connection.clone();
        let spares: Vec<Option<i64>> = self
            .exchange(
                ledger.len() + 12,
                redis::cmd("HMGET")
                    .arg(&ledger)
                    .arg(&["sn", "sc", "st"])
                    .query_async(&mut connection),
            )
            .await?;
        Ok(spares.into_iter().any(|spare| spare.unwrap_or(0) > 0))
    }

    /// Writes a key's ledger from its usage records, unless one is there already.
    pub async fn seed(&self, key_id: &str, seed: &Seed) -> Result<(), CoordError> {
        let keys = self.keys(key_id);
        let mut invocation = self.scripts.seed.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(exact(seed.total_cost))
            .arg(exact_u64(seed.total_tokens))
            .arg(seed.first_used_ms.unwrap_or(-1))
            .arg(seed.periods.len());
        for (name, start, cost) in &seed.periods {
            invocation.arg(name).arg(start).arg(exact(*cost));
        }
        invocation.arg(seed.buckets.len());
        for (end, requests, tokens, cost) in &seed.buckets {
            invocation.arg(format!(
                "{end}|{}|{}|{}",
                exact_u64(*requests),
                exact_u64(*tokens),
                exact(*cost)
            ));
        }
        let mut connection = self.connection.clone();
        let _: i64 = self
            .exchange(256, invocation.invoke_async(&mut connection))
            .await?;
        Ok(())
    }

    /// Ends leases, all in one pipelined round trip.
    pub async fn finish(&self, finishes: &[Finish]) -> Result<(), CoordError> {
        let writes: Vec<Write> = finishes.iter().cloned().map(Write::Finish).collect();
        self.write(&writes).await.map(drop)
    }

    /// Sends `writes` in one pipelined round trip. The day costs of one account, day and
    /// limit are added as one sum (one script, not one per request); answers the account's
    /// total cost today after each such sum, in the order the accounts first appear.
    pub async fn write(&self, writes: &[Write]) -> Result<Vec<i64>, CoordError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = Pipeline::new();
        let mut sent = 0;
        // One finish script per key (and periods and window: they go once per script), with
        // all of its finishes in order.
        let mut finishes: Vec<Vec<&Finish>> = Vec::new();
        let mut day_costs: Vec<(&str, i64, Option<i64>, i64)> = Vec::new();
        for write in writes {
            match write {
                Write::Finish(finish) => match finishes.iter_mut().find(|group| {
                    group[0].lease.key_id == finish.lease.key_id
                        && group[0].window == finish.window
                        && group[0].periods == finish.periods
                }) {
                    Some(group) => group.push(finish),
                    None => finishes.push(vec![finish]),
                },
                Write::DayCost {
                    account_id,
                    day,
                    cost,
                    limit,
                } => match day_costs
                    .iter_mut()
                    .find(|(id, at, of, _)| id == account_id && at == day && of == limit)
                {
                    Some((_, _, _, sum)) => *sum = sum.saturating_add(*cost),
                    None => day_costs.push((account_id, *day, *limit, *cost)),
                },
                other => sent += self.add_write(&mut pipeline, other),
            }
        }
        for group in &finishes {
            sent += self.add_finishes(&mut pipeline, group);
        }
        for (account_id, day, limit, cost) in day_costs {
            sent += self.add_day_cost(&mut pipeline, account_id, day, cost, limit);
        }
        self.query_loading(
            &pipeline,
            sent,
            &[
                &self.scripts.finish,
                &self.scripts.day,
                &self.scripts.failed,
            ],
        )
        .await
    }

    /// Adds one finish script for `group`, finishes of one key counting in the same periods
    /// and window, in order; the bytes it sends.
    fn add_finishes(&self, pipeline: &mut Pipeline, group: &[&Finish]) -> usize {
        let first = group[0];
        let keys = self.keys(&first.lease.key_id);
        let mut invocation = self.scripts.finish.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let (window, bucket) = first.window.unwrap_or((-1, 1));
        invocation
            .arg(group.len())
            .arg(window)
            .arg(bucket.max(1))
            .arg(first.periods.len());
        for (name, start) in &first.periods {
            invocation.arg(name).arg(start);
        }
        let mut sent = keys.iter().map(String::len).sum::<usize>() + 48;
        for finish in group {
            let (cost, tokens) = finish.settled.unwrap_or((0, 0));
            invocation
                .arg(finish.now_ms)
                .arg(&finish.lease.member)
                .arg(i64::from(finish.settled.is_some()))
                .arg(exact(cost))
                .arg(exact_u64(tokens));
            sent += finish.lease.member.len() + 32;
        }
        pipeline.invoke_script(&invocation).ignore();
        sent
    }

    /// Adds one account's cost of a day to `pipeline` (it answers the day's total); the bytes
    /// it sends.
    fn add_day_cost(
        &self,
        pipeline: &mut Pipeline,
        account_id: &str,
        day: i64,
        cost: i64,
        limit: Option<i64>,
    ) -> usize {
        let key = self.day_key(account_id, day);
        let mut invocation = self.scripts.day.prepare_invoke();
        invocation
            .key(&key)
            .arg(exact(cost))
            .arg(limit_arg(limit))
            .arg(self.accounts_channel())
            .arg(account_id);
        pipeline.invoke_script(&invocation);
        key.len() + account_id.len() + 48
    }

    /// Adds one write to `pipeline` (none of these answers); the bytes it sends.
    fn add_write(&self, pipeline: &mut Pipeline, write: &Write) -> usize {
        match write {
            // Gathered by key and by account in `write`.
            Write::Finish(_) | Write::DayCost { .. } => 0,
            Write::Release(slot) => {
                let key = self.slots_key(&slot.account_id);
                pipeline.zrem(&key, &slot.member).ignore();
                key.len() + slot.member.len()
            }
            Write::Bind {
                session,
                account_id,
                ttl_ms,
            } => {
                let key = self.sticky_key(session);
                pipeline
                    .cmd("SET")
                    .arg(&key)
                    .arg(account_id)
                    .arg("PX")
                    .arg(*ttl_ms)
                    .ignore();
                key.len() + account_id.len() + 8
            }
            Write::Failure {
                address,
                now_ms,
                window_ms,
                max,
                block_ms,
            } => {
                let [failures, blocked] = self.failure_keys(address);
                let mut invocation = self.scripts.failed.prepare_invoke();
                invocation
                    .key(&failures)
                    .key(&blocked)
                    .arg(now_ms)
                    .arg(window_ms)
                    .arg(max)
                    .arg(block_ms)
                    .arg(self.blocks_channel())
                    .arg(address);
                pipeline.invoke_script(&invocation).ignore();
                failures.len() + blocked.len() + address.len() + 48
            }
        }
    }

    /// Pushes back the expiry of leases and account places still held, in one pipelined round
    /// trip.
    pub async fn renew(
        &self,
        leases: &[Lease],
        slots: &[Slot],
        now_ms: i64,
    ) -> Result<(), CoordError> {
        if leases.is_empty() && slots.is_empty() {
            return Ok(());
        }
        let expiry = now_ms + LEASE_TTL.as_millis() as i64;
        let mut pipeline = Pipeline::new();
        let mut sent = 0;
        for lease in leases {
            let [_, leases_key, _] = self.keys(&lease.key_id);
            sent += leases_key.len() + lease.member.len();
            pipeline
                .cmd("ZADD")
                .arg(&leases_key)
                .arg("XX")
                .arg(expiry)
                .arg(&lease.member)
                .ignore();
        }
        for slot in slots {
            let key = self.slots_key(&slot.account_id);
            sent += key.len() + slot.member.len();
            pipeline
                .cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg(expiry)
                .arg(&slot.member)
                .ignore();
        }
        let mut connection = self.connection.clone();
        let () = self
            .exchange(sent, pipeline.query_async(&mut connection))
            .await?;
        Ok(())
    }

    /// A key's ledger now (`None` when Redis does not hold it): its leases still alive, its
    /// totals, the cost of each `(name, start)` period and what falls inside `window_ms`. One
    /// pipelined round trip; not atomic, which a report does not need.
    pub async fn ledger_view(
        &self,
        key_id: &str,
        now_ms: i64,
        periods: &[(String, i64)],
        window_ms: Option<i64>,
    ) -> Result<Option<LedgerView>, CoordError> {
        let [ledger, leases, window] = self.keys(key_id);
        let mut pipeline = Pipeline::new();
        pipeline
            .hgetall(&ledger)
            .zrangebyscore(&leases, format!("({now_ms}"), "+inf")
            .lrange(&window, 0, -1);
        let mut connection = self.connection.clone();
        let (fields, live, buckets): (
            std::collections::HashMap<String, String>,
            Vec<String>,
            Vec<String>,
        ) = self
            .exchange(ledger.len() * 3, pipeline.query_async(&mut connection))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let number = |field: &str| {
            fields
                .get(field)
                .and_then(|value| value.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let unsigned = |field: &str| u64::try_from(number(field)).unwrap_or(0);
        let window = window_ms.map(|window_ms| {
            buckets
                .iter()
                .filter_map(|bucket| {
                    let parts: Vec<i64> = bucket
                        .split('|')
                        .map(|part| part.parse().unwrap_or(0))
                        .collect();
                    (parts.len() == 4 && parts[0] > now_ms - window_ms).then_some(parts)
                })
                .fold((0u64, 0u64, 0i64), |(requests, tokens, cost), parts| {
                    (
                        requests + u64::try_from(parts[1]).unwrap_or(0),
                        tokens + u64::try_from(parts[2]).unwrap_or(0),
                        cost + parts[3],
                    )
                })
        });
        // An allotment's spare is not in flight: what its requests hold is.
        let in_flight = live
            .into_iter()
            .map(|member| {
                let lease = Lease {
                    key_id: String::new(),
                    member,
                };
                lease.slots().saturating_sub(lease.spare_slots())
            })
            .sum();
        Ok(Some(LedgerView {
            in_flight,
            reserved_cost: (number("rc") - number("sc")).max(0),
            reserved_tokens: unsigned("rt").saturating_sub(unsigned("st")),
            total_cost: number("tc"),
            total_tokens: unsigned("tt"),
            first_used_ms: fields.get("fu").and_then(|value| value.parse().ok()),
            periods: periods
                .iter()
                .map(|(name, start)| {
                    if number(&format!("p:{name}:s")) == *start {
                        number(&format!("p:{name}"))
                    } else {
                        0
                    }
                })
                .collect(),
            window,
        }))
    }

    /// One round trip, for health checks.
    pub async fn ping(&self) -> Result<Duration, CoordError> {
        let started = Instant::now();
        let mut connection = self.connection.clone();
        let _: String = self
            .exchange(4, redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(started.elapsed())
    }
}

mod accounts;
pub mod testing;

pub use accounts::{AccountState, Mark, Notice, Slot};

#[cfg(test)]
mod tests;

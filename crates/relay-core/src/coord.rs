//! This instance's side of the state several instances share on Redis (`relay_coord`): one
//! connection, one worker that sends every write that need not be waited for (lease finishes,
//! released account places, costs, sticky bindings) in pipelined batches and renews the leases
//! this instance holds, and a watcher that mirrors the accounts' shared health into their
//! runtime state.
//!
//! *Architecture Invariant*: the request path reads account health, daily cost and cooldowns
//! from the instance's own mirror, never from Redis. What reaches Redis on the request path is
//! the key's admission, a sticky lookup (sent at the same time, so the two share one round
//! trip's wait) and, for an account with a concurrency limit, its place.
//!
//! When Redis does not answer, account state falls back to what this instance knows (its own
//! cooldowns, places, bindings); key limits follow `redis_unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_coord::{AccountState, Admit, Admitted, Lease, Mark, Notice, Redis, Slot, Write};
use tokio::sync::{mpsc, oneshot};

use crate::accounts::AccountEntry;
use crate::snapshot::SnapshotStore;
use crate::sticky::{SessionId, STICKY_TTL_MS};
use crate::throttle::AuthThrottle;

/// How often held leases are renewed (a third of their lifetime).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
const WRITE_BATCH: usize = 256;
/// How long accounts' costs alone wait for more writes before they are sent (they add to a day's
/// total; many requests' costs go as one sum per account).
const DAY_COST_LINGER: Duration = Duration::from_millis(25);
/// Admissions sent together at most (they wait while the batch before them is answered).
const ADMIT_BATCH: usize = 256;
/// How long a token refresh may hold the lock before another instance may try.
const REFRESH_LOCK_TTL: Duration = Duration::from_secs(30);

/// An admission waiting for its batch, and where its answer goes.
type Admission = (Admit, oneshot::Sender<Result<Admitted, ()>>);

#[derive(Debug, Default)]
struct Held {
    leases: HashMap<u64, Lease>,
    slots: HashMap<u64, Slot>,
}

#[derive(Debug)]
pub struct Coordinator {
    redis: Redis,
    /// Makes lease and lock holder ids unique across instances.
    instance: String,
    next_id: AtomicU64,
    /// Leases and places held by this instance's requests, renewed by the worker.
    held: Mutex<Held>,
    writes: mpsc::UnboundedSender<Write>,
    admissions: mpsc::UnboundedSender<Admission>,
    /// Admission batches at Redis now.
    admitting: Arc<AtomicUsize>,
    /// Writes not yet sent.
    pending: AtomicI64,
    /// Woken after each batch is written.
    flushed: tokio::sync::Notify,
    closing: tokio::sync::Notify,
}

/// The shared coordination's tasks: joined (worker) and stopped (watcher) at shutdown.
#[derive(Debug)]
pub struct CoordTasks {
    worker: tokio::task::JoinHandle<()>,
    admitter: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The key ledgers' allotter and what tells it to give its spares back and stop.
    allotter: Option<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)>,
}

impl Coordinator {
    /// The coordinator and its worker, which runs until [`Coordinator::close`].
    pub fn start(redis: Redis) -> (Arc<Self>, CoordTasks) {
        let (writes, receiver) = mpsc::unbounded_channel();
        let (admissions, waiting) = mpsc::unbounded_channel();
        let admitting = Arc::new(AtomicUsize::new(0));
        #[allow(clippy::disallowed_methods)] // ended at shutdown by `CoordTasks::stop`
        let admitter = tokio::spawn(admit_batches(redis.clone(), waiting, admitting.clone()));
        let coord = Arc::new(Self {
            redis,
            admissions,
            admitting,
            instance: format!("{:016x}", rand::random::<u64>()),
            next_id: AtomicU64::new(0),
            held: Mutex::default(),
            writes,
            pending: AtomicI64::new(0),
            flushed: tokio::sync::Notify::new(),
            closing: tokio::sync::Notify::new(),
        });
        #[allow(clippy::disallowed_methods)] // joined at shutdown by `CoordTasks::stop`
        let worker = tokio::spawn(coord.clone().work(receiver));
        (
            coord,
            CoordTasks {
                worker,
                admitter,
                watcher: None,
                allotter: None,
            },
        )
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// An id for a lease or place, unique across instances: `(local, shared)`.
    pub(crate) fn next_id(&self) -> (u64, String) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id, format!("{}-{id}", self.instance))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn hold_lease(&self, id: u64, lease: Lease) {
        self.held().leases.insert(id, lease);
    }

    pub(crate) fn let_go_lease(&self, id: u64) {
        self.held().leases.remove(&id);
    }

    /// Admits a request in its key's shared ledger: sent with the other admissions waiting at
    /// that moment, one script per key. When no admission is at Redis, the request sends its
    /// own at once, from its own task (so one request alone pays no hop to the admitter).
    /// `Err(())` when Redis does not answer.
    pub(crate) async fn admit(&self, admit: Admit) -> Result<Admitted, ()> {
        if let Some(_sending) = Sending::first(&self.admitting) {
            return self.redis.admit(&admit).await.map_err(|error| {
                tracing::warn!(%error, "the shared key ledgers do not answer");
            });
        }
        let (reply, answer) = oneshot::channel();
        self.admissions.send((admit, reply)).map_err(drop)?;
        answer.await.unwrap_or(Err(()))
    }

    /// Queues a write for the worker; never waits.
    pub(crate) fn send(&self, write: Write) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.writes.send(write).is_err() {
            // The worker has stopped (shutdown): leases and places expire by themselves.
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writes not yet sent to Redis.
    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until the next batch is written, or `wait` passes.
    pub(crate) async fn flushed_within(&self, wait: Duration) {
        let flushed = self.flushed.notified();
        if self.pending() > 0 {
            let _ = tokio::time::timeout(wait, flushed).await;
        }
    }

    /// Asks the worker to write what is pending and stop (call once no request is left).
    pub fn close(&self) {
        self.closing.notify_one();
    }

    /// Writes in batches and renews held leases, until closed.
    async fn work(self: Arc<Self>, mut receiver: mpsc::UnboundedReceiver<Write>) {
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            tokio::select! {
                received = receiver.recv_many(&mut batch, WRITE_BATCH) => {
                    if received == 0 {
                        return;
                    }
                    // Anything else goes at once (a finish gives room back, a release a place).
                    let linger = tokio::time::sleep(DAY_COST_LINGER);
                    tokio::pin!(linger);
                    while batch.len() < WRITE_BATCH
                        && batch.iter().all(|write| matches!(write, Write::DayCost { .. }))
                    {
                        let room = WRITE_BATCH - batch.len();
                        tokio::select! {
                            more = receiver.recv_many(&mut batch, room) => {
                                if more == 0 {
                                    break;
                                }
                            }
                            () = &mut linger => break,
                        }
                    }
                    self.write(&mut batch, false).await;
                }
                _ = renew.tick() => self.renew().await,
                () = self.closing.notified() => {
                    while let Ok(write) = receiver.try_recv() {
                        batch.push(write);
                    }
                    self.write(&mut batch, true).await;
                    return;
                }
            }
        }
    }

    /// Sends `batch`, retrying while Redis does not answer (held leases keep being renewed
    /// meanwhile); at shutdown, one try.
    async fn write(&self, batch: &mut Vec<Write>, last: bool) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.redis.write(batch).await {
                Ok(_) => break,
                Err(error) if last => {
                    tracing::warn!(%error, writes = batch.len(), "could not write to Redis at shutdown; leases expire by themselves");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, writes = batch.len(), "cannot write to Redis yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    self.renew().await;
                }
            }
        }
        self.pending
            .fetch_sub(i64::try_from(batch.len()).unwrap_or(0), Ordering::Relaxed);
        batch.clear();
        self.flushed.notify_waiters();
    }

    async fn renew(&self) {
        self.renew_at(crate::clock::now_ms()).await;
    }

    pub(crate) async fn renew_at(&self, now_ms: i64) {
        let (leases, slots): (Vec<Lease>, Vec<Slot>) = {
            let held = self.held();
            (
                held.leases.values().cloned().collect(),
                held.slots.values().cloned().collect(),
            )
        };
        if let Err(error) = self.redis.renew(&leases, &slots, now_ms).await {
            tracing::warn!(%error, leases = leases.len(), places = slots.len(), "cannot renew leases");
        }
    }

    /// Tells every instance about a change of an account's health (one round trip; call off
    /// the request path).
    pub(crate) async fn mark(&self, account_id: &str, mark: &Mark<'_>) {
        if let Err(error) = self.redis.mark(account_id, mark).await {
            tracing::warn!(%error, account_id, "cannot share an account's health; other instances will find out themselves");
        }
    }

    /// A place on `account` under its concurrency `limit`, counted on every instance:
    /// `Ok(None)` when all are taken, `Err(())` when Redis does not answer.
    pub(crate) async fn take_slot(
        self: &Arc<Self>,
        account_id: &str,
        limit: u32,
    ) -> Result<Option<SharedSlot>, ()> {
        let (id, member) = self.next_id();
        let slot = Slot {
            account_id: account_id.to_owned(),
            member,
        };
        match self
            .redis
            .take_slot(&slot, limit, crate::clock::now_ms())
            .await
        {
            Ok(true) => {
                self.held().slots.insert(id, slot.clone());
                Ok(Some(SharedSlot {
                    coord: self.clone(),
                    id,
                    slot,
                }))
            }
            Ok(false) => Ok(None),
            Err(error) => {
                tracing::warn!(%error, account_id, "cannot count an account's requests on Redis; counting this instance's only");
                Err(())
            }
        }
    }

    /// The account a conversation is bound to on any instance (renewing the binding);
    /// `Err(())` when Redis does not answer.
    pub(crate) async fn bound_account(&self, session: SessionId) -> Result<Option<String>, ()> {
        self.redis
            .bound_account(&session.to_hex(), STICKY_TTL_MS)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot read a sticky binding on Redis");
            })
    }

    pub(crate) fn bind(&self, session: SessionId, account_id: &str) {
        self.send(Write::Bind {
            session: session.to_hex(),
            account_id: account_id.to_owned(),
            ttl_ms: STICKY_TTL_MS,
        });
    }

    /// Adds a request's cost to its account's cost today on every instance.
    pub(crate) fn add_day_cost(
        &self,
        account_id: &str,
        cost: i64,
        limit: Option<i64>,
        now_ms: i64,
    ) {
        if cost > 0 {
            self.send(Write::DayCost {
                account_id: account_id.to_owned(),
                day: now_ms.div_euclid(86_400_000),
                cost,
                limit,
            });
        }
    }

    /// Seeds today's costs from the records (kept where Redis has them already).
    pub(crate) async fn seed_day_costs(&self, costs: &[(String, i64)], now_ms: i64) {
        let day = now_ms.div_euclid(86_400_000);
        for (account_id, cost) in costs {
            if let Err(error) = self.redis.seed_day_cost(account_id, day, *cost).await {
                tracing::warn!(%error, "cannot seed accounts' costs on Redis");
                return;
            }
        }
    }

    /// Takes the account's token refresh lock on every instance: `Ok(false)` while another
    /// instance holds it, `Err(())` when Redis does not answer.
    pub(crate) async fn lock_refresh(&self, account_id: &str) -> Result<bool, ()> {
        self.redis
            .try_lock(&format!("refresh:{account_id}"), &self.instance, REFRESH_LOCK_TTL)
            .await
            .map_err(|error| {
                tracing::warn!(%error, account_id, "cannot take the token refresh lock on Redis; refreshing under this instance's lock only");
            })
    }

    pub(crate) async fn unlock_refresh(&self, account_id: &str) {
        if let Err(error) = self
            .redis
            .unlock(&format!("refresh:{account_id}"), &self.instance)
            .await
        {
            tracing::warn!(%error, account_id, "cannot give the token refresh lock back; it lapses by itself");
        }
    }

    /// Mirrors the accounts' shared health into their runtime state from now on: every account
    /// when the subscription starts (or starts again), one account on each notice.
    /// Blocks reported by other instances are applied to `throttles` (each shares its failures
    /// under its own kind).
    pub fn watch(
        self: &Arc<Self>,
        snapshots: Arc<SnapshotStore>,
        throttles: Vec<Arc<AuthThrottle>>,
        tasks: &mut CoordTasks,
    ) {
        let (sender, mut notices) = mpsc::unbounded_channel();
        // An account added after the subscription: read what the others know of it, too.
        let added = sender.clone();
        snapshots.on_new_account(move |id| {
            let _ = added.send(Notice::Account(id.to_owned()));
        });
        let redis = self.redis.clone();
        #[allow(clippy::disallowed_methods)] // stopped at shutdown by `CoordTasks::stop`
        let watcher = tokio::spawn(async move {
            let subscription = redis.watch(sender);
            let apply = async {
                while let Some(notice) = notices.recv().await {
                    let snapshot = snapshots.current();
                    let accounts: Vec<&Arc<AccountEntry>> = match &notice {
                        Notice::Subscribed => snapshot.accounts.iter().collect(),
                        Notice::Account(id) => snapshot
                            .accounts
                            .iter()
                            .filter(|account| account.id == *id)
                            .collect(),
                        Notice::Blocked { address, until_ms } => {
                            block(&throttles, address, *until_ms);
                            continue;
                        }
                    };
                    let ids: Vec<&str> =
                        accounts.iter().map(|account| account.id.as_str()).collect();
                    let now = crate::clock::now_ms();
                    match redis.account_states(&ids, now.div_euclid(86_400_000)).await {
                        Ok(states) => {
                            for (account, state) in accounts.iter().zip(&states) {
                                apply(account, state, now);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot read accounts' shared health");
                        }
                    }
                }
            };
            tokio::join!(subscription, apply);
        });
        tasks.watcher = Some(watcher);
    }
}

/// A block of `kind:address` another instance decided, applied to the throttle of that kind.
fn block(throttles: &[Arc<AuthThrottle>], address: &str, until_ms: i64) {
    let Some((kind, address)) = address.split_once(':') else {
        return;
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return;
    };
    for throttle in throttles {
        if throttle.shared_kind() == Some(kind) {
            throttle.block_until(address, until_ms);
        }
    }
}

/// What another instance recorded about `account`, applied to this instance's mirror.
fn apply(account: &AccountEntry, state: &AccountState, now_ms: i64) {
    let runtime = &account.runtime;
    runtime.raise_day_cost(state.day_cost, now_ms);
    if state.marked_at_ms <= runtime.reset_seen_ms() {
        return;
    }
    runtime.cool_until(state.cool_until_ms);
    for (family, until) in &state.family_cool_until_ms {
        runtime.cool_family_until(family, *until);
    }
    if state.blocked {
        runtime.block();
    }
    if let Some(reason) = &state.reason {
        runtime.set_reason_text(reason);
    }
}

impl CoordTasks {
    pub(crate) fn add_allotter(
        &mut self,
        allotter: tokio::task::JoinHandle<()>,
        closing: Arc<tokio::sync::Notify>,
    ) {
        self.allotter = Some((allotter, closing));
    }

    /// Stops watching, settles the allotments and gives their spares back, writes what is
    /// pending and stops the worker.
    pub async fn stop(self, coord: &Coordinator) {
        if let Some(watcher) = self.watcher {
            watcher.abort();
            let _ = watcher.await;
        }
        if let Some((allotter, closing)) = self.allotter {
            closing.notify_one();
            let _ = allotter.await;
        }
        coord.close();
        let _ = self.worker.await;
        self.admitter.abort();
        let _ = self.admitter.await;
    }
}

/// Sends the admissions waiting, as one batch, each time the batch before is answered: under
/// load many requests share a round trip and a script; alone, a request goes at once.
async fn admit_batches(
    redis: Redis,
    mut waiting: mpsc::UnboundedReceiver<Admission>,
    admitting: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(ADMIT_BATCH);
    while waiting.recv_many(&mut batch, ADMIT_BATCH).await > 0 {
        let (admits, replies): (Vec<Admit>, Vec<_>) = batch.drain(..).unzip();
        let sending = Sending::also(&admitting);
        let answers = redis.admit_many(&admits).await;
        drop(sending);
        match answers {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(error) => {
                tracing::warn!(%error, admissions = admits.len(), "the shared key ledgers do not answer");
                for reply in replies {
                    let _ = reply.send(Err(()));
                }
            }
        }
    }
}

/// One admission batch at Redis, counted while it lives (however its future ends).
struct Sending<'a>(&'a AtomicUsize);

impl<'a> Sending<'a> {
    /// Counts a batch if none is at Redis; `None` if one is.
    fn first(count: &'a AtomicUsize) -> Option<Self> {
        count
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| Self(count))
    }

    fn also(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's place on an account, counted on every instance; given back on drop.
#[derive(Debug)]
pub struct SharedSlot {
    coord: Arc<Coordinator>,
    id: u64,
    slot: Slot,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.coord.held().slots.remove(&self.id);
        self.coord.send(Write::Release(self.slot.clone()));
    }
}

//! What instances share about upstream accounts: health marks (cooldowns, blocks), the cost
//! served today, places for the account's concurrency limit (leases, like the key ledgers'),
//! sticky conversation bindings, and locks (one token refresh at a time across instances).
//!
//! Marks change rarely — a 429, a ban, a daily limit crossed — so each is written once, and a
//! notice on one channel tells every instance to read that account's marks again: the request
//! path reads none of this from Redis, only the instance's own mirror of it.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Pipeline;
use tokio::sync::mpsc;

use crate::{exact, CoordError, Redis, LEASE_TTL};

/// One request's place on an account, held as a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub account_id: String,
    pub member: String,
}

/// A change of an account's health, as one instance saw it.
#[derive(Debug, Clone, Default)]
pub struct Mark<'a> {
    pub at_ms: i64,
    /// The last operator reset the marking instance applied: older marks are dropped.
    pub reset_seen_ms: i64,
    pub reason: &'a str,
    pub cool_until_ms: Option<i64>,
    pub family_cool_until_ms: Option<(&'a str, i64)>,
    pub blocked: bool,
}

/// An account's shared state: its marks and its cost today.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    /// When the newest mark was made (0: none).
    pub marked_at_ms: i64,
    pub cool_until_ms: i64,
    pub family_cool_until_ms: Vec<(String, i64)>,
    pub blocked: bool,
    pub reason: Option<String>,
    pub day_cost: i64,
}

/// What the channels say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// (Re)subscribed: notices may have been missed, read every account again.
    Subscribed,
    /// This account's state changed.
    Account(String),
    /// Too many failed credentials came from this client address: refuse it until then.
    Blocked { address: String, until_ms: i64 },
}

impl Redis {
    pub(crate) fn accounts_channel(&self) -> String {
        format!("{}:accounts", self.prefix)
    }

    pub(crate) fn blocks_channel(&self) -> String {
        format!("{}:blocks", self.prefix)
    }

    pub(crate) fn failure_keys(&self, address: &str) -> [String; 2] {
        [
            format!("{}:failures:{address}", self.prefix),
            format!("{}:blocked:{address}", self.prefix),
        ]
    }

    fn marks_key(&self, account_id: &str) -> String {
        format!("{}:account:{account_id}", self.prefix)
    }

    pub(crate) fn day_key(&self, account_id: &str, day: i64) -> String {
        format!("{}:account:{account_id}:day:{day}", self.prefix)
    }

    pub(crate) fn slots_key(&self, account_id: &str) -> String {
        format!("{}:account:{account_id}:slots", self.prefix)
    }

    pub(crate) fn sticky_key(&self, session: &str) -> String {
        format!("{}:sticky:{session}", self.prefix)
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.prefix)
    }

    /// Records a mark and tells every instance: one round trip.
    pub async fn mark(&self, account_id: &str, mark: &Mark<'_>) -> Result<(), CoordError> {
        let key = self.marks_key(account_id);
        let mut invocation = self.scripts.mark.prepare_invoke();
        invocation
            .key(&key)
            .arg(self.accounts_channel())
            .arg(account_id)
            .arg(mark.at_ms)
            .arg(mark.reset_seen_ms)
            .arg(mark.reason);
        if let Some(until) = mark.cool_until_ms {
            invocation.arg("cool").arg(exact(until));
        }
        if let Some((family, until)) = mark.family_cool_until_ms {
            invocation.arg(format!("f:{family}")).arg(exact(until));
        }
        if mark.blocked {
            invocation.arg("blocked").arg(1);
        }
        let sent = key.len() + account_id.len() + mark.reason.len() + 96;
        let mut connection = self.connection.clone();
        let _: i64 = self
            .exchange(sent, invocation.invoke_async(&mut connection))
            .await?;
        Ok(())
    }

    /// The shared state of these accounts on UTC day `day`, in one round trip.
    pub async fn account_states(
        &self,
        account_ids: &[&str],
        day: i64,
    ) -> Result<Vec<AccountState>, CoordError> {
        if account_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = Pipeline::new();
        for id in account_ids {
            pipeline
                .hgetall(self.marks_key(id))
                .get(self.day_key(id, day));
        }
        let mut connection = self.connection.clone();
        let replies: Vec<(HashMap<String, String>, Option<i64>)> = self
            .exchange(
                account_ids.len() * 64,
                pipeline.query_async(&mut connection),
            )
            .await?;
        Ok(replies
            .into_iter()
            .map(|(marks, day_cost)| {
                let number = |field: &str| {
                    marks
                        .get(field)
                        .and_then(|value| value.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                AccountState {
                    marked_at_ms: number("at"),
                    cool_until_ms: number("cool"),
                    family_cool_until_ms: marks
                        .iter()
                        .filter_map(|(field, value)| {
                            Some((field.strip_prefix("f:")?.to_owned(), value.parse().ok()?))
                        })
                        .collect(),
                    blocked: number("blocked") == 1,
                    reason: marks.get("reason").cloned(),
                    day_cost: day_cost.unwrap_or(0),
                }
            })
            .collect())
    }

    /// Sets an account's cost on `day` unless it is there already (seeding from the records).
    pub async fn seed_day_cost(
        &self,
        account_id: &str,
        day: i64,
        cost: i64,
    ) -> Result<(), CoordError> {
        let key = self.day_key(account_id, day);
        let mut connection = self.connection.clone();
        let _: Option<String> = self
            .exchange(
                key.len() + 24,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(exact(cost))
                    .arg("NX")
                    .arg("PX")
                    .arg(172_800_000)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    /// Takes a place on an account if fewer than `limit` are held on all instances: one round
    /// trip. The place is a lease: renew it with [`Redis::renew`], give it back with
    /// [`crate::Write::Release`].
    pub async fn take_slot(
        &self,
        slot: &Slot,
        limit: u32,
        now_ms: i64,
    ) -> Result<bool, CoordError> {
        let key = self.slots_key(&slot.account_id);
        let mut invocation = self.scripts.slot.prepare_invoke();
        invocation
            .key(&key)
            .arg(now_ms)
            .arg(&slot.member)
            .arg(now_ms + LEASE_TTL.as_millis() as i64)
            .arg(limit);
        let mut connection = self.connection.clone();
        let taken: i64 = self
            .exchange(
                key.len() + slot.member.len() + 32,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(taken == 1)
    }

    /// The account a conversation is bound to, renewing the binding for `ttl_ms`.
    pub async fn bound_account(
        &self,
        session: &str,
        ttl_ms: i64,
    ) -> Result<Option<String>, CoordError> {
        let key = self.sticky_key(session);
        let mut connection = self.connection.clone();
        self.exchange(
            key.len() + 16,
            redis::cmd("GETEX")
                .arg(&key)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection),
        )
        .await
    }

    /// Takes the lock `name` for `holder` unless someone holds it; it lapses after `ttl`.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, CoordError> {
        let key = self.lock_key(name);
        let mut connection = self.connection.clone();
        let taken: Option<String> = self
            .exchange(
                key.len() + holder.len() + 24,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut connection),
            )
            .await?;
        Ok(taken.is_some())
    }

    /// Gives the lock `name` back, if `holder` still holds it.
    pub async fn unlock(&self, name: &str, holder: &str) -> Result<(), CoordError> {
        let key = self.lock_key(name);
        let mut invocation = self.scripts.unlock.prepare_invoke();
        invocation.key(&key).arg(holder);
        let mut connection = self.connection.clone();
        let _: i64 = self
            .exchange(
                key.len() + holder.len(),
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    /// Sends the channels' notices to `notices` until it closes, resubscribing (and saying so)
    /// whenever the subscription breaks.
    pub async fn watch(&self, notices: mpsc::UnboundedSender<Notice>) {
        let channel = self.accounts_channel();
        let blocks = self.blocks_channel();
        let mut backoff = Duration::from_millis(100);
        while !notices.is_closed() {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&[&channel, &blocks]).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(100);
                    if notices.send(Notice::Subscribed).is_err() {
                        return;
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Ok(payload) = message.get_payload::<String>() else {
                                    continue;
                                };
                                let notice = if message.get_channel_name() == blocks {
                                    let Some((address, until)) = payload.rsplit_once('|') else {
                                        continue;
                                    };
                                    Notice::Blocked {
                                        address: address.to_owned(),
                                        until_ms: until.parse().unwrap_or(0),
                                    }
                                } else {
                                    Notice::Account(payload)
                                };
                                if notices.send(notice).is_err() {
                                    return;
                                }
                            }
                            () = notices.closed() => return,
                        }
                    }
                    tracing::warn!("the channels on Redis closed; subscribing again");
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot subscribe to the channels on Redis");
                }
                Err(_) => tracing::warn!("subscribing to the channels on Redis timed out"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = notices.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

//! Choosing an upstream account for a request: priority tier first, then least recently used.
//!
//! *Architecture Invariant*: every selection goes through [`is_routable`]; no path picks an
//! account the predicate rejects. The full scheduler (weights, stickiness, health states) grows
//! here on top of the same predicate.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use std::sync::Arc;

use relay_protocol::Dialect;

use crate::accounts::AccountEntry;
use crate::snapshot::Snapshot;

/// Which accounts a request may use: those that can answer its dialect (natively or through a
/// conversion) and serve its model, the key's dedicated account or group if it has one, and not
/// those it already tried.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    /// The dialect the client speaks.
    pub dialect: Dialect,
    /// The requested model, and its family for family-scoped rate limits.
    pub model: &'a str,
    pub family: Option<&'static str>,
    /// The key's account group, if it is bound to one.
    pub group: Option<&'a str>,
    pub dedicated: Option<&'a str>,
    pub excluded: &'a [Arc<AccountEntry>],
}

impl Candidates<'_> {
    /// Whether `account` belongs to the candidates at all, cooling or not.
    fn admits(&self, account: &AccountEntry) -> bool {
        account.active
            && bridges(self.dialect, account.platform.dialect_for(self.dialect))
            && self.dedicated.is_none_or(|name| account.name == name)
            && self
                .group
                .is_none_or(|group| account.settings.in_group(group))
            && account
                .settings
                .serves(self.model, account.platform.default_models())
            && !self.excluded.iter().any(|tried| tried.id == account.id)
    }
}

/// Whether a client speaking `client` can be served by an upstream speaking `upstream`: the same
/// dialect passes through; these pairs have conversions (`relay_protocol::convert`).
pub fn bridges(client: Dialect, upstream: Dialect) -> bool {
    use Dialect::{AnthropicMessages, Gemini, OpenAiChat, OpenAiResponses};
    client == upstream
        || matches!(
            (client, upstream),
            (AnthropicMessages, OpenAiChat)
                | (OpenAiChat, AnthropicMessages)
                | (OpenAiResponses, AnthropicMessages)
                | (OpenAiResponses, OpenAiChat)
                | (AnthropicMessages, OpenAiResponses)
                | (OpenAiChat, OpenAiResponses)
                | (Gemini, AnthropicMessages)
                | (Gemini, OpenAiChat)
                | (AnthropicMessages, Gemini)
                | (OpenAiChat, Gemini)
                | (OpenAiResponses, Gemini)
        )
}

/// Whether `account` may serve a request of these candidates now.
pub fn is_routable(account: &AccountEntry, candidates: &Candidates<'_>, now_ms: i64) -> bool {
    candidates.admits(account) && !account.is_out(candidates.family, now_ms)
}

#[derive(Debug)]
pub enum Selection {
    Account(Arc<AccountEntry>),
    /// Every otherwise usable account is rate limited; the earliest recovers at this time.
    AllCooling {
        until_ms: i64,
    },
    /// No account could serve this request at all.
    NoAccount,
}

/// How an account is chosen within the best priority tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The least recently used (spreads load evenly).
    #[default]
    LeastRecentlyUsed,
    /// At random, in proportion to the accounts' weights.
    Weighted,
}

#[derive(Debug, Default)]
pub struct AccountSelector {
    use_stamp: AtomicU64,
    strategy: Strategy,
}

impl AccountSelector {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            use_stamp: AtomicU64::new(0),
            strategy,
        }
    }

    /// Marks `account` as just used (when it was chosen another way, e.g. by a sticky session).
    pub fn touch(&self, account: &AccountEntry) {
        let stamp = self.use_stamp.fetch_add(1, Ordering::Relaxed) + 1;
        account.runtime.mark_used(stamp);
    }

    pub fn select(
        &self,
        snapshot: &Snapshot,
        candidates: &Candidates<'_>,
        now_ms: i64,
    ) -> Selection {
        // The best priority tier among routable accounts, and whether any of it has room in
        // its subscription windows (those near a limit go last).
        let mut best: Option<(i64, bool)> = None;
        for account in snapshot
            .accounts
            .iter()
            .filter(|account| is_routable(account, candidates, now_ms))
        {
            let roomy = !account.runtime.window_warning();
            best = match best {
                Some((priority, any_roomy)) if priority < account.priority => {
                    Some((priority, any_roomy))
                }
                Some((priority, any_roomy)) if priority == account.priority => {
                    Some((priority, any_roomy || roomy))
                }
                _ => Some((account.priority, roomy)),
            };
        }
        let in_tier = |account: &&Arc<AccountEntry>| {
            best.is_some_and(|(priority, any_roomy)| {
                account.priority == priority
                    && (!any_roomy || !account.runtime.window_warning())
                    && is_routable(account, candidates, now_ms)
            })
        };
        let chosen = match self.strategy {
            Strategy::LeastRecentlyUsed => snapshot
                .accounts
                .iter()
                .filter(in_tier)
                .min_by_key(|account| account.runtime.last_used()),
            Strategy::Weighted => {
                let total: u64 = snapshot
                    .accounts
                    .iter()
                    .filter(in_tier)
                    .map(|account| u64::from(account.settings.weight()))
                    .sum();
                let mut ticket = if total == 0 {
                    0
                } else {
                    rand::thread_rng().gen_range(0..total)
                };
                snapshot.accounts.iter().filter(in_tier).find(|account| {
                    let weight = u64::from(account.settings.weight());
                    if ticket < weight {
                        true
                    } else {
                        ticket -= weight;
                        false
                    }
                })
            }
        };
        if let Some(account) = chosen {
            let stamp = self.use_stamp.fetch_add(1, Ordering::Relaxed) + 1;
            account.runtime.mark_used(stamp);
            return Selection::Account(account.clone());
        }
        let earliest_recovery = snapshot
            .accounts
            .iter()
            .filter(|account| candidates.admits(account) && !account.runtime.is_blocked())
            .map(|account| account.runtime.available_at_ms(candidates.family))
            .filter(|until_ms| *until_ms > now_ms)
            .min();
        match earliest_recovery {
            Some(until_ms) => Selection::AllCooling { until_ms },
            None => Selection::NoAccount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::AccountRuntime;
    use crate::crypto::SecretString;

    fn account(id: &str, priority: i64, active: bool) -> Arc<AccountEntry> {
        Arc::new(AccountEntry {
            id: id.into(),
            name: id.into(),
            platform: crate::accounts::Platform::Anthropic,
            base_url: "http://x".into(),
            priority,
            created_at_ms: 0,
            active,
            credential: crate::accounts::Credential::ApiKey(SecretString::new("k".into())),
            settings: crate::account_settings::AccountSettings::default(),
            proxy: None,
            runtime: Arc::new(AccountRuntime::default()),
        })
    }

    fn snapshot(accounts: Vec<Arc<AccountEntry>>) -> Snapshot {
        Snapshot {
            accounts,
            ..Snapshot::default()
        }
    }

    fn candidates(excluded: &[Arc<AccountEntry>]) -> Candidates<'_> {
        Candidates {
            dialect: Dialect::AnthropicMessages,
            model: "claude-sonnet-4-5",
            family: None,
            group: None,
            dedicated: None,
            excluded,
        }
    }

    fn pick(
        selector: &AccountSelector,
        snapshot: &Snapshot,
        excluded: &[Arc<AccountEntry>],
    ) -> String {
        match selector.select(snapshot, &candidates(excluded), 1_000) {
            Selection::Account(account) => account.id.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn lower_priority_number_wins_then_least_recently_used_rotates() {
        let snapshot = snapshot(vec![
            account("a", 10, true),
            account("b", 10, true),
            account("c", 20, true),
        ]);
        let selector = AccountSelector::default();
        let picks: Vec<String> = (0..4).map(|_| pick(&selector, &snapshot, &[])).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }

    #[test]
    fn disabled_excluded_and_cooling_accounts_are_skipped() {
        let a = account("a", 1, true);
        let b = account("b", 2, false);
        let c = account("c", 3, true);
        let snapshot = snapshot(vec![a.clone(), b, c.clone()]);
        let selector = AccountSelector::default();
        assert_eq!(pick(&selector, &snapshot, std::slice::from_ref(&a)), "c");
        a.runtime.cool_until(5_000);
        assert_eq!(pick(&selector, &snapshot, &[]), "c");
        c.runtime.cool_until(3_000);
        assert!(matches!(
            selector.select(&snapshot, &candidates(&[]), 1_000),
            Selection::AllCooling { until_ms: 3_000 }
        ));
        assert!(matches!(
            selector.select(&snapshot, &candidates(&[]), 6_000),
            Selection::Account(_)
        ));
        let dedicated = Candidates {
            dedicated: Some("c"),
            ..candidates(&[])
        };
        assert!(matches!(
            selector.select(&snapshot, &dedicated, 6_000),
            Selection::Account(account) if account.id == "c"
        ));
        assert!(matches!(
            selector.select(&snapshot, &candidates(&[a, c]), 6_000),
            Selection::NoAccount
        ));
    }

    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, proptest};
    use proptest::strategy::Strategy as _;

    #[derive(Debug, Clone)]
    struct AccountState {
        priority: i64,
        active: bool,
        schedulable: bool,
        cooling: bool,
        family_cooling: bool,
        blocked: bool,
        sonnet_only: bool,
        in_group: bool,
        full: bool,
        weight: u32,
    }

    fn account_state() -> impl proptest::strategy::Strategy<Value = AccountState> {
        (
            0i64..3,
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2),
            1u32..5,
        )
            .prop_map(
                |(
                    priority,
                    active,
                    schedulable,
                    cooling,
                    family_cooling,
                    blocked,
                    sonnet_only,
                    in_group,
                    full,
                    weight,
                )| {
                    AccountState {
                        priority,
                        active,
                        schedulable,
                        cooling,
                        family_cooling,
                        blocked,
                        sonnet_only,
                        in_group,
                        full,
                        weight,
                    }
                },
            )
    }

    fn build(index: usize, state: &AccountState) -> Arc<AccountEntry> {
        let settings = crate::account_settings::AccountSettings {
            weight: Some(state.weight),
            schedulable: Some(state.schedulable),
            models: state
                .sonnet_only
                .then(|| vec!["claude-sonnet-*".to_owned()]),
            groups: state.in_group.then(|| vec!["team".to_owned()]),
            concurrency: state.full.then_some(1),
            ..Default::default()
        };
        let account = AccountEntry {
            settings,
            ..(*self::account(&format!("acct-{index}"), state.priority, state.active))
                .clone_shallow()
        };
        if state.cooling {
            account.runtime.cool_until(5_000);
        }
        if state.family_cooling {
            account.runtime.cool_family_until("opus", 5_000);
        }
        if state.blocked {
            account.runtime.block();
        }
        let account = Arc::new(account);
        if state.full {
            std::mem::forget(crate::accounts::AccountSlot::take(&account.runtime));
        }
        account
    }

    proptest! {
        /// Whatever the accounts' states and the request, every path picks only accounts that
        /// `is_routable` accepts, and finds one whenever one exists.
        #[test]
        fn the_selector_never_picks_an_unroutable_account(
            states in proptest::collection::vec(account_state(), 1..8),
            opus in any::<bool>(),
            grouped in any::<bool>(),
            weighted in any::<bool>(),
            dedicated_index in proptest::option::of(0usize..8),
        ) {
            let accounts: Vec<Arc<AccountEntry>> = states.iter().enumerate().map(|(index, state)| build(index, state)).collect();
            let snapshot = snapshot(accounts.clone());
            let model = if opus { "claude-opus-4-8" } else { "claude-sonnet-4-5" };
            let dedicated = dedicated_index.map(|index| format!("acct-{index}"));
            let candidates = Candidates {
                dialect: Dialect::AnthropicMessages,
                model,
                family: crate::model::family(model),
                group: grouped.then_some("team"),
                dedicated: dedicated.as_deref(),
                excluded: &[],
            };
            let selector = AccountSelector::new(if weighted { super::Strategy::Weighted } else { super::Strategy::LeastRecentlyUsed });
            let any_routable = accounts.iter().any(|account| is_routable(account, &candidates, 1_000));
            for _ in 0..5 {
                match selector.select(&snapshot, &candidates, 1_000) {
                    Selection::Account(account) => {
                        prop_assert!(is_routable(&account, &candidates, 1_000));
                        let best = accounts.iter().filter(|a| is_routable(a, &candidates, 1_000)).map(|a| a.priority).min();
                        prop_assert_eq!(Some(account.priority), best, "a lower priority tier was skipped");
                    }
                    _ => prop_assert!(!any_routable, "a routable account was not found"),
                }
            }
        }
    }

    #[test]
    fn weighted_selection_follows_the_weights() {
        let accounts: Vec<Arc<AccountEntry>> = [1u32, 2, 7]
            .iter()
            .enumerate()
            .map(|(index, weight)| {
                Arc::new(AccountEntry {
                    settings: crate::account_settings::AccountSettings {
                        weight: Some(*weight),
                        ..Default::default()
                    },
                    ..(*account(&format!("w{index}"), 1, true)).clone_shallow()
                })
            })
            .collect();
        let snapshot = snapshot(accounts);
        let selector = AccountSelector::new(super::Strategy::Weighted);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..20_000 {
            if let Selection::Account(account) = selector.select(&snapshot, &candidates(&[]), 1_000)
            {
                *counts.entry(account.id.clone()).or_insert(0u32) += 1;
            }
        }
        for (id, weight) in [("w0", 0.1), ("w1", 0.2), ("w2", 0.7)] {
            let share = f64::from(counts[id]) / 20_000.0;
            assert!((share - weight).abs() < 0.02, "{id}: {share} vs {weight}");
        }
    }
}

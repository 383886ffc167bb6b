//! Choosing an upstream account for a request: priority tier first, then least recently used.
//!
//! *Architecture Invariant*: every selection goes through [`is_routable`]; no path picks an
//! account the predicate rejects. The full scheduler (weights, stickiness, health states) grows
//! here on top of the same predicate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::accounts::{AccountEntry, Platform};
use crate::snapshot::Snapshot;

/// Which accounts a request may use: its platform, the key's dedicated account if it has one,
/// and not those it already tried.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    pub platform: Platform,
    /// The requested model's family, for family-scoped rate limits.
    pub family: Option<&'static str>,
    pub dedicated: Option<&'a str>,
    pub excluded: &'a [Arc<AccountEntry>],
}

impl Candidates<'_> {
    /// Whether `account` belongs to the candidates at all, cooling or not.
    fn admits(&self, account: &AccountEntry) -> bool {
        account.active
            && account.platform.speaks_anthropic() == self.platform.speaks_anthropic()
            && self.dedicated.is_none_or(|name| account.name == name)
            && !self.excluded.iter().any(|tried| tried.id == account.id)
    }
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

#[derive(Debug, Default)]
pub struct AccountSelector {
    use_stamp: AtomicU64,
}

impl AccountSelector {
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
        let chosen = snapshot
            .accounts
            .iter()
            .filter(|account| is_routable(account, candidates, now_ms))
            .min_by_key(|account| (account.priority, account.runtime.last_used()));
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
            platform: Platform::Anthropic,
            base_url: "http://x".into(),
            priority,
            active,
            api_key: SecretString::new("k".into()),
            oauth: None,
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
            platform: Platform::Anthropic,
            family: None,
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
}

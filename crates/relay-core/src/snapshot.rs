//! Keys and accounts as immutable snapshots: each request loads one and sees old or new, never a
//! mix. A reloader follows the store's change feed — woken by PostgreSQL's notifications, and
//! polling the revision as a fallback (the only way on SQLite) — and swaps in a snapshot with
//! just the changed rows read and replaced, so an edit from the CLI or another instance takes
//! effect within a poll interval, with no restart, however many keys there are. It reads
//! everything only at start and when the feed cannot say what changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use relay_store::{AccountRow, Change, ChangedEntity, KeyRow, Rows, Store};

use crate::account_settings::AccountSettings;
use crate::accounts::{AccountEntry, AccountRuntime, Credential, Platform};
use crate::crypto::SecretBox;
use crate::keys::KeyEntry;
use crate::oauth::OAuthTokens;
use crate::policy::KeyPolicy;
use crate::proxy::ProxyConfig;

pub const RELOAD_INTERVAL: Duration = Duration::from_millis(250);
/// More changes than this at once are read as a whole reload: it is cheaper.
const MAX_INCREMENTAL_CHANGES: i64 = 2_000;

/// Keys by keyed hash; shared between snapshots until a key changes.
pub type KeyMap = HashMap<[u8; 32], Arc<KeyEntry>>;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// By keyed hash of the key.
    pub keys: Arc<KeyMap>,
    /// Ordered by priority, then age.
    pub accounts: Vec<Arc<AccountEntry>>,
}

/// Associated data binding an account's sealed proxy URL to its row.
pub fn account_proxy_binding(account_id: &str) -> String {
    format!("account:{account_id}:proxy")
}

/// Associated data binding an account's sealed credential to its row.
pub fn account_secret_binding(account_id: &str) -> String {
    format!("account:{account_id}:credential")
}

/// Associated data binding the sealed PKCE verifier of a sign-in under way to its account name.
pub fn oauth_pending_binding(name: &str) -> String {
    format!("oauth-pending:{name}")
}

/// What [`SnapshotStore::on_new_account`] calls.
type NewAccountHook = Box<dyn Fn(&str) + Send + Sync>;

/// Holds the current snapshot and knows how to bring it up to date from the store.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    store: Store,
    secret_box: SecretBox,
    /// Told the id of every account a new snapshot has and the one before did not.
    on_new_account: std::sync::OnceLock<NewAccountHook>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("revision", &self.current.load().revision)
            .finish_non_exhaustive()
    }
}

/// How a snapshot was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    /// Only the rows the change feed named were read.
    Incremental {
        changes: usize,
    },
    Full,
}

impl SnapshotStore {
    pub async fn load(
        store: Store,
        secret_box: SecretBox,
    ) -> Result<Arc<Self>, relay_store::StoreError> {
        let holder = Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            store,
            secret_box,
            on_new_account: std::sync::OnceLock::new(),
        });
        holder.reload().await?;
        Ok(holder)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Calls `hook` with the id of each account that appears in a snapshot (once it is the
    /// current one), e.g. to read what other instances know of it. Set once.
    pub fn on_new_account(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_new_account.set(Box::new(hook));
    }

    /// Makes `next` the current snapshot, then names its new accounts to the hook.
    fn swap_in(&self, next: Snapshot) {
        let next = Arc::new(next);
        let previous = self.current.swap(next.clone());
        if let Some(hook) = self.on_new_account.get() {
            for account in &next.accounts {
                if !previous.accounts.iter().any(|known| known.id == account.id) {
                    hook(&account.id);
                }
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Seals and stores an account's new credential (e.g. refreshed tokens). Running servers
    /// pick it up like any other change.
    pub async fn save_account_secret(
        &self,
        account_id: &str,
        plaintext: &str,
    ) -> Result<(), relay_store::StoreError> {
        let sealed = self
            .secret_box
            .seal(plaintext, &account_secret_binding(account_id));
        self.store.update_account_secret(account_id, &sealed).await
    }

    /// A subscription account's tokens as the store has them now (another instance may have
    /// refreshed them); `None` if the account is gone or holds no tokens.
    pub async fn stored_tokens(
        &self,
        account_id: &str,
    ) -> Result<Option<crate::oauth::OAuthTokens>, relay_store::StoreError> {
        let ids = [account_id.to_owned()];
        let rows = self.store.accounts(Rows::Ids(&ids)).await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let secret = self
                .secret_box
                .open(&row.secret_sealed, &account_secret_binding(&row.id))
                .ok()?;
            crate::oauth::OAuthTokens::from_json(secret.expose())
        }))
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> bool {
        self.store.revision().await.is_ok()
    }

    /// Rebuilds the snapshot from every row in the store, keeping each account's runtime state.
    pub async fn reload(&self) -> Result<(), relay_store::StoreError> {
        // Read the revision first: a change racing with the reads below bumps it again and is
        // picked up by the next refresh (applying a change twice is harmless).
        let revision = self.store.revision().await?;
        let mut keys = KeyMap::new();
        // Keys mostly share a handful of policies: one parsed copy of each.
        let mut policies: HashMap<String, Arc<KeyPolicy>> = HashMap::new();
        self.store
            .for_each_key(Rows::All, |row| {
                if let Some((digest, entry)) = key_entry(row, &mut policies) {
                    keys.insert(digest, entry);
                }
            })
            .await?;
        keys.shrink_to_fit();
        let previous = self.current.load();
        let accounts = self
            .account_entries(self.store.list_accounts().await?, &previous.accounts)
            .collect();
        self.swap_in(Snapshot {
            revision,
            keys: Arc::new(keys),
            accounts: sorted(accounts),
        });
        Ok(())
    }

    /// Brings the snapshot up to date: nothing if the revision has not moved, the changed rows
    /// if the change feed names every revision since, everything otherwise.
    pub async fn refresh(&self) -> Result<Refresh, relay_store::StoreError> {
        let previous = self.current.load_full();
        let revision = self.store.revision().await?;
        if revision == previous.revision {
            return Ok(Refresh::Unchanged);
        }
        let changes = self
            .store
            .changes_after(previous.revision, MAX_INCREMENTAL_CHANGES)
            .await?;
        let explained = changes.len() < MAX_INCREMENTAL_CHANGES as usize
            && changes.last().is_some_and(|last| last.revision >= revision)
            && changes
                .iter()
                .zip(previous.revision + 1..)
                .all(|(change, expected)| change.revision == expected);
        if !explained {
            self.reload().await?;
            return Ok(Refresh::Full);
        }
        let next = self.apply(&previous, &changes).await?;
        self.swap_in(next);
        Ok(Refresh::Incremental {
            changes: changes.len(),
        })
    }

    /// `previous` with the rows named by `changes` read again.
    async fn apply(
        &self,
        previous: &Snapshot,
        changes: &[Change],
    ) -> Result<Snapshot, relay_store::StoreError> {
        let mut key_ids = HashSet::new();
        let mut account_ids = HashSet::new();
        for change in changes {
            match change.entity {
                ChangedEntity::Key => key_ids.insert(change.id.clone()),
                ChangedEntity::Account => account_ids.insert(change.id.clone()),
            };
        }
        let keys = if key_ids.is_empty() {
            previous.keys.clone()
        } else {
            let ids: Vec<String> = key_ids.into_iter().collect();
            let mut rows = Vec::with_capacity(ids.len());
            self.store
                .for_each_key(Rows::Ids(&ids), |row| rows.push(row))
                .await?;
            let mut keys = KeyMap::clone(&previous.keys);
            // Out with every changed key under the hash it had, in with what it is now.
            for change in changes
                .iter()
                .filter(|change| change.entity == ChangedEntity::Key)
            {
                let Some(digest) = change
                    .key_hash
                    .as_deref()
                    .and_then(|hash| <[u8; 32]>::try_from(hash).ok())
                else {
                    continue;
                };
                if keys.get(&digest).is_some_and(|key| key.id == change.id) {
                    keys.remove(&digest);
                }
            }
            let mut policies = HashMap::new();
            for row in rows {
                if let Some((digest, entry)) = key_entry(row, &mut policies) {
                    keys.insert(digest, entry);
                }
            }
            Arc::new(keys)
        };
        let accounts = if account_ids.is_empty() {
            previous.accounts.clone()
        } else {
            let ids: Vec<String> = account_ids.iter().cloned().collect();
            let rows = self.store.accounts(Rows::Ids(&ids)).await?;
            let mut accounts: Vec<Arc<AccountEntry>> = previous
                .accounts
                .iter()
                .filter(|account| !account_ids.contains(&account.id))
                .cloned()
                .collect();
            accounts.extend(self.account_entries(rows, &previous.accounts));
            sorted(accounts)
        };
        Ok(Snapshot {
            revision: changes
                .last()
                .map_or(previous.revision, |last| last.revision),
            keys,
            accounts,
        })
    }

    /// The usable accounts among `rows`, each keeping its runtime state from `previous`.
    fn account_entries<'a>(
        &'a self,
        rows: Vec<AccountRow>,
        previous: &'a [Arc<AccountEntry>],
    ) -> impl Iterator<Item = Arc<AccountEntry>> + 'a {
        rows.into_iter().filter_map(move |row| {
            let runtime = previous
                .iter()
                .find(|account| account.id == row.id)
                .map(|account| account.runtime.clone())
                .unwrap_or_else(|| Arc::new(AccountRuntime::default()));
            self.account_entry(row, runtime).map(Arc::new)
        })
    }

    /// An account as the request path sees it, or `None` (logged) if any part of it cannot be
    /// read: an account is never used without its credential, settings or proxy.
    fn account_entry(&self, row: AccountRow, runtime: Arc<AccountRuntime>) -> Option<AccountEntry> {
        let Some(platform) = Platform::parse(&row.platform) else {
            tracing::warn!(account_id = %row.id, platform = %row.platform, "skipping account of unknown platform");
            return None;
        };
        let api_key = match self
            .secret_box
            .open(&row.secret_sealed, &account_secret_binding(&row.id))
        {
            Ok(secret) => secret,
            Err(error) => {
                tracing::error!(account_id = %row.id, %error, "skipping account whose credential cannot be opened");
                return None;
            }
        };
        runtime.apply_reset(row.health_reset_at_ms);
        let credential = match platform {
            Platform::ClaudeOauth | Platform::Codex | Platform::GeminiOauth => {
                let Some(tokens) = OAuthTokens::from_json(api_key.expose()) else {
                    tracing::error!(account_id = %row.id, "skipping subscription account with unreadable tokens");
                    return None;
                };
                Credential::Subscription(runtime.oauth_session(tokens))
            }
            Platform::Anthropic
            | Platform::OpenAi
            | Platform::OpenAiResponses
            | Platform::AzureOpenAi
            | Platform::Gemini => Credential::ApiKey(api_key),
        };
        let base_url = row
            .base_url
            .as_deref()
            .unwrap_or(platform.default_base_url())
            .trim_end_matches('/')
            .to_owned();
        let settings = match AccountSettings::from_json(&row.settings) {
            Ok(settings) => settings,
            Err(error) => {
                tracing::error!(account_id = %row.id, %error, "skipping account with unreadable settings");
                return None;
            }
        };
        let proxy = match &row.proxy_sealed {
            None => None,
            Some(sealed) => {
                let parsed = self
                    .secret_box
                    .open(sealed, &account_proxy_binding(&row.id))
                    .map_err(|error| error.to_string())
                    .and_then(|url| ProxyConfig::parse(url.expose()));
                match parsed {
                    Ok(proxy) => Some(proxy),
                    Err(error) => {
                        // Sending without the proxy could leak the operator's address.
                        tracing::error!(account_id = %row.id, %error, "skipping account whose proxy cannot be read");
                        return None;
                    }
                }
            }
        };
        Some(AccountEntry {
            id: row.id,
            name: row.name,
            platform,
            base_url,
            priority: row.priority,
            created_at_ms: row.created_at_ms,
            active: row.status == "active",
            credential,
            settings,
            proxy,
            runtime,
        })
    }

    /// Follows the change feed until the task is aborted (the caller aborts and joins it at
    /// shutdown): at once on a PostgreSQL notification, and every [`RELOAD_INTERVAL`] anyway.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let holder = self.clone();
        #[allow(clippy::disallowed_methods)] // joined by the caller at shutdown
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RELOAD_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let notices = Arc::new(tokio::sync::Notify::new());
            // Owned by this task: aborted with it.
            let mut listener = tokio::task::JoinSet::new();
            let store = holder.store.clone();
            let notify = notices.clone();
            listener.spawn(async move { store.forward_change_notices(notify).await });
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    () = notices.notified() => {}
                }
                match holder.refresh().await {
                    Ok(Refresh::Unchanged) => {}
                    Ok(refresh) => {
                        let revision = holder.current.load().revision;
                        tracing::info!(revision, ?refresh, "keys and accounts brought up to date");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read changes; keeping the current snapshot")
                    }
                }
            }
        })
    }
}

/// A key as the request path sees it, under its hash; `None` (logged) for a key that must not
/// work: in the trash, or unreadable.
fn key_entry(
    row: KeyRow,
    policies: &mut HashMap<String, Arc<KeyPolicy>>,
) -> Option<([u8; 32], Arc<KeyEntry>)> {
    // Keys in the trash stop working at once: they are simply not in the snapshot.
    if row.deleted_at_ms.is_some() {
        return None;
    }
    let Ok(digest) = <[u8; 32]>::try_from(row.key_hash.as_slice()) else {
        tracing::warn!(key_id = %row.id, "skipping key with malformed hash");
        return None;
    };
    let policy = match policies.get(&row.policy) {
        Some(policy) => policy.clone(),
        // A policy that cannot be read keeps the key out: failing open would lift its limits.
        None => match KeyPolicy::from_json(&row.policy) {
            Ok(policy) => {
                let policy = Arc::new(policy);
                policies.insert(row.policy, policy.clone());
                policy
            }
            Err(error) => {
                tracing::error!(key_id = %row.id, %error, "skipping key with an unreadable policy");
                return None;
            }
        },
    };
    let entry = KeyEntry {
        id: row.id,
        name: row.name,
        active: row.status == "active",
        policy,
    };
    Some((digest, Arc::new(entry)))
}

fn sorted(mut accounts: Vec<Arc<AccountEntry>>) -> Vec<Arc<AccountEntry>> {
    accounts.sort_by(|a, b| {
        (a.priority, a.created_at_ms, &a.name).cmp(&(b.priority, b.created_at_ms, &b.name))
    });
    accounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminService, NewAccountInput};
    use crate::crypto::{KeyHasher, Keyring, MasterKey};
    use relay_store::testing;

    fn keyring() -> Keyring {
        Keyring {
            secret_box: MasterKey::generate().secret_box(),
            key_hasher: KeyHasher::new(&[3; 32]),
        }
    }

    #[tokio::test]
    async fn changes_are_applied_row_by_row_and_a_gap_reloads_everything() {
        for database in testing::each_backend().await {
            let keyring = keyring();
            let admin = AdminService::new(database.store.clone(), &keyring);
            let first = admin
                .create_key("first", &KeyPolicy::default(), &Default::default())
                .await
                .unwrap();
            admin
                .add_account(NewAccountInput {
                    platform: "anthropic".into(),
                    name: "api".into(),
                    api_key: "sk-api".into(),
                    ..NewAccountInput::default()
                })
                .await
                .unwrap();
            let snapshots = SnapshotStore::load(database.store.clone(), keyring.secret_box.clone())
                .await
                .unwrap();
            assert_eq!(snapshots.refresh().await.unwrap(), Refresh::Unchanged);
            let before = snapshots.current();
            let account = before.accounts[0].clone();
            account.runtime.cool_until(i64::MAX);

            let second = admin
                .create_key("second", &KeyPolicy::default(), &Default::default())
                .await
                .unwrap();
            admin.set_key_enabled("first", false).await.unwrap();
            assert_eq!(
                snapshots.refresh().await.unwrap(),
                Refresh::Incremental { changes: 2 }
            );
            let now = snapshots.current();
            assert_eq!(now.revision, database.store.revision().await.unwrap());
            let by_name = |name: &str| {
                now.keys
                    .values()
                    .find(|key| key.name == name)
                    .cloned()
                    .unwrap()
            };
            assert!(!by_name("first").active);
            assert!(by_name("second").active);
            assert!(now
                .keys
                .contains_key(&keyring.key_hasher.digest(&second.secret)));
            // The accounts did not change: the same entries, runtime state and all.
            assert!(Arc::ptr_eq(&now.accounts[0], &account));

            admin.delete_key("first").await.unwrap();
            admin
                .edit_account_settings("api", |settings| settings.weight = Some(3))
                .await
                .unwrap();
            assert_eq!(
                snapshots.refresh().await.unwrap(),
                Refresh::Incremental { changes: 2 }
            );
            let now = snapshots.current();
            assert!(!now
                .keys
                .contains_key(&keyring.key_hasher.digest(&first.secret)));
            assert_eq!(now.keys.len(), 1);
            assert_eq!(now.accounts[0].settings.weight, Some(3));
            assert!(
                Arc::ptr_eq(&now.accounts[0].runtime, &account.runtime),
                "an edited account keeps its live state"
            );
            // Purged are keys trashed before this millisecond.
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(admin.purge_trash(0).await.unwrap(), ["first"]);
            assert_eq!(
                snapshots.refresh().await.unwrap(),
                Refresh::Incremental { changes: 1 }
            );

            // A revision moved without a change row (a master-key rotation does that): the feed
            // cannot say what changed, so everything is read.
            database
                .store
                .reseal_all(|value| Some(value.sealed.clone()))
                .await
                .unwrap();
            assert_eq!(snapshots.refresh().await.unwrap(), Refresh::Full);
            let now = snapshots.current();
            assert_eq!(now.keys.len(), 1);
            assert!(Arc::ptr_eq(&now.accounts[0].runtime, &account.runtime));
        }
    }
}

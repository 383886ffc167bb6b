//! Keys and accounts as immutable snapshots: each request loads one and sees old or new, never a
//! mix. A reloader polls the store's revision and swaps in a fresh snapshot after any change, so
//! an edit from the CLI takes effect within one poll interval, with no restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use relay_store::Store;

use crate::account_settings::AccountSettings;
use crate::accounts::{AccountEntry, AccountRuntime, Credential, Platform};
use crate::crypto::SecretBox;
use crate::keys::KeyEntry;
use crate::oauth::OAuthTokens;
use crate::policy::KeyPolicy;
use crate::proxy::ProxyConfig;

pub const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// By keyed hash of the key.
    pub keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    /// Ordered by priority.
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

/// Holds the current snapshot and knows how to rebuild it from the store.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    store: Store,
    secret_box: SecretBox,
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
        });
        holder.reload().await?;
        Ok(holder)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
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

    /// Whether the store answers.
    pub async fn ping(&self) -> bool {
        self.store.revision().await.is_ok()
    }

    /// Rebuilds the snapshot from the store, keeping each account's runtime state.
    pub async fn reload(&self) -> Result<(), relay_store::StoreError> {
        // Read the revision first: a change racing with the reads below bumps it again and is
        // picked up by the next poll.
        let revision = self.store.revision().await?;
        let key_rows = self.store.list_keys().await?;
        let account_rows = self.store.list_accounts().await?;
        let previous = self.current.load();
        let mut keys = HashMap::with_capacity(key_rows.len());
        // Keys in the trash stop working at once: they are simply not in the snapshot.
        for row in key_rows
            .into_iter()
            .filter(|row| row.deleted_at_ms.is_none())
        {
            let Ok(digest) = <[u8; 32]>::try_from(row.key_hash.as_slice()) else {
                tracing::warn!(key_id = %row.id, "skipping key with malformed hash");
                continue;
            };
            // A policy that cannot be read keeps the key out: failing open would lift its limits.
            let policy = match KeyPolicy::from_json(&row.policy) {
                Ok(policy) => policy,
                Err(error) => {
                    tracing::error!(key_id = %row.id, %error, "skipping key with an unreadable policy");
                    continue;
                }
            };
            keys.insert(
                digest,
                Arc::new(KeyEntry {
                    id: row.id,
                    name: row.name,
                    active: row.status == "active",
                    policy,
                }),
            );
        }
        let mut accounts = Vec::with_capacity(account_rows.len());
        for row in account_rows {
            let Some(platform) = Platform::parse(&row.platform) else {
                tracing::warn!(account_id = %row.id, platform = %row.platform, "skipping account of unknown platform");
                continue;
            };
            let api_key = match self
                .secret_box
                .open(&row.secret_sealed, &account_secret_binding(&row.id))
            {
                Ok(secret) => secret,
                Err(error) => {
                    tracing::error!(account_id = %row.id, %error, "skipping account whose credential cannot be opened");
                    continue;
                }
            };
            let runtime = previous
                .accounts
                .iter()
                .find(|account| account.id == row.id)
                .map(|account| account.runtime.clone())
                .unwrap_or_else(|| Arc::new(AccountRuntime::default()));
            runtime.apply_reset(row.health_reset_at_ms);
            let credential = match platform {
                Platform::ClaudeOauth => {
                    let Some(tokens) = OAuthTokens::from_json(api_key.expose()) else {
                        tracing::error!(account_id = %row.id, "skipping subscription account with unreadable tokens");
                        continue;
                    };
                    Credential::ClaudeSubscription(runtime.oauth_session(tokens))
                }
                Platform::Anthropic | Platform::OpenAi => Credential::ApiKey(api_key),
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
                    continue;
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
                            continue;
                        }
                    }
                }
            };
            accounts.push(Arc::new(AccountEntry {
                id: row.id,
                name: row.name,
                platform,
                base_url,
                priority: row.priority,
                active: row.status == "active",
                credential,
                settings,
                proxy,
                runtime,
            }));
        }
        accounts.sort_by_key(|account| account.priority);
        self.current.store(Arc::new(Snapshot {
            revision,
            keys,
            accounts,
        }));
        Ok(())
    }

    /// Polls the store's revision and reloads on change, until the task is aborted (the caller
    /// aborts and joins it at shutdown).
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let holder = self.clone();
        #[allow(clippy::disallowed_methods)] // joined by the caller at shutdown
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RELOAD_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                match holder.store.revision().await {
                    Ok(revision) if revision != holder.current.load().revision => {
                        match holder.reload().await {
                            Ok(()) => tracing::info!(revision, "reloaded keys and accounts"),
                            Err(error) => {
                                tracing::warn!(%error, "reload failed; keeping the previous snapshot")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot read the store revision"),
                }
            }
        })
    }
}

//! Operator actions on keys, accounts and usage: shared by the CLI now and the admin API later.
//! Each action writes the store; running servers pick the change up from the revision counter.

pub use relay_store::{AccountRow, KeyMeta, KeyRow, StoreError, UsageTotals};
use std::sync::Arc;

use relay_store::{NewAccount, NewKey, Store, UsageFilter};

use crate::account_settings::AccountSettings;
use crate::accounts::Platform;
use crate::clock::now_ms;
use crate::crypto::{Keyring, SecretBox, SecretString};
use crate::egress::EgressGuard;
use crate::keys::{generate_key, KeyEntry};
use crate::oauth::{self, Grant, OAuthProviders, OAuthTokens, Pkce, Provider};
use crate::policy::KeyPolicy;
use crate::proxy::ProxyConfig;
use crate::snapshot::{account_secret_binding, oauth_pending_binding};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no {what} named '{name}'")]
    NotFound { what: &'static str, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key just created; `secret` is shown once and never again.
#[derive(Debug)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    pub secret: String,
    pub hint: String,
}

/// An account to add: its credential, settings and proxy are written together or not at all.
#[derive(Debug, Default)]
pub struct NewAccountInput {
    pub platform: String,
    pub name: String,
    pub api_key: String,
    pub base_url: Option<String>,
    pub priority: i64,
    pub settings: AccountSettings,
    /// `http://`, `https://` or `socks5://[user:pass@]host:port`.
    pub proxy: Option<String>,
    /// A `codex` account's sign-in: the contents of Codex's `auth.json` (in place of a key).
    pub auth_json: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    secret_box: SecretBox,
    hasher: crate::crypto::KeyHasher,
    /// Saved URLs (base URLs, proxies) must pass it.
    egress: EgressGuard,
}

fn validate_name(what: &str, name: &str) -> Result<(), AdminError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if valid {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{what} name must be 1-64 characters of letters, digits, '-', '_', '.', '@'"
        )))
    }
}

fn validate_meta(meta: &KeyMeta) -> Result<(), AdminError> {
    for tag in &meta.tags {
        let valid = !tag.is_empty()
            && tag.len() <= 32
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(AdminError::Invalid(format!(
                "tag '{tag}': 1-32 letters, digits, '-', '_' or '.'"
            )));
        }
    }
    if let Some(owner) = &meta.owner {
        validate_name("owner", owner)?;
    }
    if meta.description.chars().count() > 500 || meta.description.chars().any(char::is_control) {
        return Err(AdminError::Invalid(
            "a description is at most 500 characters on one line".into(),
        ));
    }
    Ok(())
}

/// One CSV cell. A value a spreadsheet would run as a formula (one starting with `=`, `+`, `-`,
/// `@`, tab or CR) gets a leading `'`, so it is shown as text; then the cell is quoted when it
/// needs it (RFC 4180).
fn csv_field(field: &str) -> String {
    let cell = if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// Applies a JSON merge patch (RFC 7396, one level): a field set to `null` is removed, any other
/// value replaces it, absent fields stay. `what` names the document in the error.
pub fn merge_patch<T: serde::Serialize + serde::de::DeserializeOwned>(
    current: &T,
    patch: &serde_json::Map<String, serde_json::Value>,
    what: &str,
) -> Result<T, AdminError> {
    let mut merged = match serde_json::to_value(current) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => serde_json::Map::new(),
    };
    for (field, value) in patch {
        if value.is_null() {
            merged.remove(field);
        } else {
            merged.insert(field.clone(), value.clone());
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|error| AdminError::Invalid(format!("{what}: {error}")))
}

/// Proxy URL schemes.
const PROXY_SCHEMES: &[&str] = &["http", "https", "socks5", "socks5h"];

fn validate_base_url(url: &str, egress: &EgressGuard) -> Result<String, AdminError> {
    egress
        .check_url(url, &["http", "https"], "base URL")
        .map_err(AdminError::Invalid)?;
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| {
            AdminError::Invalid("base URL must start with http:// or https://".into())
        })?;
    let valid_host = !rest.is_empty()
        && !rest.contains(['?', '#', ' ', '@'])
        && rest.split('/').next().is_some_and(|host| !host.is_empty());
    if valid_host {
        Ok(trimmed.to_owned())
    } else {
        Err(AdminError::Invalid(format!(
            "'{url}' is not a usable base URL"
        )))
    }
}

impl AdminService {
    pub fn new(store: Store, keyring: &Keyring) -> Self {
        Self {
            store,
            secret_box: keyring.secret_box.clone(),
            hasher: keyring.key_hasher.clone(),
            egress: EgressGuard::default(),
        }
    }

    /// Allows saved URLs to reach the internal targets `egress` allows.
    #[must_use]
    pub fn with_egress(mut self, egress: EgressGuard) -> Self {
        self.egress = egress;
        self
    }

    pub async fn create_key(
        &self,
        name: &str,
        policy: &KeyPolicy,
        meta: &KeyMeta,
    ) -> Result<CreatedKey, AdminError> {
        validate_name("key", name)?;
        policy.validate().map_err(AdminError::Invalid)?;
        validate_meta(meta)?;
        let generated = generate_key();
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .insert_key(&NewKey {
                id: id.clone(),
                name: name.to_owned(),
                key_hash: self.hasher.digest(&generated.secret).to_vec(),
                key_hint: generated.hint.clone(),
                policy: policy.to_json(),
                meta: meta.clone(),
                created_at_ms: now_ms(),
            })
            .await?;
        Ok(CreatedKey {
            id,
            name: name.to_owned(),
            secret: generated.secret,
            hint: generated.hint,
        })
    }

    /// `count` keys named by `pattern`, where `{n}` stands for 1…count (zero-padded to the
    /// width of `count`). All names are checked free before any key is made.
    pub async fn create_keys(
        &self,
        pattern: &str,
        count: u32,
        policy: &KeyPolicy,
        meta: &KeyMeta,
    ) -> Result<Vec<CreatedKey>, AdminError> {
        if !pattern.contains("{n}") {
            return Err(AdminError::Invalid(
                "a batch name pattern needs {n}, e.g. dev-{n}".into(),
            ));
        }
        if !(1..=1000).contains(&count) {
            return Err(AdminError::Invalid("a batch makes 1 to 1000 keys".into()));
        }
        let width = count.to_string().len();
        let names: Vec<String> = (1..=count)
            .map(|n| pattern.replace("{n}", &format!("{n:0width$}")))
            .collect();
        let existing: Vec<String> = self
            .store
            .list_keys()
            .await?
            .into_iter()
            .map(|key| key.name)
            .collect();
        for name in &names {
            validate_name("key", name)?;
            if existing.contains(name) {
                return Err(AdminError::Invalid(format!("key '{name}' already exists")));
            }
        }
        let mut created = Vec::with_capacity(names.len());
        for name in &names {
            created.push(self.create_key(name, policy, meta).await?);
        }
        Ok(created)
    }

    /// Keys outside the trash, or only those in it.
    pub async fn list_keys(&self, trash: bool) -> Result<Vec<KeyRow>, AdminError> {
        Ok(self
            .store
            .list_keys()
            .await?
            .into_iter()
            .filter(|key| key.deleted_at_ms.is_some() == trash)
            .collect())
    }

    /// Applies a JSON merge patch to a key's policy: a field set to `null` is removed, any
    /// other value replaces it, absent fields stay.
    pub async fn patch_key_policy(
        &self,
        name: &str,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<KeyPolicy, AdminError> {
        let current = self.key_by_name(name).await?.policy;
        let policy = merge_patch(current.as_ref(), patch, "policy")?;
        self.edit_key_policy(name, |current| *current = policy)
            .await
    }

    /// Changes a key's notes: `edit` gets the current ones.
    pub async fn edit_key_meta(
        &self,
        name: &str,
        edit: impl FnOnce(&mut KeyMeta),
    ) -> Result<KeyMeta, AdminError> {
        let mut meta = self.key_row(name).await?.meta;
        edit(&mut meta);
        validate_meta(&meta)?;
        self.store.set_key_meta(name, &meta, now_ms()).await?;
        Ok(meta)
    }

    /// Moves a key to the trash: it stops working at once and can be restored until purged.
    pub async fn delete_key(&self, name: &str) -> Result<(), AdminError> {
        let now = now_ms();
        self.found(
            self.store.set_key_deleted(name, Some(now), now).await?,
            name,
        )
    }

    pub async fn restore_key(&self, name: &str) -> Result<(), AdminError> {
        self.found(
            self.store.set_key_deleted(name, None, now_ms()).await?,
            name,
        )
    }

    /// Removes for good the keys in the trash for longer than `older_than_ms`.
    pub async fn purge_trash(&self, older_than_ms: i64) -> Result<Vec<String>, AdminError> {
        Ok(self.store.purge_keys(now_ms() - older_than_ms).await?)
    }

    /// The key list as CSV (no secrets): one row per key, trash included.
    pub async fn export_keys_csv(&self) -> Result<String, AdminError> {
        let mut csv = String::from(
            "name,key_hint,status,owner,tags,description,created_at_ms,deleted_at_ms,policy\n",
        );
        for key in self.store.list_keys().await? {
            let fields = [
                key.name,
                key.key_hint,
                key.status,
                key.meta.owner.unwrap_or_default(),
                key.meta.tags.join(" "),
                key.meta.description,
                key.created_at_ms.to_string(),
                key.deleted_at_ms
                    .map(|at| at.to_string())
                    .unwrap_or_default(),
                key.policy,
            ];
            let row: Vec<String> = fields.iter().map(|field| csv_field(field)).collect();
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        Ok(csv)
    }

    async fn key_row(&self, name: &str) -> Result<KeyRow, AdminError> {
        self.store
            .list_keys()
            .await?
            .into_iter()
            .find(|key| key.name == name)
            .ok_or(AdminError::NotFound {
                what: "key",
                name: name.to_owned(),
            })
    }

    fn found(&self, found: bool, name: &str) -> Result<(), AdminError> {
        if found {
            Ok(())
        } else {
            Err(AdminError::NotFound {
                what: "key",
                name: name.to_owned(),
            })
        }
    }

    pub async fn set_key_enabled(&self, name: &str, enabled: bool) -> Result<(), AdminError> {
        let status = if enabled { "active" } else { "disabled" };
        if self.store.set_key_status(name, status, now_ms()).await? {
            Ok(())
        } else {
            Err(AdminError::NotFound {
                what: "key",
                name: name.to_owned(),
            })
        }
    }

    pub async fn add_account(&self, mut input: NewAccountInput) -> Result<AccountRow, AdminError> {
        let auth_json = input.auth_json.take();
        if input.platform == Platform::GeminiOauth.as_str() {
            let Some(creds) = auth_json else {
                return Err(AdminError::Invalid(
                    "a gemini-oauth account signs in with Google: run `account oauth-start --platform gemini-oauth --name NAME` (then oauth-finish), or import Gemini CLI's sign-in with --oauth-creds ~/.gemini/oauth_creds.json".into(),
                ));
            };
            let tokens =
                crate::code_assist::tokens_from_oauth_creds(&creds).map_err(AdminError::Invalid)?;
            input.api_key.clone_from(&tokens.access_token);
            let grant = Grant {
                tokens,
                identity: oauth::Identity::default(),
            };
            return self.insert_subscription(input, &grant).await;
        }
        if input.platform != Platform::Codex.as_str() {
            if auth_json.is_some() {
                return Err(AdminError::Invalid(
                    "a sign-in file belongs to a codex (auth.json) or gemini-oauth (oauth_creds.json) account".into(),
                ));
            }
            return self.insert_account(input, None).await;
        }
        let Some(auth_json) = auth_json else {
            return Err(AdminError::Invalid(
                "a codex account signs in with ChatGPT: run `account oauth-start --platform codex --name NAME` (then oauth-finish), or import Codex's sign-in with --auth-json ~/.codex/auth.json".into(),
            ));
        };
        let (tokens, identity) =
            crate::chatgpt::tokens_from_auth_json(&auth_json).map_err(AdminError::Invalid)?;
        input.api_key.clone_from(&tokens.access_token);
        self.insert_subscription(input, &Grant { tokens, identity })
            .await
    }

    /// Adds a subscription account from its grant, with what the grant says about it.
    async fn insert_subscription(
        &self,
        mut input: NewAccountInput,
        grant: &Grant,
    ) -> Result<AccountRow, AdminError> {
        if input.platform == Platform::Codex.as_str() {
            if grant.tokens.account_id.is_none() {
                return Err(AdminError::Invalid(
                    "the sign-in names no ChatGPT account (its id token has no chatgpt_account_id); sign in again".into(),
                ));
            }
            input.settings.plan.clone_from(&grant.identity.plan);
        }
        if input.platform == Platform::GeminiOauth.as_str() {
            // Code Assist serves the account under a Cloud project: found, or set up on the
            // free tier, once, as Gemini CLI does at its first start.
            let base = match &input.base_url {
                Some(url) => validate_base_url(url, &self.egress)?,
                None => Platform::GeminiOauth.default_base_url().to_owned(),
            };
            let client = crate::transport::AnyClient::Direct(crate::transport::build_client(
                std::time::Duration::from_secs(10),
                &self.egress,
            ));
            let project = crate::code_assist::project(&client, &base, &grant.tokens.access_token)
                .await
                .map_err(|error| {
                    AdminError::Invalid(format!(
                        "Code Assist could not set the account up: {error}"
                    ))
                })?;
            let mut tokens = grant.tokens.clone();
            tokens.account_id = Some(project);
            return self.insert_account(input, Some(&tokens)).await;
        }
        self.insert_account(input, Some(&grant.tokens)).await
    }

    /// Checks everything first, then writes the account (credential, settings, proxy) in one
    /// insert: all or nothing. A subscription's signed-in `tokens` take the place of the key.
    async fn insert_account(
        &self,
        input: NewAccountInput,
        tokens: Option<&OAuthTokens>,
    ) -> Result<AccountRow, AdminError> {
        validate_name("account", &input.name)?;
        let platform = Platform::parse(&input.platform).ok_or_else(|| {
            let supported: Vec<&str> = Platform::ALL.iter().map(|p| p.as_str()).collect();
            AdminError::Invalid(format!(
                "unknown platform '{}'; supported: {}",
                input.platform,
                supported.join(", ")
            ))
        })?;
        let api_key = input.api_key.trim();
        if api_key.is_empty() || api_key.chars().any(|c| c.is_control() || c == ' ') {
            return Err(AdminError::Invalid(
                "the API key must be non-empty and contain no spaces".into(),
            ));
        }
        let base_url = input
            .base_url
            .as_deref()
            .map(|url| validate_base_url(url, &self.egress))
            .transpose()?;
        if !(0..=10_000).contains(&input.priority) {
            return Err(AdminError::Invalid(
                "priority must be between 0 and 10000".into(),
            ));
        }
        input.settings.validate().map_err(AdminError::Invalid)?;
        if platform == Platform::AzureOpenAi {
            let named = |value: &Option<String>| {
                value.as_deref().is_some_and(|value| {
                    !value.is_empty()
                        && value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                })
            };
            if base_url.is_none()
                || !named(&input.settings.deployment)
                || !named(&input.settings.api_version)
            {
                return Err(AdminError::Invalid(
                    "an azure-openai account needs --base-url https://RESOURCE.openai.azure.com, --deployment NAME and --api-version VERSION (letters, digits, '-', '_', '.')".into(),
                ));
            }
        }
        let serves_something = input
            .settings
            .models
            .as_ref()
            .is_some_and(|models| !models.is_empty())
            || input
                .settings
                .model_map
                .as_ref()
                .is_some_and(|map| !map.is_empty())
            || !platform.default_models().is_empty();
        if !serves_something {
            return Err(AdminError::Invalid(format!(
                "a {} account serves no model by default: name them with --model (e.g. --model 'deepseek-*') or map Claude's with --map-model 'claude-*=deepseek-chat'",
                platform.as_str()
            )));
        }
        let proxy_url = match &input.proxy {
            Some(url) => {
                ProxyConfig::parse(url).map_err(AdminError::Invalid)?;
                self.egress
                    .check_url(url, PROXY_SCHEMES, "proxy")
                    .map_err(AdminError::Invalid)?;
                Some(url.trim())
            }
            None => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let stored = match (tokens, platform) {
            (Some(tokens), _) => tokens.to_json(),
            (
                None,
                Platform::Anthropic
                | Platform::OpenAi
                | Platform::OpenAiResponses
                | Platform::AzureOpenAi
                | Platform::Gemini,
            ) => api_key.to_owned(),
            // A subscription account added with a key is a setup token (`claude setup-token`).
            (None, Platform::ClaudeOauth) => OAuthTokens {
                access_token: api_key.to_owned(),
                refresh_token: None,
                expires_at_ms: None,
                account_id: None,
            }
            .to_json(),
            (None, Platform::Codex | Platform::GeminiOauth) => {
                return Err(AdminError::Invalid(format!(
                    "a {} account has no key; it signs in (oauth-start)",
                    platform.as_str()
                )))
            }
        };
        let hint = SecretString::new(api_key.to_owned()).hint();
        let secret = SecretString::new(stored);
        let sealed = self
            .secret_box
            .seal(secret.expose(), &account_secret_binding(&id));
        let proxy_sealed = proxy_url.map(|url| {
            self.secret_box
                .seal(url, &crate::snapshot::account_proxy_binding(&id))
        });
        self.store
            .insert_account(&NewAccount {
                id: id.clone(),
                name: input.name.clone(),
                platform: platform.as_str().to_owned(),
                base_url,
                priority: input.priority,
                secret_sealed: sealed,
                secret_hint: hint,
                settings: input.settings.to_json(),
                proxy_sealed,
                created_at_ms: now_ms(),
            })
            .await?;
        self.store
            .list_accounts()
            .await?
            .into_iter()
            .find(|account| account.id == id)
            .ok_or(AdminError::NotFound {
                what: "account",
                name: input.name,
            })
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, AdminError> {
        Ok(self.store.list_accounts().await?)
    }

    pub async fn set_account_enabled(&self, name: &str, enabled: bool) -> Result<(), AdminError> {
        let status = if enabled { "active" } else { "disabled" };
        if self
            .store
            .set_account_status(name, status, now_ms())
            .await?
        {
            Ok(())
        } else {
            Err(AdminError::NotFound {
                what: "account",
                name: name.to_owned(),
            })
        }
    }

    /// Starts authorizing a subscription account of `platform` (`claude-oauth` or `codex`):
    /// returns the URL the operator opens. The verifier waits, sealed, for
    /// [`AdminService::finish_oauth`].
    pub async fn start_oauth(
        &self,
        name: &str,
        platform: &str,
        providers: &OAuthProviders,
    ) -> Result<String, AdminError> {
        validate_name("account", name)?;
        let provider = Platform::parse(platform)
            .and_then(Provider::for_platform)
            .ok_or_else(|| {
                AdminError::Invalid(format!(
                    "'{platform}' accounts do not sign in with OAuth; claude-oauth and codex do"
                ))
            })?;
        let settings = providers.get(provider);
        let pkce = Pkce::generate();
        let sealed = self
            .secret_box
            .seal(&pkce.verifier, &oauth_pending_binding(name));
        let settings_json = serde_json::json!({
            "token_url": settings.token_url,
            "platform": provider.platform().as_str(),
        })
        .to_string();
        self.store
            .save_oauth_pending(name, &pkce.state, &sealed, &settings_json, now_ms())
            .await?;
        Ok(oauth::authorize_url(settings, &pkce))
    }

    /// Exchanges the code the operator pasted (or the address the browser was sent to) and adds
    /// the subscription account of the platform the authorization was started for.
    pub async fn finish_oauth(
        &self,
        name: &str,
        pasted_code: &str,
        providers: &OAuthProviders,
        base_url: Option<String>,
        priority: i64,
    ) -> Result<AccountRow, AdminError> {
        let (state, sealed, pending) =
            self.store.take_oauth_pending(name).await?.ok_or_else(|| {
                AdminError::Invalid(format!(
                    "no authorization was started for '{name}'; run oauth-start first"
                ))
            })?;
        // Started by an older version: a Claude sign-in.
        let platform = serde_json::from_str::<serde_json::Value>(&pending)
            .ok()
            .and_then(|pending| pending["platform"].as_str().and_then(Platform::parse))
            .unwrap_or(Platform::ClaudeOauth);
        let provider = Provider::for_platform(platform).unwrap_or(Provider::Claude);
        let verifier = self
            .secret_box
            .open(&sealed, &oauth_pending_binding(name))
            .map_err(|_| AdminError::Invalid("the pending authorization cannot be read".into()))?;
        let client = crate::transport::AnyClient::Direct(crate::transport::build_client(
            std::time::Duration::from_secs(10),
            &self.egress,
        ));
        let grant = oauth::exchange_code(
            &client,
            providers.get(provider),
            pasted_code,
            verifier.expose(),
            &state,
            now_ms(),
        )
        .await
        .map_err(|error| AdminError::Invalid(error.to_string()))?;
        let row = self
            .insert_subscription(
                NewAccountInput {
                    platform: platform.as_str().to_owned(),
                    name: name.to_owned(),
                    api_key: grant.tokens.access_token.clone(),
                    base_url,
                    priority,
                    ..NewAccountInput::default()
                },
                &grant,
            )
            .await?;
        if platform == Platform::ClaudeOauth {
            let base = row
                .base_url
                .clone()
                .unwrap_or_else(|| platform.default_base_url().to_owned());
            let tier =
                crate::claude_oauth::subscription_tier(&client, &base, &grant.tokens.access_token)
                    .await;
            if let Some(tier) = tier {
                self.edit_account_settings(name, |settings| settings.tier = Some(tier.to_owned()))
                    .await?;
            }
        }
        Ok(row)
    }

    /// Applies a JSON merge patch to an account's settings (`null` removes a field).
    pub async fn patch_account_settings(
        &self,
        name: &str,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<AccountSettings, AdminError> {
        let current = AccountSettings::from_json(&self.account_row(name).await?.settings)
            .map_err(AdminError::Invalid)?;
        let merged = merge_patch(&current, patch, "settings")?;
        self.edit_account_settings(name, |settings| *settings = merged)
            .await
    }

    async fn account_row(&self, name: &str) -> Result<AccountRow, AdminError> {
        self.store
            .list_accounts()
            .await?
            .into_iter()
            .find(|account| account.name == name)
            .ok_or(AdminError::NotFound {
                what: "account",
                name: name.to_owned(),
            })
    }

    /// Changes an account's scheduling settings: `edit` gets the current ones.
    pub async fn edit_account_settings(
        &self,
        name: &str,
        edit: impl FnOnce(&mut AccountSettings),
    ) -> Result<AccountSettings, AdminError> {
        let row = self.account_row(name).await?;
        let mut settings =
            AccountSettings::from_json(&row.settings).map_err(AdminError::Invalid)?;
        edit(&mut settings);
        settings.validate().map_err(AdminError::Invalid)?;
        self.store
            .set_account_settings(name, &settings.to_json(), now_ms())
            .await?;
        Ok(settings)
    }

    /// An account's most recent health events, newest first.
    pub async fn account_events(
        &self,
        name: &str,
        limit: i64,
    ) -> Result<Vec<relay_store::AccountEvent>, AdminError> {
        let account = self.account_row(name).await?;
        Ok(self.store.account_events(&account.id, limit).await?)
    }

    /// An account's proxy with the password hidden, if it has one.
    pub fn masked_proxy(&self, account: &AccountRow) -> Option<String> {
        let sealed = account.proxy_sealed.as_ref()?;
        let url = self
            .secret_box
            .open(sealed, &crate::snapshot::account_proxy_binding(&account.id))
            .ok()?;
        ProxyConfig::parse(url.expose())
            .ok()
            .map(|proxy| proxy.masked())
    }

    /// A proxy URL that parses and passes the egress guard, or why not.
    pub fn check_proxy(&self, url: &str) -> Result<ProxyConfig, AdminError> {
        let proxy = ProxyConfig::parse(url).map_err(AdminError::Invalid)?;
        self.egress
            .check_url(url, PROXY_SCHEMES, "proxy")
            .map_err(AdminError::Invalid)?;
        Ok(proxy)
    }

    /// Sets (or with `None` clears) the proxy an account's requests go through.
    pub async fn set_account_proxy(
        &self,
        name: &str,
        proxy_url: Option<&str>,
    ) -> Result<Option<String>, AdminError> {
        let account = self.account_row(name).await?;
        let masked = match proxy_url {
            None => {
                self.store.set_account_proxy(name, None, now_ms()).await?;
                None
            }
            Some(url) => {
                let proxy = self.check_proxy(url)?;
                let sealed = self.secret_box.seal(
                    url.trim(),
                    &crate::snapshot::account_proxy_binding(&account.id),
                );
                self.store
                    .set_account_proxy(name, Some(&sealed), now_ms())
                    .await?;
                Some(proxy.masked())
            }
        };
        Ok(masked)
    }

    /// Clears an account's cooldowns, block and failure history on every running server.
    pub async fn reset_account(&self, name: &str) -> Result<(), AdminError> {
        if self.store.reset_account_health(name, now_ms()).await? {
            Ok(())
        } else {
            Err(AdminError::NotFound {
                what: "account",
                name: name.to_owned(),
            })
        }
    }

    /// Usage totals, over all keys or one key by name.
    pub async fn usage(&self, key_name: Option<&str>) -> Result<UsageTotals, AdminError> {
        let key_id = match key_name {
            Some(name) => Some(self.key_by_name(name).await?.id),
            None => None,
        };
        Ok(self
            .store
            .usage_totals(&UsageFilter {
                key_id,
                since_ms: None,
            })
            .await?)
    }

    pub async fn key_by_name(&self, name: &str) -> Result<KeyEntry, AdminError> {
        self.store
            .list_keys()
            .await?
            .into_iter()
            .find(|key| key.name == name)
            .ok_or(AdminError::NotFound {
                what: "key",
                name: name.to_owned(),
            })
            .and_then(|key| {
                let policy = KeyPolicy::from_json(&key.policy).map_err(|error| {
                    AdminError::Invalid(format!(
                        "the stored policy of '{name}' is unreadable: {error}"
                    ))
                })?;
                Ok(KeyEntry {
                    active: key.status == "active",
                    id: key.id,
                    name: key.name,
                    policy: Arc::new(policy),
                })
            })
    }

    /// Changes a key's policy: `edit` gets the current one; the result is validated and stored.
    pub async fn edit_key_policy(
        &self,
        name: &str,
        edit: impl FnOnce(&mut KeyPolicy),
    ) -> Result<KeyPolicy, AdminError> {
        let mut policy = Arc::unwrap_or_clone(self.key_by_name(name).await?.policy);
        edit(&mut policy);
        policy.validate().map_err(AdminError::Invalid)?;
        if !self
            .store
            .set_key_policy(name, &policy.to_json(), now_ms())
            .await?
        {
            return Err(AdminError::NotFound {
                what: "key",
                name: name.to_owned(),
            });
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_normalised() {
        let loopback = EgressGuard::allowing(&["127.0.0.0/8"]).unwrap();
        assert!(validate_base_url("http://127.0.0.1:9/", &EgressGuard::default()).is_err());
        assert_eq!(
            validate_base_url("http://127.0.0.1:9/", &loopback).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            validate_base_url("https://relay.example/api", &loopback).unwrap(),
            "https://relay.example/api"
        );
        assert!(validate_base_url("ftp://x", &loopback).is_err());
        assert!(validate_base_url("https://", &loopback).is_err());
        assert!(validate_base_url("https://user@host", &loopback).is_err());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn csv_fields_that_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("\rx"), "\"'\rx\"");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("a=b"), "a=b");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("key", "alice-laptop_1").is_ok());
        assert!(validate_name("key", "").is_err());
        assert!(validate_name("key", "a b").is_err());
    }
}

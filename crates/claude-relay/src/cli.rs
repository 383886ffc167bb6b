//! The command line: `serve`, and operator commands that work on the data directory directly,
//! whether or not a server is running (a running server sees the change within a second).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use claude_relay::config::Config;
use relay_core::account_settings::AccountSettings;
use relay_core::admin::{AdminService, NewAccountInput};
use relay_core::bootstrap::{open_installation, random_password, reset_admin_password};
use relay_core::policy::{
    parse_date_ms, parse_duration_secs, parse_usd, FamilyWeeklyLimit, KeyPolicy, Service,
};
use relay_core::pricing::format_usd;
use relay_store::KeyMeta;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "claude-relay", version, about = "A self-hosted AI API gateway")]
pub struct Cli {
    /// TOML configuration file (optional; CLAUDE_RELAY_* variables override it).
    #[arg(long, global = true, env = "CLAUDE_RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Manage upstream accounts.
    #[command(subcommand)]
    Account(Box<AccountCommand>),
    /// Manage relay keys.
    #[command(subcommand)]
    Key(Box<KeyCommand>),
    /// Show usage totals.
    Usage {
        /// Only this key's usage.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Administer console users.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Check the configuration and print it (secrets redacted).
    CheckConfig,
    /// Move the installation's data.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Copy everything (keys, accounts with their sealed secrets, admins, usage history) into an
    /// empty PostgreSQL database; then run the relay with CLAUDE_RELAY_DATABASE_URL set to it
    /// and the same master key.
    Copy {
        /// postgres://user:password@host/database
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Add an upstream account.
    Add {
        /// Platform: anthropic (API key, or any Anthropic-compatible relay with --base-url),
        /// claude-oauth (a Claude subscription; see oauth-start), openai (OpenAI or any
        /// OpenAI-compatible Chat Completions host; --base-url as its docs give the OpenAI SDKs,
        /// e.g. https://api.deepseek.com/v1), or openai-responses (OpenAI's Responses API, what
        /// Codex CLI speaks, or any Responses-compatible host; --base-url ending in /v1), or
        /// azure-openai (--base-url https://RESOURCE.openai.azure.com --deployment NAME
        /// --api-version VERSION; Chat Completions and Responses), or codex (a ChatGPT
        /// subscription for Codex: --auth-json ~/.codex/auth.json, or see oauth-start), or gemini
        /// (a Gemini API key; --base-url is the host, by default
        /// https://generativelanguage.googleapis.com), or gemini-oauth (a Google account served
        /// by Gemini Code Assist, as Gemini CLI's "Login with Google": --oauth-creds
        /// ~/.gemini/oauth_creds.json, or see oauth-start).
        #[arg(long)]
        platform: String,
        #[arg(long)]
        name: String,
        /// The upstream API key (or set CLAUDE_RELAY_ACCOUNT_API_KEY, which keeps it out of `ps`).
        #[arg(
            long,
            env = "CLAUDE_RELAY_ACCOUNT_API_KEY",
            hide_env_values = true,
            required_unless_present_any = ["auth_json", "oauth_creds"]
        )]
        api_key: Option<String>,
        /// A codex account: the `auth.json` Codex CLI wrote when it signed in with ChatGPT
        /// (`~/.codex/auth.json`); its tokens are sealed and refreshed by the relay from then on.
        #[arg(long, conflicts_with_all = ["api_key", "oauth_creds"])]
        auth_json: Option<std::path::PathBuf>,
        /// A gemini-oauth account: the `oauth_creds.json` Gemini CLI wrote when it signed in with
        /// Google (`~/.gemini/oauth_creds.json`).
        #[arg(long, conflicts_with = "api_key")]
        oauth_creds: Option<std::path::PathBuf>,
        #[arg(long)]
        base_url: Option<String>,
        /// Lower is tried first.
        #[arg(long, default_value_t = 50)]
        priority: i64,
        #[command(flatten)]
        settings: AccountSettingsArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change an account's scheduling settings; flags not given keep their value.
    Edit {
        name: String,
        #[command(flatten)]
        settings: AccountSettingsArgs,
        #[arg(long)]
        json: bool,
    },
    List(JsonFlag),
    Disable(NameArg),
    Enable(NameArg),
    /// Clear an account's cooldowns and block (it takes traffic again at once).
    Reset(NameArg),
    /// Show an account's recent health events and their evidence.
    Events(NameArg),
    /// Start signing in a subscription account: prints the URL to open.
    OauthStart {
        #[arg(long)]
        name: String,
        /// claude-oauth (a Claude Pro/Max subscription), codex (a ChatGPT Plus/Pro/Team
        /// subscription, signed in as `codex login` does) or gemini-oauth (a Google account, as
        /// Gemini CLI's "Login with Google").
        #[arg(long, default_value = "claude-oauth")]
        platform: String,
    },
    /// Finish signing in: paste the code the callback page shows (Claude), or the whole address
    /// the browser was sent to, `http://localhost:1455/auth/callback?code=…` (ChatGPT).
    OauthFinish {
        #[arg(long)]
        name: String,
        #[arg(long)]
        code: String,
        #[arg(long)]
        base_url: Option<String>,
        /// Lower is tried first.
        #[arg(long, default_value_t = 50)]
        priority: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a relay key (or a batch with --count); prints each key once.
    Create {
        /// The key's name; with --count a pattern where {n} is replaced by 1…N.
        #[arg(long)]
        name: String,
        /// Create this many keys from the name pattern.
        #[arg(long)]
        count: Option<u32>,
        #[command(flatten)]
        meta: MetaArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change keys' limits and notes; flags not given keep their value.
    Edit {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        meta: MetaArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// List keys (no secrets); --trash lists the deleted ones.
    List {
        #[arg(long)]
        trash: bool,
        #[arg(long)]
        json: bool,
    },
    Disable(NamesArg),
    Enable(NamesArg),
    /// Move keys to the trash (they stop working; `restore` brings them back).
    Delete(NamesArg),
    Restore(NamesArg),
    /// Remove keys from the trash for good.
    Purge {
        /// Only keys deleted at least this long ago (e.g. 30d); default: all in the trash.
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
    /// Export the key list as CSV (no secrets).
    Export,
}

/// Operator notes on a key.
#[derive(Debug, Args, Clone)]
struct MetaArgs {
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    /// A tag (repeatable; replaces the key's tags).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

impl MetaArgs {
    fn apply(self, meta: &mut KeyMeta) {
        if let Some(description) = self.description {
            meta.description = description;
        }
        if let Some(owner) = self.owner {
            meta.owner = (!owner.is_empty()).then_some(owner);
        }
        if !self.tags.is_empty() {
            meta.tags = self.tags;
        }
    }
}

#[derive(Debug, Args)]
struct NamesArg {
    #[arg(required = true)]
    names: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Set a new admin password (CLAUDE_RELAY_ADMIN_PASSWORD, or a random one printed once);
    /// signs that admin's sessions out.
    ResetPassword {
        #[arg(long, default_value = relay_core::bootstrap::ADMIN_USERNAME)]
        username: String,
    },
    /// Sign every admin session out.
    RevokeSessions,
    /// Replace the master key: re-seal every secret under a new one (issued relay keys keep
    /// working). Stop the server first; with CLAUDE_RELAY_MASTER_KEY the new key is printed once.
    RotateMasterKey,
}

/// How an account takes part in scheduling.
#[derive(Debug, Args, Clone)]
struct AccountSettingsArgs {
    /// Share of traffic in its priority tier under weighted scheduling.
    #[arg(long)]
    weight: Option<u32>,
    /// Take the account out of (false) or back into (true) scheduling.
    #[arg(long)]
    schedulable: Option<bool>,
    /// A model it serves (repeatable; `claude-sonnet-*` is a prefix). Replaces the list.
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<String>,
    /// Send a client model under another name: `claude-opus-4-8=glm-4.6` (repeatable).
    #[arg(long = "map-model", value_name = "FROM=TO")]
    map_models: Vec<String>,
    /// Requests in flight on this account at once (0 removes the limit).
    #[arg(long = "account-concurrency", value_name = "N")]
    concurrency: Option<u32>,
    /// Cost this account may serve per UTC day, in USD (0 removes the limit).
    #[arg(long = "account-daily-cost-usd", value_name = "USD")]
    daily_cost_usd: Option<String>,
    /// A group keys can be bound to (repeatable). Replaces the list.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    #[arg(long)]
    notes: Option<String>,
    /// An azure-openai account's deployment (it names the model upstream).
    #[arg(long, value_name = "NAME")]
    deployment: Option<String>,
    /// An azure-openai account's api-version, e.g. 2024-10-21.
    #[arg(long, value_name = "VERSION")]
    api_version: Option<String>,
    /// Send this account's requests through a proxy: http://, https:// or socks5://
    /// [user:pass@]host:port (prefer CLAUDE_RELAY_ACCOUNT_PROXY, which keeps it out of `ps`).
    #[arg(long, env = "CLAUDE_RELAY_ACCOUNT_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// Remove the account's proxy.
    #[arg(long, conflicts_with = "proxy")]
    no_proxy: bool,
}

impl AccountSettingsArgs {
    /// Applies `--proxy` / `--no-proxy`, if given.
    async fn apply_proxy(&self, admin: &AdminService, name: &str) -> anyhow::Result<()> {
        if self.no_proxy {
            admin.set_account_proxy(name, None).await?;
        } else if let Some(url) = &self.proxy {
            admin.set_account_proxy(name, Some(url)).await?;
        }
        Ok(())
    }

    fn apply(self, settings: &mut AccountSettings) -> anyhow::Result<()> {
        if let Some(weight) = self.weight {
            settings.weight = Some(weight);
        }
        if let Some(schedulable) = self.schedulable {
            settings.schedulable = Some(schedulable);
        }
        if !self.models.is_empty() {
            settings.models = Some(self.models);
        }
        if !self.map_models.is_empty() {
            let mut map = std::collections::BTreeMap::new();
            for pair in &self.map_models {
                let (from, to) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--map-model takes FROM=TO, got '{pair}'"))?;
                map.insert(from.trim().to_owned(), to.trim().to_owned());
            }
            settings.model_map = Some(map);
        }
        if let Some(concurrency) = self.concurrency {
            settings.concurrency = zero_removes(concurrency);
        }
        if let Some(text) = &self.daily_cost_usd {
            settings.daily_cost_nano_usd =
                zero_removes(parse_usd(text).map_err(anyhow::Error::msg)?);
        }
        if !self.groups.is_empty() {
            settings.groups = Some(self.groups);
        }
        if let Some(notes) = self.notes {
            settings.notes = (!notes.is_empty()).then_some(notes);
        }
        if let Some(deployment) = self.deployment {
            settings.deployment = Some(deployment);
        }
        if let Some(version) = self.api_version {
            settings.api_version = Some(version);
        }
        Ok(())
    }
}

/// A key's limits. A value of 0 removes that limit.
#[derive(Debug, Args)]
struct PolicyArgs {
    /// Requests in flight at once.
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// Requests per rate window.
    #[arg(long, value_name = "N")]
    rate_requests: Option<u64>,
    /// Tokens (all kinds) per rate window.
    #[arg(long, value_name = "N")]
    rate_tokens: Option<u64>,
    /// Cost per rate window, in USD.
    #[arg(long, value_name = "USD")]
    rate_cost_usd: Option<String>,
    /// The sliding window of the rate limits: 60s, 15m, 5h, 1d …
    #[arg(long, value_name = "DURATION")]
    rate_window: Option<String>,
    /// Cost per UTC day, in USD.
    #[arg(long, value_name = "USD")]
    daily_cost_usd: Option<String>,
    /// Cost over the key's life, in USD.
    #[arg(long, value_name = "USD")]
    total_cost_usd: Option<String>,
    /// Tokens (all kinds) over the key's life.
    #[arg(long, value_name = "N")]
    token_quota: Option<u64>,
    /// Cost per week (from Monday 00:00 UTC), in USD.
    #[arg(long, value_name = "USD")]
    weekly_cost_usd: Option<String>,
    /// Cost per calendar month (UTC), in USD.
    #[arg(long, value_name = "USD")]
    monthly_cost_usd: Option<String>,
    /// Weekly cost of one model family: opus=50, sonnet=20 …
    #[arg(long, value_name = "FAMILY=USD")]
    weekly_family_cost_usd: Option<String>,
    /// When the family week starts: mon@0 (Monday 00:00 UTC, the default) … sun@23.
    #[arg(long, value_name = "DAY@HOUR")]
    weekly_family_reset: Option<String>,
    /// Allow only these models (repeatable; `claude-sonnet-*` matches a prefix). Replaces the list.
    #[arg(long = "allow-model", value_name = "MODEL")]
    allow_models: Vec<String>,
    /// Refuse these models (repeatable). Replaces the list.
    #[arg(long = "deny-model", value_name = "MODEL")]
    deny_models: Vec<String>,
    /// Allow only these clients: claude-code, codex-cli, gemini-cli or ua:PATTERN (repeatable).
    #[arg(long = "allow-client", value_name = "CLIENT")]
    allow_clients: Vec<String>,
    /// Allow only these client addresses (CIDR or address; repeatable).
    #[arg(long = "allow-ip", value_name = "CIDR")]
    allow_ips: Vec<String>,
    /// Allow only these APIs: claude, openai, gemini (repeatable).
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// Send this key's requests only to this upstream account.
    #[arg(long, value_name = "ACCOUNT")]
    dedicated_account: Option<String>,
    /// Send this key's requests only to the accounts of this group.
    #[arg(long, value_name = "GROUP")]
    account_group: Option<String>,
    /// The key stops working at this date (2026-12-31 or 2026-12-31T18:00:00Z, UTC).
    #[arg(long, value_name = "DATE")]
    expires_at: Option<String>,
    /// The key stops working this long after its first use (e.g. 30d).
    #[arg(long, value_name = "DURATION")]
    expires_after_first_use: Option<String>,
    /// Remove a list or setting: allowed-models, denied-models, allowed-clients, allowed-ips,
    /// services, dedicated-account, expiry, weekly-family-cost (repeatable).
    #[arg(long = "clear", value_name = "FIELD")]
    clear: Vec<String>,
}

/// Parsed [`PolicyArgs`]: `Some(None)` removes a limit, `Some(Some(v))` sets it.
#[derive(Debug, Default, Clone)]
struct PolicyChanges {
    concurrency: Option<Option<u32>>,
    rate_requests: Option<Option<u64>>,
    rate_tokens: Option<Option<u64>>,
    rate_cost_nano_usd: Option<Option<i64>>,
    rate_window_secs: Option<Option<u64>>,
    daily_cost_nano_usd: Option<Option<i64>>,
    total_cost_nano_usd: Option<Option<i64>>,
    token_quota: Option<Option<u64>>,
    weekly_cost_nano_usd: Option<Option<i64>>,
    monthly_cost_nano_usd: Option<Option<i64>>,
    family_weekly: Option<Option<FamilyWeeklyLimit>>,
    family_reset: Option<(u8, u8)>,
    services: Option<Option<Vec<Service>>>,
    allowed_models: Option<Option<Vec<String>>>,
    denied_models: Option<Option<Vec<String>>>,
    allowed_clients: Option<Option<Vec<String>>>,
    allowed_ips: Option<Option<Vec<String>>>,
    dedicated_account: Option<Option<String>>,
    account_group: Option<Option<String>>,
    expires_at_ms: Option<Option<i64>>,
    expires_after_first_use_secs: Option<Option<u64>>,
}

/// A list flag: given values replace the list; none given leaves it.
fn list_change<T>(values: Vec<T>) -> Option<Option<Vec<T>>> {
    (!values.is_empty()).then_some(Some(values))
}

/// `mon@9` → (0, 9).
fn parse_reset(text: &str) -> anyhow::Result<(u8, u8)> {
    let invalid = || anyhow::anyhow!("'{text}' is not a weekday and hour such as mon@0 or fri@18");
    let (day, hour) = text.split_once('@').ok_or_else(invalid)?;
    let weekday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|name| day.eq_ignore_ascii_case(name))
        .ok_or_else(invalid)?;
    let hour: u8 = hour.parse().map_err(|_| invalid())?;
    if hour > 23 {
        return Err(invalid());
    }
    Ok((u8::try_from(weekday).map_err(|_| invalid())?, hour))
}

fn zero_removes<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

impl PolicyArgs {
    fn parse(&self) -> anyhow::Result<PolicyChanges> {
        let usd = |text: &Option<String>| -> anyhow::Result<Option<Option<i64>>> {
            text.as_deref()
                .map(|text| {
                    parse_usd(text)
                        .map(zero_removes)
                        .map_err(anyhow::Error::msg)
                })
                .transpose()
        };
        PolicyChanges {
            concurrency: self.concurrency.map(zero_removes),
            rate_requests: self.rate_requests.map(zero_removes),
            rate_tokens: self.rate_tokens.map(zero_removes),
            rate_cost_nano_usd: usd(&self.rate_cost_usd)?,
            rate_window_secs: self
                .rate_window
                .as_deref()
                .map(|text| {
                    parse_duration_secs(text)
                        .map(zero_removes)
                        .map_err(anyhow::Error::msg)
                })
                .transpose()?,
            daily_cost_nano_usd: usd(&self.daily_cost_usd)?,
            total_cost_nano_usd: usd(&self.total_cost_usd)?,
            token_quota: self.token_quota.map(zero_removes),
            weekly_cost_nano_usd: usd(&self.weekly_cost_usd)?,
            monthly_cost_nano_usd: usd(&self.monthly_cost_usd)?,
            family_weekly: self
                .weekly_family_cost_usd
                .as_deref()
                .map(|text| -> anyhow::Result<Option<FamilyWeeklyLimit>> {
                    let (family, amount) = text.split_once('=').ok_or_else(|| {
                        anyhow::anyhow!("--weekly-family-cost-usd takes FAMILY=USD, e.g. opus=50")
                    })?;
                    let cost = parse_usd(amount).map_err(anyhow::Error::msg)?;
                    Ok(zero_removes(cost).map(|cost_nano_usd| FamilyWeeklyLimit {
                        family: family.trim().to_ascii_lowercase(),
                        cost_nano_usd,
                        reset_weekday: 0,
                        reset_hour: 0,
                    }))
                })
                .transpose()?,
            family_reset: self
                .weekly_family_reset
                .as_deref()
                .map(parse_reset)
                .transpose()?,
            services: list_change(
                self.services
                    .iter()
                    .map(|service| Service::parse(service).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            allowed_models: list_change(self.allow_models.clone()),
            denied_models: list_change(self.deny_models.clone()),
            allowed_clients: list_change(self.allow_clients.clone()),
            allowed_ips: list_change(self.allow_ips.clone()),
            dedicated_account: self.dedicated_account.clone().map(Some),
            account_group: self.account_group.clone().map(Some),
            expires_at_ms: self
                .expires_at
                .as_deref()
                .map(|text| parse_date_ms(text).map(Some).map_err(anyhow::Error::msg))
                .transpose()?,
            expires_after_first_use_secs: self
                .expires_after_first_use
                .as_deref()
                .map(|text| {
                    parse_duration_secs(text)
                        .map(zero_removes)
                        .map_err(anyhow::Error::msg)
                })
                .transpose()?,
        }
        .with_clears(&self.clear)
    }
}

impl PolicyChanges {
    fn with_clears(mut self, fields: &[String]) -> anyhow::Result<Self> {
        for field in fields {
            match field.as_str() {
                "allowed-models" => self.allowed_models = Some(None),
                "denied-models" => self.denied_models = Some(None),
                "allowed-clients" => self.allowed_clients = Some(None),
                "allowed-ips" => self.allowed_ips = Some(None),
                "services" => self.services = Some(None),
                "dedicated-account" => self.dedicated_account = Some(None),
                "account-group" => self.account_group = Some(None),
                "expiry" => {
                    self.expires_at_ms = Some(None);
                    self.expires_after_first_use_secs = Some(None);
                }
                "weekly-family-cost" => self.family_weekly = Some(None),
                other => anyhow::bail!("--clear does not know '{other}'"),
            }
        }
        Ok(self)
    }

    fn apply(self, policy: &mut KeyPolicy) {
        fn set<T>(field: &mut Option<T>, change: Option<Option<T>>) {
            if let Some(value) = change {
                *field = value;
            }
        }
        set(&mut policy.concurrency, self.concurrency);
        set(&mut policy.rate_requests, self.rate_requests);
        set(&mut policy.rate_tokens, self.rate_tokens);
        set(&mut policy.rate_cost_nano_usd, self.rate_cost_nano_usd);
        set(&mut policy.rate_window_secs, self.rate_window_secs);
        set(&mut policy.daily_cost_nano_usd, self.daily_cost_nano_usd);
        set(&mut policy.total_cost_nano_usd, self.total_cost_nano_usd);
        set(&mut policy.token_quota, self.token_quota);
        set(&mut policy.weekly_cost_nano_usd, self.weekly_cost_nano_usd);
        set(
            &mut policy.monthly_cost_nano_usd,
            self.monthly_cost_nano_usd,
        );
        set(&mut policy.family_weekly, self.family_weekly);
        if let (Some((weekday, hour)), Some(limit)) =
            (self.family_reset, policy.family_weekly.as_mut())
        {
            limit.reset_weekday = weekday;
            limit.reset_hour = hour;
        }
        set(&mut policy.services, self.services);
        set(&mut policy.allowed_models, self.allowed_models);
        set(&mut policy.denied_models, self.denied_models);
        set(&mut policy.allowed_clients, self.allowed_clients);
        set(&mut policy.allowed_ips, self.allowed_ips);
        set(&mut policy.dedicated_account, self.dedicated_account);
        set(&mut policy.account_group, self.account_group);
        set(&mut policy.expires_at_ms, self.expires_at_ms);
        set(
            &mut policy.expires_after_first_use_secs,
            self.expires_after_first_use_secs,
        );
    }
}

#[derive(Debug, Args)]
struct JsonFlag {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NameArg {
    name: String,
    #[arg(long)]
    json: bool,
}

/// Writes a result line to stdout: the CLI's output, which scripts read.
#[allow(clippy::print_stdout)]
fn out(text: &str) {
    println!("{text}");
}

/// Writes a line for the person at the terminal (stderr), outside the log pipeline.
#[allow(clippy::print_stderr)]
pub fn notice(text: &str) {
    eprintln!("{text}");
}

#[allow(clippy::print_stderr)]
pub fn fail(text: &str) {
    eprintln!("error: {text}");
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let text = path
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))
        })
        .transpose()?;
    let env: HashMap<String, String> = std::env::vars().collect();
    Config::build(text.as_deref(), &env).map_err(|problems| {
        anyhow::anyhow!("invalid configuration:\n  - {}", problems.join("\n  - "))
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config.as_ref())?;
    match cli.command {
        Command::Serve => crate::serve::run(config).await,
        Command::CheckConfig => {
            out(&format!("{config:#?}"));
            Ok(())
        }
        // It opens the installation itself, alone.
        Command::Admin(AdminCommand::RotateMasterKey) => rotate_master_key(&config).await,
        command => {
            let installation = open_installation(
                &config.data_dir,
                config.master_key.as_ref().map(|secret| secret.0.as_str()),
                config.database_url.as_ref().map(|secret| secret.0.as_str()),
            )
            .await?;
            let admin = AdminService::new(installation.store.clone(), &installation.keyring)
                .with_egress(config.relay.egress.clone());
            let result = run_admin_command(command, &admin, &installation.store, &config).await;
            installation.store.close().await;
            result
        }
    }
}

async fn rotate_master_key(config: &Config) -> anyhow::Result<()> {
    let from_env = config.master_key.as_ref().map(|secret| secret.0.as_str());
    let rotated = relay_core::rotation::rotate_master_key(
        &config.data_dir,
        from_env,
        config.database_url.as_ref().map(|secret| secret.0.as_str()),
        |new_key| {
            // Alone on stdout, before anything changes: the operator holds both keys whatever
            // happens next.
            out(new_key.to_hex().expose());
            notice(
                "the new master key (shown once): set CLAUDE_RELAY_MASTER_KEY to it wherever the \
             relay runs before starting it again",
            );
        },
    )
    .await;
    match (rotated, from_env) {
        (Ok(resealed), Some(_)) => {
            notice(&format!(
                "rotated the master key: {resealed} secrets re-sealed; the old key opens nothing now"
            ));
            Ok(())
        }
        (Ok(resealed), None) => {
            out(&format!(
                "rotated the master key: {resealed} secrets re-sealed; {} holds the new key",
                config
                    .data_dir
                    .join(relay_core::bootstrap::MASTER_KEY_FILE)
                    .display()
            ));
            Ok(())
        }
        (Err(error), Some(_)) => Err(anyhow::Error::new(error).context(
            "the rotation did not happen: keep the current key (a key printed above, if any, is void)",
        )),
        (Err(error), None) => Err(error.into()),
    }
}

fn print_json(value: &serde_json::Value) {
    out(&value.to_string());
}

async fn run_admin_command(
    command: Command,
    admin: &AdminService,
    store: &relay_store::Store,
    config: &Config,
) -> anyhow::Result<()> {
    match command {
        Command::Serve | Command::CheckConfig | Command::Admin(AdminCommand::RotateMasterKey) => {
            Ok(())
        }
        Command::Account(account_command) => {
            run_account_command(*account_command, admin, config).await
        }
        Command::Key(key_command) => run_key_command(*key_command, admin).await,
        Command::Db(DbCommand::Copy { to }) => {
            if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
                anyhow::bail!("db copy --to takes a postgres:// URL");
            }
            let target = relay_store::Store::connect(&to).await?;
            let copied = store.copy_into(&target).await;
            target.close().await;
            let report = copied?;
            for (table, rows) in &report.tables {
                out(&format!("{table}: {rows} rows"));
            }
            notice(&format!(
                "copied into {}; run the relay with CLAUDE_RELAY_DATABASE_URL set to it and the same \
                 master key",
                relay_store::redact_url(&to)
            ));
            Ok(())
        }
        Command::Usage { key, json } => {
            let totals = admin.usage(key.as_deref()).await?;
            let cost_usd = format_usd(totals.cost_nano_usd);
            if json {
                let mut value = serde_json::to_value(&totals)?;
                value["cost_usd"] = json!(totals.cost_nano_usd as f64 / 1e9);
                value["cost_usd_exact"] = json!(cost_usd);
                if let Some(key) = &key {
                    value["key"] = json!(key);
                }
                print_json(&value);
            } else {
                out(&format!("requests                    {}", totals.requests));
                out(&format!(
                    "input tokens                {}",
                    totals.input_tokens
                ));
                out(&format!(
                    "output tokens               {}",
                    totals.output_tokens
                ));
                out(&format!(
                    "cache write tokens          {} (5m {}, 1h {})",
                    totals.cache_creation_input_tokens,
                    totals.cache_creation_5m_input_tokens,
                    totals.cache_creation_1h_input_tokens
                ));
                out(&format!(
                    "cache read tokens           {}",
                    totals.cache_read_input_tokens
                ));
                out(&format!("cost (USD)                  {cost_usd}"));
                if totals.unpriced_requests > 0 {
                    out(&format!(
                        "unpriced requests           {} (model not in the price table; tokens counted, cost not)",
                        totals.unpriced_requests
                    ));
                }
                out(&format!(
                    "partial (client left)       {}",
                    totals.partial_requests
                ));
                out(&format!(
                    "failed                      {}",
                    totals.failed_requests
                ));
            }
            Ok(())
        }
        Command::Admin(AdminCommand::ResetPassword { username }) => {
            let (password, generated) = match &config.admin_password {
                Some(secret) => (secret.0.clone(), false),
                None => (random_password(), true),
            };
            if !reset_admin_password(store, &username, &password).await? {
                anyhow::bail!("no admin user named '{username}'");
            }
            if generated {
                out(&password);
                notice(&format!(
                    "new password for '{username}' (shown once); their sessions are signed out"
                ));
            } else {
                out(&format!(
                    "password of '{username}' set from CLAUDE_RELAY_ADMIN_PASSWORD; their sessions are signed out"
                ));
            }
            Ok(())
        }
        Command::Admin(AdminCommand::RevokeSessions) => {
            let revoked = store.delete_all_admin_sessions().await?;
            out(&format!("revoked {revoked} admin session(s)"));
            Ok(())
        }
    }
}

async fn run_account_command(
    command: AccountCommand,
    admin: &AdminService,
    config: &Config,
) -> anyhow::Result<()> {
    match command {
        AccountCommand::Add {
            platform,
            name,
            api_key,
            auth_json,
            oauth_creds,
            base_url,
            priority,
            settings,
            json,
        } => {
            // Everything is checked before the account is written, in one insert.
            let proxy = settings.proxy.clone();
            let mut account_settings = AccountSettings::default();
            settings.apply(&mut account_settings)?;
            let auth_json = auth_json
                .or(oauth_creds)
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))
                })
                .transpose()?;
            let account = admin
                .add_account(NewAccountInput {
                    platform,
                    name,
                    api_key: api_key.unwrap_or_default(),
                    base_url,
                    priority,
                    settings: account_settings,
                    proxy,
                    auth_json,
                })
                .await?;
            if json {
                print_json(&serde_json::to_value(&account)?);
            } else {
                out(&format!(
                    "added {} account '{}' (key {}, priority {})",
                    account.platform, account.name, account.secret_hint, account.priority
                ));
            }
            Ok(())
        }
        AccountCommand::List(JsonFlag { json }) => {
            let accounts = admin.list_accounts().await?;
            if json {
                let listed: Vec<serde_json::Value> = accounts
                    .iter()
                    .map(|account| {
                        let mut value = serde_json::to_value(account).unwrap_or_default();
                        value["settings"] =
                            serde_json::from_str(&account.settings).unwrap_or_default();
                        value["proxy"] = json!(admin.masked_proxy(account));
                        value
                    })
                    .collect();
                print_json(&serde_json::Value::Array(listed));
            } else {
                out(&format!(
                    "{:<24} {:<10} {:<9} {:>8}  {:<10} BASE URL",
                    "NAME", "PLATFORM", "STATUS", "PRIORITY", "KEY"
                ));
                for account in accounts {
                    out(&format!(
                        "{:<24} {:<10} {:<9} {:>8}  {:<10} {}",
                        account.name,
                        account.platform,
                        account.status,
                        account.priority,
                        account.secret_hint,
                        account.base_url.as_deref().unwrap_or("(default)")
                    ));
                }
            }
            Ok(())
        }
        AccountCommand::Disable(NameArg { name, json }) => {
            admin.set_account_enabled(&name, false).await?;
            status_changed("account", &name, "disabled", json);
            Ok(())
        }
        AccountCommand::OauthStart { name, platform } => {
            let url = admin
                .start_oauth(&name, &platform, &config.relay.oauth)
                .await?;
            out(&url);
            if platform == "codex" {
                notice("open this URL and sign in; the browser then goes to an address on localhost:1455 that does not load: pass that whole address to `account oauth-finish --code`");
            } else {
                notice(
                    "open this URL, sign in, and pass the code it shows to `account oauth-finish`",
                );
            }
            Ok(())
        }
        AccountCommand::OauthFinish {
            name,
            code,
            base_url,
            priority,
            json,
        } => {
            let account = admin
                .finish_oauth(&name, &code, &config.relay.oauth, base_url, priority)
                .await?;
            if json {
                print_json(&serde_json::to_value(&account)?);
            } else {
                out(&format!("added subscription account '{}'", account.name));
            }
            Ok(())
        }
        AccountCommand::Edit {
            name,
            settings,
            json,
        } => {
            settings.apply_proxy(admin, &name).await?;
            let mut apply_error = None;
            let updated = admin
                .edit_account_settings(&name, |current| {
                    apply_error = settings.apply(current).err();
                })
                .await?;
            if let Some(error) = apply_error {
                return Err(error);
            }
            if json {
                print_json(&json!({ "name": name, "settings": updated }));
            } else {
                out(&format!("account '{name}' settings: {}", updated.to_json()));
            }
            Ok(())
        }
        AccountCommand::Events(NameArg { name, json }) => {
            let events = admin.account_events(&name, 50).await?;
            if json {
                print_json(&serde_json::to_value(&events)?);
            } else {
                for event in events {
                    out(&format!(
                        "{} {:<14} until {:<14} {}",
                        event.at_ms,
                        event.kind,
                        event
                            .until_ms
                            .map_or("-".to_owned(), |until| until.to_string()),
                        event.evidence
                    ));
                }
            }
            Ok(())
        }
        AccountCommand::Reset(NameArg { name, json }) => {
            admin.reset_account(&name).await?;
            status_changed("account", &name, "reset", json);
            Ok(())
        }
        AccountCommand::Enable(NameArg { name, json }) => {
            admin.set_account_enabled(&name, true).await?;
            status_changed("account", &name, "active", json);
            Ok(())
        }
    }
}

async fn run_key_command(command: KeyCommand, admin: &AdminService) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            name,
            count,
            meta,
            policy,
            json,
        } => {
            let mut key_policy = KeyPolicy::default();
            policy.parse()?.apply(&mut key_policy);
            let mut key_meta = KeyMeta::default();
            meta.apply(&mut key_meta);
            let keys = match count {
                Some(count) => {
                    admin
                        .create_keys(&name, count, &key_policy, &key_meta)
                        .await?
                }
                None => vec![admin.create_key(&name, &key_policy, &key_meta).await?],
            };
            if json {
                let created: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| {
                        json!({
                            "id": key.id,
                            "name": key.name,
                            "key": key.secret,
                            "key_hint": key.hint,
                            "policy": key_policy,
                        })
                    })
                    .collect();
                print_json(&if count.is_some() {
                    serde_json::Value::Array(created)
                } else {
                    created.into_iter().next().unwrap_or_default()
                });
            } else if count.is_some() {
                for key in &keys {
                    out(&format!("{}\t{}", key.name, key.secret));
                }
                notice(&format!(
                    "created {} keys; they are shown only this once",
                    keys.len()
                ));
            } else {
                // Alone on stdout, so `KEY=$(claude-relay key create --name x)` works.
                for key in &keys {
                    out(&key.secret);
                    notice(&format!(
                        "created key '{}'; it is shown only this once",
                        key.name
                    ));
                }
            }
            Ok(())
        }
        KeyCommand::Edit {
            names,
            meta,
            policy,
            json,
        } => {
            let changes = policy.parse()?;
            let mut edited = Vec::new();
            for name in &names {
                let updated = admin
                    .edit_key_policy(name, |current| changes.clone().apply(current))
                    .await?;
                let notes = admin
                    .edit_key_meta(name, |current| meta.clone().apply(current))
                    .await?;
                if !json {
                    out(&format!("key '{name}' limits: {}", updated.to_json()));
                }
                edited.push(json!({ "name": name, "policy": updated, "meta": notes }));
            }
            if json {
                print_json(&if edited.len() == 1 {
                    edited.remove(0)
                } else {
                    serde_json::Value::Array(edited)
                });
            }
            Ok(())
        }
        KeyCommand::List { trash, json } => {
            let keys = admin.list_keys(trash).await?;
            if json {
                let listed: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| {
                        let mut value = serde_json::to_value(key).unwrap_or_default();
                        value["policy"] = serde_json::from_str(&key.policy).unwrap_or_default();
                        value
                    })
                    .collect();
                print_json(&serde_json::Value::Array(listed));
            } else {
                out(&format!(
                    "{:<32} {:<9} {:<12} {:<16} TAGS",
                    "NAME", "STATUS", "KEY", "OWNER"
                ));
                for key in keys {
                    out(&format!(
                        "{:<32} {:<9} {:<12} {:<16} {}",
                        key.name,
                        key.status,
                        key.key_hint,
                        key.meta.owner.as_deref().unwrap_or("-"),
                        key.meta.tags.join(",")
                    ));
                }
            }
            Ok(())
        }
        KeyCommand::Disable(NamesArg { names, json }) => {
            for name in &names {
                admin.set_key_enabled(name, false).await?;
                status_changed("key", name, "disabled", json);
            }
            Ok(())
        }
        KeyCommand::Enable(NamesArg { names, json }) => {
            for name in &names {
                admin.set_key_enabled(name, true).await?;
                status_changed("key", name, "active", json);
            }
            Ok(())
        }
        KeyCommand::Delete(NamesArg { names, json }) => {
            for name in &names {
                admin.delete_key(name).await?;
                status_changed("key", name, "deleted", json);
            }
            Ok(())
        }
        KeyCommand::Restore(NamesArg { names, json }) => {
            for name in &names {
                admin.restore_key(name).await?;
                status_changed("key", name, "restored", json);
            }
            Ok(())
        }
        KeyCommand::Purge { older_than } => {
            let older_than_ms = match older_than.as_deref() {
                Some(text) => {
                    i64::try_from(parse_duration_secs(text).map_err(anyhow::Error::msg)?)
                        .unwrap_or(i64::MAX / 2000)
                        * 1000
                }
                None => -1,
            };
            for name in admin.purge_trash(older_than_ms).await? {
                out(&format!("purged key '{name}'"));
            }
            Ok(())
        }
        KeyCommand::Export => {
            // The CSV goes out as is: it ends in a newline already.
            let csv = admin.export_keys_csv().await?;
            out(csv.trim_end_matches('\n'));
            Ok(())
        }
    }
}

fn status_changed(what: &str, name: &str, status: &str, json: bool) {
    if json {
        print_json(&json!({ "name": name, "status": status }));
    } else {
        out(&format!("{what} '{name}' is now {status}"));
    }
}

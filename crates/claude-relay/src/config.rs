//! Configuration as a pure function of its inputs: the optional TOML file's text and the
//! environment, both passed in (tests never touch the process environment). Every problem is
//! reported at once, each with the setting it concerns.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use relay_core::RelaySettings;
use relay_server::ServerSettings;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3180";
pub const DEFAULT_DATA_DIR: &str = "./data";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    /// `postgres://…`: PostgreSQL instead of the SQLite file in the data directory.
    database_url: Option<String>,
    /// `redis://…`: key limits shared by every instance on this Redis.
    redis_url: Option<String>,
    /// What starts every key this installation writes to Redis.
    redis_prefix: Option<String>,
    /// `refuse` (default) or `local`: what a request meets while Redis does not answer.
    redis_unavailable: Option<String>,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    upstream: FileUpstream,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    keys: FileKeys,
    #[serde(default)]
    oauth: FileOAuth,
    /// Where ChatGPT subscription (`codex`) sign-in goes (OpenAI's endpoints unless overridden).
    #[serde(default)]
    chatgpt_oauth: FileOAuth,
    /// Where Google sign-in (`gemini-oauth`) goes (Google's endpoints unless overridden).
    #[serde(default)]
    google_oauth: FileOAuth,
    #[serde(default)]
    scheduling: FileScheduling,
    #[serde(default)]
    limits: FileLimits,
    /// Internal targets outbound URLs may reach: CIDRs and host names.
    egress_allowlist: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    /// `max_tokens` above this is refused with a 400.
    max_tokens_ceiling: Option<u64>,
    /// A priced model whose price cost limits charge for unpriced models.
    unpriced_price_as: Option<String>,
    /// Usage records waiting for the database at most before new requests are refused.
    usage_queue_limit: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScheduling {
    /// `lru` (default) or `weighted`.
    strategy: Option<String>,
}

/// Where one provider's subscription sign-in goes (its own endpoints unless overridden).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOAuth {
    authorize_url: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scopes: Option<String>,
    client_secret: Option<String>,
}

impl FileOAuth {
    /// `defaults` with what the file (`section`) and the token URL's environment variable
    /// (`token_url_var`, whose value is `token_url_env`) override; the relay calls the token URL itself, so it passes the
    /// egress guard.
    fn settings(
        self,
        defaults: relay_core::oauth::OAuthSettings,
        (section, token_url_var): (&str, &str),
        token_url_env: Option<String>,
        egress: &relay_core::egress::EgressGuard,
        problems: &mut Vec<String>,
    ) -> relay_core::oauth::OAuthSettings {
        let settings = relay_core::oauth::OAuthSettings {
            provider: defaults.provider,
            authorize_url: self.authorize_url.unwrap_or(defaults.authorize_url),
            token_url: token_url_env
                .or(self.token_url)
                .unwrap_or(defaults.token_url),
            client_id: self.client_id.unwrap_or(defaults.client_id),
            redirect_uri: self.redirect_uri.unwrap_or(defaults.redirect_uri),
            scopes: self.scopes.unwrap_or(defaults.scopes),
            client_secret: self.client_secret.or(defaults.client_secret),
        };
        if !settings.authorize_url.starts_with("https://")
            && !settings.authorize_url.starts_with("http://")
        {
            problems.push(format!(
                "{section}.authorize_url: '{}' is not an http(s) URL",
                settings.authorize_url
            ));
        }
        if let Err(problem) = egress.check_url(
            &settings.token_url,
            &["http", "https"],
            &format!("{section}.token_url ({token_url_var})"),
        ) {
            problems.push(problem);
        }
        settings
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    trash_retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    connect_timeout_secs: Option<u64>,
    first_byte_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_attempts: Option<usize>,
    rate_limit_cooldown_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    max_body_bytes: Option<u64>,
    body_min_bytes: Option<u64>,
    body_window_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A secret setting: `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: Secret,
    pub prefix: String,
    pub on_unavailable: relay_core::limits::Unavailable,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: Option<Secret>,
    /// PostgreSQL instead of the SQLite file in the data directory (it may hold a password).
    pub database_url: Option<Secret>,
    /// The shared Redis (it may hold a password), its key prefix, and what to do without it.
    pub redis: Option<RedisConfig>,
    pub admin_password: Option<Secret>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub relay: RelaySettings,
    /// `server.max_connections` is filled in at start from this, or from the fd limit.
    pub server: ServerSettings,
    pub max_connections: Option<usize>,
    /// Keys stay in the trash this long, then are purged.
    pub trash_retention: Duration,
}

impl Config {
    /// Builds the configuration from the file's text (if any) and the environment.
    pub fn build(
        file_text: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let file: FileConfig = match file_text.map(toml::from_str) {
            None => FileConfig::default(),
            Some(Ok(file)) => file,
            Some(Err(parse_error)) => {
                problems.push(format!("config file: {parse_error}"));
                FileConfig::default()
            }
        };
        let var = |name: &str| env.get(name).filter(|value| !value.is_empty()).cloned();

        let listen_text = var("CLAUDE_RELAY_LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "listen (CLAUDE_RELAY_LISTEN): '{listen_text}' is not an address:port such as {DEFAULT_LISTEN}"
            ));
            SocketAddr::from(([127, 0, 0, 1], 3180))
        });
        let database_url = var("CLAUDE_RELAY_DATABASE_URL")
            .or(file.database_url)
            .filter(|url| {
                let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !postgres {
                    problems.push(format!(
                        "database_url (CLAUDE_RELAY_DATABASE_URL): '{}' is not a postgres:// URL \
                         (leave it unset for the SQLite file in the data directory)",
                        relay_store::redact_url(url)
                    ));
                }
                postgres
            })
            .map(Secret);
        let redis_prefix = var("CLAUDE_RELAY_REDIS_PREFIX")
            .or(file.redis_prefix)
            .unwrap_or_else(|| "claude-relay".to_owned());
        let on_unavailable = var("CLAUDE_RELAY_REDIS_UNAVAILABLE")
            .or(file.redis_unavailable)
            .map_or(Ok(Default::default()), |text| text.parse())
            .unwrap_or_else(|problem| {
                problems.push(format!(
                    "redis_unavailable (CLAUDE_RELAY_REDIS_UNAVAILABLE): {problem}"
                ));
                Default::default()
            });
        let redis = var("CLAUDE_RELAY_REDIS_URL")
            .or(file.redis_url)
            .filter(|url| {
                let redis = url.starts_with("redis://") || url.starts_with("rediss://");
                if !redis {
                    problems.push(format!(
                        "redis_url (CLAUDE_RELAY_REDIS_URL): '{}' is not a redis:// URL",
                        relay_store::redact_url(url)
                    ));
                }
                redis
            })
            .map(|url| RedisConfig {
                url: Secret(url),
                prefix: redis_prefix,
                on_unavailable,
            });
        if redis.is_some() && database_url.is_none() {
            problems.push(
                "redis_url (CLAUDE_RELAY_REDIS_URL) needs database_url (CLAUDE_RELAY_DATABASE_URL): \
                 instances that share limits must share one PostgreSQL database"
                    .to_owned(),
            );
        }
        let data_dir = var("CLAUDE_RELAY_DATA_DIR")
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let log_format = match var("CLAUDE_RELAY_LOG_FORMAT")
            .or(file.log.format)
            .as_deref()
            .unwrap_or("pretty")
        {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log.format (CLAUDE_RELAY_LOG_FORMAT): '{other}' is not pretty or json"
                ));
                LogFormat::Pretty
            }
        };
        let log_level = var("CLAUDE_RELAY_LOG")
            .or(file.log.level)
            .unwrap_or_else(|| "info".to_owned());

        let defaults = RelaySettings::default();
        // Every number has bounds, so that no setting can overflow a deadline or a buffer.
        let bounded = |value: Option<u64>,
                       default: u64,
                       (min, max): (u64, u64),
                       name: &str,
                       problems: &mut Vec<String>| match value {
            Some(value) if !(min..=max).contains(&value) => {
                problems.push(format!("{name}: must be between {min} and {max}"));
                default
            }
            Some(value) => value,
            None => default,
        };
        let secs = |value: Option<u64>,
                    default: Duration,
                    max: u64,
                    name: &str,
                    problems: &mut Vec<String>| {
            Duration::from_secs(bounded(value, default.as_secs(), (1, max), name, problems))
        };
        let egress_entries: Vec<String> = match var("CLAUDE_RELAY_EGRESS_ALLOWLIST") {
            Some(list) => list.split(',').map(str::to_owned).collect(),
            None => file.egress_allowlist.unwrap_or_default(),
        };
        let egress =
            relay_core::egress::EgressGuard::allowing(&egress_entries).unwrap_or_else(|problem| {
                problems.push(format!(
                    "egress_allowlist (CLAUDE_RELAY_EGRESS_ALLOWLIST): {problem}"
                ));
                relay_core::egress::EgressGuard::default()
            });
        let oauth = relay_core::oauth::OAuthProviders {
            claude: file.oauth.settings(
                relay_core::oauth::OAuthSettings::claude(),
                ("oauth", "CLAUDE_RELAY_OAUTH_TOKEN_URL"),
                var("CLAUDE_RELAY_OAUTH_TOKEN_URL"),
                &egress,
                &mut problems,
            ),
            chatgpt: file.chatgpt_oauth.settings(
                relay_core::oauth::OAuthSettings::chatgpt(),
                ("chatgpt_oauth", "CLAUDE_RELAY_CHATGPT_OAUTH_TOKEN_URL"),
                var("CLAUDE_RELAY_CHATGPT_OAUTH_TOKEN_URL"),
                &egress,
                &mut problems,
            ),
            google: file.google_oauth.settings(
                relay_core::oauth::OAuthSettings::google(),
                ("google_oauth", "CLAUDE_RELAY_GOOGLE_OAUTH_TOKEN_URL"),
                var("CLAUDE_RELAY_GOOGLE_OAUTH_TOKEN_URL"),
                &egress,
                &mut problems,
            ),
        };
        let strategy = match file.scheduling.strategy.as_deref().unwrap_or("lru") {
            "lru" => relay_core::schedule::Strategy::LeastRecentlyUsed,
            "weighted" => relay_core::schedule::Strategy::Weighted,
            other => {
                problems.push(format!(
                    "scheduling.strategy: '{other}' is not lru or weighted"
                ));
                relay_core::schedule::Strategy::LeastRecentlyUsed
            }
        };
        let unpriced_as = file.limits.unpriced_price_as.filter(|model| {
            let priced = relay_core::pricing::cost_nano_usd(model, &Default::default()).is_some();
            if !priced {
                problems.push(format!(
                    "limits.unpriced_price_as: '{model}' is not a model in the price table"
                ));
            }
            priced
        });
        let relay = RelaySettings {
            oauth,
            strategy,
            egress,
            max_tokens_ceiling: bounded(
                file.limits.max_tokens_ceiling,
                defaults.max_tokens_ceiling,
                (1, 100_000_000),
                "limits.max_tokens_ceiling",
                &mut problems,
            ),
            unpriced_as: unpriced_as.map(std::sync::Arc::from),
            usage_queue_limit: usize::try_from(bounded(
                file.limits.usage_queue_limit,
                defaults.usage_queue_limit as u64,
                (1, 10_000_000),
                "limits.usage_queue_limit",
                &mut problems,
            ))
            .unwrap_or(defaults.usage_queue_limit),
            connect_timeout: secs(
                file.upstream.connect_timeout_secs,
                defaults.connect_timeout,
                300,
                "upstream.connect_timeout_secs",
                &mut problems,
            ),
            first_byte_timeout: secs(
                file.upstream.first_byte_timeout_secs,
                defaults.first_byte_timeout,
                3_600,
                "upstream.first_byte_timeout_secs",
                &mut problems,
            ),
            idle_timeout: secs(
                file.upstream.idle_timeout_secs,
                defaults.idle_timeout,
                3_600,
                "upstream.idle_timeout_secs",
                &mut problems,
            ),
            max_attempts: match file.upstream.max_attempts {
                Some(attempts) if !(1..=10).contains(&attempts) => {
                    problems.push("upstream.max_attempts: must be between 1 and 10".to_owned());
                    defaults.max_attempts
                }
                Some(attempts) => attempts,
                None => defaults.max_attempts,
            },
            default_rate_limit_cooldown: secs(
                file.upstream.rate_limit_cooldown_secs,
                defaults.default_rate_limit_cooldown,
                86_400,
                "upstream.rate_limit_cooldown_secs",
                &mut problems,
            ),
        };
        let server_defaults = ServerSettings::default();
        let cidrs = |ranges: Option<Vec<String>>, name: &str, problems: &mut Vec<String>| {
            ranges
                .unwrap_or_default()
                .iter()
                .filter_map(|range| {
                    relay_core::access::Cidr::parse(range)
                        .map_err(|problem| problems.push(format!("{name}: {problem}")))
                        .ok()
                })
                .collect::<Vec<_>>()
        };
        let server = ServerSettings {
            max_body_bytes: usize::try_from(bounded(
                file.server.max_body_bytes,
                server_defaults.max_body_bytes as u64,
                (1024, 1 << 30),
                "server.max_body_bytes",
                &mut problems,
            ))
            .unwrap_or(server_defaults.max_body_bytes),
            body_pace: relay_server::BodyPace {
                bytes: usize::try_from(bounded(
                    file.server.body_min_bytes,
                    server_defaults.body_pace.bytes as u64,
                    (1, 1 << 20),
                    "server.body_min_bytes",
                    &mut problems,
                ))
                .unwrap_or(server_defaults.body_pace.bytes),
                window: secs(
                    file.server.body_window_secs,
                    server_defaults.body_pace.window,
                    600,
                    "server.body_window_secs",
                    &mut problems,
                ),
            },
            header_read_timeout: secs(
                file.server.header_read_timeout_secs,
                server_defaults.header_read_timeout,
                600,
                "server.header_read_timeout_secs",
                &mut problems,
            ),
            handshake_timeout: secs(
                file.server.handshake_timeout_secs,
                server_defaults.handshake_timeout,
                600,
                "server.handshake_timeout_secs",
                &mut problems,
            ),
            idle_timeout: secs(
                file.server.idle_timeout_secs,
                server_defaults.idle_timeout,
                86_400,
                "server.idle_timeout_secs",
                &mut problems,
            ),
            max_connections: server_defaults.max_connections,
            trusted_proxies: cidrs(
                file.server.trusted_proxies,
                "server.trusted_proxies",
                &mut problems,
            ),
            allowed_hosts: file.server.allowed_hosts.and_then(|hosts| {
                let hosts: Vec<String> = hosts
                    .into_iter()
                    .map(|host| host.trim().to_ascii_lowercase())
                    .filter(|host| !host.is_empty())
                    .collect();
                if hosts.is_empty() {
                    // An empty list would refuse every request, /health included.
                    problems.push(
                        "server.allowed_hosts: name at least one host, or leave it out to serve \
                         any Host"
                            .to_owned(),
                    );
                    return None;
                }
                Some(hosts)
            }),
            shutdown_grace: secs(
                file.server.shutdown_grace_secs,
                server_defaults.shutdown_grace,
                3_600,
                "server.shutdown_grace_secs",
                &mut problems,
            ),
        };
        let max_connections = file.server.max_connections.map(|connections| {
            usize::try_from(bounded(
                Some(connections),
                4096,
                (1, 1_000_000),
                "server.max_connections",
                &mut problems,
            ))
            .unwrap_or(4096)
        });
        let trash_retention = Duration::from_secs(
            bounded(
                file.keys.trash_retention_days,
                30,
                (1, 36_500),
                "keys.trash_retention_days",
                &mut problems,
            ) * 86_400,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            listen,
            data_dir,
            master_key: var("CLAUDE_RELAY_MASTER_KEY").map(Secret),
            database_url,
            redis,
            admin_password: var("CLAUDE_RELAY_ADMIN_PASSWORD").map(Secret),
            log_format,
            log_level,
            relay,
            server,
            max_connections,
            trash_retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_safe_and_environment_overrides_the_file() {
        let config = Config::build(None, &HashMap::new()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        let file =
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/relay\"\n[upstream]\nmax_attempts = 2\n";
        let config = Config::build(
            Some(file),
            &env(&[
                ("CLAUDE_RELAY_LISTEN", "127.0.0.1:7000"),
                ("CLAUDE_RELAY_ADMIN_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.data_dir, PathBuf::from("/srv/relay"));
        assert_eq!(config.relay.max_attempts, 2);
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn every_problem_is_reported_with_its_setting() {
        let file = "[upstream]\nmax_attempts = 0\nidle_timeout_secs = 0\n";
        let problems =
            Config::build(Some(file), &env(&[("CLAUDE_RELAY_LISTEN", "nonsense")])).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("listen")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("upstream.max_attempts")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("upstream.idle_timeout_secs")));
        let unknown = Config::build(Some("lisen = 1"), &HashMap::new()).unwrap_err();
        assert!(unknown[0].contains("lisen"));
        let no_hosts =
            Config::build(Some("[server]\nallowed_hosts = [\"\"]"), &HashMap::new()).unwrap_err();
        assert!(
            no_hosts[0].starts_with("server.allowed_hosts"),
            "{no_hosts:?}"
        );
        let not_postgres = Config::build(
            None,
            &env(&[("CLAUDE_RELAY_DATABASE_URL", "mysql://root:hunter2@db/relay")]),
        )
        .unwrap_err();
        assert!(
            not_postgres[0].starts_with("database_url") && !not_postgres[0].contains("hunter2"),
            "{not_postgres:?}"
        );
    }

    #[test]
    fn every_number_has_bounds_reported_with_its_setting() {
        let file = "[server]\nheader_read_timeout_secs = 9223372036854775807\n\
                    max_connections = 0\nmax_body_bytes = 1099511627777000\n\
                    trusted_proxies = [\"10.0.0.0/8\", \"not-a-range\"]\n\
                    [upstream]\nfirst_byte_timeout_secs = 9223372036854775807\n\
                    [keys]\ntrash_retention_days = 9223372036854775807\n";
        let problems = Config::build(Some(file), &HashMap::new()).unwrap_err();
        for setting in [
            "server.header_read_timeout_secs",
            "server.max_connections",
            "server.max_body_bytes",
            "server.trusted_proxies",
            "upstream.first_byte_timeout_secs",
            "keys.trash_retention_days",
        ] {
            assert!(
                problems.iter().any(|problem| problem.starts_with(setting)),
                "{setting}: {problems:?}"
            );
        }
        let file = "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nmax_connections = 500\n";
        let config = Config::build(Some(file), &HashMap::new()).unwrap();
        assert_eq!(config.server.trusted_proxies.len(), 1);
        assert_eq!(config.max_connections, Some(500));
    }

    #[test]
    fn the_readme_configuration_block_is_a_valid_configuration() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split_once("\n## Configuration\n")
            .and_then(|(_, section)| section.split_once("```toml\n"))
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .expect("README.md's Configuration section has a ```toml block");
        let config = Config::build(Some(block), &HashMap::new());
        assert!(config.is_ok(), "{config:?}");
    }
}

//! The relay pipeline: pick an account, send, fail over before the first byte, then hand back a
//! response whose body relays the upstream bytes as they arrive while usage is captured.
//!
//! *Architecture Invariants*:
//! - a request is retried on another account only before any byte reached the client; once the
//!   first upstream body byte is in hand, the response is committed;
//! - every request that reached an upstream yields exactly one usage record, whatever its ending
//!   (completed, upstream error, upstream drop, client disconnect), via [`capture::CapturedStream`]'s
//!   finish-once logic or the error path below;
//! - nothing here touches the database: keys and accounts come from the snapshot, records go to
//!   the usage channel.

mod answer;
mod capture;
mod convert;
mod credentials;
mod verdicts;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use relay_protocol::{Dialect, ErrorKind};
use relay_store::{UsageRecord, UsageSink};
use tokio::time::Instant;

use crate::access::{self, Denial, RequestFacts};
use crate::accounts::{AccountEntry, AccountSlot, Credential, Platform};
use crate::clock::now_ms;
use crate::coord::Coordinator;
use crate::health;
use crate::keys::KeyEntry;
use crate::limits::{Admission, Estimate, Limiter};
use crate::metrics::Metrics;
use crate::oauth::OAuthProviders;
use crate::policy::Service;
use crate::schedule::{is_routable, AccountSelector, Candidates, Selection, Strategy};
use crate::snapshot::SnapshotStore;
use crate::sticky::{SessionId, StickySessions, SPILL_MS};
use crate::transport::{self, AnyClient};

pub use capture::CapturedStream;
use relay_upstream::adapter::{self, UpstreamAuth};
use relay_upstream::attempt::{self as upstream, AttemptFailure, Started};

/// Timeouts and bounds of the relay path.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub connect_timeout: Duration,
    /// From receiving the request to the first upstream body byte, across all attempts.
    pub first_byte_timeout: Duration,
    /// Longest silence between two upstream chunks of a response in flight.
    pub idle_timeout: Duration,
    /// Accounts tried per request at most.
    pub max_attempts: usize,
    /// Cooldown after a 429 that named no reset time.
    pub default_rate_limit_cooldown: Duration,
    /// Where subscription accounts sign in and refresh their tokens (Claude's, ChatGPT's).
    pub oauth: OAuthProviders,
    /// How an account is chosen within a priority tier.
    pub strategy: Strategy,
    /// Which internal targets outbound connections may reach (none by default).
    pub egress: crate::egress::EgressGuard,
    /// `max_tokens` above this is refused before any upstream (no model accepts it).
    pub max_tokens_ceiling: u64,
    /// The model whose price a key's cost limits charge for models the price table does not
    /// know; unset: the dearest model of the same family, or of the whole table.
    pub unpriced_as: Option<Arc<str>>,
    /// Usage records waiting for the database at most; beyond, new requests are refused (503)
    /// so that what was admitted is always recorded.
    pub usage_queue_limit: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            max_attempts: 3,
            default_rate_limit_cooldown: Duration::from_secs(30),
            oauth: OAuthProviders::default(),
            strategy: Strategy::default(),
            max_tokens_ceiling: 1_000_000,
            unpriced_as: None,
            usage_queue_limit: relay_store::usage_writer::DEFAULT_QUEUE_LIMIT,
            egress: crate::egress::EgressGuard::default(),
        }
    }
}

pub use crate::accounts::AccountStatus;

/// The result of a test-connection request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionTest {
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub detail: String,
}

/// What a client asked for; each endpoint belongs to one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses` (Codex CLI).
    Responses,
    /// OpenAI `POST /v1/responses/compact` (Codex's remote compaction).
    ResponsesCompact,
    /// Gemini `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`.
    GeminiGenerate,
    /// Gemini `POST /v1beta/models/{model}:countTokens`.
    GeminiCountTokens,
}

impl Endpoint {
    /// The name usage records carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::CountTokens => "count_tokens",
            Self::ChatCompletions => "chat_completions",
            Self::Responses => "responses",
            Self::ResponsesCompact => "responses_compact",
            Self::GeminiGenerate => "gemini_generate",
            Self::GeminiCountTokens => "gemini_count_tokens",
        }
    }

    /// The dialect the client speaks on this endpoint.
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages | Self::CountTokens => Dialect::AnthropicMessages,
            Self::ChatCompletions => Dialect::OpenAiChat,
            Self::Responses | Self::ResponsesCompact => Dialect::OpenAiResponses,
            Self::GeminiGenerate | Self::GeminiCountTokens => Dialect::Gemini,
        }
    }

    pub fn counts_tokens(self) -> bool {
        matches!(self, Self::CountTokens | Self::GeminiCountTokens)
    }

    fn operation(self) -> adapter::Operation {
        match self {
            Self::CountTokens | Self::GeminiCountTokens => adapter::Operation::CountTokens,
            Self::ResponsesCompact => adapter::Operation::Compact,
            _ => adapter::Operation::Generate,
        }
    }

    /// The key policy's service for the dialect.
    fn service(self) -> Service {
        match self.dialect() {
            Dialect::AnthropicMessages => Service::Claude,
            Dialect::OpenAiChat | Dialect::OpenAiResponses => Service::Openai,
            Dialect::Gemini => Service::Gemini,
        }
    }
}

/// A request the ingress has authenticated and parsed, in whatever dialect the client speaks.
#[derive(Debug)]
pub struct RelayRequest {
    pub request_id: String,
    pub key: Arc<KeyEntry>,
    pub endpoint: Endpoint,
    /// The query string without `?`, passed on unchanged to an upstream of the same dialect
    /// (Claude Code sends `beta=true`).
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// The request's output limit, for the worst-case cost estimate.
    pub max_tokens: Option<u64>,
    /// How many answers the request asks for (OpenAI's `n`; 1 elsewhere): each can use the
    /// whole output limit.
    pub choices: u64,
    /// An OpenAI client asked for the final usage chunk (`stream_options.include_usage`); the
    /// relay asks for it anyway and hides it from a client that did not.
    pub include_usage: bool,
    /// A Responses request that asks for Codex's remote compaction (`compaction_trigger`):
    /// done by the account's model where the upstream does not do it itself.
    pub compaction: bool,
    /// The conversation this request belongs to, scoped to its key (see
    /// `relay_protocol::anthropic::session_identity`).
    pub session: Option<SessionId>,
    /// Claude Code's marks besides its User-Agent (a `metadata.user_id` and its own headers),
    /// detected at the ingress, for client allowlists.
    pub claude_code_marks: bool,
    /// The TCP peer, for address allowlists.
    pub client_ip: Option<std::net::IpAddr>,
    pub received_at: Instant,
}

impl RelayRequest {
    /// What the upstream adapter needs to know of this request.
    fn call(&self) -> adapter::Call<'_> {
        adapter::Call {
            dialect: self.endpoint.dialect(),
            operation: self.endpoint.operation(),
            query: self.query.as_deref(),
            headers: &self.headers,
            stream: self.stream,
            model: &self.model,
        }
    }
}

/// An error the relay answers itself; the ingress renders it in the caller's dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayError {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl RelayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }
}

#[derive(Debug)]
pub enum RelayBody {
    Buffered(Bytes),
    Streaming(Box<CapturedStream>),
}

#[derive(Debug)]
pub struct RelayResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: RelayBody,
}

/// How a request that reached an upstream ended, as its usage record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered and the client got all of it.
    Ok,
    /// The client left before the end.
    Partial,
    /// The upstream answered with an error (a status, or an error event in the stream).
    UpstreamError,
    /// The upstream broke off or went silent mid-answer.
    UpstreamInterrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamInterrupted => "upstream_interrupted",
        }
    }
}

/// What a finished request is recorded with, known before the body has streamed, and the
/// key's reservation, which is settled at the same moment the record is made.
#[derive(Debug)]
pub(crate) struct RecordContext {
    pub request_id: String,
    pub key_id: String,
    pub account_id: Option<String>,
    pub platform: Option<Platform>,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub status: StatusCode,
    pub attempts: u32,
    pub received_at: Instant,
    pub ttfb: Option<Duration>,
    pub user_agent: Option<String>,
    pub created_at_ms: i64,
    pub admission: Option<Admission>,
    /// The account that served the request, whose daily cost the request adds to.
    pub account_runtime: Option<Arc<crate::accounts::AccountRuntime>>,
    /// Where that cost is shared with other instances, and the account's daily limit.
    pub shared_account: Option<(Arc<Coordinator>, Option<i64>)>,
    /// See [`RelaySettings::unpriced_as`].
    pub unpriced_as: Option<Arc<str>>,
}

impl RecordContext {
    /// The one terminal step of a request that reached an upstream: price it, settle the key's
    /// reservation with the real figures, and produce its usage record.
    pub(crate) fn into_record(
        mut self,
        usage: relay_protocol::Usage,
        upstream_model: Option<String>,
        outcome: Outcome,
        error_kind: Option<String>,
    ) -> UsageRecord {
        let priced_model = upstream_model.as_deref().unwrap_or(&self.model);
        let cost_nano_usd = if self.endpoint.counts_tokens() {
            Some(0)
        } else {
            crate::pricing::cost_nano_usd(priced_model, &usage)
        };
        // Counting tokens is free and generates none; anything else is charged at its price,
        // or at the stand-in price if the model is unpriced (never $0).
        let (charged, tokens) = match cost_nano_usd {
            Some(cost) if self.endpoint.counts_tokens() => (cost, 0),
            Some(cost) => (cost, usage.total_tokens()),
            None => (
                crate::pricing::limit_cost_nano_usd(
                    priced_model,
                    &usage,
                    self.unpriced_as.as_deref(),
                ),
                usage.total_tokens(),
            ),
        };
        if let Some(admission) = self.admission.take() {
            // Usage that could not be read is not known to be small: the key pays the worst
            // case it reserved, never the figures seen before reading stopped.
            let (charged, tokens) = if error_kind.as_deref()
                == Some(relay_protocol::usage::UsageFault::Unreadable.as_str())
            {
                let reserved = admission.reserved();
                (
                    charged.max(reserved.cost_nano_usd),
                    tokens.max(reserved.tokens),
                )
            } else {
                (charged, tokens)
            };
            admission.settle(charged, tokens, now_ms());
        }
        if let Some(runtime) = self.account_runtime.take() {
            // An unpriced request counts at its stand-in price here too, so that an account's
            // daily cost limit also holds for models the price table does not know.
            let now = now_ms();
            runtime.add_day_cost(charged, now);
            if let (Some((coord, limit)), Some(account_id)) =
                (self.shared_account.take(), &self.account_id)
            {
                coord.add_day_cost(account_id, charged, limit, now);
            }
        }
        UsageRecord {
            request_id: self.request_id,
            created_at_ms: self.created_at_ms,
            key_id: self.key_id,
            account_id: self.account_id,
            platform: self.platform.map_or("none", Platform::as_str).to_owned(),
            endpoint: self.endpoint.as_str().to_owned(),
            model: self.model,
            upstream_model,
            stream: self.stream,
            usage,
            cost_nano_usd,
            charged_nano_usd: cost_nano_usd.is_none().then_some(charged),
            status: self.status.as_u16(),
            outcome: outcome.as_str().to_owned(),
            error_kind,
            attempts: self.attempts,
            latency_ms: millis(self.received_at.elapsed()),
            ttfb_ms: self.ttfb.map(millis),
            user_agent: self.user_agent,
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The relay: shared by every request, cheap to use concurrently.
/// What `/health` and `/ready` say of the shared Redis.
#[derive(Debug, Clone, Copy)]
pub struct SharedCheck {
    pub round_trip: Option<std::time::Duration>,
    pub serves_without: bool,
}

#[derive(Debug)]
pub struct Relay {
    /// The direct client (most accounts), and one per proxy.
    client: Arc<AnyClient>,
    proxied_clients:
        std::sync::Mutex<std::collections::HashMap<crate::proxy::ProxyConfig, Arc<AnyClient>>>,
    snapshots: Arc<SnapshotStore>,
    selector: AccountSelector,
    limiter: Limiter,
    sticky: StickySessions,
    /// Shared with other instances through Redis, if they run together.
    coord: Option<Arc<Coordinator>>,
    usage: UsageSink,
    metrics: Arc<Metrics>,
    settings: RelaySettings,
    /// Writes spawned off the request path (account events), drained at shutdown.
    background: tokio_util::task::TaskTracker,
}

impl Relay {
    pub fn new(
        snapshots: Arc<SnapshotStore>,
        usage: UsageSink,
        metrics: Arc<Metrics>,
        settings: RelaySettings,
    ) -> Self {
        // Upstream URLs are operator configuration: the environment's proxy settings are not
        // consulted and redirects are not followed, so credentials cannot be sent elsewhere.
        let client = Arc::new(AnyClient::Direct(transport::build_client(
            settings.connect_timeout,
            &settings.egress,
        )));
        Self {
            client,
            proxied_clients: std::sync::Mutex::default(),
            snapshots,
            selector: AccountSelector::new(settings.strategy),
            limiter: Limiter::default(),
            sticky: StickySessions::default(),
            coord: None,
            usage,
            metrics,
            settings,
            background: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits for the writes spawned off the request path (call once no request is left).
    pub async fn drain_background(&self) {
        self.background.close();
        self.background.wait().await;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every account's live state in this process, for operators.
    pub fn account_statuses(&self) -> Vec<AccountStatus> {
        let now = now_ms();
        self.snapshots
            .current()
            .accounts
            .iter()
            .map(|account| account.status(now))
            .collect()
    }

    /// Sends a one-token request through an account and says how it went.
    pub async fn test_account(&self, name: &str) -> Option<ConnectionTest> {
        let account = self
            .snapshots
            .current()
            .accounts
            .iter()
            .find(|account| account.name == name)?
            .clone();
        // A model the account serves by name, else one it maps to, else its platform's probe.
        let settings = &account.settings;
        let model = settings
            .models
            .iter()
            .flatten()
            .find(|model| !model.contains('*'))
            .or_else(|| {
                settings
                    .model_map
                    .iter()
                    .flat_map(|map| map.values())
                    .next()
            })
            .cloned()
            .unwrap_or_else(|| account.platform.probe_model().to_owned());
        let body = serde_json::json!({
            "model": model,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let started = Instant::now();
        let request = RelayRequest {
            request_id: "connection-test".to_owned(),
            key: Arc::new(KeyEntry {
                id: String::new(),
                name: String::new(),
                active: true,
                policy: Arc::default(),
            }),
            endpoint: Endpoint::Messages,
            query: None,
            headers,
            body: Bytes::from(body.to_string()),
            model,
            stream: false,
            max_tokens: Some(1),
            session: None,
            choices: 1,
            include_usage: false,
            compaction: false,
            claude_code_marks: false,
            client_ip: None,
            received_at: started,
        };
        let deadline = started + Duration::from_secs(30);
        let body = match convert::upstream_body(&request, &account, &self.settings) {
            Ok(body) => body,
            Err(error) => {
                return Some(ConnectionTest {
                    ok: false,
                    status: None,
                    latency_ms: 0,
                    detail: error.message,
                })
            }
        };
        let outcome = self
            .attempt_account(&account, &request, &body, deadline)
            .await;
        let latency_ms = millis(started.elapsed());
        Some(match outcome {
            Ok(started) => ConnectionTest {
                ok: started.status.is_success(),
                status: Some(started.status.as_u16()),
                latency_ms,
                detail: format!("upstream answered {}", started.status),
            },
            Err(failure) => ConnectionTest {
                ok: false,
                status: match &failure {
                    AttemptFailure::Status { status, .. } => Some(status.as_u16()),
                    _ => None,
                },
                latency_ms,
                detail: failure.evidence(),
            },
        })
    }

    /// Seeds each account's cost of the day from the usage records (its daily limit survives a
    /// restart).
    pub async fn seed_account_costs(&self) -> Result<(), relay_store::StoreError> {
        let now = now_ms();
        let day_start = crate::limits::Period::Day.start(now);
        let costs = self
            .snapshots
            .store()
            .account_costs_since(day_start)
            .await?;
        for account in &self.snapshots.current().accounts {
            if let Some((_, cost)) = costs.iter().find(|(id, _)| *id == account.id) {
                account.runtime.add_day_cost(*cost, now);
            }
        }
        if let Some(coord) = &self.coord {
            coord.seed_day_costs(&costs, now).await;
        }
        Ok(())
    }

    /// The client for an account: direct, or through its proxy (one pool per proxy).
    fn client_for(&self, account: &AccountEntry) -> Arc<AnyClient> {
        let Some(proxy) = &account.proxy else {
            return self.client.clone();
        };
        let mut clients = self
            .proxied_clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(proxy.clone())
            .or_insert_with(|| {
                Arc::new(transport::build_proxied_client(
                    proxy,
                    self.settings.connect_timeout,
                    &self.settings.egress,
                ))
            })
            .clone()
    }

    pub fn oauth_settings(&self) -> &OAuthProviders {
        &self.settings.oauth
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Shares every key's limits and every account's health, places, cost and conversations
    /// with the other instances on one Redis.
    pub fn share(&mut self, coord: Arc<Coordinator>, ledgers: Arc<crate::limits::SharedLedgers>) {
        self.limiter.share(ledgers);
        self.coord = Some(coord);
    }

    pub(crate) fn coord(&self) -> Option<&Arc<Coordinator>> {
        self.coord.as_ref()
    }

    pub fn usage_sink(&self) -> &UsageSink {
        &self.usage
    }

    /// The models the relay can name to a client: every priced model, and every model an
    /// account lists by name or maps (patterns are not names).
    pub fn model_names(&self) -> Vec<String> {
        let snapshot = self.snapshots.current();
        let mut names: Vec<String> = crate::pricing::known_models().map(str::to_owned).collect();
        for account in snapshot.accounts.iter().filter(|account| account.active) {
            let settings = &account.settings;
            let listed = settings.models.iter().flatten();
            let mapped = settings.model_map.iter().flat_map(|map| map.keys());
            names.extend(
                listed
                    .chain(mapped)
                    .filter(|name| !name.contains('*'))
                    .cloned(),
            );
        }
        names.sort();
        names.dedup();
        names
    }

    /// Whether the store answers (for `/health`).
    pub async fn check_store(&self) -> bool {
        self.snapshots.ping().await
    }

    /// The shared Redis's state, when limits are shared: its round trip, or `None` when it
    /// does not answer; and whether requests are served without it.
    pub async fn check_shared(&self) -> Option<SharedCheck> {
        let shared = self.limiter.shared()?;
        Some(SharedCheck {
            round_trip: shared.redis().ping().await.ok(),
            serves_without: shared.on_unavailable() == crate::limits::Unavailable::CountLocally,
        })
    }

    /// `sqlite` or `postgres`.
    pub fn store_stats(&self) -> &relay_store::StoreStats {
        self.snapshots.store().stats()
    }

    pub fn store_backend(&self) -> &'static str {
        match self.snapshots.store().backend() {
            relay_store::Backend::Sqlite => "sqlite",
            relay_store::Backend::Postgres => "postgres",
        }
    }

    /// The key holder's own view of their key (the self-service endpoints).
    pub async fn key_report(&self, key: &KeyEntry) -> crate::report::KeyReport {
        let filter = relay_store::UsageFilter {
            key_id: Some(key.id.clone()),
            since_ms: None,
        };
        let recent = match self
            .snapshots
            .store()
            .recent_usage(&filter, RECENT_REQUESTS)
            .await
        {
            Ok(recent) => recent,
            Err(error) => {
                tracing::warn!(%error, "cannot read recent requests for a key report");
                Vec::new()
            }
        };
        let now = now_ms();
        let standing = self
            .limiter
            .current_standing(&key.id, &key.policy, now)
            .await;
        crate::report::build(key, standing, recent)
    }

    /// Forwards a request, failing over between accounts before the first byte.
    pub async fn forward(&self, request: RelayRequest) -> Result<RelayResponse, RelayError> {
        // Released by `Drop` on every early return below; settled with the usage record.
        let snapshot = self.snapshots.current();
        // With one account there is nothing to stick to.
        let session = request.session.filter(|_| snapshot.accounts.len() > 1);
        // Both may ask Redis: at the same time, so they share one round trip's wait.
        let (admission, bound) =
            tokio::join!(self.admit(&request, &snapshot), self.bound_account(session));
        let mut admission = admission?;
        let dialect = request.endpoint.dialect();
        let deadline = request.received_at + self.settings.first_byte_timeout;
        // Accounts tried, and those found full on another instance (not attempts).
        let mut tried: Vec<Arc<AccountEntry>> = Vec::new();
        let mut full = 0;
        let mut last_failure: Option<AttemptFailure> = None;
        let candidates_family = crate::model::family(&request.model);
        while tried.len() - full < self.settings.max_attempts {
            let candidates = Candidates {
                dialect,
                model: &request.model,
                family: candidates_family,
                group: request.key.policy.account_group.as_deref(),
                dedicated: request.key.policy.dedicated_account.as_deref(),
                excluded: &tried,
            };
            let now = now_ms();
            // The conversation's account first, if it can serve; otherwise the usual choice.
            let preferred = bound
                .as_deref()
                .and_then(|id| snapshot.accounts.iter().find(|account| account.id == id))
                .filter(|account| is_routable(account, &candidates, now));
            let selection = match preferred {
                Some(account) => {
                    self.selector.touch(account);
                    Selection::Account(account.clone())
                }
                None => self.selector.select(&snapshot, &candidates, now),
            };
            let account = match selection {
                Selection::Account(account) => account,
                Selection::AllCooling { until_ms } if tried.len() == full => {
                    let wait_s =
                        u64::try_from((until_ms - now_ms()).max(0)).unwrap_or(0) / 1000 + 1;
                    return Err(RelayError {
                        retry_after_s: Some(wait_s),
                        ..RelayError::new(
                            ErrorKind::RateLimit,
                            "every upstream account is rate limited; retry later",
                        )
                    });
                }
                Selection::AllCooling { .. } | Selection::NoAccount => break,
            };
            if request.endpoint.counts_tokens() && account.platform.dialect_for(dialect) != dialect
            {
                // Only Anthropic counts tokens; another platform's account gets an estimate.
                return Ok(convert::estimated_token_count(&request));
            }
            // In the account's dialect; a request that cannot be said there is the client's
            // error (400), not the account's.
            let body = convert::upstream_body(&request, &account, &self.settings)?;
            tried.push(account.clone());
            // Held for the whole response (or dropped with a failed attempt).
            let Some(slot) = self.take_slot(&account).await else {
                full += 1;
                continue;
            };
            if tried.len() - full > 1 {
                self.metrics.failovers.inc();
            }
            match self
                .attempt_account(&account, &request, &body, deadline)
                .await
            {
                Ok(started) => {
                    account.runtime.record_success();
                    self.observe_windows(&account, &started.headers);
                    if let Some(session) = session {
                        self.keep_session(
                            session,
                            bound.as_deref(),
                            &account,
                            &snapshot,
                            candidates_family,
                        );
                    }
                    let mut response =
                        self.respond(started, &account, &request, tried.len() - full, admission);
                    if let RelayBody::Streaming(stream) = &mut response.body {
                        stream.hold(slot);
                    }
                    return Ok(response);
                }
                Err(failure) => {
                    self.apply_verdict(&account, &failure, candidates_family, &snapshot, &request);
                    last_failure = Some(failure);
                }
            }
        }
        let Some(failure) = last_failure else {
            return Err(RelayError::new(
                ErrorKind::ServiceUnavailable,
                "no upstream account is available for this request",
            ));
        };
        let attempts = tried.len() - full;
        let last_account = tried.pop();
        self.give_up(
            failure,
            &request,
            last_account.as_deref(),
            attempts,
            admission.take(),
        )
    }

    /// Binds the conversation to the account that served it, unless it is bound to another
    /// that is only briefly unavailable (a spill does not move a conversation).
    fn keep_session(
        &self,
        session: SessionId,
        bound: Option<&str>,
        served_by: &AccountEntry,
        snapshot: &crate::snapshot::Snapshot,
        family: Option<&'static str>,
    ) {
        let now = now_ms();
        let move_binding = match bound {
            None => true,
            Some(id) if id == served_by.id => false,
            Some(id) => snapshot
                .accounts
                .iter()
                .find(|account| account.id == id)
                .is_none_or(|account| {
                    !account.active
                        || account.runtime.is_blocked()
                        || account.runtime.available_at_ms(family) - now > SPILL_MS
                }),
        };
        if move_binding {
            match &self.coord {
                Some(coord) => coord.bind(session, &served_by.id),
                None => self.sticky.bind(session, &served_by.id, now),
            }
        }
    }

    /// The account a conversation is bound to: on every instance when they share a Redis (this
    /// instance's own bindings while it does not answer).
    async fn bound_account(&self, session: Option<SessionId>) -> Option<String> {
        let session = session?;
        if let Some(coord) = &self.coord {
            if let Ok(bound) = coord.bound_account(session).await {
                return bound;
            }
        }
        self.sticky.get(session, now_ms())
    }

    /// A place on the account for this request; `None` when the account's concurrency limit
    /// is reached on the other instances (this instance's own requests were counted when it was
    /// chosen).
    async fn take_slot(&self, account: &AccountEntry) -> Option<AccountSlot> {
        let slot = AccountSlot::take(&account.runtime);
        let (Some(coord), Some(limit)) = (&self.coord, account.settings.concurrency) else {
            return Some(slot);
        };
        match coord.take_slot(&account.id, limit).await {
            Ok(Some(shared)) => Some(slot.counted_everywhere(shared)),
            Ok(None) => None,
            // Redis does not answer: this instance's own count only.
            Err(()) => Some(slot),
        }
    }

    /// Checks what the relay would store or reserve from the request, then reserves its
    /// worst-case cost and a concurrency slot under the key's policy. Counting tokens costs
    /// nothing but still takes a slot and counts against request-rate windows.
    async fn admit(
        &self,
        request: &RelayRequest,
        snapshot: &crate::snapshot::Snapshot,
    ) -> Result<Option<Admission>, RelayError> {
        check_model_name(&request.model)?;
        if self.usage.is_full() {
            return Err(RelayError {
                retry_after_s: Some(5),
                ..RelayError::new(
                    ErrorKind::ServiceUnavailable,
                    "the relay cannot record usage right now (its database does not answer); \
                     retry shortly",
                )
            });
        }
        if let Some(max_tokens) = request
            .max_tokens
            .filter(|max_tokens| *max_tokens > self.settings.max_tokens_ceiling)
        {
            return Err(RelayError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "max_tokens: {max_tokens} is more than any model accepts (at most {})",
                    self.settings.max_tokens_ceiling
                ),
            ));
        }
        let now = now_ms();
        let policy = &request.key.policy;
        let user_agent = request
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok());
        let facts = RequestFacts {
            service: request.endpoint.service(),
            model: &request.model,
            user_agent,
            claude_code_marks: request.claude_code_marks,
            client_ip: request.client_ip,
        };
        access::check(policy, &facts, now).map_err(|denial| {
            let error_kind = if denial == Denial::Expired {
                ErrorKind::Authentication
            } else {
                ErrorKind::Permission
            };
            RelayError::new(error_kind, denial.message())
        })?;
        let estimate = if request.endpoint.counts_tokens() {
            Estimate::default()
        } else {
            self.worst_case(request, snapshot)
        };
        self.limiter
            .admit(&request.key.id, &request.key.policy, &request.model, estimate, now)
            .await
            .map(Some)
            .map_err(|refusal| {
                tracing::info!(request_id = %request.request_id, key_id = %request.key.id, ?refusal, "request refused by key policy");
                answer::refusal(&refusal, now)
            })
    }

    /// The dearest the request can be: priced as its own model and as every upstream model an
    /// account that may serve it maps it to.
    fn worst_case(&self, request: &RelayRequest, snapshot: &crate::snapshot::Snapshot) -> Estimate {
        let unpriced_as = self.settings.unpriced_as.as_deref();
        let priced_as = |model: &str| {
            estimate(
                model,
                request.body.len(),
                request.max_tokens,
                request.choices,
                unpriced_as,
            )
        };
        let own = priced_as(&request.model);
        snapshot
            .accounts
            .iter()
            .filter_map(|account| account.settings.map_model(&request.model))
            .map(priced_as)
            .fold(own, |dearest, other| {
                if other.cost_nano_usd > dearest.cost_nano_usd {
                    other
                } else {
                    dearest
                }
            })
    }

    /// One account's attempts: an overloaded (529) account is retried after a pause, up to
    /// [`health::OVERLOAD_RETRIES`] times within the deadline, before the caller moves on.
    async fn attempt_account(
        &self,
        account: &AccountEntry,
        request: &RelayRequest,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<Started, AttemptFailure> {
        let mut retries = 0;
        let mut refreshed_after_401 = false;
        loop {
            let tokens;
            let auth = match (&account.credential, account.platform) {
                (Credential::Subscription(session), Platform::Codex) => {
                    tokens = self.access_token(account, session, false).await?;
                    UpstreamAuth::ChatGpt {
                        token: &tokens.access_token,
                        account_id: tokens.account_id.as_deref(),
                    }
                }
                (Credential::Subscription(session), Platform::GeminiOauth) => {
                    tokens = self.access_token(account, session, false).await?;
                    UpstreamAuth::Bearer(&tokens.access_token)
                }
                (Credential::Subscription(session), _) => {
                    tokens = self.access_token(account, session, false).await?;
                    UpstreamAuth::Subscription(&tokens.access_token)
                }
                (Credential::ApiKey(key), Platform::OpenAi | Platform::OpenAiResponses) => {
                    UpstreamAuth::Bearer(key.expose())
                }
                (Credential::ApiKey(key), Platform::AzureOpenAi) => {
                    UpstreamAuth::AzureKey(key.expose())
                }
                (Credential::ApiKey(key), Platform::Gemini) => {
                    UpstreamAuth::GoogleKey(key.expose())
                }
                (Credential::ApiKey(key), _) => UpstreamAuth::ApiKey(key.expose()),
            };
            let client = self.client_for(account);
            let azure = account
                .settings
                .deployment
                .as_deref()
                .zip(account.settings.api_version.as_deref())
                .map(|(deployment, api_version)| adapter::Azure {
                    deployment,
                    api_version,
                });
            let mut call = request.call();
            if let Some(mapped) = account.settings.map_model(&request.model) {
                call.model = mapped;
            }
            let outbound = adapter::outbound(
                account.platform,
                &account.base_url,
                azure,
                &call,
                auth,
                body.clone(),
            );
            let attempt = upstream::attempt(
                &client,
                &account.id,
                outbound,
                account.proxy.as_ref().map(|proxy| &proxy.address),
                deadline,
                &self.settings.egress,
            );
            let failure = match attempt.await {
                Ok(started) => return Ok(started),
                Err(failure) => failure,
            };
            self.metrics.upstream_error(failure.kind());
            tracing::warn!(
                request_id = %request.request_id,
                account_id = %account.id,
                kind = failure.kind(),
                "upstream attempt failed before the first byte"
            );
            let status = match &failure {
                AttemptFailure::Status { status, .. } => status.as_u16(),
                _ => 0,
            };
            // A subscription token the upstream refuses may just have been revoked early:
            // refresh once and try again.
            if status == 401 && !refreshed_after_401 {
                if let Credential::Subscription(session) = &account.credential {
                    refreshed_after_401 = true;
                    self.access_token(account, session, true).await?;
                    continue;
                }
            }
            let pause = health::overload_backoff(retries + 1);
            if status != 529
                || retries >= health::OVERLOAD_RETRIES
                || Instant::now() + pause >= deadline
            {
                return Err(failure);
            }
            retries += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// The request failed on every account tried: record it and say why, in our words, or pass
    /// a JSON 429/529 through (in the client's dialect) so the client sees the upstream's advice.
    fn give_up(
        &self,
        failure: AttemptFailure,
        request: &RelayRequest,
        account: Option<&AccountEntry>,
        attempts: usize,
        admission: Option<Admission>,
    ) -> Result<RelayResponse, RelayError> {
        let failure_kind = failure.kind();
        let upstream_dialect = account.map_or(request.endpoint.dialect(), |account| {
            account.platform.dialect_for(request.endpoint.dialect())
        });
        let outcome = answer::failure(failure, request.endpoint.dialect(), upstream_dialect);
        let status = match &outcome {
            Ok(response) => response.status.as_u16(),
            Err(error) => error.kind.status(),
        };
        let context = self.record_context(request, account, attempts, status, admission);
        self.usage.record(context.into_record(
            relay_protocol::Usage::default(),
            None,
            Outcome::UpstreamError,
            Some(failure_kind.to_owned()),
        ));
        outcome
    }

    fn record_context(
        &self,
        request: &RelayRequest,
        account: Option<&AccountEntry>,
        attempts: usize,
        status: u16,
        admission: Option<Admission>,
    ) -> RecordContext {
        RecordContext {
            request_id: request.request_id.clone(),
            key_id: request.key.id.clone(),
            account_id: account.map(|account| account.id.clone()),
            platform: account.map(|account| account.platform),
            endpoint: request.endpoint,
            model: request.model.clone(),
            stream: request.stream,
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            received_at: request.received_at,
            ttfb: None,
            user_agent: request
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .map(|agent| bounded(agent, MAX_STORED_USER_AGENT)),
            created_at_ms: now_ms(),
            admission,
            account_runtime: None,
            shared_account: None,
            unpriced_as: self.settings.unpriced_as.clone(),
        }
    }

    fn respond(
        &self,
        started: Started,
        account: &AccountEntry,
        request: &RelayRequest,
        attempts: usize,
        admission: Option<Admission>,
    ) -> RelayResponse {
        let ttfb = request.received_at.elapsed();
        self.metrics.upstream_ttfb.observe(ttfb.as_secs_f64());
        let mut context = self.record_context(
            request,
            Some(account),
            attempts,
            started.status.as_u16(),
            admission,
        );
        context.ttfb = Some(ttfb);
        context.account_runtime = Some(account.runtime.clone());
        context.shared_account = self
            .coord
            .clone()
            .map(|coord| (coord, account.settings.daily_cost_nano_usd));
        let upstream_dialect = account.platform.dialect_for(request.endpoint.dialect());
        let passthrough = upstream_dialect == request.endpoint.dialect();
        let mut headers = adapter::client_response_headers(&started.headers, passthrough);
        let is_sse = started
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let reframe = convert::reframe(
            request,
            upstream_dialect,
            is_sse,
            started.status,
            account.platform == Platform::GeminiOauth,
        );
        // A Gemini client reads a stream as SSE only when it asked (`?alt=sse`), else as one
        // JSON array.
        let client_sse = is_sse
            && !reframe.is_whole()
            && (request.endpoint.dialect() != Dialect::Gemini || convert::gemini_sse(request));
        if !passthrough || client_sse != is_sse {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(if client_sse {
                    "text/event-stream; charset=utf-8"
                } else {
                    "application/json"
                }),
            );
        }
        let status = started.status;
        let stream = CapturedStream::new(
            started,
            is_sse,
            convert::UsageReader::new(upstream_dialect),
            reframe,
            context,
            self.usage.clone(),
            self.metrics.clone(),
            self.settings.idle_timeout,
        );
        RelayResponse {
            status,
            headers,
            body: RelayBody::Streaming(Box::new(stream)),
        }
    }
}

/// The worst case a request for `model` can cost: its body as prompt tokens at the dearest
/// prompt rate (a one-hour cache write, 2× input; long-context prices where the size calls for
/// them), plus the output limit for each answer asked for ([`crate::pricing::output_limit`]:
/// `max_tokens`, else the model's maximum). Prompt tokens are taken as half the body's bytes:
/// real text averages over three bytes a token in English and code and over two in CJK
/// (three-byte characters), and JSON adds escapes and keys; only a body contrived from
/// single-byte tokens could exceed it. Unpriced models are charged at the stand-in price
/// ([`crate::pricing::limit_cost_nano_usd`]), as at settlement.
pub fn estimate(
    model: &str,
    body_len: usize,
    max_tokens: Option<u64>,
    choices: u64,
    unpriced_as: Option<&str>,
) -> Estimate {
    let output = crate::pricing::output_limit(model, max_tokens).saturating_mul(choices.max(1));
    let usage = relay_protocol::Usage {
        cache_creation_1h_tokens: u64::try_from(body_len).unwrap_or(u64::MAX).div_ceil(2),
        output_tokens: output,
        ..relay_protocol::Usage::default()
    };
    Estimate {
        cost_nano_usd: crate::pricing::limit_cost_nano_usd(model, &usage, unpriced_as),
        tokens: usage.total_tokens(),
    }
}

const MAX_STORED_USER_AGENT: usize = 512;

/// A model name the relay will carry and store ([`relay_protocol::is_model_name`]).
fn check_model_name(model: &str) -> Result<(), RelayError> {
    if relay_protocol::is_model_name(model) {
        return Ok(());
    }
    Err(RelayError::new(
        ErrorKind::InvalidRequest,
        format!(
            "model: a model name is 1 to {} printable ASCII characters without spaces",
            relay_protocol::MAX_MODEL_NAME
        ),
    ))
}

/// `text` cut to at most `limit` bytes, at a character boundary.
fn bounded(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Requests listed in a key report.
const RECENT_REQUESTS: i64 = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{cost_nano_usd, output_limit, UNKNOWN_MODEL_OUTPUT};

    /// What a request really costs if the prompt is `prompt` tokens of `kind` and the answer
    /// `output` tokens.
    fn real_cost(model: &str, prompt_1h_write: u64, input: u64, output: u64) -> i64 {
        cost_nano_usd(
            model,
            &relay_protocol::Usage {
                input_tokens: input,
                cache_creation_1h_tokens: prompt_1h_write,
                output_tokens: output,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn the_estimate_covers_a_prompt_written_to_the_one_hour_cache_and_the_whole_output() {
        let model = "claude-sonnet-4-5";
        let body_len = 40_000;
        let prompt = (body_len as u64).div_ceil(2);
        let estimated = estimate(model, body_len, Some(1_000), 1, None);
        // The dearest way to spend the prompt (a 1 h cache write) and every output token.
        assert_eq!(estimated.cost_nano_usd, real_cost(model, prompt, 0, 1_000));
        assert!(estimated.cost_nano_usd > real_cost(model, 0, prompt, 1_000));
        assert_eq!(estimated.tokens, prompt + 1_000);
    }

    #[test]
    fn without_a_limit_the_estimate_assumes_the_models_maximum_output() {
        let model = "claude-sonnet-4-5";
        let maximum = crate::pricing::max_output_tokens(model).unwrap();
        assert_eq!(output_limit(model, None), maximum);
        assert_eq!(
            estimate(model, 0, None, 1, None).cost_nano_usd,
            real_cost(model, 0, 0, maximum)
        );
        // A limit above the model's maximum cannot be used; a model the table does not know
        // is assumed to stop at UNKNOWN_MODEL_OUTPUT.
        assert_eq!(output_limit(model, Some(u64::MAX)), maximum);
        assert_eq!(output_limit("glm-4.6", None), UNKNOWN_MODEL_OUTPUT);
        assert_eq!(output_limit("glm-4.6", Some(10)), 10);
    }

    #[test]
    fn each_answer_asked_for_is_estimated_at_the_whole_output_limit() {
        let one = estimate("gpt-4o", 100, Some(500), 1, None);
        let three = estimate("gpt-4o", 100, Some(500), 3, None);
        assert_eq!(three.tokens - one.tokens, 1_000);
        assert!(three.cost_nano_usd > one.cost_nano_usd * 2);
        // Absurd counts saturate instead of wrapping.
        assert!(estimate("gpt-4o", 100, Some(u64::MAX), u64::MAX, None).cost_nano_usd > 0);
    }
}

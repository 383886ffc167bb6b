//! A whole relay (store, snapshot, usage writer, server) over a temporary data directory.

use std::sync::Arc;
use std::time::Duration;

use relay_core::admin::{AdminService, NewAccountInput};
use relay_core::bootstrap::open_installation;
use relay_core::snapshot::SnapshotStore;
use relay_core::{Relay, RelaySettings};
use relay_server::{router, serve, AppState, ServerSettings};
use relay_store::{Store, UsageFilter, UsageRecord, UsageWriterHandle};
use relay_testkit::chatgpt::MockChatGpt;
use relay_testkit::code_assist::MockCodeAssist;
use relay_testkit::gemini::MockGemini;
use relay_testkit::openai::MockOpenAi;
use relay_testkit::MockUpstream;
use tokio::sync::oneshot;

pub const ADMIN_PASSWORD: &str = "harness-admin-password";

pub struct Harness {
    pub url: String,
    pub key: String,
    pub key_id: String,
    pub admin: AdminService,
    pub store: Store,
    pub mock: MockUpstream,
    /// The OpenAI-compatible upstream that `openai_account`s point at.
    pub openai: MockOpenAi,
    /// OpenAI's sign-in and the ChatGPT backend, for `codex` accounts.
    pub chatgpt: MockChatGpt,
    /// The Gemini API, for `gemini_account`s.
    pub gemini: MockGemini,
    /// Google's sign-in and Gemini Code Assist, for `gemini-oauth` accounts.
    pub code_assist: MockCodeAssist,
    pub relay: Arc<Relay>,
    pub snapshots: Arc<SnapshotStore>,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    writer: Option<UsageWriterHandle>,
    _reloader: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// An upstream account for the harness: name, upstream API key, priority, base URL override.
pub struct AccountSpec {
    pub name: &'static str,
    pub api_key: &'static str,
    pub priority: i64,
    pub base_url: Option<String>,
    pub platform: &'static str,
    /// Served-model patterns (`--model`); none: the platform's defaults.
    pub models: Option<Vec<String>>,
}

/// An Anthropic account on the mock Anthropic upstream.
pub fn account(name: &'static str, api_key: &'static str, priority: i64) -> AccountSpec {
    AccountSpec {
        name,
        api_key,
        priority,
        base_url: None,
        platform: "anthropic",
        models: None,
    }
}

/// An OpenAI-compatible account on the mock OpenAI upstream, serving these model patterns.
pub fn openai_account(
    name: &'static str,
    api_key: &'static str,
    priority: i64,
    models: &[&str],
) -> AccountSpec {
    AccountSpec {
        platform: "openai",
        models: Some(models.iter().map(|model| (*model).to_owned()).collect()),
        ..account(name, api_key, priority)
    }
}

/// An account of OpenAI's Responses API on the mock OpenAI upstream (its default models).
pub fn responses_account(name: &'static str, api_key: &'static str, priority: i64) -> AccountSpec {
    AccountSpec {
        platform: "openai-responses",
        ..account(name, api_key, priority)
    }
}

/// A Gemini API account on the mock Gemini upstream (its default models, `gemini-*`).
pub fn gemini_account(name: &'static str, api_key: &'static str, priority: i64) -> AccountSpec {
    AccountSpec {
        platform: "gemini",
        ..account(name, api_key, priority)
    }
}

impl Harness {
    pub async fn start(accounts: Vec<AccountSpec>) -> Self {
        Self::start_with(
            accounts,
            RelaySettings::default(),
            ServerSettings::default(),
        )
        .await
    }

    pub async fn start_with(
        accounts: Vec<AccountSpec>,
        mut relay_settings: RelaySettings,
        server_settings: ServerSettings,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let installation = open_installation(&dir.path().join("data"), None, None)
            .await
            .unwrap();
        let mock = MockUpstream::start().await;
        let openai = MockOpenAi::start().await;
        let chatgpt = MockChatGpt::start().await;
        let gemini = MockGemini::start().await;
        let code_assist = MockCodeAssist::start().await;
        relay_settings.oauth = oauth_settings(&mock, &chatgpt, &code_assist);
        // The mocks listen on loopback: allowed explicitly, as an operator would.
        let egress = loopback_egress();
        relay_settings.egress = egress.clone();
        let admin = AdminService::new(installation.store.clone(), &installation.keyring)
            .with_egress(egress);
        for spec in accounts {
            let default_base = if spec.platform.starts_with("openai") {
                openai.base_url()
            } else if spec.platform == "gemini" {
                gemini.url()
            } else {
                mock.url()
            };
            admin
                .add_account(NewAccountInput {
                    platform: spec.platform.into(),
                    name: spec.name.into(),
                    api_key: spec.api_key.into(),
                    base_url: Some(spec.base_url.unwrap_or(default_base)),
                    priority: spec.priority,
                    settings: relay_core::account_settings::AccountSettings {
                        models: spec.models,
                        ..Default::default()
                    },
                    ..NewAccountInput::default()
                })
                .await
                .unwrap();
        }
        relay_core::bootstrap::ensure_admin(&installation.store, Some(ADMIN_PASSWORD))
            .await
            .unwrap();
        let key = admin
            .create_key(
                "tester",
                &relay_core::policy::KeyPolicy::default(),
                &relay_store::KeyMeta::default(),
            )
            .await
            .unwrap();
        let assembly = relay_core::app::assemble(&installation, relay_settings, None)
            .await
            .unwrap();
        let relay = assembly.relay.clone();
        let metrics = assembly.metrics.clone();
        let snapshot_handle = assembly.snapshots.clone();
        let state = AppState {
            relay: relay.clone(),
            keys: assembly.keys.clone(),
            settings: Arc::new(server_settings.clone()),
            admin: Arc::new(admin.clone()),
            admin_auth: assembly.admin_auth.clone(),
        };
        let writer = assembly.usage_writer;
        let reloader = assembly.reloader;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(listener, router(state), &server_settings, metrics, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            url,
            key: key.secret,
            key_id: key.id,
            admin,
            store: installation.store,
            mock,
            openai,
            chatgpt,
            gemini,
            code_assist,
            relay,
            snapshots: snapshot_handle,
            client: reqwest::Client::new(),
            stop: Some(stop),
            server: Some(server),
            writer: Some(writer),
            _reloader: reloader,
            _dir: dir,
        }
    }

    /// Creates another key with this policy, visible to the relay when this returns.
    pub async fn key_with(
        &self,
        name: &str,
        policy: &relay_core::policy::KeyPolicy,
    ) -> (String, String) {
        let key = self
            .admin
            .create_key(name, policy, &relay_store::KeyMeta::default())
            .await
            .unwrap();
        self.snapshots.reload().await.unwrap();
        (key.secret, key.id)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
    }

    /// `POST /v1/messages` with the standard test body.
    pub async fn send(&self, stream: bool, prompt: &str) -> reqwest::Response {
        self.post("/v1/messages", messages_body(stream, prompt))
            .send()
            .await
            .unwrap()
    }

    /// Waits until `n` usage records exist (the writer is asynchronous), then returns them,
    /// oldest first.
    pub async fn records(&self, n: usize) -> Vec<UsageRecord> {
        for _ in 0..100 {
            let records = self
                .store
                .recent_usage(&UsageFilter::default(), 10_000)
                .await
                .unwrap();
            if records.len() >= n {
                let mut records = records;
                records.reverse();
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} usage records after 5 s");
    }

    /// Stops the server gracefully and flushes usage; returns all records.
    pub async fn shutdown(mut self) -> Vec<UsageRecord> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        if let Some(writer) = self.writer.take() {
            writer.shutdown().await;
        }
        let mut records = self
            .store
            .recent_usage(&UsageFilter::default(), 10_000)
            .await
            .unwrap();
        records.reverse();
        records
    }
}

/// The egress allowlist of every test: loopback, where the mocks listen.
pub fn loopback_egress() -> relay_core::egress::EgressGuard {
    relay_core::egress::EgressGuard::allowing(&["127.0.0.0/8", "::1"]).unwrap()
}

/// OAuth settings pointing at the mocks' token endpoints.
pub fn oauth_settings(
    mock: &MockUpstream,
    chatgpt: &MockChatGpt,
    code_assist: &MockCodeAssist,
) -> relay_core::oauth::OAuthProviders {
    relay_core::oauth::OAuthProviders {
        claude: relay_core::oauth::OAuthSettings {
            token_url: mock.token_url(),
            ..relay_core::oauth::OAuthSettings::claude()
        },
        chatgpt: relay_core::oauth::OAuthSettings {
            token_url: chatgpt.token_url(),
            ..relay_core::oauth::OAuthSettings::chatgpt()
        },
        google: relay_core::oauth::OAuthSettings {
            token_url: code_assist.token_url(),
            ..relay_core::oauth::OAuthSettings::google()
        },
    }
}

/// `POST /v1/messages` with another relay key.
pub fn post_as(harness: &Harness, key: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", key)
        .json(body)
}

pub fn messages_body(stream: bool, prompt: &str) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": stream,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// The status and Anthropic error type of an error response; fails if the body is not one.
pub async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("every error is JSON");
    assert_eq!(body["type"], "error", "{body}");
    (
        status,
        body["error"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

//! Claude subscription (Pro/Max) accounts: the OAuth 2.0 authorization-code flow with PKCE, the
//! token exchange and refresh, and the per-account session that keeps exactly one refresh in
//! flight (a rotating refresh token used twice is burnt).

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transport::AnyClient;

/// Refresh this long before the access token expires.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(300);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The beta Anthropic's API requires on requests made with a subscription token.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Where the OAuth flow goes; Anthropic's by default, a mock's in tests.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub authorize_url: String,
    pub token_url: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: String,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            authorize_url: "https://claude.ai/oauth/authorize".into(),
            token_url: "https://console.anthropic.com/v1/oauth/token".into(),
            client_id: "9d1c250a-e61b-44d9-88ed-5944d1962f5e".into(),
            redirect_uri: "https://console.anthropic.com/oauth/code/callback".into(),
            scopes: "org:create_api_key user:profile user:inference".into(),
        }
    }
}

/// A subscription account's tokens, as sealed in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokens {
    pub access_token: String,
    /// Absent for a setup token (long-lived, not refreshable).
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
}

impl OAuthTokens {
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn needs_refresh(&self, now_ms: i64) -> bool {
        let ahead = i64::try_from(REFRESH_AHEAD.as_millis()).unwrap_or(0);
        self.refresh_token.is_some()
            && self
                .expires_at_ms
                .is_some_and(|expires| expires - ahead <= now_ms)
    }
}

/// The verifier, challenge and state of one authorization.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
    pub state: String,
}

fn random_url_safe(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}

impl Pkce {
    pub fn generate() -> Self {
        let verifier = random_url_safe(32);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
            state: random_url_safe(16),
        }
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The URL the operator opens to authorize the relay.
pub fn authorize_url(settings: &OAuthSettings, pkce: &Pkce) -> String {
    let parameters = [
        ("code", "true"),
        ("client_id", settings.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", settings.redirect_uri.as_str()),
        ("scope", settings.scopes.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", pkce.state.as_str()),
    ];
    let query: Vec<String> = parameters
        .iter()
        .map(|(name, value)| format!("{name}={}", form_encode(value)))
        .collect();
    format!("{}?{}", settings.authorize_url, query.join("&"))
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The grant is no longer valid (a refresh token already used, or revoked).
    #[error("the authorization server refused the grant: {0}")]
    InvalidGrant(String),
    #[error("the authorization server could not be reached or answered badly: {0}")]
    Transport(String),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

async fn token_request(
    client: &AnyClient,
    settings: &OAuthSettings,
    body: serde_json::Value,
    now_ms: i64,
) -> Result<OAuthTokens, OAuthError> {
    let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = settings
        .token_url
        .parse()
        .map_err(|_| OAuthError::Transport("the token URL is invalid".into()))?;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| OAuthError::Transport(error.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| OAuthError::Transport(error.to_string()))?
            .to_bytes();
        Ok::<_, OAuthError>((status, body))
    };
    let (status, body) = tokio::time::timeout(TOKEN_TIMEOUT, exchange)
        .await
        .map_err(|_| OAuthError::Transport("timed out".into()))??;
    // Never the raw body: a 200 with an unexpected shape may still carry the tokens.
    let excerpt = crate::redact::excerpt(&body);
    if status.as_u16() == 400 || status.as_u16() == 401 {
        return Err(OAuthError::InvalidGrant(excerpt));
    }
    if !status.is_success() {
        return Err(OAuthError::Transport(format!("status {status}: {excerpt}")));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| OAuthError::Transport(format!("unexpected token response: {excerpt}")))?;
    Ok(OAuthTokens {
        access_token: parsed.access_token,
        refresh_token: parsed.refresh_token,
        expires_at_ms: parsed.expires_in.map(|seconds| expiry_ms(now_ms, seconds)),
    })
}

/// A token or profile answer is at most this large (real ones are a few hundred bytes); a
/// larger one is refused rather than read into memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest lifetime a token endpoint can grant that the relay believes.
const MAX_TOKEN_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

/// When a token granted at `now_ms` for `seconds` expires; any `expires_in` (negative, huge)
/// gives a time, never an overflow.
fn expiry_ms(now_ms: i64, seconds: i64) -> i64 {
    now_ms.saturating_add(seconds.clamp(0, MAX_TOKEN_LIFETIME_SECS) * 1000)
}

/// Exchanges the code the operator pasted (`code#state`, as the callback page shows it).
pub async fn exchange_code(
    client: &AnyClient,
    settings: &OAuthSettings,
    pasted: &str,
    pkce_verifier: &str,
    expected_state: &str,
    now_ms: i64,
) -> Result<OAuthTokens, OAuthError> {
    let pasted = pasted.trim();
    let (code, state) = pasted.split_once('#').unwrap_or((pasted, expected_state));
    if state != expected_state {
        return Err(OAuthError::InvalidGrant(
            "the pasted code belongs to another authorization".into(),
        ));
    }
    let body = serde_json::json!({
        "grant_type": "authorization_code",
        "code": code,
        "state": state,
        "client_id": settings.client_id,
        "redirect_uri": settings.redirect_uri,
        "code_verifier": pkce_verifier,
    });
    token_request(client, settings, body, now_ms).await
}

pub async fn refresh(
    client: &AnyClient,
    settings: &OAuthSettings,
    refresh_token: &str,
    now_ms: i64,
) -> Result<OAuthTokens, OAuthError> {
    let body = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": settings.client_id,
    });
    let mut tokens = token_request(client, settings, body, now_ms).await?;
    // A server that does not rotate keeps the old refresh token valid.
    if tokens.refresh_token.is_none() {
        tokens.refresh_token = Some(refresh_token.to_owned());
    }
    Ok(tokens)
}

#[derive(Deserialize, Default)]
struct Profile {
    #[serde(default)]
    account: ProfileAccount,
}

#[derive(Deserialize, Default)]
struct ProfileAccount {
    #[serde(default)]
    has_claude_max: bool,
    #[serde(default)]
    has_claude_pro: bool,
}

/// The subscription tier (`max`, `pro` or `free`) from the OAuth profile endpoint, or `None`
/// when it cannot be read (the account still works; only the Opus check is skipped).
pub async fn subscription_tier(
    client: &AnyClient,
    base_url: &str,
    access_token: &str,
) -> Option<&'static str> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = format!("{}/api/oauth/profile", base_url.trim_end_matches('/'))
        .parse()
        .ok()?;
    let headers = request.headers_mut();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {access_token}")).ok()?,
    );
    headers.insert("anthropic-beta", http::HeaderValue::from_static(OAUTH_BETA));
    let fetch = async {
        let response = client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice::<Profile>(&body).ok()
    };
    let profile = tokio::time::timeout(TOKEN_TIMEOUT, fetch).await.ok()??;
    Some(if profile.account.has_claude_max {
        "max"
    } else if profile.account.has_claude_pro {
        "pro"
    } else {
        "free"
    })
}

/// A subscription account's live tokens, kept across snapshot reloads, with the lock that
/// makes refreshes one at a time.
#[derive(Debug)]
pub struct OAuthSession {
    tokens: Mutex<OAuthTokens>,
    refreshing: tokio::sync::Mutex<()>,
}

impl OAuthSession {
    pub fn new(tokens: OAuthTokens) -> Self {
        Self {
            tokens: Mutex::new(tokens),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn tokens(&self) -> OAuthTokens {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, tokens: OAuthTokens) {
        *self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
    }

    /// Takes tokens read from the store if they differ from ours and do not expire earlier
    /// (an operator re-authorized); our own refreshes reach the store too and compare equal.
    pub fn adopt_if_newer(&self, stored: &OAuthTokens) {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *tokens != *stored && stored.expires_at_ms >= tokens.expires_at_ms {
            *tokens = stored.clone();
        }
    }

    /// Held while refreshing; whoever gets it second finds fresh tokens and does nothing.
    pub async fn refresh_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.refreshing.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_expires_in_gives_an_expiry_without_overflow() {
        assert_eq!(expiry_ms(1_000, 60), 61_000);
        assert_eq!(expiry_ms(1_000, -5), 1_000);
        assert_eq!(
            expiry_ms(1_000, i64::MAX),
            1_000 + MAX_TOKEN_LIFETIME_SECS * 1000
        );
        assert_eq!(expiry_ms(i64::MAX, 60), i64::MAX);
    }

    #[test]
    fn pkce_challenge_is_the_s256_of_the_verifier_and_goes_into_the_url() {
        let pkce = Pkce::generate();
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(pkce.verifier.as_bytes()));
        assert_eq!(pkce.challenge, expected);
        assert!(pkce.verifier.len() >= 43);
        let url = authorize_url(&OAuthSettings::default(), &pkce);
        assert!(url.starts_with("https://claude.ai/oauth/authorize?code=true&client_id="));
        assert!(url.contains(&format!("code_challenge={}", pkce.challenge)));
        assert!(url.contains("code_challenge_method=S256"));
        assert!(url.contains("scope=org%3Acreate_api_key%20user%3Aprofile%20user%3Ainference"));
        assert!(url.contains(&format!("state={}", pkce.state)));
    }

    #[test]
    fn refresh_is_due_ahead_of_expiry_and_never_for_setup_tokens() {
        let tokens = OAuthTokens {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
            expires_at_ms: Some(1_000_000),
        };
        assert!(!tokens.needs_refresh(1_000_000 - 300_001));
        assert!(tokens.needs_refresh(1_000_000 - 300_000));
        let setup = OAuthTokens {
            refresh_token: None,
            ..tokens
        };
        assert!(!setup.needs_refresh(2_000_000));
    }
}

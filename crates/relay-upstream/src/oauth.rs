//! Subscription accounts' sign-in: the OAuth 2.0 authorization-code flow with PKCE, the token
//! exchange and refresh, and the per-account session that keeps exactly one refresh in flight
//! (a rotating refresh token used twice is burnt). One mechanism for both providers the relay
//! signs in to — Claude (Pro/Max) and ChatGPT (Plus/Pro/Team, for Codex) — whose differences
//! are data: where the flow goes, what the authorize URL carries, how the code is exchanged.

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
use crate::Platform;

/// Refresh this long before the access token expires.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(300);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the relay signs in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Anthropic, for Claude subscriptions (`claude-oauth` accounts).
    Claude,
    /// OpenAI, for ChatGPT subscriptions (`codex` accounts), as `codex login` does.
    ChatGpt,
    /// Google, for Gemini Code Assist (`gemini-oauth` accounts), as Gemini CLI's "Login with
    /// Google" does.
    Google,
}

impl Provider {
    /// The platform whose accounts this provider signs in.
    pub fn platform(self) -> Platform {
        match self {
            Self::Claude => Platform::ClaudeOauth,
            Self::ChatGpt => Platform::Codex,
            Self::Google => Platform::GeminiOauth,
        }
    }

    pub fn for_platform(platform: Platform) -> Option<Self> {
        match platform {
            Platform::ClaudeOauth => Some(Self::Claude),
            Platform::Codex => Some(Self::ChatGpt),
            Platform::GeminiOauth => Some(Self::Google),
            _ => None,
        }
    }
}

/// Where one provider's OAuth flow goes: its own endpoints by default, a mock's in tests.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub provider: Provider,
    pub authorize_url: String,
    pub token_url: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: String,
    /// An installed application's client secret (Google's; public by design, as in Gemini CLI).
    pub client_secret: Option<String>,
}

impl OAuthSettings {
    /// Anthropic's endpoints and Claude Code's client.
    pub fn claude() -> Self {
        Self {
            provider: Provider::Claude,
            authorize_url: "https://claude.ai/oauth/authorize".into(),
            token_url: "https://console.anthropic.com/v1/oauth/token".into(),
            client_id: "9d1c250a-e61b-44d9-88ed-5944d1962f5e".into(),
            redirect_uri: "https://console.anthropic.com/oauth/code/callback".into(),
            scopes: "org:create_api_key user:profile user:inference".into(),
            client_secret: None,
        }
    }

    /// OpenAI's endpoints and Codex CLI's client, with the loopback redirect `codex login`
    /// registers (the browser lands on a page that does not load; its address carries the code).
    pub fn chatgpt() -> Self {
        Self {
            provider: Provider::ChatGpt,
            authorize_url: "https://auth.openai.com/oauth/authorize".into(),
            token_url: "https://auth.openai.com/oauth/token".into(),
            client_id: "app_EMoamEEZ73f0CkXaXp7hrann".into(),
            redirect_uri: "http://localhost:1455/auth/callback".into(),
            scopes: "openid profile email offline_access".into(),
            client_secret: None,
        }
    }

    /// Google's endpoints and Gemini CLI's installed-application client, with the redirect its
    /// no-browser sign-in uses (the page shows the code to paste).
    pub fn google() -> Self {
        Self {
            provider: Provider::Google,
            authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            client_id: "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
                .into(),
            redirect_uri: "https://codeassist.google.com/authcode".into(),
            scopes: "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile".into(),
            client_secret: Some("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".into()),
        }
    }
}

/// Both providers' settings, as the relay is configured.
#[derive(Debug, Clone)]
pub struct OAuthProviders {
    pub claude: OAuthSettings,
    pub chatgpt: OAuthSettings,
    pub google: OAuthSettings,
}

impl Default for OAuthProviders {
    fn default() -> Self {
        Self {
            claude: OAuthSettings::claude(),
            chatgpt: OAuthSettings::chatgpt(),
            google: OAuthSettings::google(),
        }
    }
}

impl OAuthProviders {
    pub fn get(&self, provider: Provider) -> &OAuthSettings {
        match provider {
            Provider::Claude => &self.claude,
            Provider::ChatGpt => &self.chatgpt,
            Provider::Google => &self.google,
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
    /// A ChatGPT account's workspace (`chatgpt-account-id`), from its id token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
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

/// What a grant says about the account besides its tokens (ChatGPT's id token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The subscription plan (`plus`, `pro`, `team` …).
    pub plan: Option<String>,
}

/// Tokens granted, with what the grant said about the account.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tokens: OAuthTokens,
    pub identity: Identity,
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

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The URL the operator opens to authorize the relay.
pub fn authorize_url(settings: &OAuthSettings, pkce: &Pkce) -> String {
    let common = [
        ("response_type", "code"),
        ("client_id", settings.client_id.as_str()),
        ("redirect_uri", settings.redirect_uri.as_str()),
        ("scope", settings.scopes.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", pkce.state.as_str()),
    ];
    let parameters: Vec<(&str, &str)> = match settings.provider {
        // Anthropic's callback page shows the code for the operator to paste.
        Provider::Claude => std::iter::once(("code", "true")).chain(common).collect(),
        // What `codex login` asks for: the organizations in the id token (the account id
        // comes from there) and Codex's simplified consent screen.
        Provider::ChatGpt => common
            .into_iter()
            .chain([
                ("id_token_add_organizations", "true"),
                ("codex_cli_simplified_flow", "true"),
                ("originator", "codex_cli_rs"),
            ])
            .collect(),
        // A refresh token only comes with offline access, and again only with consent.
        Provider::Google => common
            .into_iter()
            .chain([("access_type", "offline"), ("prompt", "consent")])
            .collect(),
    };
    format!("{}?{}", settings.authorize_url, form(&parameters))
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
    id_token: Option<String>,
}

/// How a token request's body is written.
enum Encoding {
    Json(serde_json::Value),
    Form(String),
}

async fn token_request(
    client: &AnyClient,
    settings: &OAuthSettings,
    body: Encoding,
    now_ms: i64,
) -> Result<Grant, OAuthError> {
    let (content_type, body) = match body {
        Encoding::Json(value) => ("application/json", value.to_string()),
        Encoding::Form(text) => ("application/x-www-form-urlencoded", text),
    };
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = settings
        .token_url
        .parse()
        .map_err(|_| OAuthError::Transport("the token URL is invalid".into()))?;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    let (status, body) = exchange(client, request, TOKEN_TIMEOUT)
        .await
        .map_err(OAuthError::Transport)?;
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
    let claims = parsed
        .id_token
        .as_deref()
        .map(crate::chatgpt::IdClaims::read)
        .unwrap_or_default();
    let expires_at_ms = match parsed.expires_in {
        Some(seconds) => Some(expiry_ms(now_ms, seconds)),
        // OpenAI's access tokens are JWTs that say when they expire.
        None => crate::chatgpt::jwt_expiry_ms(&parsed.access_token),
    };
    Ok(Grant {
        tokens: OAuthTokens {
            access_token: parsed.access_token,
            refresh_token: parsed.refresh_token,
            expires_at_ms,
            account_id: claims.account_id,
        },
        identity: Identity { plan: claims.plan },
    })
}

/// Sends one sign-in related request (a token grant, a profile, a Code Assist set-up call) and
/// reads its answer, at most [`MAX_ANSWER_BYTES`], within `timeout`.
pub(crate) async fn exchange(
    client: &AnyClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// A token or profile answer is at most this large (real ones are a few kilobytes); a larger
/// one is refused rather than read into memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest lifetime a token endpoint can grant that the relay believes.
const MAX_TOKEN_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

/// When a token granted at `now_ms` for `seconds` expires; any `expires_in` (negative, huge)
/// gives a time, never an overflow.
pub(crate) fn expiry_ms(now_ms: i64, seconds: i64) -> i64 {
    now_ms.saturating_add(seconds.clamp(0, MAX_TOKEN_LIFETIME_SECS) * 1000)
}

/// The code and state in what the operator pasted: the callback page's `code#state`
/// (Anthropic), the address the browser was sent to (`…/auth/callback?code=…&state=…`, OpenAI),
/// or the bare code.
fn pasted_code(pasted: &str) -> (String, Option<String>) {
    let pasted = pasted.trim();
    if let Some((_, query)) = pasted.split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        let mut code = None;
        let mut state = None;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "code" => code = Some(value.into_owned()),
                "state" => state = Some(value.into_owned()),
                _ => {}
            }
        }
        if let Some(code) = code {
            return (code, state);
        }
    }
    match pasted.split_once('#') {
        Some((code, state)) => (code.to_owned(), Some(state.to_owned())),
        None => (pasted.to_owned(), None),
    }
}

/// Exchanges the code the operator pasted for the account's tokens.
pub async fn exchange_code(
    client: &AnyClient,
    settings: &OAuthSettings,
    pasted: &str,
    pkce_verifier: &str,
    expected_state: &str,
    now_ms: i64,
) -> Result<Grant, OAuthError> {
    let (code, state) = pasted_code(pasted);
    if state
        .as_deref()
        .is_some_and(|state| state != expected_state)
    {
        return Err(OAuthError::InvalidGrant(
            "the pasted code belongs to another authorization".into(),
        ));
    }
    let body = match settings.provider {
        Provider::Claude => Encoding::Json(serde_json::json!({
            "grant_type": "authorization_code",
            "code": code,
            "state": expected_state,
            "client_id": settings.client_id,
            "redirect_uri": settings.redirect_uri,
            "code_verifier": pkce_verifier,
        })),
        Provider::ChatGpt | Provider::Google => {
            let mut fields = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", settings.redirect_uri.as_str()),
                ("client_id", settings.client_id.as_str()),
                ("code_verifier", pkce_verifier),
            ];
            if let Some(secret) = &settings.client_secret {
                fields.push(("client_secret", secret));
            }
            Encoding::Form(form(&fields))
        }
    };
    token_request(client, settings, body, now_ms).await
}

/// Refreshes with `current`'s refresh token. A server that does not rotate keeps the old one
/// valid; one that sends no new id token keeps the account id.
pub async fn refresh(
    client: &AnyClient,
    settings: &OAuthSettings,
    current: &OAuthTokens,
    now_ms: i64,
) -> Result<OAuthTokens, OAuthError> {
    let Some(refresh_token) = current.refresh_token.as_deref() else {
        return Ok(current.clone());
    };
    let body = match (&settings.client_secret, settings.provider) {
        // Google's token endpoint takes a form with the client's secret.
        (Some(secret), _) => Encoding::Form(form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &settings.client_id),
            ("client_secret", secret),
        ])),
        (None, _) => Encoding::Json(serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": settings.client_id,
        })),
    };
    let mut tokens = token_request(client, settings, body, now_ms).await?.tokens;
    if tokens.refresh_token.is_none() {
        tokens.refresh_token = Some(refresh_token.to_owned());
    }
    if tokens.account_id.is_none() {
        tokens.account_id.clone_from(&current.account_id);
    }
    Ok(tokens)
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
        let url = authorize_url(&OAuthSettings::claude(), &pkce);
        assert!(url.starts_with(
            "https://claude.ai/oauth/authorize?code=true&response_type=code&client_id="
        ));
        assert!(url.contains(&format!("code_challenge={}", pkce.challenge)));
        assert!(url.contains("code_challenge_method=S256"));
        assert!(url.contains("scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference"));
        assert!(url.contains(&format!("state={}", pkce.state)));

        let url = authorize_url(&OAuthSettings::chatgpt(), &pkce);
        assert!(url.starts_with(
            "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkXaXp7hrann&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&scope=openid+profile+email+offline_access&"
        ), "{url}");
        assert!(url.contains(&format!("code_challenge={}", pkce.challenge)));
        assert!(url.ends_with("&id_token_add_organizations=true&codex_cli_simplified_flow=true&originator=codex_cli_rs"), "{url}");
        assert!(!url.contains("code=true"));
    }

    #[test]
    fn a_pasted_code_is_read_from_a_callback_address_a_code_and_state_or_a_bare_code() {
        assert_eq!(
            pasted_code(
                " http://localhost:1455/auth/callback?code=ac_1%2Bx&scope=openid&state=st-9 "
            ),
            ("ac_1+x".to_owned(), Some("st-9".to_owned()))
        );
        assert_eq!(
            pasted_code("abc#st"),
            ("abc".to_owned(), Some("st".to_owned()))
        );
        assert_eq!(pasted_code("abc"), ("abc".to_owned(), None));
        // An address without a code is taken as the operator wrote it (and refused upstream).
        assert_eq!(
            pasted_code("http://localhost:1455/auth/callback?error=access_denied"),
            (
                "http://localhost:1455/auth/callback?error=access_denied".to_owned(),
                None
            )
        );
    }

    #[test]
    fn refresh_is_due_ahead_of_expiry_and_never_for_setup_tokens() {
        let tokens = OAuthTokens {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
            expires_at_ms: Some(1_000_000),
            account_id: None,
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

//! ChatGPT subscription accounts (`codex`): what their sign-in carries (OpenAI's id and access
//! tokens are JWTs), Codex's own `auth.json`, and what the ChatGPT backend's Codex endpoint asks
//! of a Responses request beyond the public API.
//!
//! The relay reads JWT claims without verifying signatures: the tokens come from the token
//! endpoint over TLS (or from the operator's own `auth.json`) and are only ever sent back to
//! OpenAI, which verifies them; the claims only say where to send and when to refresh.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::oauth::{Identity, OAuthTokens};

/// The claim namespace OpenAI puts ChatGPT facts in.
const AUTH_CLAIM: &str = "https://api.openai.com/auth";

fn jwt_payload(jwt: &str) -> Option<Value> {
    let mut parts = jwt.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// When a JWT says it expires (`exp`, Unix seconds), in ms.
pub fn jwt_expiry_ms(jwt: &str) -> Option<i64> {
    jwt_payload(jwt)?["exp"].as_i64()?.checked_mul(1000)
}

/// The claims of an OpenAI id token the relay uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdClaims {
    /// The workspace requests are made for (`chatgpt-account-id`).
    pub account_id: Option<String>,
    /// `plus`, `pro`, `team` …
    pub plan: Option<String>,
}

impl IdClaims {
    /// What `jwt` claims; nothing for a token that is not a readable JWT.
    pub fn read(jwt: &str) -> Self {
        let Some(payload) = jwt_payload(jwt) else {
            return Self::default();
        };
        let auth = &payload[AUTH_CLAIM];
        let text = |name: &str| {
            auth[name]
                .as_str()
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        Self {
            account_id: text("chatgpt_account_id"),
            plan: text("chatgpt_plan_type"),
        }
    }
}

#[derive(Deserialize)]
struct AuthDotJson {
    tokens: Option<AuthDotJsonTokens>,
}

#[derive(Deserialize)]
struct AuthDotJsonTokens {
    id_token: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    account_id: Option<String>,
}

/// The tokens in Codex's `auth.json` (what `codex login` writes in `~/.codex`), with what its id
/// token says. The access token's own expiry decides the first refresh.
pub fn tokens_from_auth_json(text: &str) -> Result<(OAuthTokens, Identity), String> {
    let parsed: AuthDotJson = serde_json::from_str(text)
        .map_err(|error| format!("this is not Codex's auth.json: {error}"))?;
    let Some(tokens) = parsed.tokens else {
        return Err(
            "this auth.json holds no ChatGPT sign-in (an API key login has no tokens); \
             sign in with `codex login` first, or add the key as an openai-responses account"
                .into(),
        );
    };
    let claims = tokens
        .id_token
        .as_deref()
        .map(IdClaims::read)
        .unwrap_or_default();
    let account_id = tokens
        .account_id
        .filter(|id| !id.is_empty())
        .or(claims.account_id);
    if tokens.access_token.trim().is_empty() {
        return Err("the auth.json's access token is empty".into());
    }
    Ok((
        OAuthTokens {
            expires_at_ms: jwt_expiry_ms(&tokens.access_token),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.filter(|token| !token.is_empty()),
            account_id,
        },
        Identity { plan: claims.plan },
    ))
}

/// Request fields the ChatGPT backend refuses, as peers have found it: settings of the public API
/// that a subscription does not offer. Codex itself sends none of them; other clients' requests
/// (the SDKs, converted Chat and Anthropic requests) lose them here on purpose.
const REFUSED_FIELDS: &[&str] = &[
    "max_output_tokens",
    "max_tool_calls",
    "temperature",
    "top_p",
    "user",
    "truncation",
    "safety_identifier",
    "prompt_cache_retention",
];

/// A Responses body as the ChatGPT backend takes it: never stored (`store: false`; it keeps
/// no conversations for the relay to refer back to), always streamed (it answers nothing else;
/// the relay assembles the whole response for a client that did not stream), without the
/// fields it refuses. A compaction is sent as it came, without `store`. `None`: not a JSON
/// object, sent as it came for the backend to refuse.
pub fn backend_body(body: &[u8], compact: bool) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    object.remove("store");
    if !compact {
        object.insert("store".into(), Value::Bool(false));
        object.insert("stream".into(), Value::Bool(true));
        for field in REFUSED_FIELDS {
            object.remove(*field);
        }
    }
    serde_json::to_vec(&object).ok()
}

/// When a 429 that says `usage_limit_reached` lets the subscription serve again: the time it
/// names (`resets_at`, Unix seconds), or `resets_in_seconds` from now, or an hour when it names
/// neither. `None` for any other answer.
pub fn usage_limit_reset_ms(body: &[u8], now_ms: i64) -> Option<i64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = &value["error"];
    let said = error["type"] == "usage_limit_reached" || error["code"] == "usage_limit_reached";
    if !said {
        return None;
    }
    let at = error["resets_at"]
        .as_i64()
        .and_then(|seconds| seconds.checked_mul(1000));
    let within = error["resets_in_seconds"]
        .as_f64()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(|seconds| now_ms.saturating_add((seconds.min(1e9) * 1000.0) as i64));
    Some(at.or(within).unwrap_or(now_ms + 3_600_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &Value) -> String {
        let encode = |value: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        format!(
            "{}.{}.sig",
            encode(&serde_json::json!({"alg": "RS256"})),
            encode(payload)
        )
    }

    #[test]
    fn the_account_id_plan_and_expiry_are_read_from_the_tokens() {
        let id = jwt(&serde_json::json!({
            "email": "a@example.com",
            AUTH_CLAIM: {"chatgpt_account_id": "ws-1", "chatgpt_plan_type": "pro"},
        }));
        assert_eq!(
            IdClaims::read(&id),
            IdClaims {
                account_id: Some("ws-1".into()),
                plan: Some("pro".into())
            }
        );
        assert_eq!(IdClaims::read("not-a-jwt"), IdClaims::default());
        assert_eq!(
            jwt_expiry_ms(&jwt(&serde_json::json!({"exp": 1_900_000_000}))),
            Some(1_900_000_000_000)
        );
        assert_eq!(jwt_expiry_ms("a.b.c"), None);
    }

    #[test]
    fn codex_auth_json_gives_the_tokens_and_an_api_key_login_is_refused() {
        let access = jwt(&serde_json::json!({"exp": 1_900_000_000}));
        let id = jwt(
            &serde_json::json!({AUTH_CLAIM: {"chatgpt_account_id": "ws-2", "chatgpt_plan_type": "plus"}}),
        );
        let file = serde_json::json!({
            "OPENAI_API_KEY": null,
            "tokens": {"id_token": id, "access_token": access, "refresh_token": "rt-1", "account_id": null},
            "last_refresh": "2026-11-30T10:00:00Z",
        });
        let (tokens, identity) = tokens_from_auth_json(&file.to_string()).unwrap();
        assert_eq!(tokens.access_token, access);
        assert_eq!(tokens.refresh_token.as_deref(), Some("rt-1"));
        assert_eq!(tokens.expires_at_ms, Some(1_900_000_000_000));
        assert_eq!(tokens.account_id.as_deref(), Some("ws-2"));
        assert_eq!(identity.plan.as_deref(), Some("plus"));

        let api_key_login = r#"{"OPENAI_API_KEY": "sk-x", "tokens": null}"#;
        assert!(tokens_from_auth_json(api_key_login)
            .unwrap_err()
            .contains("no ChatGPT sign-in"));
        assert!(tokens_from_auth_json("[]").is_err());
    }

    #[test]
    fn the_backend_body_is_unstored_streamed_and_without_refused_fields() {
        let body = br#"{"model":"gpt-5-codex","input":"hi","store":true,"stream":false,"max_output_tokens":50,"temperature":0.2,"reasoning":{"effort":"low"}}"#;
        let shaped: Value = serde_json::from_slice(&backend_body(body, false).unwrap()).unwrap();
        assert_eq!(shaped["store"], false);
        assert_eq!(shaped["stream"], true);
        assert!(shaped.get("max_output_tokens").is_none());
        assert!(shaped.get("temperature").is_none());
        assert_eq!(shaped["reasoning"]["effort"], "low");
        let compact: Value = serde_json::from_slice(&backend_body(body, true).unwrap()).unwrap();
        assert!(compact.get("store").is_none());
        assert_eq!(compact["stream"], false);
        assert_eq!(backend_body(b"[1]", false), None);
    }

    #[test]
    fn a_usage_limit_names_when_the_subscription_serves_again() {
        let now = 1_000_000;
        let within = br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_in_seconds":120}}"#;
        assert_eq!(usage_limit_reset_ms(within, now), Some(now + 120_000));
        let at =
            br#"{"error":{"type":"usage_limit_reached","resets_at":2000,"resets_in_seconds":5}}"#;
        assert_eq!(usage_limit_reset_ms(at, now), Some(2_000_000));
        let unnamed = br#"{"error":{"type":"usage_limit_reached"}}"#;
        assert_eq!(usage_limit_reset_ms(unnamed, now), Some(now + 3_600_000));
        let other = br#"{"error":{"type":"rate_limit_exceeded"}}"#;
        assert_eq!(usage_limit_reset_ms(other, now), None);
        assert_eq!(usage_limit_reset_ms(b"oops", now), None);
    }
}

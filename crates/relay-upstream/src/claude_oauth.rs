//! What is Claude's own about Claude subscription accounts: the beta their requests carry and
//! the tier (Max, Pro) read from the OAuth profile. The sign-in itself is [`crate::oauth`].

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde::Deserialize;

use crate::transport::AnyClient;

/// The beta Anthropic's API requires on requests made with a subscription token.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
const PROFILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    let (status, body) = crate::oauth::exchange(client, request, PROFILE_TIMEOUT)
        .await
        .ok()?;
    if !status.is_success() {
        return None;
    }
    let profile = serde_json::from_slice::<Profile>(&body).ok()?;
    Some(if profile.account.has_claude_max {
        "max"
    } else if profile.account.has_claude_pro {
        "pro"
    } else {
        "free"
    })
}

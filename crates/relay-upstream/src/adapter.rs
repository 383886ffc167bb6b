//! The upstream adapters: for each platform, where a request goes, how it authenticates and which
//! headers travel each way. A closed `match` on [`Platform`]: adding a platform is one arm in
//! each function here, and the compiler lists every place that must learn it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use relay_protocol::Dialect;

use crate::attempt::Outbound;
use crate::Platform;

const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// How a request authenticates upstream.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamAuth<'a> {
    /// `x-api-key` (Console keys, Anthropic-compatible relays).
    ApiKey(&'a str),
    /// `Authorization: Bearer` with the OAuth beta (Claude subscriptions).
    Subscription(&'a str),
    /// `Authorization: Bearer` (OpenAI and compatible hosts).
    Bearer(&'a str),
    /// `api-key` (Azure OpenAI).
    AzureKey(&'a str),
    /// `x-goog-api-key` (the Gemini API).
    GoogleKey(&'a str),
    /// `Authorization: Bearer` with the workspace in `chatgpt-account-id` (ChatGPT
    /// subscriptions).
    ChatGpt {
        token: &'a str,
        account_id: Option<&'a str>,
    },
}

/// Where an Azure OpenAI account's requests go besides its endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Azure<'a> {
    pub deployment: &'a str,
    pub api_version: &'a str,
}

/// What a client asked for, as far as the upstream request depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The dialect the client speaks (the body is already in the upstream's).
    pub dialect: Dialect,
    pub operation: Operation,
    /// The client's query string, passed on to an upstream of the same dialect.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub stream: bool,
    /// The model upstream (the account's mapping applied): part of a Gemini path.
    pub model: &'a str,
}

/// What the request does upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Generate a response (Messages, Chat Completions).
    Generate,
    /// Count a prompt's tokens (Anthropic only).
    CountTokens,
    /// Compact a conversation (the Responses API's `/responses/compact`).
    Compact,
}

/// The request to `base_url` of `platform`: its URL, the headers (the client's own when the
/// dialects match, a fresh set when the body was converted) and `body`, already in the
/// upstream's dialect. `azure` is an Azure OpenAI account's deployment and `api-version`.
pub fn outbound(
    platform: Platform,
    base_url: &str,
    azure: Option<Azure<'_>>,
    call: &Call<'_>,
    auth: UpstreamAuth<'_>,
    body: Bytes,
) -> Outbound {
    let upstream_dialect = platform.dialect_for(call.dialect);
    let passthrough = upstream_dialect == call.dialect;
    let base = base_url.trim_end_matches('/');
    let azure_path;
    let gemini_path;
    let path = match (platform, call.operation) {
        (Platform::Anthropic | Platform::ClaudeOauth, Operation::CountTokens) => {
            "/v1/messages/count_tokens"
        }
        // A compaction goes to an Anthropic upstream as an ordinary message.
        (Platform::Anthropic | Platform::ClaudeOauth, Operation::Generate | Operation::Compact) => {
            "/v1/messages"
        }
        // The base URL is the one OpenAI SDKs take (it ends in `/v1` or the host's own prefix).
        (Platform::OpenAi, _) => "/chat/completions",
        (Platform::OpenAiResponses | Platform::Codex, Operation::Compact) => "/responses/compact",
        (Platform::OpenAiResponses | Platform::Codex, _) => "/responses",
        (Platform::Gemini, operation) => {
            gemini_path = format!(
                "/v1beta/models/{}:{}",
                call.model,
                gemini_method(operation, call.stream)
            );
            gemini_path.as_str()
        }
        // Code Assist names the model in the body's envelope.
        (Platform::GeminiOauth, operation) => match gemini_method(operation, call.stream) {
            "countTokens" => "/v1internal:countTokens",
            "streamGenerateContent" => "/v1internal:streamGenerateContent?alt=sse",
            _ => "/v1internal:generateContent",
        },
        (Platform::AzureOpenAi, _) => {
            let (deployment, version) =
                azure.map_or(("", ""), |azure| (azure.deployment, azure.api_version));
            let compact = if call.operation == Operation::Compact {
                "/compact"
            } else {
                ""
            };
            azure_path = if upstream_dialect == Dialect::OpenAiResponses {
                format!("/openai/responses{compact}?api-version={version}")
            } else {
                format!("/openai/deployments/{deployment}/chat/completions?api-version={version}")
            };
            azure_path.as_str()
        }
    };
    let mut url = String::with_capacity(base.len() + path.len() + 16);
    url.push_str(base);
    url.push_str(path);
    // The query belongs to the client's dialect (Claude Code's `beta=true`); Azure's is its
    // `api-version`.
    if let Some(query) = call.query.filter(|_| {
        passthrough && !matches!(platform, Platform::AzureOpenAi | Platform::GeminiOauth)
    }) {
        url.push('?');
        url.push_str(query);
    } else if platform == Platform::Gemini && call.stream && !passthrough {
        // A converted stream is read as SSE, not as Gemini's default JSON array.
        url.push_str("?alt=sse");
    }
    let mut headers = if passthrough {
        forwarded_headers(call.headers)
    } else {
        converted_headers(call.headers, call.stream)
    };
    if upstream_dialect == Dialect::AnthropicMessages && !headers.contains_key("anthropic-version")
    {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
        );
    }
    if platform == Platform::Codex && call.operation != Operation::Compact {
        // The ChatGPT backend only streams (`chatgpt::backend_body` asks it to).
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    authenticate(&mut headers, auth);
    Outbound { url, headers, body }
}

/// A Gemini API method for the operation.
fn gemini_method(operation: Operation, stream: bool) -> &'static str {
    match operation {
        Operation::CountTokens => "countTokens",
        _ if stream => "streamGenerateContent",
        _ => "generateContent",
    }
}

/// Request headers never forwarded: the client's credentials (the account's are added instead),
/// hop-by-hop headers, and `accept-encoding` (the relay reads usage from the body, so the
/// upstream must answer uncompressed).
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "chatgpt-account-id",
    "cookie",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// The client's headers for an upstream of its own dialect, minus credentials and hop-by-hop
/// headers (and those `Connection` names).
fn forwarded_headers(client_headers: &HeaderMap) -> HeaderMap {
    let connection_named: Vec<String> = client_headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::with_capacity(client_headers.len() + 2);
    for (name, value) in client_headers {
        let name_str = name.as_str();
        if DROPPED_REQUEST_HEADERS.contains(&name_str)
            || connection_named.iter().any(|named| named == name_str)
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Headers for a converted request: the client's dialect-specific headers (`anthropic-beta`,
/// `openai-*`, SDK telemetry) mean nothing to the other side and stay here; only the content
/// type, what the relay accepts and the client's User-Agent go.
fn converted_headers(client_headers: &HeaderMap, stream: bool) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(5);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static(if stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    if let Some(agent) = client_headers.get(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, agent.clone());
    }
    headers
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn authenticate(headers: &mut HeaderMap, auth: UpstreamAuth<'_>) {
    match auth {
        UpstreamAuth::ApiKey(key) => {
            if let Some(credential) = sensitive(key) {
                headers.insert(HeaderName::from_static("x-api-key"), credential);
            }
        }
        UpstreamAuth::Bearer(token) => {
            if let Some(credential) = sensitive(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, credential);
            }
        }
        UpstreamAuth::AzureKey(key) => {
            if let Some(credential) = sensitive(key) {
                headers.insert(HeaderName::from_static("api-key"), credential);
            }
        }
        UpstreamAuth::GoogleKey(key) => {
            if let Some(credential) = sensitive(key) {
                headers.insert(HeaderName::from_static("x-goog-api-key"), credential);
            }
        }
        UpstreamAuth::ChatGpt { token, account_id } => {
            if let Some(credential) = sensitive(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, credential);
            }
            if let Some(id) = account_id.and_then(|id| HeaderValue::from_str(id).ok()) {
                headers.insert(HeaderName::from_static("chatgpt-account-id"), id);
            }
        }
        UpstreamAuth::Subscription(token) => {
            if let Some(credential) = sensitive(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, credential);
            }
            let betas: Vec<String> = headers
                .get_all("anthropic-beta")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(|beta| beta.trim().to_owned())
                .filter(|beta| !beta.is_empty())
                .collect();
            if !betas
                .iter()
                .any(|beta| beta == crate::claude_oauth::OAUTH_BETA)
            {
                let mut all = betas;
                all.push(crate::claude_oauth::OAUTH_BETA.to_owned());
                if let Ok(value) = HeaderValue::from_str(&all.join(",")) {
                    headers.insert(HeaderName::from_static("anthropic-beta"), value);
                }
            }
        }
    }
}

/// Response headers passed to the client: the ones clients act on. Everything else (cookies,
/// organization ids, CDN headers) could identify the upstream account and stays behind. The
/// upstream's rate-limit headers pass only to a client of its own dialect (`passthrough`); a
/// translated body gets its content type from the relay.
pub fn client_response_headers(upstream: &HeaderMap, passthrough: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in upstream {
        let name_str = name.as_str();
        let passes = match name_str {
            "request-id" | "x-request-id" | "x-should-retry" => true,
            "content-type" | "content-encoding" => passthrough,
            _ => {
                passthrough
                    && (name_str.starts_with("anthropic-ratelimit-")
                        || name_str.starts_with("x-ratelimit-"))
            }
        };
        if passes {
            headers.append(name.clone(), value.clone());
        }
    }
    // Whole seconds within bounds, whatever the upstream wrote (an HTTP date is dropped).
    if let Some(delay) = crate::health::retry_after(upstream) {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn client_credentials_and_hop_headers_never_reach_the_upstream() {
        let mut client = HeaderMap::new();
        client.insert("x-api-key", HeaderValue::from_static("cr_client"));
        client.insert(
            "authorization",
            HeaderValue::from_static("Bearer cr_client"),
        );
        client.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        client.insert("x-secret-hop", HeaderValue::from_static("1"));
        client.insert("accept-encoding", HeaderValue::from_static("gzip"));
        client.insert(
            "anthropic-beta",
            HeaderValue::from_static("claude-code-20250219"),
        );
        client.insert("anthropic-version", HeaderValue::from_static("2026-10-21"));
        client.insert("user-agent", HeaderValue::from_static("claude-cli/2.1.197"));
        let mut forwarded = forwarded_headers(&client);
        authenticate(&mut forwarded, UpstreamAuth::ApiKey("sk-upstream"));
        assert_eq!(forwarded.get("x-api-key").unwrap(), "sk-upstream");
        assert!(forwarded.get("authorization").is_none());
        assert!(forwarded.get("x-secret-hop").is_none());
        assert!(forwarded.get("connection").is_none());
        assert!(forwarded.get("accept-encoding").is_none());
        assert_eq!(
            forwarded.get("anthropic-beta").unwrap(),
            "claude-code-20250219"
        );
        assert_eq!(forwarded.get("anthropic-version").unwrap(), "2026-10-21");
        assert_eq!(forwarded.get("user-agent").unwrap(), "claude-cli/2.1.197");

        let mut subscription = forwarded_headers(&client);
        authenticate(&mut subscription, UpstreamAuth::Subscription("tok"));
        assert_eq!(subscription.get("authorization").unwrap(), "Bearer tok");
        assert!(subscription.get("x-api-key").is_none());
        assert_eq!(
            subscription.get("anthropic-beta").unwrap(),
            "claude-code-20250219,oauth-2025-04-20"
        );

        // Converted for another dialect: nothing of the client's protocol goes.
        let mut converted = converted_headers(&client, true);
        authenticate(&mut converted, UpstreamAuth::Bearer("sk-openai"));
        assert_eq!(converted.get("authorization").unwrap(), "Bearer sk-openai");
        assert!(converted.get("anthropic-beta").is_none());
        assert!(converted.get("x-api-key").is_none());
        assert_eq!(converted.get("accept").unwrap(), "text/event-stream");
        assert_eq!(converted.get("user-agent").unwrap(), "claude-cli/2.1.197");
    }

    #[test]
    fn only_client_relevant_response_headers_pass() {
        let mut upstream = HeaderMap::new();
        upstream.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        upstream.insert("retry-after", HeaderValue::from_static("7"));
        upstream.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_static("3"),
        );
        upstream.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("3"),
        );
        upstream.insert(
            "anthropic-organization-id",
            HeaderValue::from_static("org-secret"),
        );
        upstream.insert("openai-organization", HeaderValue::from_static("org-x"));
        upstream.insert("set-cookie", HeaderValue::from_static("a=b"));
        let passed = client_response_headers(&upstream, true);
        assert_eq!(passed.len(), 4);
        assert!(passed.get("anthropic-organization-id").is_none());
        assert!(passed.get("openai-organization").is_none());
        let translated = client_response_headers(&upstream, false);
        assert_eq!(translated.len(), 1, "{translated:?}");
        assert_eq!(translated.get("retry-after").unwrap(), "7");
        assert_eq!(
            crate::health::retry_after(&upstream),
            Some(Duration::from_secs(7))
        );
        for absurd in ["1e20", "1.7e308", "99999999999999999999"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, absurd.parse().unwrap());
            assert_eq!(
                crate::health::retry_after(&headers),
                Some(Duration::from_secs(86_400))
            );
        }
    }
}

//! One attempt against one upstream account: build the request, send it, wait for the first
//! body byte, and classify what went wrong if it did.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::egress::{EgressGuard, GuardedResolver};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use relay_protocol::ErrorKind;
use tokio::time::Instant;

use super::{ForwardRequest, RelayBody, RelayError, RelayResponse};
use crate::accounts::AccountEntry;
use crate::proxy::{ProxyConfig, ProxyKind};

/// How much of a failed attempt's body is kept, for passing on or as evidence.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How long reading a failed attempt's body may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// TCP connections whose names resolve through the egress guard.
type Tcp = HttpConnector<GuardedResolver>;

/// The pooled HTTP client every direct upstream request goes through (HTTP/1.1 and, over TLS,
/// HTTP/2).
pub type UpstreamClient = Client<HttpsConnector<Tcp>, Full<Bytes>>;

/// A client, direct or through an account's proxy (each proxy keeps its own pool).
#[derive(Debug, Clone)]
pub enum AnyClient {
    Direct(UpstreamClient),
    Tunnel(Client<HttpsConnector<Tunnel<Tcp>>, Full<Bytes>>),
    TlsTunnel(Client<HttpsConnector<Tunnel<HttpsConnector<Tcp>>>, Full<Bytes>>),
    Socks(Client<HttpsConnector<SocksV5<Tcp>>, Full<Bytes>>),
}

impl AnyClient {
    pub fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Direct(client) => client.request(request),
            Self::Tunnel(client) => client.request(request),
            Self::TlsTunnel(client) => client.request(request),
            Self::Socks(client) => client.request(request),
        }
    }
}

/// Plain TCP: names resolve through the egress guard (internal addresses are dropped).
fn http_connector(
    connect_timeout: Duration,
    egress: &EgressGuard,
) -> HttpConnector<GuardedResolver> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(egress.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

fn tls<C>(connector: C) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector)
}

fn pooled<C>(connector: C) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Builds the direct client: rustls with the webpki roots, no proxy from the environment, no
/// redirects (hyper follows none), TCP_NODELAY, a connect timeout, pooled connections.
pub fn build_client(connect_timeout: Duration, egress: &EgressGuard) -> UpstreamClient {
    pooled(tls(http_connector(connect_timeout, egress)))
}

/// Builds a client that reaches upstreams through `proxy`.
pub fn build_proxied_client(
    proxy: &ProxyConfig,
    connect_timeout: Duration,
    egress: &EgressGuard,
) -> AnyClient {
    match proxy.kind {
        ProxyKind::Http | ProxyKind::Https => {
            let auth = proxy.basic_auth();
            if proxy.kind == ProxyKind::Http {
                let mut tunnel = Tunnel::new(
                    proxy.address.clone(),
                    http_connector(connect_timeout, egress),
                );
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth);
                }
                AnyClient::Tunnel(pooled(tls(tunnel)))
            } else {
                let mut tunnel = Tunnel::new(
                    proxy.address.clone(),
                    tls(http_connector(connect_timeout, egress)),
                );
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth);
                }
                AnyClient::TlsTunnel(pooled(tls(tunnel)))
            }
        }
        ProxyKind::Socks5 => {
            let mut socks = SocksV5::new(
                proxy.address.clone(),
                http_connector(connect_timeout, egress),
            );
            if let Some((user, pass)) = &proxy.credentials {
                socks = socks.with_auth(user.clone(), pass.clone());
            }
            AnyClient::Socks(pooled(tls(socks)))
        }
    }
}

/// An upstream that answered and produced its first body byte (or an empty body).
pub(crate) struct Started {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub first_chunk: Option<Bytes>,
    pub rest: Incoming,
}

/// Why an attempt failed before anything reached the client; each is worth another account.
#[derive(Debug)]
pub(crate) enum AttemptFailure {
    Connect,
    Timeout,
    /// The upstream answered 2xx but the body broke before its first byte.
    Interrupted,
    /// A subscription account's tokens could not be refreshed.
    Credentials,
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

impl AttemptFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Interrupted => "interrupted",
            Self::Credentials => "refresh_failed",
            Self::Status { status, .. } => match status.as_u16() {
                429 => "rate_limited",
                529 => "overloaded",
                401 | 403 => "unauthorized",
                _ => "server_error",
            },
        }
    }

    /// What happened, for the log: the status, the reset headers and a short, redacted body
    /// excerpt. Response headers that could identify the account are not included.
    pub fn evidence(&self) -> String {
        match self {
            Self::Status {
                status,
                headers,
                body,
            } => {
                let resets: Vec<String> = headers
                    .iter()
                    .filter(|(name, _)| {
                        name.as_str() == "retry-after" || name.as_str().ends_with("-reset")
                    })
                    .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or("?")))
                    .collect();
                let excerpt = crate::redact::excerpt(body);
                format!(
                    "status={} {} body={excerpt}",
                    status.as_u16(),
                    resets.join(" ")
                )
            }
            other => other.kind().to_owned(),
        }
    }

    /// What the client gets once no account is left: a JSON 429/529 from the upstream passes
    /// through (its message and `retry-after` help the client); anything else is said in our
    /// words, never with the upstream's body (which may be an HTML page or name the account).
    pub fn into_outcome(self) -> Result<RelayResponse, RelayError> {
        match self {
            Self::Connect => Err(RelayError::new(
                ErrorKind::BadGateway,
                "the upstream could not be reached",
            )),
            Self::Timeout => Err(RelayError::new(
                ErrorKind::Timeout,
                "the upstream did not answer in time",
            )),
            Self::Interrupted => Err(RelayError::new(
                ErrorKind::BadGateway,
                "the upstream closed the connection before responding",
            )),
            Self::Credentials => Err(RelayError::new(
                ErrorKind::BadGateway,
                "the upstream account's credentials could not be renewed",
            )),
            Self::Status {
                status,
                headers,
                body,
            } => {
                let retry_after_s = retry_after(&headers).map(|delay| delay.as_secs().max(1));
                let is_json = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|value| value.starts_with("application/json"));
                match status.as_u16() {
                    429 | 529
                        if is_json
                            && serde_json::from_slice::<serde_json::Value>(&body).is_ok() =>
                    {
                        Ok(RelayResponse {
                            status,
                            headers: client_response_headers(&headers),
                            body: RelayBody::Buffered(crate::redact::json_body(&body)),
                        })
                    }
                    429 => Err(RelayError {
                        retry_after_s,
                        ..RelayError::new(
                            ErrorKind::RateLimit,
                            "the upstream is rate limiting requests",
                        )
                    }),
                    529 => Err(RelayError {
                        retry_after_s,
                        ..RelayError::new(ErrorKind::Overloaded, "the upstream is overloaded")
                    }),
                    401 | 403 => Err(RelayError::new(
                        ErrorKind::BadGateway,
                        "the upstream rejected the relay's account credentials",
                    )),
                    code => Err(RelayError::new(
                        ErrorKind::BadGateway,
                        format!("the upstream failed with status {code}"),
                    )),
                }
            }
        }
    }
}

/// Statuses after which another account may well succeed.
fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 429 | 500..=599)
}

/// Sends the request to `account` and waits, until `deadline`, for the first body byte.
pub(crate) async fn attempt(
    client: &AnyClient,
    account: &AccountEntry,
    auth: UpstreamAuth<'_>,
    request: &ForwardRequest,
    deadline: Instant,
    egress: &EgressGuard,
) -> Result<Started, AttemptFailure> {
    let mut url = String::with_capacity(account.base_url.len() + 48);
    url.push_str(&account.base_url);
    url.push_str(request.endpoint.upstream_path());
    if let Some(query) = &request.query {
        url.push('?');
        url.push_str(query);
    }
    let body = match account.settings.map_model(&request.model) {
        Some(upstream_model) => with_model(&request.body, upstream_model),
        None => request.body.clone(),
    };
    let mut upstream_request = Request::new(Full::new(body));
    *upstream_request.method_mut() = Method::POST;
    *upstream_request.uri_mut() = url.parse().map_err(|_| AttemptFailure::Connect)?;
    // Address literals do not pass the resolver: check them (and a proxy's) here.
    let proxy_address = account.proxy.as_ref().map(|proxy| &proxy.address);
    for target in std::iter::once(upstream_request.uri()).chain(proxy_address) {
        if let Err(refusal) = egress.check_uri(target) {
            tracing::warn!(account_id = %account.id, %refusal, "egress guard refused a target");
            return Err(AttemptFailure::Connect);
        }
    }
    *upstream_request.headers_mut() = upstream_request_headers(&request.headers, auth);
    // One timer for the whole attempt (response head and first byte share the deadline).
    let first_byte = async {
        let response = client
            .request(upstream_request)
            .await
            .map_err(|_| AttemptFailure::Connect)?;
        let (parts, mut body) = response.into_parts();
        if is_retryable(parts.status) {
            let body_deadline = deadline.min(Instant::now() + ERROR_BODY_TIMEOUT);
            let body = read_bounded(&mut body, body_deadline).await;
            return Err(AttemptFailure::Status {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        let first_chunk = loop {
            match next_data(&mut body).await {
                Some(Err(_)) => return Err(AttemptFailure::Interrupted),
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => break Some(chunk),
                None => break None,
            }
        };
        Ok(Started {
            status: parts.status,
            headers: parts.headers,
            first_chunk,
            rest: body,
        })
    };
    tokio::time::timeout_at(deadline, first_byte)
        .await
        .unwrap_or(Err(AttemptFailure::Timeout))
}

/// The body with its `model` replaced (the one change model mapping makes; everything else is
/// kept). Falls back to the original body if it cannot be rewritten.
fn with_model(body: &Bytes, model: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(body) else {
        return body.clone();
    };
    object.insert(
        "model".to_owned(),
        serde_json::Value::String(model.to_owned()),
    );
    serde_json::to_vec(&object)
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// The next data chunk of a body, skipping trailers; `None` at the end.
async fn next_data(body: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(error) => return Some(Err(error)),
        }
    }
}

async fn read_bounded(body: &mut Incoming, deadline: Instant) -> Bytes {
    let mut collected = BytesMut::new();
    while collected.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout_at(deadline, next_data(body)).await {
            Ok(Some(Ok(chunk))) => {
                let room = ERROR_BODY_LIMIT - collected.len();
                collected.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    collected.freeze()
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
    "cookie",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// How a request authenticates upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UpstreamAuth<'a> {
    /// `x-api-key` (Console keys, Anthropic-compatible relays).
    ApiKey(&'a str),
    /// `Authorization: Bearer` with the OAuth beta (subscription accounts).
    Subscription(&'a str),
}

pub(crate) fn upstream_request_headers(
    client_headers: &HeaderMap,
    auth: UpstreamAuth<'_>,
) -> HeaderMap {
    // Headers named in `Connection` are hop-by-hop too.
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
    if !headers.contains_key("anthropic-version") {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
        );
    }
    match auth {
        UpstreamAuth::ApiKey(key) => {
            if let Ok(mut credential) = HeaderValue::from_str(key) {
                credential.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-api-key"), credential);
            }
        }
        UpstreamAuth::Subscription(token) => {
            if let Ok(mut credential) = HeaderValue::from_str(&format!("Bearer {token}")) {
                credential.set_sensitive(true);
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
            if !betas.iter().any(|beta| beta == crate::oauth::OAUTH_BETA) {
                let mut all = betas;
                all.push(crate::oauth::OAUTH_BETA.to_owned());
                if let Ok(value) = HeaderValue::from_str(&all.join(",")) {
                    headers.insert(HeaderName::from_static("anthropic-beta"), value);
                }
            }
        }
    }
    headers
}

/// Response headers passed to the client: the ones clients act on. Everything else (cookies,
/// organization ids, CDN headers) could identify the upstream account and stays behind.
pub(crate) fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in upstream {
        let name_str = name.as_str();
        let passes = matches!(
            name_str,
            "content-type" | "content-encoding" | "request-id" | "x-should-retry"
        ) || name_str.starts_with("anthropic-ratelimit-");
        if passes {
            headers.append(name.clone(), value.clone());
        }
    }
    // Whole seconds within bounds, whatever the upstream wrote (an HTTP date is dropped).
    if let Some(delay) = retry_after(upstream) {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    headers
}

/// The delay an upstream asked for with `retry-after` (seconds form).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        // A day at most: anything longer is an upstream fault, not advice.
        .map(|seconds| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER_S)))
}

const MAX_RETRY_AFTER_S: f64 = 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{AccountRuntime, Platform};
    use crate::crypto::SecretString;
    use std::sync::Arc;

    #[test]
    fn client_credentials_and_hop_headers_never_reach_the_upstream() {
        let account = AccountEntry {
            id: "a".into(),
            name: "a".into(),
            platform: Platform::Anthropic,
            base_url: "http://x".into(),
            priority: 1,
            active: true,
            api_key: SecretString::new("sk-upstream".into()),
            oauth: None,
            settings: crate::account_settings::AccountSettings::default(),
            proxy: None,
            runtime: Arc::new(AccountRuntime::default()),
        };
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
        let forwarded =
            upstream_request_headers(&client, UpstreamAuth::ApiKey(account.api_key.expose()));
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

        let subscription = upstream_request_headers(&client, UpstreamAuth::Subscription("tok"));
        assert_eq!(subscription.get("authorization").unwrap(), "Bearer tok");
        assert!(subscription.get("x-api-key").is_none());
        assert_eq!(
            subscription.get("anthropic-beta").unwrap(),
            "claude-code-20250219,oauth-2025-04-20"
        );
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
            "anthropic-organization-id",
            HeaderValue::from_static("org-secret"),
        );
        upstream.insert("set-cookie", HeaderValue::from_static("a=b"));
        let passed = client_response_headers(&upstream);
        assert_eq!(passed.len(), 3);
        assert!(passed.get("anthropic-organization-id").is_none());
        assert_eq!(retry_after(&upstream), Some(Duration::from_secs(7)));
        for absurd in ["1e20", "1.7e308", "99999999999999999999"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, absurd.parse().unwrap());
            assert_eq!(retry_after(&headers), Some(Duration::from_secs(86_400)));
        }
    }
}

//! One attempt against one upstream: send a prepared request, wait for the first body byte,
//! and say what went wrong if it did (facts only: the relay decides what the client sees and
//! what happens to the account).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::egress::EgressGuard;
use crate::transport::AnyClient;

/// How much of a failed attempt's body is kept, for passing on or as evidence.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How long reading a failed attempt's body may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// An upstream that answered and produced its first body byte (or an empty body).
pub struct Started {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub first_chunk: Option<Bytes>,
    pub rest: Incoming,
}

/// Why an attempt failed before anything reached the client; each is worth another account.
#[derive(Debug)]
pub enum AttemptFailure {
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
}

/// Statuses after which another account may well succeed.
fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 429 | 500..=599)
}

/// A request ready to send: where, with which headers, and the body in the upstream's dialect.
#[derive(Debug)]
pub struct Outbound {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `outbound` and waits, until `deadline`, for the first body byte. `proxy` is the
/// account's proxy address, checked by the egress guard with the target.
pub async fn attempt(
    client: &AnyClient,
    account_id: &str,
    outbound: Outbound,
    proxy: Option<&http::Uri>,
    deadline: Instant,
    egress: &EgressGuard,
) -> Result<Started, AttemptFailure> {
    let mut upstream_request = Request::new(Full::new(outbound.body));
    *upstream_request.method_mut() = Method::POST;
    *upstream_request.uri_mut() = outbound.url.parse().map_err(|_| AttemptFailure::Connect)?;
    // Address literals do not pass the resolver: check them (and a proxy's) here.
    for target in std::iter::once(upstream_request.uri()).chain(proxy) {
        if let Err(refusal) = egress.check_uri(target) {
            tracing::warn!(account_id, %refusal, "egress guard refused a target");
            return Err(AttemptFailure::Connect);
        }
    }
    *upstream_request.headers_mut() = outbound.headers;
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

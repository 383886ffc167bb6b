//! What the mock upstreams share: the scripted [`Behavior`]s (faults) queued per upstream API
//! key, the [`RecordedRequest`]s they saw, and the paced SSE body that honours the stream faults.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::stream;
use http::HeaderMap;
use serde_json::{json, Value};

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer normally.
    Normal,
    /// Answer with this status, headers and JSON body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Wait before the response head.
    SlowFirstByte(Duration),
    /// Stream this many SSE events, then cut the connection.
    AbortAfterEvents(usize),
    /// Stream normally but pause this long between events.
    SlowEvents(Duration),
    /// Answer normally, with these extra response headers.
    NormalWithHeaders(Vec<(String, String)>),
}

impl Behavior {
    /// An Anthropic-shaped error: `{"type":"error","error":{"type","message"}}`.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            headers: Vec::new(),
            body: json!({"type":"error","error":{"type": anthropic_error_type(status),"message":format!("mock {status}")}})
                .to_string(),
        }
    }

    /// [`Behavior::status`] with extra response headers (`retry-after`, …).
    pub fn status_with_headers(status: u16, headers: &[(&str, &str)]) -> Self {
        Self::status(status).with_headers(headers)
    }

    /// An OpenAI-shaped error: `{"error":{"message","type","param","code"}}`, with the type and
    /// code OpenAI uses for the status (429 is a rate limit, `rate_limit_exceeded`).
    pub fn openai_status(status: u16) -> Self {
        let (kind, code) = openai_error_kind(status);
        Self::openai_error(status, &format!("mock {status}"), kind, code)
    }

    /// [`Behavior::openai_status`] with extra response headers, e.g. on a 429 `retry-after`,
    /// `x-ratelimit-reset-requests: 6m0s` or `x-ratelimit-reset-tokens: 1s`.
    pub fn openai_status_with_headers(status: u16, headers: &[(&str, &str)]) -> Self {
        Self::openai_status(status).with_headers(headers)
    }

    /// OpenAI's other 429: the account's quota (billing) is exhausted, `insufficient_quota`;
    /// retrying does not help.
    pub fn openai_quota_exceeded() -> Self {
        Self::openai_error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        )
    }

    fn openai_error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Self {
        Self::Status {
            status,
            headers: Vec::new(),
            body: openai_error_body(message, kind, code),
        }
    }

    fn with_headers(self, extra: &[(&str, &str)]) -> Self {
        match self {
            Self::Status { status, body, .. } => Self::Status {
                status,
                headers: extra
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect(),
                body,
            },
            other => other,
        }
    }
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The `type` and `code` OpenAI puts in an error of this status.
fn openai_error_kind(status: u16) -> (&'static str, Option<&'static str>) {
    match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => (
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
        ),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

/// `{"error":{"message","type","param":null,"code"}}`.
pub(crate) fn openai_error_body(message: &str, kind: &str, code: Option<&str>) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    /// The upstream API key it carried: `x-api-key`, else the `Authorization: Bearer` token
    /// (the OpenAI mock reads only the bearer token); empty without one.
    pub api_key: String,
}

/// The behaviours queued per API key and the requests seen so far.
#[derive(Debug, Default)]
pub(crate) struct Script {
    requests: Mutex<Vec<RecordedRequest>>,
    queues: Mutex<HashMap<String, VecDeque<Behavior>>>,
}

impl Script {
    pub(crate) fn push(&self, api_key: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        if let Ok(mut queues) = self.queues.lock() {
            queues
                .entry(api_key.to_owned())
                .or_default()
                .extend(behaviors);
        }
    }

    /// Records the request and takes the next behaviour scripted for its key.
    pub(crate) fn record(&self, request: RecordedRequest) -> Behavior {
        let behavior = self
            .queues
            .lock()
            .ok()
            .and_then(|mut queues| {
                queues
                    .get_mut(&request.api_key)
                    .and_then(VecDeque::pop_front)
            })
            .unwrap_or(Behavior::Normal);
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request);
        }
        behavior
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .map(|requests| requests.clone())
            .unwrap_or_default()
    }

    pub(crate) fn count_for(&self, api_key: &str) -> usize {
        self.requests
            .lock()
            .map(|requests| {
                requests
                    .iter()
                    .filter(|request| request.api_key == api_key)
                    .count()
            })
            .unwrap_or(0)
    }
}

/// How a successful answer is delivered, after the behaviour's own effects (an error reply, a
/// slow first byte) are applied.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Pause between stream events.
    pub(crate) gap: Duration,
    /// Cut the stream after this many events.
    pub(crate) abort_after: Option<usize>,
    /// Extra response headers.
    pub(crate) headers: Vec<(String, String)>,
}

/// What to do for a behaviour: `Err` is the scripted error reply (status, headers, body);
/// `SlowFirstByte` sleeps here.
pub(crate) async fn deliver(
    behavior: Behavior,
) -> Result<Delivery, (u16, Vec<(String, String)>, String)> {
    let mut delivery = Delivery::default();
    match behavior {
        Behavior::Normal => {}
        Behavior::NormalWithHeaders(headers) => delivery.headers = headers,
        Behavior::Status {
            status,
            headers,
            body,
        } => return Err((status, headers, body)),
        Behavior::SlowFirstByte(delay) => tokio::time::sleep(delay).await,
        Behavior::AbortAfterEvents(events) => {
            delivery.abort_after = Some(events);
            // Pace the events so each is flushed before the cut, like a real stream.
            delivery.gap = Duration::from_millis(10);
        }
        Behavior::SlowEvents(delay) => delivery.gap = delay,
    }
    Ok(delivery)
}

/// A streamed body of these SSE frames, `gap` apart, cut with an I/O error after
/// `abort_after` frames if the stream has more.
pub(crate) fn paced_body(frames: Vec<String>, delivery: &Delivery) -> Body {
    let gap = delivery.gap;
    let limit = delivery.abort_after.unwrap_or(usize::MAX);
    let aborts = delivery
        .abort_after
        .is_some_and(|limit| limit < frames.len());
    let frames: Vec<Result<Bytes, std::io::Error>> = frames
        .into_iter()
        .take(limit)
        .map(|frame| Ok(Bytes::from(frame)))
        .chain(aborts.then(|| Err(std::io::Error::other("mock abort"))))
        .collect();
    Body::from_stream(stream::unfold(
        (frames.into_iter(), true),
        move |(mut frames, first)| async move {
            let frame = frames.next()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((frame, (frames, false)))
        },
    ))
}

/// Serves `app` on a random loopback port until the handle is aborted.
pub(crate) async fn serve_on_loopback(
    app: axum::Router,
    what: &str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => unreachable!("cannot bind the mock {what}: {error}"),
    };
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}

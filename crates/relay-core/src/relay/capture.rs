//! The response body the client reads: upstream chunks passed on untouched as they arrive, while
//! usage is read from them on the side. Finishing is done exactly once, whichever comes first:
//! the upstream ends, the upstream fails or goes silent, or the client goes away (the stream is
//! dropped, which also drops the upstream connection and so cancels the upstream request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body::Body;
use hyper::body::Incoming;
use relay_protocol::anthropic::{MessagesUsageTracker, StreamEnding};
use relay_store::UsageSink;
use tokio::time::{Instant, Sleep};

use super::upstream::Started;
use super::RecordContext;
use crate::metrics::Metrics;

/// Non-streaming bodies are kept (as shared chunks) to read their usage at the end; beyond this
/// size they are still relayed but no longer kept.
const JSON_BODY_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    UpstreamFailed(&'static str),
    ClientGone,
}

struct Capture {
    tracker: MessagesUsageTracker,
    is_sse: bool,
    json_chunks: Vec<Bytes>,
    json_len: usize,
    context: RecordContext,
    sink: UsageSink,
    metrics: Arc<Metrics>,
}

impl Capture {
    fn observe(&mut self, chunk: &Bytes) {
        if self.is_sse {
            self.tracker.observe_sse_chunk(chunk);
        } else if self.json_len + chunk.len() <= JSON_BODY_LIMIT {
            self.json_len += chunk.len();
            self.json_chunks.push(chunk.clone());
        } else {
            self.json_len = usize::MAX / 2;
        }
    }

    fn finish(mut self, ending: Ending) {
        self.metrics.active_streams.dec();
        let mut error_kind = None;
        if !self.is_sse && self.json_len <= JSON_BODY_LIMIT && ending == Ending::Completed {
            let body = concat(&self.json_chunks);
            if self.context.status.is_success() {
                self.tracker.observe_json_body(&body);
            } else {
                error_kind = Some(error_type_of(&body, self.context.status.as_u16()));
            }
        }
        let outcome = match ending {
            Ending::Completed if !self.context.status.is_success() => "upstream_error",
            Ending::Completed => match self.tracker.ending() {
                StreamEnding::Error(kind) => {
                    error_kind = Some(kind.clone());
                    "upstream_error"
                }
                _ => "ok",
            },
            Ending::UpstreamFailed(kind) => {
                error_kind = Some(kind.to_owned());
                "upstream_interrupted"
            }
            // A client that leaves after the last event has everything: not partial.
            Ending::ClientGone if *self.tracker.ending() == StreamEnding::Completed => "ok",
            Ending::ClientGone => "partial",
        };
        let usage = self.tracker.usage();
        self.metrics.count_tokens(&usage);
        let upstream_model = self.tracker.model().map(str::to_owned);
        if outcome != "ok" {
            tracing::info!(
                request_id = %self.context.request_id,
                outcome,
                error_kind = error_kind.as_deref().unwrap_or(""),
                "response ended early"
            );
        }
        let record = self
            .context
            .into_record(usage, upstream_model, outcome, error_kind);
        self.sink.record(record);
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [single] => single.clone(),
        _ => {
            let mut body = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                body.extend_from_slice(chunk);
            }
            body.freeze()
        }
    }
}

/// The `error.type` of an Anthropic error body, or `http_<status>`.
fn error_type_of(body: &[u8], status: u16) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value["error"]["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("http_{status}"))
}

/// The relayed body; see the module docs.
pub struct CapturedStream {
    first_chunk: Option<Bytes>,
    upstream: Incoming,
    /// Created on the first wait and re-armed only when it fires early: chunks just move
    /// `last_chunk_at`, so a long stream costs no timer operation per chunk.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    last_chunk_at: Instant,
    capture: Option<Capture>,
}

impl std::fmt::Debug for CapturedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedStream")
            .field("finished", &self.capture.is_none())
            .finish_non_exhaustive()
    }
}

impl CapturedStream {
    pub(crate) fn new(
        started: Started,
        is_sse: bool,
        context: RecordContext,
        sink: UsageSink,
        metrics: Arc<Metrics>,
        idle_timeout: Duration,
    ) -> Self {
        metrics.active_streams.inc();
        let mut capture = Capture {
            tracker: MessagesUsageTracker::new(),
            is_sse,
            json_chunks: Vec::new(),
            json_len: 0,
            context,
            sink,
            metrics,
        };
        if let Some(chunk) = &started.first_chunk {
            capture.observe(chunk);
        }
        let mut stream = Self {
            first_chunk: started.first_chunk,
            upstream: started.rest,
            idle: None,
            idle_timeout,
            last_chunk_at: Instant::now(),
            capture: Some(capture),
        };
        // An empty upstream body has already ended.
        if stream.first_chunk.is_none() {
            stream.finish(Ending::Completed);
        }
        stream
    }

    /// Whether the upstream has been silent for the idle timeout; otherwise makes sure the
    /// timer will wake this task when it could be.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_chunk_at + self.idle_timeout;
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            // Fired for an older deadline: chunks arrived since. Re-arm and register again.
            timer.as_mut().reset(deadline);
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(capture) = self.capture.take() {
            capture.finish(ending);
        }
    }
}

impl Stream for CapturedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(chunk) = this.first_chunk.take() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.capture.is_none() {
            return Poll::Ready(None);
        }
        let polled = loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                // Trailers carry nothing the client of this API needs.
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => break Poll::Ready(Some(Ok(chunk))),
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(error))) => break Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => break Poll::Ready(None),
                Poll::Pending => break Poll::Pending,
            }
        };
        match polled {
            Poll::Ready(Some(Ok(chunk))) => {
                this.last_chunk_at = Instant::now();
                if let Some(capture) = &mut this.capture {
                    capture.observe(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish(Ending::UpstreamFailed("stream_error"));
                // An upstream drop must reach the client as an error, never as a clean end.
                Poll::Ready(Some(Err(std::io::Error::other("upstream stream failed"))))
            }
            Poll::Ready(None) => {
                this.finish(Ending::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle_expired(cx) {
                    this.finish(Ending::UpstreamFailed("idle_timeout"));
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream went silent",
                    ))));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for CapturedStream {
    fn drop(&mut self) {
        self.finish(Ending::ClientGone);
    }
}

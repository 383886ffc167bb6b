//! The response body the client reads: upstream chunks passed on as they arrive (untouched on a
//! pass-through, re-framed event by event into the client's dialect on a conversion), while
//! usage is read from the *upstream's* bytes on the side. Finishing is done exactly once, whichever comes first:
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
use relay_protocol::anthropic::StreamEnding;
use relay_protocol::usage::UsageFault;
use relay_store::UsageSink;
use tokio::time::{Instant, Sleep};

use super::convert::{Reframe, UsageReader};
use super::{Outcome, RecordContext};
use crate::accounts::AccountSlot;
use crate::metrics::Metrics;
use relay_upstream::attempt::Started;

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
    tracker: UsageReader,
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
                error_kind = Some(self.tracker.error_type(&body, self.context.status.as_u16()));
            }
        }
        let outcome = match ending {
            Ending::Completed if !self.context.status.is_success() => Outcome::UpstreamError,
            Ending::Completed => match self.tracker.ending() {
                StreamEnding::Error(kind) => {
                    error_kind = Some(kind.clone());
                    Outcome::UpstreamError
                }
                _ => Outcome::Ok,
            },
            Ending::UpstreamFailed(kind) => {
                error_kind = Some(kind.to_owned());
                Outcome::UpstreamInterrupted
            }
            // A client that leaves after the last event has everything: not partial.
            Ending::ClientGone if *self.tracker.ending() == StreamEnding::Completed => Outcome::Ok,
            Ending::ClientGone => Outcome::Partial,
        };
        if error_kind.is_none() {
            error_kind = self.tracker.fault().map(|fault| fault.as_str().to_owned());
        }
        if error_kind.is_none() && !self.is_sse && self.json_len > JSON_BODY_LIMIT {
            // A whole body too large to keep was passed on unread: its usage is unknown.
            error_kind = Some(UsageFault::Unreadable.as_str().to_owned());
        }
        let usage = self.tracker.usage();
        self.metrics.count_tokens(&usage);
        let upstream_model = self.tracker.model().map(str::to_owned);
        if outcome != Outcome::Ok {
            tracing::info!(
                request_id = %self.context.request_id,
                outcome = outcome.as_str(),
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

/// The relayed body; see the module docs. Generic over the upstream body so it can be tested
/// without a network.
pub struct CapturedStream<B = Incoming> {
    /// Bytes ready for the client (the first chunk, or a translator's last words).
    ready: Option<Bytes>,
    upstream: B,
    /// Created on the first wait and re-armed only when it fires early: chunks just move
    /// `last_chunk_at`, so a long stream costs no timer operation per chunk.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    last_chunk_at: Instant,
    capture: Option<Capture>,
    reframe: Reframe,
    /// The account's concurrency slot, released when the response ends.
    slot: Option<AccountSlot>,
}

impl<B> std::fmt::Debug for CapturedStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedStream")
            .field("finished", &self.capture.is_none())
            .finish_non_exhaustive()
    }
}

impl CapturedStream<Incoming> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        started: Started,
        is_sse: bool,
        tracker: UsageReader,
        reframe: Reframe,
        context: RecordContext,
        sink: UsageSink,
        metrics: Arc<Metrics>,
        idle_timeout: Duration,
    ) -> Self {
        Self::with_body(
            started.first_chunk,
            started.rest,
            reframe,
            Capture {
                tracker,
                is_sse,
                json_chunks: Vec::new(),
                json_len: 0,
                context,
                sink,
                metrics,
            },
            idle_timeout,
        )
    }
}

impl<B> CapturedStream<B> {
    /// Keeps the account's concurrency slot until the response ends.
    pub(crate) fn hold(&mut self, slot: AccountSlot) {
        if self.capture.is_some() {
            self.slot = Some(slot);
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(capture) = self.capture.take() {
            capture.finish(ending);
        }
        self.slot = None;
    }
}

impl<B> CapturedStream<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    fn with_body(
        first_chunk: Option<Bytes>,
        upstream: B,
        mut reframe: Reframe,
        mut capture: Capture,
        idle_timeout: Duration,
    ) -> Self {
        capture.metrics.active_streams.inc();
        let ended = first_chunk.is_none();
        let ready = match first_chunk {
            Some(chunk) => {
                capture.observe(&chunk);
                reframe.push(chunk)
            }
            None => reframe.finish(),
        };
        let mut stream = Self {
            ready,
            upstream,
            idle: None,
            idle_timeout,
            last_chunk_at: Instant::now(),
            capture: Some(capture),
            reframe,
            slot: None,
        };
        // An empty upstream body has already ended.
        if ended {
            stream.finish(Ending::Completed);
        }
        stream
    }

    /// The next data chunk of the upstream body (trailers carry nothing this API needs).
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ()>>> {
        loop {
            match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => return Poll::Ready(Some(Ok(chunk))),
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Some(Err(()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
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

    /// An upstream failure: recorded, and passed on as an error, never as a clean end.
    fn fail(
        &mut self,
        kind: &'static str,
        error: std::io::Error,
    ) -> Poll<Option<std::io::Result<Bytes>>> {
        self.finish(Ending::UpstreamFailed(kind));
        Poll::Ready(Some(Err(error)))
    }
}

impl<B> Stream for CapturedStream<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.ready.take() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.capture.is_none() {
                return Poll::Ready(None);
            }
            match this.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.last_chunk_at = Instant::now();
                    if let Some(capture) = &mut this.capture {
                        capture.observe(&chunk);
                    }
                    // A translator may need more bytes before it has an event to give.
                    this.ready = this.reframe.push(chunk);
                }
                Poll::Ready(Some(Err(()))) => {
                    return this.fail(
                        "stream_error",
                        std::io::Error::other("upstream stream failed"),
                    )
                }
                Poll::Ready(None) => {
                    this.ready = this.reframe.finish();
                    this.finish(Ending::Completed);
                }
                Poll::Pending => {
                    if this.idle_expired(cx) {
                        return this.fail(
                            "idle_timeout",
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "upstream went silent",
                            ),
                        );
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<B> Drop for CapturedStream<B> {
    fn drop(&mut self) {
        self.finish(Ending::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Platform;
    use crate::relay::Endpoint;
    use futures_util::StreamExt;
    use http::StatusCode;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use relay_store::{Store, UsageFilter, UsageRecord, UsageWriter};

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n";
    const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
    const END: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":11,\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

    /// Relays `first` then `rest` (all ready at once), collecting what the client would get:
    /// each polled item, and the usage record written.
    async fn relay(first: &str, rest: Frames) -> (Vec<Result<String, String>>, UsageRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("relay.db")).await.unwrap();
        let (sink, writer) = UsageWriter::spawn(store.clone());
        let context = RecordContext {
            request_id: "req_test".into(),
            key_id: "key".into(),
            account_id: Some("account".into()),
            platform: Some(Platform::Anthropic),
            endpoint: Endpoint::Messages,
            model: "claude-haiku-4-5".into(),
            stream: true,
            status: StatusCode::OK,
            attempts: 1,
            received_at: Instant::now(),
            ttfb: None,
            user_agent: None,
            created_at_ms: 1,
            admission: None,
            account_runtime: None,
            shared_account: None,
            unpriced_as: None,
        };
        let capture = Capture {
            tracker: UsageReader::new(relay_protocol::Dialect::AnthropicMessages),
            is_sse: true,
            json_chunks: Vec::new(),
            json_len: 0,
            context,
            sink,
            metrics: Arc::new(Metrics::new()),
        };
        let body = StreamBody::new(futures_util::stream::iter(rest));
        let mut stream = CapturedStream::with_body(
            Some(Bytes::copy_from_slice(first.as_bytes())),
            body,
            Reframe::Passthrough,
            capture,
            Duration::from_secs(60),
        );
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            items.push(
                item.map(|chunk| String::from_utf8_lossy(&chunk).into_owned())
                    .map_err(|error| error.to_string()),
            );
            if failed {
                break;
            }
        }
        drop(stream);
        writer.shutdown().await;
        let records = store
            .recent_usage(&UsageFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(records.len(), 1, "exactly one record per request");
        (items, records.into_iter().next().unwrap())
    }

    fn data(text: &str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::copy_from_slice(text.as_bytes())))
    }

    #[tokio::test]
    async fn chunks_pass_through_one_by_one_and_usage_is_recorded() {
        let (items, record) = relay(START, vec![data(DELTA), data(DELTA), data(END)]).await;
        let expected: Vec<Result<String, String>> = [START, DELTA, DELTA, END]
            .iter()
            .map(|chunk| Ok((*chunk).to_owned()))
            .collect();
        assert_eq!(items, expected);
        assert_eq!(record.outcome, "ok");
        assert_eq!(record.usage.input_tokens, 11);
        assert_eq!(record.usage.output_tokens, 7);
    }

    #[tokio::test]
    async fn an_upstream_error_reaches_the_client_as_an_error() {
        let (items, record) = relay(
            START,
            vec![
                data(DELTA),
                data(DELTA),
                Err(std::io::Error::other("reset")),
            ],
        )
        .await;
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[2], Ok(DELTA.to_owned()));
        assert!(items[3].is_err(), "a dropped upstream must not end cleanly");
        assert_eq!(record.outcome, "upstream_interrupted");
        assert_eq!(record.error_kind.as_deref(), Some("stream_error"));
        assert_eq!(record.usage.input_tokens, 11);
    }
}

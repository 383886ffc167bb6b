//! The body read deadline, on every route: a request body must keep arriving at
//! [`BodyPace::bytes`] per [`BodyPace::window`] (or finish), so a body trickled a byte at a
//! time cannot hold a connection and a handler forever. A body too slow ends with
//! [`BodyTooSlow`], which handlers answer with 408 in their caller's shape.
//!
//! The timer is created only when the body first has to wait, so bodies that arrive at once
//! (nearly all) cost nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::serve::BodyPace;

/// A request body that arrived slower than the configured pace.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub(crate) struct BodyTooSlow;

/// Whether a body read error (at any depth of wrapping) was [`BodyTooSlow`].
pub(crate) fn is_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTooSlow>() {
            return true;
        }
        current = error.source();
    }
    false
}

#[derive(Debug)]
pub(crate) struct Paced<B> {
    body: B,
    pace: BodyPace,
    window_started: Option<Instant>,
    window_bytes: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> Paced<B> {
    pub(crate) fn new(body: B, pace: BodyPace) -> Self {
        Self {
            body,
            pace,
            window_started: None,
            window_bytes: 0,
            deadline: None,
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let window_started = *this.window_started.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.window_bytes += data.len();
                    if this.window_bytes >= this.pace.bytes {
                        // This window's quota is met: the next one starts now.
                        let now = Instant::now();
                        this.window_started = Some(now);
                        this.window_bytes = 0;
                        if let Some(deadline) = this.deadline.as_mut() {
                            deadline.as_mut().reset(now + this.pace.window);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let pace = this.pace;
                let deadline = this.deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(window_started + pace.window))
                });
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn trickle(
        every: Duration,
        bytes: usize,
        count: usize,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Unpin>
    {
        let chunks = futures_util::stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok(Frame::data(Bytes::from(vec![b'x'; bytes])))
        });
        StreamBody::new(Box::pin(chunks))
    }

    const PACE: BodyPace = BodyPace {
        bytes: 1024,
        window: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_within_one_window() {
        let started = Instant::now();
        let error = Paced::new(trickle(Duration::from_secs(2), 1, 1_000), PACE)
            .collect()
            .await
            .unwrap_err();
        assert!(is_too_slow(error.as_ref()));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_is_read_whole() {
        // 512 bytes a second: 5 KiB per window, 100 s in all.
        let body = Paced::new(trickle(Duration::from_secs(1), 512, 100), PACE)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), 51_200);
    }
}

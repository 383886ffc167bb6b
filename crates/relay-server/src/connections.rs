//! Every open client connection, so that none can pin the server: each is closed when it has
//! not completed a request head within the handshake deadline or has sat idle past the idle
//! deadline, whatever its protocol state; and when the cap on open connections is reached, the
//! oldest connection with no request in flight makes room for the new one.
//!
//! A connection's requests are counted from the moment hyper hands one to the service until its
//! response body is dropped (a streaming response counts for as long as it streams), through
//! [`RequestGuard`] riding inside the response body ([`Guarded`]).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why the server closed a connection before its client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// No complete request head within the handshake deadline.
    Handshake,
    /// No request in flight for the idle deadline.
    Idle,
    /// Made room for a newer connection at the cap.
    Evicted,
    /// Still open when the shutdown grace ran out.
    Shutdown,
    /// The connection ended by itself (the watchdog has nothing left to do).
    Finished,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake_timeout",
            Self::Idle => "idle_timeout",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
            Self::Finished => "finished",
        }
    }
}

/// One open connection's state, shared by its task, its requests and the registry.
#[derive(Debug)]
pub(crate) struct Connection {
    id: u64,
    in_flight: AtomicU32,
    /// Whether any complete request head has arrived.
    served: AtomicBool,
    /// When the last request ended (or the connection opened), in ms since `epoch`.
    last_active_ms: AtomicU64,
    epoch: Instant,
    close: Notify,
    /// Set before `close` is notified: the reason the server closes it.
    close_reason: Mutex<Option<CloseReason>>,
}

impl Connection {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head arrived: counted until the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// The connection ended: its watchdog stops.
    pub(crate) fn finished(&self) {
        self.request_close(CloseReason::Finished);
    }

    fn request_close(&self, reason: CloseReason) {
        *self
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        // A stored permit: the watchdog sees it even if it is not waiting yet.
        self.close.notify_one();
    }

    /// Resolves when the connection should be closed, and says why: the handshake deadline
    /// passed without a request head, it sat idle for `idle`, or the registry evicted it.
    pub(crate) async fn watchdog(&self, handshake: Duration, idle: Duration) -> CloseReason {
        let mut wake_at = self.epoch + handshake;
        loop {
            tokio::select! {
                () = self.close.notified() => {
                    return self
                        .close_reason
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .unwrap_or(CloseReason::Evicted);
                }
                () = tokio::time::sleep_until(wake_at) => {}
            }
            if !self.served.load(Ordering::Relaxed) {
                return CloseReason::Handshake;
            }
            let now = Instant::now();
            wake_at = if self.is_idle() {
                let last_active =
                    self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
                let idle_until = last_active + idle;
                if idle_until <= now {
                    return CloseReason::Idle;
                }
                idle_until
            } else {
                now + idle
            };
        }
    }
}

/// Counts one request in flight on its connection until dropped.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Connection>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let connection = &self.0;
        connection
            .last_active_ms
            .store(connection.elapsed_ms(), Ordering::Release);
        connection.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until the body ends or is dropped.
#[derive(Debug)]
pub(crate) struct Guarded<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B> Guarded<B> {
    pub(crate) fn new(body: B, guard: RequestGuard) -> Self {
        Self {
            body,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn len(&self) -> usize {
        self.open().len()
    }

    /// Registers a new connection.
    pub(crate) fn add(&self) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            close: Notify::new(),
            close_reason: Mutex::new(None),
        });
        self.open().insert(id, connection.clone());
        connection
    }

    pub(crate) fn remove(&self, connection: &Connection) {
        self.open().remove(&connection.id);
    }

    /// Closes the oldest connection that has no request in flight; false if every connection
    /// is busy.
    pub(crate) fn evict_oldest_idle(&self) -> bool {
        let mut open = self.open();
        let Some(id) = open
            .iter()
            .find(|(_, connection)| connection.is_idle())
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(connection) = open.remove(&id) {
            connection.request_close(CloseReason::Evicted);
        }
        true
    }

    /// Asks every open connection to close now (the shutdown grace is over).
    pub(crate) fn close_all(&self) {
        for connection in std::mem::take(&mut *self.open()).into_values() {
            connection.request_close(CloseReason::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_closes_at_the_handshake_deadline() {
        let registry = Registry::default();
        let connection = registry.add();
        let started = Instant::now();
        let reason = connection
            .watchdog(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(reason, CloseReason::Handshake);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_stays_and_an_idle_one_closes_after_its_last_request() {
        let registry = Registry::default();
        let connection = registry.add();
        let guard = connection.begin();
        let watched = connection.clone();
        #[allow(clippy::disallowed_methods)] // joined below
        let watchdog = tokio::spawn(async move {
            watched
                .watchdog(Duration::from_secs(1), Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watchdog.is_finished(), "a request in flight keeps it open");
        drop(guard);
        let ended = Instant::now();
        assert_eq!(watchdog.await.unwrap(), CloseReason::Idle);
        let idle_for = ended.elapsed();
        assert!(
            idle_for >= Duration::from_secs(5) && idle_for <= Duration::from_secs(6),
            "{idle_for:?}"
        );
    }

    #[tokio::test]
    async fn eviction_takes_the_oldest_idle_connection_and_never_a_busy_one() {
        let registry = Registry::default();
        let busy = registry.add();
        let _guard = busy.begin();
        let idle_old = registry.add();
        let idle_new = registry.add();
        assert!(registry.evict_oldest_idle());
        assert_eq!(
            idle_old
                .watchdog(Duration::from_secs(60), Duration::from_secs(60))
                .await,
            CloseReason::Evicted
        );
        assert_eq!(registry.len(), 2);
        assert!(registry.evict_oldest_idle());
        drop(idle_new);
        assert!(
            !registry.evict_oldest_idle(),
            "only a busy connection is left"
        );
        assert_eq!(registry.len(), 1);
    }
}

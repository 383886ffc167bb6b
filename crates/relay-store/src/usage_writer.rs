//! The batched usage writer: request paths hand records to a channel; one task writes them.
//!
//! *Architecture Invariant*: handing a record over never waits and never fails while the writer
//! runs. The channel is unbounded on purpose: a record is money, and a database stall should cost
//! memory (visible in the `usage_queue_depth` gauge) rather than bills. The bound is kept one
//! step earlier: once [`UsageSink::is_full`], the relay admits no new request (503) until the
//! queue drains, so the records of what was admitted always fit.
//!
//! Failed batches are retried with backoff for as long as the database does not answer — an
//! outage loses nothing while the process lives. Only a batch that keeps failing while the
//! database answers is written record by record, and the records it refuses are counted lost.
//! On shutdown the writer drains everything that was handed over, with a bounded retry.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Store, UsageRecord};

const MAX_BATCH: usize = 512;
/// How long the writer waits for more records after the first one, to write them together.
const LINGER: Duration = Duration::from_millis(50);
const RETRY_BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Records queued at most before the relay stops admitting requests (about 1 KB each).
pub const DEFAULT_QUEUE_LIMIT: usize = 100_000;

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicUsize,
    written: AtomicU64,
    lost: AtomicU64,
    limit: usize,
    stopping: AtomicBool,
    /// A batch was lost at shutdown for want of a database: the rest get one try each.
    gave_up: AtomicBool,
}

/// The sending side, cloned into every request. `record` never blocks.
#[derive(Debug, Clone)]
pub struct UsageSink {
    sender: mpsc::UnboundedSender<UsageRecord>,
    counters: Arc<Counters>,
}

impl UsageSink {
    pub fn record(&self, record: UsageRecord) {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.sender.send(record).is_err() {
            // Only after the writer was shut down, which happens after all connections ended.
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!("usage record arrived after the writer stopped; it is lost");
        }
    }

    /// Records handed over but not yet written.
    pub fn queue_depth(&self) -> usize {
        self.counters.queued.load(Ordering::Relaxed)
    }

    pub fn written_total(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    pub fn lost_total(&self) -> u64 {
        self.counters.lost.load(Ordering::Relaxed)
    }

    /// Whether the queue holds its limit (the database has not answered for a while): admit
    /// nothing new until it drains.
    pub fn is_full(&self) -> bool {
        self.queue_depth() >= self.counters.limit
    }
}

/// Owns the writer task; [`UsageWriterHandle::shutdown`] drains and stops it.
#[derive(Debug)]
pub struct UsageWriterHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl UsageWriterHandle {
    /// Stops accepting records, writes everything already handed over, and waits for it.
    pub async fn shutdown(self) {
        self.counters.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "usage writer task failed");
        }
    }
}

pub struct UsageWriter;

impl UsageWriter {
    pub fn spawn(store: Store) -> (UsageSink, UsageWriterHandle) {
        Self::spawn_with_limit(store, DEFAULT_QUEUE_LIMIT)
    }

    /// [`UsageWriter::spawn`] with the queue full at `limit` records.
    pub fn spawn_with_limit(store: Store, limit: usize) -> (UsageSink, UsageWriterHandle) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (stop, stop_receiver) = oneshot::channel();
        let counters = Arc::new(Counters {
            limit: limit.max(1),
            ..Counters::default()
        });
        #[allow(clippy::disallowed_methods)] // joined by `UsageWriterHandle::shutdown`
        let task = tokio::spawn(run(store, receiver, stop_receiver, counters.clone()));
        (
            UsageSink {
                sender,
                counters: counters.clone(),
            },
            UsageWriterHandle {
                stop,
                task,
                counters,
            },
        )
    }
}

async fn run(
    store: Store,
    mut receiver: mpsc::UnboundedReceiver<UsageRecord>,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    loop {
        if !stopping {
            tokio::select! {
                received = receiver.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    if batch.len() < MAX_BATCH {
                        tokio::select! {
                            _ = tokio::time::sleep(LINGER) => {}
                            _ = &mut stop => stopping = true,
                        }
                    }
                }
                _ = &mut stop => stopping = true,
            }
            if stopping {
                receiver.close();
            }
        }
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            if stopping {
                break;
            }
            continue;
        }
        write_with_retry(&store, &batch, &counters).await;
        batch.clear();
    }
    tracing::info!(
        written = counters.written.load(Ordering::Relaxed),
        lost = counters.lost.load(Ordering::Relaxed),
        "usage writer stopped"
    );
}

async fn write_with_retry(store: &Store, batch: &[UsageRecord], counters: &Counters) {
    let mut attempt = if counters.gave_up.load(Ordering::Relaxed) {
        RETRY_BACKOFF.len() - 1
    } else {
        0
    };
    loop {
        let error = match store.insert_usage(batch).await {
            Ok(()) => {
                counters.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(error) => error,
        };
        let delay = RETRY_BACKOFF[attempt.min(RETRY_BACKOFF.len() - 1)];
        attempt += 1;
        if attempt >= RETRY_BACKOFF.len() {
            if counters.stopping.load(Ordering::Relaxed) {
                tracing::error!(%error, records = batch.len(), "usage write failed at shutdown; records lost");
                counters.gave_up.store(true, Ordering::Relaxed);
                lose(counters, batch.len());
                return;
            }
            if store.revision().await.is_ok() {
                // The database answers, yet refuses this batch: keep what it takes.
                write_one_by_one(store, batch, counters).await;
                return;
            }
            if attempt == RETRY_BACKOFF.len() {
                tracing::error!(%error, queued = counters.queued.load(Ordering::Relaxed), "the database does not answer; usage records wait in memory until it does");
            }
        } else {
            tracing::warn!(%error, records = batch.len(), attempt, "usage write failed; retrying");
        }
        tokio::time::sleep(delay).await;
    }
}

async fn write_one_by_one(store: &Store, batch: &[UsageRecord], counters: &Counters) {
    for record in batch {
        match store.insert_usage(std::slice::from_ref(record)).await {
            Ok(()) => {
                counters.queued.fetch_sub(1, Ordering::Relaxed);
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(%error, request_id = %record.request_id, "the database refuses a usage record; it is lost");
                lose(counters, 1);
            }
        }
    }
}

fn lose(counters: &Counters, records: usize) {
    counters.queued.fetch_sub(records, Ordering::Relaxed);
    counters.lost.fetch_add(records as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UsageFilter;

    fn record(n: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("req_{n}"),
            created_at_ms: 1,
            key_id: "k".into(),
            account_id: Some("a".into()),
            platform: "anthropic".into(),
            endpoint: "messages".into(),
            model: "m".into(),
            upstream_model: None,
            stream: true,
            usage: relay_protocol::Usage {
                input_tokens: n,
                ..Default::default()
            },
            cost_nano_usd: Some(10),
            charged_nano_usd: None,
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            attempts: 1,
            latency_ms: 1,
            ttfb_ms: Some(1),
            user_agent: None,
        }
    }

    #[tokio::test]
    async fn shutdown_writes_everything_handed_over() {
        for database in crate::testing::each_backend().await {
            let store = database.store.clone();
            let (sink, handle) = UsageWriter::spawn(store.clone());
            for n in 1..=2000 {
                sink.record(record(n));
            }
            handle.shutdown().await;
            let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
            assert_eq!(totals.requests, 2000);
            assert_eq!(totals.input_tokens, (1..=2000).sum::<i64>());
            assert_eq!(totals.cost_nano_usd, 20_000);
            assert_eq!(sink.queue_depth(), 0);
            assert_eq!(sink.written_total(), 2000);
        }
    }
}

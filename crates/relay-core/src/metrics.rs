//! Prometheus metrics of the relay. Label values are fixed vocabularies (route, status, kind):
//! never a key, an account name or anything else an operator would call secret.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub kind: &'static str,
}

const TOKEN_KINDS: [&str; 5] = [
    "input",
    "output",
    "cache_creation_5m",
    "cache_creation_1h",
    "cache_read",
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Time until the response head was ready (for streams: until the first upstream byte).
    pub response_latency: HistogramFamily<RouteLabels>,
    pub upstream_ttfb: Histogram,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub failovers: Counter,
    pub active_streams: Gauge,
    /// By kind: input, output, cache_creation_5m, cache_creation_1h, cache_read. Handles are
    /// kept so counting is an atomic add, not a family lookup.
    tokens_by_kind: [Counter; 5],
    pub usage_queue_depth: Gauge,
    pub usage_written: Gauge,
    pub usage_lost: Gauge,
    pub connections_open: Gauge,
    /// Connections the server closed, by reason (handshake_timeout, idle_timeout, evicted,
    /// refused, shutdown).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Read from the shared ledgers at each scrape, when there are any.
    shared: std::sync::OnceLock<std::sync::Arc<crate::coord::Coordinator>>,
    redis: [Gauge; 5],
    redis_latency: Gauge<f64, std::sync::atomic::AtomicU64>,
    store: [Gauge; 2],
    store_latency: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// `(name, help)` of the Redis gauges, in [`Metrics::redis`] order.
const REDIS_GAUGES: [(&str, &str); 5] = [
    (
        "redis_round_trips",
        "Round trips to the shared Redis since start",
    ),
    (
        "redis_errors",
        "Round trips to the shared Redis that failed",
    ),
    (
        "redis_bytes_sent",
        "Bytes of keys and arguments sent to the shared Redis",
    ),
    (
        "redis_pending_writes",
        "Settlements, releases, costs and bindings not yet written to Redis",
    ),
    (
        "redis_allotted_admissions",
        "Requests admitted from this instance's allotment of a busy key, without a round trip",
    ),
];

/// `(name, help)` of the database gauges, in [`Metrics::store`] order.
const STORE_GAUGES: [(&str, &str); 2] = [
    (
        "store_round_trips",
        "Revision polls and usage writes sent to the database since start",
    ),
    ("store_errors", "Of those, the ones that failed"),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("claude_relay");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let response_latency: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "response_latency_seconds",
            "Time from request to response head",
            response_latency.clone(),
        );
        let upstream_ttfb = latency_histogram();
        registry.register(
            "upstream_ttfb_seconds",
            "Time from request to the first upstream body byte",
            upstream_ttfb.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream attempts that failed, by kind",
            upstream_errors.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Requests retried on another account",
            failovers.clone(),
        );
        let active_streams = Gauge::default();
        registry.register(
            "active_streams",
            "Responses currently being relayed",
            active_streams.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens relayed, by kind", tokens.clone());
        let tokens_by_kind =
            TOKEN_KINDS.map(|kind| tokens.get_or_create(&TokenLabels { kind }).clone());
        let usage_queue_depth = Gauge::default();
        registry.register(
            "usage_queue_depth",
            "Usage records waiting to be written",
            usage_queue_depth.clone(),
        );
        let usage_written = Gauge::default();
        registry.register(
            "usage_records_written",
            "Usage records written since start",
            usage_written.clone(),
        );
        let usage_lost = Gauge::default();
        registry.register(
            "usage_records_lost",
            "Usage records that could not be written",
            usage_lost.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections the server closed or refused, by reason",
            connections_closed.clone(),
        );
        let redis = REDIS_GAUGES.map(|(name, help)| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        });
        let redis_latency = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "redis_latency_seconds_sum",
            "Time spent in round trips to the shared Redis",
            redis_latency.clone(),
        );
        let store = STORE_GAUGES.map(|(name, help)| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        });
        let store_latency = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "store_latency_seconds_sum",
            "Time spent in those round trips to the database",
            store_latency.clone(),
        );
        Self {
            registry,
            shared: std::sync::OnceLock::new(),
            redis,
            redis_latency,
            store,
            store_latency,
            connections_open,
            connections_closed,
            requests,
            response_latency,
            upstream_ttfb,
            upstream_errors,
            failovers,
            active_streams,
            tokens_by_kind,
            usage_queue_depth,
            usage_written,
            usage_lost,
        }
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels { kind })
            .inc();
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn count_tokens(&self, usage: &relay_protocol::Usage) {
        let values = [
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_5m_tokens,
            usage.cache_creation_1h_tokens,
            usage.cache_read_tokens,
        ];
        for (counter, value) in self.tokens_by_kind.iter().zip(values) {
            if value > 0 {
                counter.inc_by(value);
            }
        }
    }

    /// Reports the traffic with Redis from now on.
    pub fn register_shared(&self, shared: &std::sync::Arc<crate::coord::Coordinator>) {
        let _ = self.shared.set(shared.clone());
    }

    /// Takes the database's round-trip counters (at each scrape).
    pub fn observe_store(&self, stats: &relay_store::StoreStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let read = |value: &std::sync::atomic::AtomicU64| {
            i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX)
        };
        self.store[0].set(read(&stats.round_trips));
        self.store[1].set(read(&stats.errors));
        self.store_latency
            .set(stats.latency_micros.load(Relaxed) as f64 / 1e6);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(shared) = self.shared.get() {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = shared.redis().stats();
            let read = |value: &std::sync::atomic::AtomicU64| {
                i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX)
            };
            self.redis[0].set(read(&stats.round_trips));
            self.redis[1].set(read(&stats.errors));
            self.redis[2].set(read(&stats.bytes_sent));
            self.redis[3].set(shared.pending());
            self.redis[4].set(read(&stats.allotted));
            self.redis_latency
                .set(stats.latency_micros.load(Relaxed) as f64 / 1e6);
        }
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

//! The connection loop: hyper's server under deadlines no client can dodge, a cap on open
//! connections, and a graceful shutdown.
//!
//! - Every connection is watched ([`crate::connections`]): closed if no complete request head
//!   arrives within the handshake deadline (a socket that sends nothing, an h2 preface with no
//!   stream), or once it has had no request in flight for the idle deadline (an idle keep-alive
//!   or h2 connection, an h2 stream whose HEADERS never end). HTTP/1 also has hyper's
//!   header-read timeout for later requests; HTTP/2 sends keep-alive pings.
//! - At the cap, the oldest connection without a request in flight is closed to admit the new
//!   one, so a flood of idle sockets cannot lock real clients out; only when every connection is
//!   busy is a new one refused.
//! - Accept errors (out of file descriptors) free an idle connection and back off, logged at
//!   most once a second.
//! - On shutdown: stop accepting, let connections finish for `shutdown_grace`, then cut what is
//!   left (their usage is recorded as partial by the stream's drop).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use relay_core::access::Cidr;
use relay_core::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::connections::{CloseReason, Guarded, Registry};
use crate::pace::Paced;

/// The client's address for a request: the TCP peer, or, when the peer is a trusted proxy, the
/// address it forwarded. The one address used by throttling, address allowlists and logs.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// How fast a request body must keep arriving: at least `bytes` in every `window`, or be done.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub bytes: usize,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_body_bytes: usize,
    pub body_pace: BodyPace,
    /// HTTP/1: the longest a request head may take (every request on a connection).
    pub header_read_timeout: Duration,
    /// A new connection must deliver a complete request head within this.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For`/`Forwarded` headers are believed. Empty: none.
    pub trusted_proxies: Vec<Cidr>,
    /// If set, only requests whose `Host` is one of these (without port) are served.
    pub allowed_hosts: Option<Vec<String>>,
    /// How long in-flight responses may run after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            body_pace: BodyPace {
                bytes: 1024,
                window: Duration::from_secs(10),
            },
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            trusted_proxies: Vec::new(),
            allowed_hosts: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The client address of a request from `peer`: the peer itself unless it is a trusted proxy,
/// then the nearest forwarded address that is not itself a trusted proxy.
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded_for: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| parse_hop(hop.trim()))
        .collect();
    let hops = if forwarded_for.is_empty() {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.eq_ignore_ascii_case("for")
                        .then(|| parse_hop(value.trim().trim_matches('"')))
                        .flatten()
                })
            })
            .collect()
    } else {
        forwarded_for
    };
    // Right to left: the first hop a trusted proxy did not add itself.
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(*ip))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer)
}

/// `203.0.113.5`, `203.0.113.5:41234`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|address| address.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(address, _)| address.parse().ok())
        })
}

/// Runs when a connection's task ends, however it ends (its future completed or was aborted):
/// unregisters it, counts it closed and stops its watchdog.
struct ConnectionDone {
    connection: Arc<crate::connections::Connection>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionDone {
    fn drop(&mut self) {
        self.registry.remove(&self.connection);
        self.metrics.connections_open.dec();
        self.connection.finished();
    }
}

/// Logs accept failures at most once a second, with how many were folded in.
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    suppressed: u64,
    consecutive: u32,
}

impl AcceptErrors {
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            tracing::warn!(%error, suppressed = self.suppressed, "accept failed; backing off");
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        // 10 ms, doubling to at most 1 s while failures continue.
        Duration::from_millis(10u64 << self.consecutive.min(7)).min(Duration::from_secs(1))
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ServerSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let registry = Arc::new(Registry::default());
    let tasks = TaskTracker::new();
    let trusted: Arc<[Cidr]> = settings.trusted_proxies.clone().into();
    let mut accept_errors = AcceptErrors {
        last_logged: None,
        suppressed: 0,
        consecutive: 0,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(accept_error) => {
                        // Out of file descriptors and the like: free an idle connection's and
                        // back off instead of spinning.
                        if registry.evict_oldest_idle() {
                            metrics.connection_closed(CloseReason::Evicted.as_str());
                        }
                        let pause = accept_errors.failed(&accept_error);
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                accept_errors.consecutive = 0;
                if registry.len() >= settings.max_connections {
                    if registry.evict_oldest_idle() {
                        metrics.connection_closed(CloseReason::Evicted.as_str());
                    } else {
                        metrics.connection_closed("refused");
                        tracing::debug!("every connection is busy at the cap; refused one");
                        continue;
                    }
                }
                let _ = stream.set_nodelay(true);
                let connection = registry.add();
                metrics.connections_open.inc();
                let router = app.clone();
                let trusted = trusted.clone();
                let watched = connection.clone();
                let pace = settings.body_pace;
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let guard = watched.begin();
                    let mut request = request.map(|body| Paced::new(body, pace));
                    let client = if trusted.is_empty() {
                        peer.ip()
                    } else {
                        client_address(peer.ip(), request.headers(), &trusted)
                    };
                    request.extensions_mut().insert(ClientAddr(client));
                    let response = router.clone().oneshot(request);
                    async move {
                        let response = response.await?;
                        Ok::<_, std::convert::Infallible>(response.map(|body| Guarded::new(body, guard)))
                    }
                });
                let served = graceful.watch(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned(),
                );
                // The connection runs in its own task, polled only for its own IO; its watchdog
                // is a second task that sleeps until a deadline (or an eviction) and then aborts
                // it, which drops the connection and closes the socket.
                let done = ConnectionDone {
                    connection: connection.clone(),
                    registry: registry.clone(),
                    metrics: metrics.clone(),
                };
                let serving = tasks.spawn(async move {
                    let _done = done;
                    if let Err(connection_error) = served.await {
                        tracing::debug!(error = %connection_error, "connection ended with an error");
                    }
                });
                let abort = serving.abort_handle();
                let metrics = metrics.clone();
                let (handshake, idle) = (settings.handshake_timeout, settings.idle_timeout);
                tasks.spawn(async move {
                    let reason = connection.watchdog(handshake, idle).await;
                    if reason != CloseReason::Finished {
                        abort.abort();
                        tracing::debug!(reason = reason.as_str(), "closed a connection");
                        if reason != CloseReason::Evicted {
                            metrics.connection_closed(reason.as_str());
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tasks.close();
    tracing::info!(
        in_flight = registry.len(),
        "shutting down: draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(remaining = registry.len(), "shutdown grace expired; closing remaining connections");
        }
    }
    registry.close_all();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(
            client_address(peer, &spoofed, &[]),
            peer,
            "empty by default"
        );
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let outsider: IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(client_address(outsider, &spoofed, &trusted), outsider);
        // The client prepends a fake hop; the proxy appends the real one.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.9, 10.0.0.7")]);
        assert_eq!(
            client_address(peer, &chain, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        let standard = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::17]:4711\"",
        )]);
        assert_eq!(
            client_address(peer, &standard, &trusted),
            "2001:db8::17".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(peer, &HeaderMap::new(), &trusted), peer);
    }
}

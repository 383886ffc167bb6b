//! The HTTP transport to upstreams: one pooled hyper client over rustls, direct or through an
//! account's proxy (HTTP/HTTPS CONNECT or SOCKS5), whose names resolve through the egress guard.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::egress::{EgressGuard, GuardedResolver};
use crate::proxy::{ProxyConfig, ProxyKind};

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

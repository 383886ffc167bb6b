//! The egress guard: the one check every operator-configured outbound URL passes (account base
//! URLs, proxies, OAuth endpoints), so that the relay cannot be turned against the network it
//! runs in (cloud metadata, loopback services, the private LAN).
//!
//! It is applied twice: when a URL is saved ([`EgressGuard::check_url`], a clear error naming
//! the setting that allows it), and when a connection is made — host names through
//! [`GuardedResolver`], which drops internal addresses from every DNS answer (so a name that
//! resolves, or later re-resolves, to an internal address fails), and address literals through
//! [`EgressGuard::check_uri`] before each request. Redirects are never followed (hyper follows
//! none). Private deployments, local model servers and the tests' loopback mocks are allowed
//! explicitly: `egress_allowlist` / `CLAUDE_RELAY_EGRESS_ALLOWLIST` (CIDRs and host names).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use crate::net::Cidr;

/// Host names that reach a cloud provider's instance metadata.
const METADATA_HOSTS: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.azure.com",
];

const HOW_TO_ALLOW: &str =
    "allow it explicitly with egress_allowlist in the config file or CLAUDE_RELAY_EGRESS_ALLOWLIST (CIDRs and host names, comma-separated)";

#[derive(Debug, Default)]
struct Allowlist {
    ranges: Vec<Cidr>,
    /// Lower-case names; `*.example.internal` allows every subdomain.
    hosts: Vec<String>,
}

/// Which outbound targets are allowed. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EgressGuard {
    allow: Arc<Allowlist>,
}

/// Whether an address is internal: loopback, private, link-local (metadata), CGNAT, multicast,
/// unspecified, broadcast, reserved, documentation or benchmarking ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT, and Alibaba's metadata
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x64 && ip.segments()[1] == 0xff9b) // NAT64 to any IPv4, internal included
        || first == 0x2002 // 6to4 embeds any IPv4
}

/// A host as a URL carries it: an address literal or a validated name.
enum Host {
    Address(IpAddr),
    Name(String),
}

/// Parses a URL's host strictly: an IPv4 or IPv6 literal in canonical form, or a DNS name of
/// letters, digits, `-`, `_` and dots. Numeric forms a resolver would read as an address
/// (`2130706433`, `0x7f.1`, `0177.0.0.1`) are refused rather than guessed at.
fn parse_host(host: &str) -> Result<Host, String> {
    if let Some(inner) = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return inner
            .parse::<Ipv6Addr>()
            .map(|v6| Host::Address(IpAddr::V6(v6)))
            .map_err(|_| format!("'{host}' is not an IPv6 address"));
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Address(IpAddr::V4(v4)));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let labels_valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
    if !labels_valid {
        return Err(format!("'{host}' is not a host name"));
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|byte| byte.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|byte| byte.is_ascii_hexdigit()));
    if numeric {
        return Err(format!(
            "'{host}' is an address in a non-standard form; write it as a.b.c.d"
        ));
    }
    Ok(Host::Name(name))
}

impl EgressGuard {
    /// A guard allowing these private targets: CIDRs (`10.0.0.0/8`, `::1`) and host names
    /// (`ollama.internal`, `*.corp.example`).
    pub fn allowing<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut allow = Allowlist::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if let Ok(range) = Cidr::parse(entry) {
                allow.ranges.push(range);
                continue;
            }
            let name = entry.strip_prefix("*.").unwrap_or(entry);
            match parse_host(name) {
                Ok(Host::Name(_)) => allow.hosts.push(entry.to_ascii_lowercase()),
                _ => {
                    return Err(format!(
                        "'{entry}' is neither an address range (10.0.0.0/8) nor a host name"
                    ))
                }
            }
        }
        Ok(Self {
            allow: Arc::new(allow),
        })
    }

    fn host_allowed(&self, name: &str) -> bool {
        self.allow
            .hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => allowed == name,
            })
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.ranges.iter().any(|range| range.contains(ip))
    }

    /// Whether `ip`, an address `host` resolved to, may be connected to.
    pub fn allows_resolved(&self, host: &str, ip: IpAddr) -> bool {
        self.address_allowed(ip) || self.host_allowed(&host.to_ascii_lowercase())
    }

    fn check_host(&self, host: &str, what: &str) -> Result<(), String> {
        match parse_host(host).map_err(|problem| format!("{what}: {problem}"))? {
            Host::Address(ip) if !self.address_allowed(ip) => Err(format!(
                "{what}: {ip} is an internal address; {HOW_TO_ALLOW}"
            )),
            Host::Name(name)
                if METADATA_HOSTS.contains(&name.as_str()) && !self.host_allowed(&name) =>
            {
                Err(format!(
                    "{what}: {name} is a cloud metadata service; {HOW_TO_ALLOW}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks a URL when it is saved: an allowed scheme, a valid port, and a host that is not
    /// internal (unless allowed). `what` names it in the error.
    pub fn check_url(&self, url: &str, schemes: &[&str], what: &str) -> Result<(), String> {
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|_| format!("{what}: '{url}' is not a URL"))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "{what}: the scheme must be one of {}",
                schemes.join(", ")
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{what}: '{url}' has no host"))?;
        let host_and_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, rest)| rest);
        let port = host_and_port
            .strip_prefix(authority.host())
            .unwrap_or(host_and_port);
        if !port.is_empty() {
            let valid = port
                .strip_prefix(':')
                .and_then(|digits| digits.parse::<u16>().ok())
                .is_some_and(|port| port != 0);
            if !valid {
                return Err(format!("{what}: '{port}' is not a port"));
            }
        }
        self.check_host(authority.host(), what)
    }

    /// Checks a request's target before it is sent: an address literal must be allowed (names
    /// are checked when they resolve, by [`GuardedResolver`]).
    pub fn check_uri(&self, uri: &http::Uri) -> Result<(), String> {
        let Some(host) = uri.host() else {
            return Ok(());
        };
        let literal = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host);
        match literal.parse::<IpAddr>() {
            Ok(ip) if !self.address_allowed(ip) => Err(format!(
                "egress guard: {ip} is an internal address; {HOW_TO_ALLOW}"
            )),
            _ => Ok(()),
        }
    }
}

/// A DNS resolver that keeps only the addresses the guard allows, and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: EgressGuard,
}

impl GuardedResolver {
    pub fn new(guard: EgressGuard) -> Self {
        Self { guard }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let allowed: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| guard.allows_resolved(&host, address.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "egress guard: {host} resolves only to internal addresses; {HOW_TO_ALLOW}"
                    ),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &["http", "https"];

    #[test]
    fn internal_targets_are_refused_in_every_spelling() {
        let guard = EgressGuard::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://metadata.google.internal/computeMetadata/v1",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]",
            "http://[fe80::1]",
            "http://[fd00:ec2::254]",
            "http://127.0.0.1:11434",
            "http://2130706433",
            "http://0x7f000001",
            "http://0177.0.0.1",
            "http://0x7f.1",
            "http://100.100.100.200",
            "http://10.1.2.3",
            "http://172.16.0.1",
            "http://192.168.1.1",
            "http://100.64.0.1",
            "http://0.0.0.0",
            "http://224.0.0.1",
            "http://$(id)",
            "http://host:80%0d%0a",
            "http://host:0",
            "http://host:99999",
            "ftp://api.example.com",
            "https://",
        ] {
            assert!(
                guard.check_url(url, BASE, "base_url").is_err(),
                "{url} passed"
            );
        }
        for url in [
            "https://api.anthropic.com",
            "https://api.deepseek.com/v1",
            "http://8.8.8.8:8080",
            "https://[2606:4700::1111]",
            "https://my-relay_1.example.com:8443/api",
        ] {
            guard.check_url(url, BASE, "base_url").unwrap();
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_what_it_names() {
        let guard =
            EgressGuard::allowing(&["127.0.0.0/8", "::1", "ollama.internal", "*.corp.example"])
                .unwrap();
        guard
            .check_url("http://127.0.0.1:11434", BASE, "x")
            .unwrap();
        guard.check_url("http://[::1]:9", BASE, "x").unwrap();
        assert!(guard.check_url("http://10.0.0.1", BASE, "x").is_err());
        assert!(guard.allows_resolved("ollama.internal", "10.0.0.5".parse().unwrap()));
        assert!(guard.allows_resolved("gpu.corp.example", "10.0.0.5".parse().unwrap()));
        assert!(!guard.allows_resolved("corp.example", "10.0.0.5".parse().unwrap()));
        assert!(!guard.allows_resolved("evil.example", "10.0.0.5".parse().unwrap()));
        assert!(guard.allows_resolved("evil.example", "93.184.216.34".parse().unwrap()));
        let error = EgressGuard::default()
            .check_url("http://127.0.0.1", BASE, "base_url")
            .unwrap_err();
        assert!(error.contains("CLAUDE_RELAY_EGRESS_ALLOWLIST"), "{error}");
        assert!(EgressGuard::allowing(&["$(id)"]).is_err());
    }

    #[test]
    fn literal_targets_are_checked_before_each_request() {
        let guard = EgressGuard::default();
        let uri: http::Uri = "http://[::ffff:169.254.169.254]/v1/messages"
            .parse()
            .unwrap();
        assert!(guard.check_uri(&uri).is_err());
        let uri: http::Uri = "https://api.anthropic.com/v1/messages".parse().unwrap();
        guard.check_uri(&uri).unwrap();
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_fail_at_connect_time() {
        let mut resolver = GuardedResolver::new(EgressGuard::default());
        let refused =
            tower_service::Service::call(&mut resolver, "localhost".parse().unwrap()).await;
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        let mut allowed = GuardedResolver::new(EgressGuard::allowing(&["localhost"]).unwrap());
        let addresses = tower_service::Service::call(&mut allowed, "localhost".parse().unwrap())
            .await
            .unwrap();
        assert!(addresses.count() > 0);
    }
}

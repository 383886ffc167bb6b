//! Outbound proxies per account: HTTP and HTTPS proxies (CONNECT tunnels) and SOCKS5, with
//! credentials. The proxy URL is a secret (it may carry a password): sealed at rest like a
//! credential and shown masked.

use std::fmt;

use base64::Engine;
use http::Uri;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Http,
    Https,
    Socks5,
}

/// A parsed proxy URL: `http://[user:pass@]host:port`, `https://…`, `socks5://…`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyConfig {
    pub kind: ProxyKind,
    /// `scheme://host:port`, without credentials.
    pub address: Uri,
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Strict percent-decoding of a URL's user or password: every `%` starts two hex digits and the
/// result is UTF-8, or the URL is refused.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|byte| (*byte as char).to_digit(16));
            let (high, low) = (hex(index + 1)?, hex(index + 2)?);
            decoded.push(u8::try_from(high * 16 + low).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

impl ProxyConfig {
    pub fn parse(url: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "'{}' is not a proxy URL such as http://user:pass@host:3128 or socks5://host:1080",
                mask(url)
            )
        };
        let (scheme, rest) = url.trim().split_once("://").ok_or_else(invalid)?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyKind::Http,
            "https" => ProxyKind::Https,
            "socks5" | "socks5h" => ProxyKind::Socks5,
            _ => return Err(invalid()),
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |part: &str| {
                    percent_decode(part).ok_or_else(|| {
                        format!(
                            "the credentials in '{}' are not valid percent-encoding (write % as %25)",
                            mask(url)
                        )
                    })
                };
                (Some((decode(user)?, decode(pass)?)), host)
            }
            None => (None, rest),
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) || !host.contains(':') {
            return Err(invalid());
        }
        let address: Uri = format!("{scheme}://{host}")
            .parse()
            .map_err(|_| invalid())?;
        Ok(Self {
            kind,
            address,
            credentials,
        })
    }

    /// The URL with the password hidden, for listings and logs.
    pub fn masked(&self) -> String {
        let authority = self
            .address
            .authority()
            .map_or("", |authority| authority.as_str());
        let scheme = self.address.scheme_str().unwrap_or("http");
        match &self.credentials {
            // The user name too: some proxies take a token there.
            Some(_) => format!("{scheme}://***:***@{authority}"),
            None => format!("{scheme}://{authority}"),
        }
    }

    /// `Proxy-Authorization` for CONNECT proxies.
    pub fn basic_auth(&self) -> Option<http::HeaderValue> {
        let (user, pass) = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        http::HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }
}

/// Masks the password of a URL that did not parse, for the error message.
fn mask(url: &str) -> String {
    // Whatever the shape (a mistyped `http:/` included), everything before the last `@` may be
    // credentials.
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_and_without_credentials_and_never_show_the_password() {
        let proxy = ProxyConfig::parse("http://alice:s%40cret@10.0.0.1:3128").unwrap();
        assert_eq!(proxy.kind, ProxyKind::Http);
        assert_eq!(proxy.credentials, Some(("alice".into(), "s@cret".into())));
        assert_eq!(proxy.address.to_string(), "http://10.0.0.1:3128/");
        assert_eq!(proxy.masked(), "http://***:***@10.0.0.1:3128");
        assert!(!format!("{proxy:?}").contains("cret"));
        let socks = ProxyConfig::parse("socks5://proxy.example:1080").unwrap();
        assert_eq!(socks.kind, ProxyKind::Socks5);
        assert_eq!(socks.credentials, None);
        let trailing = ProxyConfig::parse("http://bob:pw%21@h:1").unwrap();
        assert_eq!(trailing.credentials, Some(("bob".into(), "pw!".into())));
        for bad in [
            "ftp://x:1",
            "http://host",
            "socks5://user:pw@",
            "nonsense",
            "http://u:pw%\u{e9}\u{e9}@h:1",
            "http://u:pw%zz@h:1",
            "http://u:pw%ff@h:1",
            "http://u:pw%4@h:1",
            "http:/user:pw@host:1",
        ] {
            let error = ProxyConfig::parse(bad).unwrap_err();
            assert!(!error.contains("pw"), "{error}");
        }
    }
}

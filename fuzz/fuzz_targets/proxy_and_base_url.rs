//! Proxy URLs and outbound base URLs: parsing never panics, a proxy's masked form never shows
//! its password, and the egress guard is consistent with itself — a URL accepted when it is
//! saved is accepted again when a request is sent to it, and an allowlist only ever allows more.
//!
//! The input is one URL on its first line; any further lines are allowlist entries.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use relay_core::egress::{is_internal, EgressGuard};
use relay_core::proxy::ProxyConfig;

claude_relay_fuzz::sanitizer_defaults!();

const SCHEMES: &[&str] = &["http", "https"];

fn check_proxy(text: &str) {
    let Ok(proxy) = ProxyConfig::parse(text) else {
        return;
    };
    let masked = proxy.masked();
    assert_eq!(format!("{proxy:?}"), masked);
    let authority = proxy
        .address
        .authority()
        .map_or("", |authority| authority.as_str());
    assert!(
        !authority.contains('@'),
        "credentials left in the address: {masked}"
    );
    let _ = proxy.basic_auth();
    let _ = EgressGuard::default().check_uri(&proxy.address);
    let Some((user, password)) = &proxy.credentials else {
        return;
    };
    let scheme = proxy.address.scheme_str().unwrap_or("http");
    // The user name is hidden too: some proxies take a token there.
    assert_eq!(masked, format!("{scheme}://***:***@{authority}"));
    // The masked form is `scheme` and `authority` joined by `://***:***@`. A credential without
    // those joiners' characters that shows in it must come from one of the two parts.
    for secret in [user, password] {
        let joiner_free = !secret.contains([':', '/', '*', '@']);
        if !secret.is_empty() && joiner_free && masked.contains(secret.as_str()) {
            assert!(
                scheme.contains(secret.as_str()) || authority.contains(secret.as_str()),
                "a credential shows in {masked}"
            );
        }
    }
}

fn check_url(guard: &EgressGuard, url: &str) -> bool {
    let saved = guard.check_url(url, SCHEMES, "x");
    let Ok(uri) = url.trim().parse::<http::Uri>() else {
        assert!(saved.is_err(), "accepted {url:?}, which is not a URI");
        return false;
    };
    let sent = guard.check_uri(&uri);
    if saved.is_ok() {
        assert!(
            sent.is_ok(),
            "{url:?} accepted when saved, refused when sent: {sent:?}"
        );
    }
    saved.is_ok()
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.split('\n');
    let url = lines.next().unwrap_or_default();
    let entries: Vec<&str> = lines.collect();

    check_proxy(&text);
    check_proxy(url);

    let default = EgressGuard::default();
    let saved_by_default = check_url(&default, url);
    if saved_by_default {
        // The default guard refuses every internal address literal.
        if let Some(host) = url.trim().parse::<http::Uri>().ok().and_then(|uri| {
            let host = uri.host()?;
            let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            literal.unwrap_or(host).parse::<IpAddr>().ok()
        }) {
            assert!(!is_internal(host), "{url:?} reaches {host}");
        }
    }
    if let Ok(guard) = EgressGuard::allowing(&entries) {
        let saved = check_url(&guard, url);
        assert!(
            saved || !saved_by_default,
            "{url:?} allowed by default, refused with the allowlist {entries:?}"
        );
    }
});

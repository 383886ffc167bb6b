//! The one client address (TCP peer, or the forwarded one when the peer is a trusted proxy)
//! through the real server: key address allowlists and the failed-key throttle both go by it,
//! and a forwarded header from anyone else changes nothing.

use relay_core::access::Cidr;
use relay_core::policy::KeyPolicy;
use relay_core::RelaySettings;
use relay_server::ServerSettings;

use crate::harness::{account, error_of, messages_body, post_as, Harness};

/// A relay behind a reverse proxy on loopback (the harness's client is that proxy).
async fn behind_a_proxy() -> Harness {
    Harness::start_with(
        vec![account("main", "sk-main", 1)],
        RelaySettings::default(),
        ServerSettings {
            trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            ..ServerSettings::default()
        },
    )
    .await
}

fn office_only() -> KeyPolicy {
    KeyPolicy {
        allowed_ips: Some(vec!["198.51.100.0/24".into()]),
        ..KeyPolicy::default()
    }
}

async fn status_from(harness: &Harness, key: &str, forwarded: Option<&str>) -> u16 {
    let mut request = post_as(harness, key, &messages_body(false, "x"));
    if let Some(chain) = forwarded {
        request = request.header("x-forwarded-for", chain);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_key_allowlist_goes_by_the_address_a_trusted_proxy_forwards() {
    let harness = behind_a_proxy().await;
    let (key, _) = harness.key_with("office", &office_only()).await;
    assert_eq!(status_from(&harness, &key, Some("198.51.100.9")).await, 200);
    // The proxy appends the hop it saw; a client-supplied first hop is not believed.
    assert_eq!(
        status_from(&harness, &key, Some("198.51.100.9, 203.0.113.5")).await,
        403
    );
    assert_eq!(
        status_from(&harness, &key, Some("203.0.113.5, 198.51.100.9")).await,
        200
    );
    // No header: the proxy itself is the client, which is not in the office range.
    assert_eq!(status_from(&harness, &key, None).await, 403);
    let standard = post_as(&harness, &key, &messages_body(false, "x"))
        .header("forwarded", "for=198.51.100.20;proto=https")
        .send()
        .await
        .unwrap();
    assert_eq!(standard.status(), 200);
    assert_eq!(
        harness.mock.requests().len(),
        3,
        "refusals never go upstream"
    );
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_header_changes_nothing() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let (key, _) = harness.key_with("office", &office_only()).await;
    let spoofed = post_as(&harness, &key, &messages_body(false, "x"))
        .header("x-forwarded-for", "198.51.100.9")
        .header("forwarded", "for=198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(spoofed).await, (403, "permission_error".into()));

    // A guesser cannot spread its failures over invented addresses: all count against its own.
    for n in 0..30 {
        let forged = format!("203.0.113.{n}");
        assert_eq!(
            status_from(&harness, &format!("cr_guess_{n}"), Some(&forged)).await,
            401,
            "guess {n}"
        );
    }
    assert_eq!(
        status_from(&harness, "cr_guess_more", Some("192.0.2.77")).await,
        429
    );
    assert!(harness.mock.requests().is_empty());
}

#[tokio::test]
async fn behind_a_trusted_proxy_guesses_block_only_the_guessing_client() {
    let harness = behind_a_proxy().await;
    let guesser = "203.0.113.7";
    for n in 0..30 {
        assert_eq!(
            status_from(&harness, &format!("cr_guess_{n}"), Some(guesser)).await,
            401,
            "guess {n}"
        );
    }
    assert_eq!(
        status_from(&harness, "cr_guess_more", Some(guesser)).await,
        429
    );
    // A fake first hop does not get the guesser out of its block.
    assert_eq!(
        status_from(
            &harness,
            "cr_guess_more",
            Some(&format!("192.0.2.1, {guesser}"))
        )
        .await,
        429
    );
    // Another client of the same proxy is not blocked: its wrong key is just wrong.
    assert_eq!(
        status_from(&harness, "cr_typo", Some("198.51.100.30")).await,
        401
    );
    // Nor is the proxy's own address (a request without a forwarded header).
    assert_eq!(status_from(&harness, "cr_typo", None).await, 401);
    assert_eq!(
        status_from(&harness, &harness.key, Some(guesser)).await,
        200
    );
}

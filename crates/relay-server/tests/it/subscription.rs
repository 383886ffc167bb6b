//! Claude subscription accounts: sign-in with PKCE, bearer requests, refresh ahead of expiry
//! with exactly one refresh in flight, refresh on 401, and a burnt refresh token.

use std::time::Duration;

use relay_store::UsageFilter;
use relay_testkit::MockUpstream;

use crate::harness::{account, oauth_settings, Harness};

/// Signs a subscription account in through the admin flow against the mock.
async fn sign_in(harness: &Harness, name: &str, priority: i64) {
    let settings = oauth_settings(&harness.mock, &harness.chatgpt, &harness.code_assist);
    let url = harness
        .admin
        .start_oauth(name, "claude-oauth", &settings)
        .await
        .unwrap();
    let state = url
        .split('&')
        .find_map(|pair| pair.strip_prefix("state="))
        .unwrap()
        .to_owned();
    harness
        .admin
        .finish_oauth(
            name,
            &format!("mock-code#{state}"),
            &settings,
            Some(harness.mock.url()),
            priority,
        )
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
}

async fn sealed_secret(harness: &Harness, name: &str) -> Vec<u8> {
    harness
        .store
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|account| account.name == name)
        .unwrap()
        .secret_sealed
}

fn tokens_used(mock: &MockUpstream) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .map(|request| request.api_key.clone())
        .collect()
}

#[tokio::test]
async fn a_signed_in_subscription_sends_bearer_tokens_with_the_oauth_beta() {
    let harness = Harness::start(vec![]).await;
    // A wrong state is refused before any exchange.
    let settings = oauth_settings(&harness.mock, &harness.chatgpt, &harness.code_assist);
    harness
        .admin
        .start_oauth("max", "claude-oauth", &settings)
        .await
        .unwrap();
    assert!(harness
        .admin
        .finish_oauth(
            "max",
            "mock-code#forged",
            &settings,
            Some(harness.mock.url()),
            1
        )
        .await
        .is_err());
    sign_in(&harness, "max", 1).await;
    assert_eq!(harness.send(false, "hello").await.status(), 200);
    let request = harness.mock.requests().last().unwrap().clone();
    assert_eq!(request.headers["authorization"], "Bearer mock-access-1");
    assert!(request.headers.get("x-api-key").is_none());
    assert!(request.headers["anthropic-beta"]
        .to_str()
        .unwrap()
        .contains("oauth-2025-04-20"));
    let listed = harness.admin.list_accounts().await.unwrap();
    assert_eq!(listed[0].platform, "claude-oauth");
    assert!(!format!("{listed:?}").contains("mock-refresh"));
}

#[tokio::test]
async fn fifty_requests_with_an_expiring_token_refresh_it_exactly_once() {
    let harness = Harness::start(vec![]).await;
    // Tokens that expire within the refresh margin, and a slow token endpoint to widen races.
    harness
        .mock
        .set_token_behavior(60, Duration::from_millis(200));
    sign_in(&harness, "max", 1).await;
    harness
        .mock
        .set_token_behavior(3600, Duration::from_millis(200));
    let before = sealed_secret(&harness, "max").await;
    let harness_ref = &harness;
    let statuses = futures_util::future::join_all((0..50).map(|n| async move {
        harness_ref
            .send(false, &format!("burst {n}"))
            .await
            .status()
            .as_u16()
    }))
    .await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(
        harness.mock.refresh_count(),
        1,
        "rotating refresh tokens must be used once"
    );
    let used = tokens_used(&harness.mock);
    assert_eq!(used.len(), 50);
    assert!(
        used.iter().all(|token| token == "mock-access-2"),
        "every request waits for the new token"
    );
    // The new tokens are stored (sealed), so a restart keeps working.
    assert_ne!(sealed_secret(&harness, "max").await, before);
    harness.snapshots.reload().await.unwrap();
    assert_eq!(harness.send(false, "after reload").await.status(), 200);
    assert_eq!(harness.mock.refresh_count(), 1);
}

#[tokio::test]
async fn a_revoked_access_token_is_refreshed_and_the_request_retried() {
    let harness = Harness::start(vec![]).await;
    sign_in(&harness, "max", 1).await;
    harness.mock.revoke_access("mock-access-1");
    assert_eq!(harness.send(false, "x").await.status(), 200);
    assert_eq!(harness.mock.refresh_count(), 1);
    assert_eq!(
        tokens_used(&harness.mock),
        ["mock-access-1", "mock-access-2"]
    );
}

#[tokio::test]
async fn a_burnt_refresh_token_takes_the_account_out_and_traffic_fails_over() {
    let harness = Harness::start(vec![account("console", "sk-console", 2)]).await;
    harness.mock.set_token_behavior(60, Duration::ZERO);
    sign_in(&harness, "max", 1).await;
    harness.mock.revoke_refresh();
    for n in 0..3 {
        assert_eq!(
            harness.send(false, &format!("turn {n}")).await.status(),
            200
        );
    }
    // Served by the console account; the subscription is out, not retried in a loop.
    assert_eq!(
        tokens_used(&harness.mock),
        ["sk-console", "sk-console", "sk-console"]
    );
    assert_eq!(harness.mock.refresh_count(), 0);
    let records = harness.records(3).await;
    assert!(records.iter().all(|record| record.outcome == "ok"));
    let _ = harness
        .store
        .recent_usage(&UsageFilter::default(), 1)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_subscription_tier_is_detected_and_pro_plans_get_no_opus() {
    let harness = Harness::start(vec![account("console", "sk-console", 2)]).await;
    harness.mock.set_plan("pro");
    sign_in(&harness, "pro-plan", 1).await;
    let listed = harness.admin.list_accounts().await.unwrap();
    let pro = listed
        .iter()
        .find(|account| account.name == "pro-plan")
        .unwrap();
    assert!(
        pro.settings.contains("\"tier\":\"pro\""),
        "{}",
        pro.settings
    );
    let mut opus = crate::harness::messages_body(false, "opus please");
    opus["model"] = "claude-opus-4-8".into();
    assert_eq!(
        harness
            .post("/v1/messages", opus)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(harness.send(false, "sonnet please").await.status(), 200);
    assert_eq!(tokens_used(&harness.mock), ["sk-console", "mock-access-1"]);
}

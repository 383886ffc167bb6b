//! Account health: overload retries, ejection, bans, family-scoped limits and manual reset.

use relay_testkit::Behavior;

use crate::harness::{account, messages_body, Harness};

async fn send_model(harness: &Harness, model: &str, prompt: &str) -> u16 {
    let mut body = messages_body(false, prompt);
    body["model"] = model.into();
    harness
        .post("/v1/messages", body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_overloaded_account_is_retried_before_anything_else() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 2)]).await;
    harness
        .mock
        .script("sk-a", [Behavior::status(529), Behavior::status(529)]);
    assert_eq!(harness.send(false, "x").await.status(), 200);
    assert_eq!(harness.mock.count_for("sk-a"), 3);
    assert_eq!(harness.mock.count_for("sk-b"), 0);
    // No cooldown after an overload: the next request goes to the same account.
    assert_eq!(harness.send(false, "y").await.status(), 200);
    assert_eq!(harness.mock.count_for("sk-a"), 4);
}

#[tokio::test]
async fn repeated_server_errors_eject_an_account_but_never_the_last_one() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 2)]).await;
    harness
        .mock
        .script("sk-a", (0..3).map(|_| Behavior::status(500)));
    for n in 0..3 {
        assert_eq!(
            harness.send(false, &format!("turn {n}")).await.status(),
            200
        );
    }
    assert_eq!(harness.mock.count_for("sk-a"), 3);
    // Ejected after three in a row: the next requests go straight to b.
    for n in 3..6 {
        assert_eq!(
            harness.send(false, &format!("turn {n}")).await.status(),
            200
        );
    }
    assert_eq!(
        harness.mock.count_for("sk-a"),
        3,
        "an ejected account got traffic"
    );
    assert_eq!(harness.mock.count_for("sk-b"), 6);

    let alone = Harness::start(vec![account("only", "sk-only", 1)]).await;
    alone
        .mock
        .script("sk-only", (0..5).map(|_| Behavior::status(500)));
    for n in 0..5 {
        let response = alone.send(false, &format!("turn {n}")).await;
        assert_eq!(
            response.status(),
            502,
            "the last account must stay in rotation"
        );
    }
    assert_eq!(alone.send(false, "recovered").await.status(), 200);
}

#[tokio::test]
async fn a_disabled_organization_takes_the_account_out_until_an_operator_resets_it() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 2)]).await;
    harness.mock.script(
        "sk-a",
        [Behavior::Status {
            status: 403,
            headers: vec![("content-type".into(), "application/json".into())],
            body: r#"{"type":"error","error":{"type":"permission_error","message":"This organization has been disabled."}}"#.into(),
        }],
    );
    for n in 0..5 {
        assert_eq!(
            harness.send(false, &format!("turn {n}")).await.status(),
            200
        );
    }
    assert_eq!(
        harness.mock.count_for("sk-a"),
        1,
        "a blocked account must never be retried"
    );
    harness.admin.reset_account("a").await.unwrap();
    harness.snapshots.reload().await.unwrap();
    assert_eq!(harness.send(false, "after reset").await.status(), 200);
    assert_eq!(harness.mock.count_for("sk-a"), 2);
}

#[tokio::test]
async fn a_family_limit_cools_only_that_family() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 2)]).await;
    let reset = (relay_core::clock::now_ms() / 1000 + 3600).to_string();
    harness.mock.script(
        "sk-a",
        [Behavior::status_with_headers(
            429,
            &[("anthropic-ratelimit-unified-reset", &reset)],
        )],
    );
    assert_eq!(send_model(&harness, "claude-opus-4-8", "opus 1").await, 200);
    assert_eq!(send_model(&harness, "claude-opus-4-8", "opus 2").await, 200);
    assert_eq!(
        send_model(&harness, "claude-sonnet-4-5", "sonnet").await,
        200
    );
    let served: Vec<(String, String)> = harness
        .mock
        .requests()
        .iter()
        .map(|request| {
            (
                request.api_key.clone(),
                request.body["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        served,
        [
            ("sk-a".to_owned(), "claude-opus-4-8".to_owned()),
            ("sk-b".to_owned(), "claude-opus-4-8".to_owned()),
            ("sk-b".to_owned(), "claude-opus-4-8".to_owned()),
            ("sk-a".to_owned(), "claude-sonnet-4-5".to_owned()),
        ]
    );
}

#[tokio::test]
async fn account_settings_steer_requests_models_groups_and_slots() {
    use relay_core::policy::KeyPolicy;
    let harness = Harness::start(vec![
        account("sonnet-only", "sk-s", 1),
        account("general", "sk-g", 2),
    ])
    .await;
    harness
        .admin
        .edit_account_settings("sonnet-only", |settings| {
            settings.models = Some(vec!["claude-sonnet-*".into()]);
            settings.groups = Some(vec!["team-a".into()]);
        })
        .await
        .unwrap();
    harness
        .admin
        .edit_account_settings("general", |settings| {
            settings.model_map =
                Some([("claude-opus-4-8".to_owned(), "glm-4.6".to_owned())].into());
        })
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();

    // Models: opus goes past the sonnet-only account, and is renamed for the general one.
    assert_eq!(send_model(&harness, "claude-opus-4-8", "o").await, 200);
    assert_eq!(send_model(&harness, "claude-sonnet-4-5", "s").await, 200);
    let seen: Vec<(String, String)> = harness
        .mock
        .requests()
        .iter()
        .map(|request| {
            (
                request.api_key.clone(),
                request.body["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("sk-g".to_owned(), "glm-4.6".to_owned()),
            ("sk-s".to_owned(), "claude-sonnet-4-5".to_owned())
        ]
    );
    let renamed = &harness.mock.requests()[0].body;
    assert_eq!(renamed["max_tokens"], 64, "only the model changes");
    assert_eq!(renamed["messages"][0]["content"], "o");

    // Groups: a key bound to team-a only reaches its members.
    let (grouped, _) = harness
        .key_with(
            "grouped",
            &KeyPolicy {
                account_group: Some("team-a".into()),
                ..KeyPolicy::default()
            },
        )
        .await;
    let mut body = messages_body(false, "g");
    body["model"] = "claude-opus-4-8".into();
    let refused = harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", &grouped)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "the group has no account serving opus"
    );

    // Schedulable switch: off takes the account out without disabling it.
    harness
        .admin
        .edit_account_settings("sonnet-only", |settings| settings.schedulable = Some(false))
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    assert_eq!(send_model(&harness, "claude-sonnet-4-5", "s2").await, 200);
    assert_eq!(harness.mock.requests().last().unwrap().api_key, "sk-g");
}

#[tokio::test]
async fn an_account_at_its_concurrency_limit_is_passed_over_until_a_slot_frees() {
    let harness = Harness::start(vec![
        account("small", "sk-small", 1),
        account("big", "sk-big", 2),
    ])
    .await;
    harness
        .admin
        .edit_account_settings("small", |settings| settings.concurrency = Some(1))
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    harness.mock.script(
        "sk-small",
        [Behavior::SlowEvents(std::time::Duration::from_millis(100))],
    );
    let slow = harness.send(true, "long answer please one two").await;
    // While the first stream holds small's only slot, the next request goes to big.
    assert_eq!(harness.send(false, "second").await.status(), 200);
    assert_eq!(harness.mock.requests().last().unwrap().api_key, "sk-big");
    assert!(slow.text().await.unwrap().contains("message_stop"));
    // The slot is back: small takes traffic again.
    assert_eq!(harness.send(false, "third").await.status(), 200);
    assert_eq!(harness.mock.requests().last().unwrap().api_key, "sk-small");
}

#[tokio::test]
async fn accounts_near_a_subscription_window_limit_go_last() {
    let harness = Harness::start(vec![account("a", "sk-a", 1), account("b", "sk-b", 1)]).await;
    let reset = (relay_core::clock::now_ms() / 1000 + 3600).to_string();
    let warning = |key: &str| {
        harness.mock.script(
            key,
            [Behavior::NormalWithHeaders(vec![
                (
                    "anthropic-ratelimit-unified-5h-status".into(),
                    "allowed_warning".into(),
                ),
                ("anthropic-ratelimit-unified-5h-reset".into(), reset.clone()),
                (
                    "anthropic-ratelimit-unified-7d-status".into(),
                    "allowed".into(),
                ),
            ])],
        );
    };
    warning("sk-a");
    // The first request reaches a (first of equals) and learns its 5-hour window is nearly used.
    assert_eq!(harness.send(false, "first").await.status(), 200);
    let warned = harness.mock.requests()[0].api_key.clone();
    assert_eq!(warned, "sk-a");
    let other = "sk-b";
    // Least-recently-used alone would alternate; the warned account now goes last.
    for n in 0..4 {
        assert_eq!(
            harness.send(false, &format!("next {n}")).await.status(),
            200
        );
    }
    let after: Vec<String> = harness.mock.requests()[1..]
        .iter()
        .map(|request| request.api_key.clone())
        .collect();
    assert_eq!(after, [other, other, other, other]);
    let statuses = harness.relay.account_statuses();
    let windows = statuses
        .iter()
        .find(|status| status.name == if warned == "sk-a" { "a" } else { "b" })
        .unwrap()
        .windows
        .clone()
        .unwrap();
    assert_eq!(windows.five_hour_status.as_deref(), Some("allowed_warning"));
    assert_eq!(windows.seven_day_status.as_deref(), Some("allowed"));
}

#[tokio::test]
async fn an_account_past_its_daily_cost_sits_out() {
    let harness = Harness::start(vec![
        account("capped", "sk-capped", 1),
        account("spare", "sk-spare", 2),
    ])
    .await;
    harness
        .admin
        .edit_account_settings("capped", |settings| settings.daily_cost_nano_usd = Some(1))
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    for n in 0..3 {
        assert_eq!(
            harness.send(false, &format!("turn {n}")).await.status(),
            200
        );
    }
    let served: Vec<String> = harness
        .mock
        .requests()
        .iter()
        .map(|request| request.api_key.clone())
        .collect();
    assert_eq!(served, ["sk-capped", "sk-spare", "sk-spare"]);
    // What it served today is what it is measured by.
    harness.records(3).await;
    let capped = harness
        .snapshots
        .current()
        .accounts
        .iter()
        .find(|a| a.name == "capped")
        .unwrap()
        .clone();
    let before = capped.runtime.day_cost(relay_core::clock::now_ms());
    assert!(before > 1);
}

#[tokio::test]
async fn accounts_reach_their_upstream_through_http_and_socks5_proxies() {
    use relay_testkit::{ProxyProtocol, TestProxy};
    let harness = Harness::start(vec![
        account("via-http", "sk-http", 1),
        account("via-socks", "sk-socks", 2),
    ])
    .await;
    let http_proxy = TestProxy::start(ProxyProtocol::HttpConnect, Some(("relay", "p@ss"))).await;
    let socks_proxy = TestProxy::start(ProxyProtocol::Socks5, Some(("relay", "hunter2"))).await;
    let masked = harness
        .admin
        .set_account_proxy("via-http", Some(&http_proxy.url(Some(("relay", "p%40ss")))))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !masked.contains("p%40ss") && !masked.contains("relay") && masked.contains("***:***@"),
        "{masked}"
    );
    harness
        .admin
        .set_account_proxy(
            "via-socks",
            Some(&socks_proxy.url(Some(("relay", "hunter2")))),
        )
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    assert_eq!(harness.send(false, "through http").await.status(), 200);
    assert_eq!(
        http_proxy.tunnels(),
        1,
        "the request did not go through the HTTP proxy"
    );
    harness
        .admin
        .set_account_enabled("via-http", false)
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    assert_eq!(harness.send(false, "through socks").await.status(), 200);
    assert_eq!(
        socks_proxy.tunnels(),
        1,
        "the request did not go through the SOCKS5 proxy"
    );

    // Wrong proxy credentials: no tunnel, the request fails rather than going direct.
    harness
        .admin
        .set_account_proxy(
            "via-socks",
            Some(&socks_proxy.url(Some(("relay", "wrong")))),
        )
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    assert_eq!(harness.send(false, "bad credentials").await.status(), 502);
    assert_eq!(socks_proxy.tunnels(), 1);
    assert_eq!(harness.mock.requests().len(), 2);
}

/// Account events are written off the request path; shutdown drains them, so the event of the
/// very last request is not lost.
#[tokio::test]
async fn shutdown_drains_the_account_events_spawned_by_the_last_requests() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness.mock.script(
        "sk-main",
        [Behavior::status_with_headers(429, &[("retry-after", "30")])],
    );
    assert_eq!(harness.send(false, "x").await.status(), 429);
    harness.relay.drain_background().await;
    let account_id = harness.snapshots.current().accounts[0].id.clone();
    let events = harness.store.account_events(&account_id, 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "rate_limited");
}

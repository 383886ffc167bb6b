//! Key limits under concurrency and faults, through the real router.

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use relay_core::policy::KeyPolicy;
use relay_core::relay::estimate;
use relay_core::RelaySettings;
use relay_server::ServerSettings;
use relay_testkit::Behavior;
use serde_json::Value;

use crate::harness::{account, error_of, messages_body, post_as, Harness};

#[tokio::test]
async fn fifty_parallel_requests_never_overdraw_a_budget_that_admits_ten() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let body = messages_body(false, "budget race");
    let body_len = serde_json::to_vec(&body).unwrap().len();
    let per_request = estimate("claude-sonnet-4-5-20250929", body_len, Some(64), 1, None);
    assert!(per_request.cost_nano_usd > 0);
    let budget = per_request.cost_nano_usd * 10;
    for round in 0..20 {
        let policy = KeyPolicy {
            total_cost_nano_usd: Some(budget),
            ..KeyPolicy::default()
        };
        let (key, key_id) = harness.key_with(&format!("race-{round}"), &policy).await;
        let before = harness.mock.requests().len();
        let responses = join_all((0..50).map(|_| post_as(&harness, &key, &body).send())).await;
        let mut admitted = 0;
        for response in responses {
            let response = response.unwrap();
            match response.status().as_u16() {
                200 => admitted += 1,
                _ => assert_eq!(error_of(response).await, (402, "billing_error".into())),
            }
        }
        assert_eq!(admitted, 10, "round {round}");
        assert_eq!(harness.mock.requests().len() - before, 10, "round {round}");
        let standing = harness.relay.limiter().standing(
            &key_id,
            &KeyPolicy::default(),
            relay_core::clock::now_ms(),
        );
        assert!(
            standing.total_cost_nano_usd <= budget,
            "round {round}: overdrawn"
        );
        assert_eq!(standing.reserved_cost_nano_usd, 0);
        assert_eq!(standing.inflight, 0);
    }
}

#[tokio::test]
async fn a_concurrency_limit_of_two_never_lets_a_third_request_reach_the_upstream() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness.mock.script(
        "sk-main",
        (0..10).map(|_| Behavior::SlowEvents(Duration::from_millis(150))),
    );
    let policy = KeyPolicy {
        concurrency: Some(2),
        ..KeyPolicy::default()
    };
    let (key, key_id) = harness.key_with("pair", &policy).await;
    let body = messages_body(true, "one two three four five");
    let responses = join_all((0..10).map(|_| async {
        let response = post_as(&harness, &key, &body).send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let text = response.text().await.unwrap();
        (status, retry_after, text)
    }))
    .await;
    let admitted = responses
        .iter()
        .filter(|(status, _, _)| *status == 200)
        .count();
    assert_eq!(admitted, 2);
    assert_eq!(harness.mock.requests().len(), 2);
    for (status, retry_after, text) in &responses {
        if *status != 200 {
            assert_eq!(*status, 429);
            assert!(retry_after.is_some(), "429 without retry-after");
            assert!(text.contains("requests at a time"), "{text}");
        }
    }
    assert_eq!(
        harness
            .relay
            .limiter()
            .standing(&key_id, &KeyPolicy::default(), 0)
            .inflight,
        0
    );
}

#[tokio::test]
async fn counters_return_to_zero_after_a_thousand_faulty_requests() {
    let settings = RelaySettings {
        first_byte_timeout: Duration::from_millis(300),
        ..RelaySettings::default()
    };
    let harness = Harness::start_with(
        vec![account("main", "sk-main", 1)],
        settings,
        ServerSettings::default(),
    )
    .await;
    let faults = (0..1000).map(|n| match n % 6 {
        0 => Behavior::status(500),
        1 => Behavior::AbortAfterEvents(2),
        2 => Behavior::SlowFirstByte(Duration::from_millis(600)),
        3 => Behavior::status(400),
        _ => Behavior::Normal,
    });
    harness.mock.script("sk-main", faults);
    let policy = KeyPolicy {
        concurrency: Some(64),
        total_cost_nano_usd: Some(1_000_000_000_000),
        rate_window_secs: Some(60),
        rate_tokens: Some(u64::MAX / 4),
        ..KeyPolicy::default()
    };
    let (key, key_id) = harness.key_with("faulty", &policy).await;
    let body = messages_body(true, "fault injection");
    let outcomes: Vec<u16> = futures_util::stream::iter(0..1000)
        .map(|n| {
            let request = post_as(&harness, &key, &body);
            async move {
                let Ok(mut response) = request.send().await else {
                    return 0;
                };
                let status = response.status().as_u16();
                // Every fifth client goes away after the first chunk.
                if n % 5 == 4 {
                    let _ = response.chunk().await;
                    return status;
                }
                let _ = response.bytes().await;
                status
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(outcomes.len(), 1000);
    assert!(
        outcomes.iter().all(|status| *status != 0 && *status != 429),
        "no slot may leak into a refusal"
    );
    // Every admitted request settles or releases: nothing stays reserved or in flight.
    let mut standing = harness
        .relay
        .limiter()
        .standing(&key_id, &KeyPolicy::default(), 0);
    for _ in 0..50 {
        if standing.inflight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        standing = harness
            .relay
            .limiter()
            .standing(&key_id, &KeyPolicy::default(), 0);
    }
    assert_eq!(standing.inflight, 0);
    assert_eq!(standing.reserved_cost_nano_usd, 0);
    assert_eq!(standing.reserved_tokens, 0);
    // Exactly one usage record per request that reached the upstream.
    let records = harness.records(1000).await;
    assert_eq!(records.len(), harness.mock.requests().len());
}

#[tokio::test]
async fn rate_window_refusals_say_when_to_come_back() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let policy = KeyPolicy {
        rate_window_secs: Some(3600),
        rate_requests: Some(2),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("windowed", &policy).await;
    let body = messages_body(false, "x");
    for _ in 0..2 {
        assert_eq!(
            post_as(&harness, &key, &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let refused = post_as(&harness, &key, &body).send().await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3630).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(refused).await, (429, "rate_limit_error".into()));

    // count_tokens costs nothing but is a request: the full window refuses it too, before it
    // can reach (and cool) a shared account.
    let before = harness.mock.requests().len();
    let counted = harness
        .client
        .post(format!("{}/v1/messages/count_tokens", harness.url))
        .header("x-api-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(counted).await, (429, "rate_limit_error".into()));
    assert_eq!(harness.mock.requests().len(), before);

    // On a key whose money is spent, counting tokens ($0) still works.
    let (broke, _) = harness
        .key_with(
            "broke",
            &KeyPolicy {
                total_cost_nano_usd: Some(0),
                ..KeyPolicy::default()
            },
        )
        .await;
    let counted = harness
        .client
        .post(format!("{}/v1/messages/count_tokens", harness.url))
        .header("x-api-key", &broke)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
}

#[tokio::test]
async fn access_policies_refuse_what_they_should_and_admit_the_rest() {
    let harness = Harness::start(vec![
        account("first", "sk-first", 1),
        account("second", "sk-second", 2),
    ])
    .await;
    let sonnet = messages_body(false, "x");
    let mut opus = sonnet.clone();
    opus["model"] = "claude-opus-4-8".into();

    let models = KeyPolicy {
        allowed_models: Some(vec!["claude-sonnet-*".into()]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("models", &models).await;
    assert_eq!(
        post_as(&harness, &key, &sonnet)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = post_as(&harness, &key, &opus).send().await.unwrap();
    assert_eq!(error_of(refused).await, (403, "permission_error".into()));

    let clients = KeyPolicy {
        allowed_clients: Some(vec!["claude-code".into()]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("clients", &clients).await;
    let mut claude_code_body = sonnet.clone();
    claude_code_body["metadata"] = serde_json::json!({"user_id": "{\"session_id\":\"s1\"}"});
    let from_claude_code = post_as(&harness, &key, &claude_code_body)
        .header("user-agent", "claude-cli/2.1.197 (external, sdk-cli)")
        .header("x-app", "cli")
        .send()
        .await
        .unwrap();
    assert_eq!(from_claude_code.status(), 200);
    // The same User-Agent without Claude Code's other marks is not Claude Code.
    let forged = post_as(&harness, &key, &sonnet)
        .header("user-agent", "claude-cli/2.1.197 (external, sdk-cli)")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(forged).await, (403, "permission_error".into()));

    let addresses = KeyPolicy {
        allowed_ips: Some(vec!["10.0.0.0/8".into()]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("addresses", &addresses).await;
    let refused = post_as(&harness, &key, &sonnet).send().await.unwrap();
    assert_eq!(error_of(refused).await, (403, "permission_error".into()));
    let loopback = KeyPolicy {
        allowed_ips: Some(vec!["127.0.0.0/8".into(), "::1".into()]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("loopback", &loopback).await;
    assert_eq!(
        post_as(&harness, &key, &sonnet)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let services = KeyPolicy {
        services: Some(vec![relay_core::policy::Service::Openai]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("openai-only", &services).await;
    let refused = post_as(&harness, &key, &sonnet).send().await.unwrap();
    assert_eq!(error_of(refused).await, (403, "permission_error".into()));

    let expired = KeyPolicy {
        expires_at_ms: Some(relay_core::clock::now_ms() - 1),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("expired", &expired).await;
    let refused = post_as(&harness, &key, &sonnet).send().await.unwrap();
    assert_eq!(
        error_of(refused).await,
        (401, "authentication_error".into())
    );

    let refused_so_far = harness.mock.requests().len();
    assert_eq!(
        refused_so_far, 3,
        "refused requests must not reach the upstream"
    );

    // A dedicated key goes to its account even though another has a better priority.
    let dedicated = KeyPolicy {
        dedicated_account: Some("second".into()),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("dedicated", &dedicated).await;
    for _ in 0..3 {
        assert_eq!(
            post_as(&harness, &key, &sonnet)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let after: Vec<String> = harness.mock.requests()[refused_so_far..]
        .iter()
        .map(|request| request.api_key.clone())
        .collect();
    assert_eq!(after, ["sk-second", "sk-second", "sk-second"]);
}

#[tokio::test]
async fn a_key_holder_sees_limits_standing_and_recent_requests() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let policy = KeyPolicy {
        concurrency: Some(3),
        daily_cost_nano_usd: Some(10_000_000_000),
        rate_window_secs: Some(60),
        rate_requests: Some(100),
        token_quota: Some(1_000_000),
        allowed_models: Some(vec!["claude-sonnet-*".into()]),
        dedicated_account: Some("main".into()),
        allowed_ips: Some(vec!["127.0.0.0/8".into()]),
        ..KeyPolicy::default()
    };
    let (key, _) = harness.key_with("member", &policy).await;
    let body = messages_body(false, "hello");
    for _ in 0..2 {
        assert_eq!(
            post_as(&harness, &key, &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    harness.records(2).await;
    for path in [
        "/v1/usage",
        "/api/v1/usage",
        "/v1/key-info",
        "/api/v1/key-info",
    ] {
        let report: Value = harness
            .client
            .get(format!("{}{path}", harness.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(report["name"], "member", "{path}");
        assert_eq!(report["concurrency"]["limit"], 3);
        assert_eq!(report["concurrency"]["in_flight"], 0);
        let daily = &report["periods"][0];
        assert_eq!(daily["period"], "daily");
        let used = daily["cost"]["used"].as_f64().unwrap();
        assert!(used > 0.0);
        assert_eq!(daily["cost"]["limit"], 10.0);
        assert!((daily["cost"]["remaining"].as_f64().unwrap() - (10.0 - used)).abs() < 1e-9);
        assert!(daily["resets_at_ms"].as_i64().unwrap() > relay_core::clock::now_ms());
        assert_eq!(report["rate_window"]["requests"]["used"], 2.0);
        assert_eq!(report["rate_window"]["requests"]["limit"], 100.0);
        assert!(report["token_quota"]["used"].as_f64().unwrap() > 0.0);
        let recent = report["recent_requests"].as_array().unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0]["model"], "claude-sonnet-4-5-20250929");
        assert!(
            !report.to_string().contains(&key),
            "the report must not echo the key"
        );
        let limits = &report["limits"];
        assert_eq!(limits["concurrency"], 3);
        for routing in ["dedicated_account", "account_group", "allowed_ips"] {
            assert!(limits.get(routing).is_none(), "{routing} shown: {limits}");
        }
        assert!(
            !report.to_string().contains("\"main\""),
            "no account name: {report}"
        );
    }

    // /v1/models lists only what the key may use.
    let models: Value = harness
        .client
        .get(format!("{}/v1/models", harness.url))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|id| id.starts_with("claude-sonnet-")),
        "{ids:?}"
    );

    // Without a key: a clean 401. A disabled key may still look at itself.
    let anonymous = harness
        .client
        .get(format!("{}/v1/usage", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(anonymous).await,
        (401, "authentication_error".into())
    );
    harness
        .admin
        .set_key_enabled("member", false)
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
    let report: Value = harness
        .client
        .get(format!("{}/v1/usage", harness.url))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "disabled");
}

#[tokio::test]
async fn repeated_wrong_keys_block_guesses_from_the_address_but_not_valid_keys() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let body = messages_body(false, "x");
    for n in 0..30 {
        let guess = post_as(&harness, &format!("cr_guess_{n}"), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(guess.status(), 401, "attempt {n}");
    }
    // Guesses are blocked now; a colleague behind the same address with a valid key is not.
    let blocked = post_as(&harness, "cr_guess_again", &body)
        .send()
        .await
        .unwrap();
    assert!(blocked.headers().get("retry-after").is_some());
    assert_eq!(error_of(blocked).await, (429, "rate_limit_error".into()));
    assert!(harness.mock.requests().is_empty());
    let valid = post_as(&harness, &harness.key, &body).send().await.unwrap();
    assert_eq!(valid.status(), 200);
}

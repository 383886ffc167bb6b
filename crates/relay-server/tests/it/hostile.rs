//! Hostile numbers and sizes, from clients and from upstreams: each gets a clear answer or is
//! bounded, and none overdraws a key, stores unbounded data or stops the relay from starting.

use relay_core::policy::KeyPolicy;
use relay_testkit::Behavior;
use serde_json::json;

use crate::harness::{account, error_of, messages_body, post_as, AccountSpec, Harness};

fn budget(usd_nano: i64) -> KeyPolicy {
    KeyPolicy {
        total_cost_nano_usd: Some(usd_nano),
        ..KeyPolicy::default()
    }
}

#[tokio::test]
async fn a_max_tokens_no_model_accepts_is_refused_before_any_upstream() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let (key, key_id) = harness.key_with("capped", &budget(10_000_000)).await;
    let mut body = messages_body(false, "x");
    body["max_tokens"] = json!(u64::MAX);
    let refused = post_as(&harness, &key, &body).send().await.unwrap();
    assert_eq!(
        error_of(refused).await,
        (400, "invalid_request_error".into())
    );
    assert!(harness.mock.requests().is_empty());
    // Nothing is held, and an honest request on the $0.01 key still goes through.
    let standing = harness
        .relay
        .limiter()
        .standing(&key_id, &KeyPolicy::default(), 0);
    assert_eq!(standing.inflight, 0);
    let honest = post_as(&harness, &key, &messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(honest.status(), 200);
}

#[tokio::test]
async fn an_upstream_reporting_u64_max_tokens_is_clamped_flagged_and_cannot_wrap_a_budget() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let (key, key_id) = harness.key_with("victim", &budget(1_000_000_000)).await;
    let absurd = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": u64::MAX, "output_tokens": u64::MAX,
                  "cache_read_input_tokens": u64::MAX},
    });
    harness.mock.script(
        "sk-main",
        [Behavior::Status {
            status: 200,
            headers: Vec::new(),
            body: absurd.to_string(),
        }],
    );
    let response = post_as(&harness, &key, &messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let record = harness.records(1).await.remove(0);
    assert_eq!(record.error_kind.as_deref(), Some("usage_out_of_range"));
    assert_eq!(record.usage.input_tokens, 1_000_000_000);
    let standing = harness
        .relay
        .limiter()
        .standing(&key_id, &KeyPolicy::default(), 0);
    assert!(
        standing.total_cost_nano_usd > 1_000_000_000,
        "spent, not wrapped"
    );
    let refused = post_as(&harness, &key, &messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(refused).await.0, 402);
    // A restart seeds the ledgers from these rows without failing.
    harness
        .relay
        .limiter()
        .seed_from_store(&harness.store, &harness.snapshots.current(), 0)
        .await
        .unwrap();
    harness.relay.seed_account_costs().await.unwrap();
}

#[tokio::test]
async fn a_model_name_too_long_or_unprintable_is_refused_and_nothing_is_stored() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    for model in [
        "m".repeat(1024 * 1024),
        "claude sonnet".to_owned(),
        "claude-\u{7}".to_owned(),
    ] {
        let mut body = messages_body(false, "x");
        body["model"] = json!(model);
        let refused = harness.post("/v1/messages", body).send().await.unwrap();
        assert_eq!(
            error_of(refused).await,
            (400, "invalid_request_error".into())
        );
    }
    assert!(harness.mock.requests().is_empty());
    let ok = harness.send(false, "x").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        harness.records(1).await.len(),
        1,
        "only the valid request is recorded"
    );
}

#[tokio::test]
async fn an_unpriced_model_is_charged_against_cost_limits_at_a_stand_in_price() {
    // An Anthropic-compatible relay serving GLM under its own name: the account lists it.
    let harness = Harness::start(vec![AccountSpec {
        models: Some(vec!["*".into()]),
        ..account("main", "sk-main", 1)
    }])
    .await;
    let (key, key_id) = harness.key_with("thrifty", &budget(50_000_000)).await;
    let mut body = messages_body(false, "x");
    body["model"] = json!("glm-4.6");
    let response = post_as(&harness, &key, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let record = harness.records(1).await.remove(0);
    assert_eq!(record.cost_nano_usd, None, "the record says unpriced");
    let standing = harness
        .relay
        .limiter()
        .standing(&key_id, &KeyPolicy::default(), 0);
    assert!(
        standing.total_cost_nano_usd > 0,
        "the key's limits were charged: {standing:?}"
    );
    assert_eq!(record.charged_nano_usd, Some(standing.total_cost_nano_usd));
    // After a restart, the ledger is seeded with the same charge, not $0.
    let restarted = relay_core::limits::Limiter::default();
    restarted
        .seed_from_store(&harness.store, &harness.snapshots.current(), 0)
        .await
        .unwrap();
    assert_eq!(
        restarted
            .standing(&key_id, &KeyPolicy::default(), 0)
            .total_cost_nano_usd,
        standing.total_cost_nano_usd
    );
}

#[tokio::test]
async fn an_sse_event_without_end_is_relayed_but_not_buffered_and_the_record_says_so() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let endless = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"claude-sonnet-4-5\",\"usage\":{{\"input_tokens\":7,\"output_tokens\":1}}}}}}\n\nevent: content_block_delta\ndata: {}",
        "x".repeat(4 * 1024 * 1024)
    );
    harness.mock.script(
        "sk-main",
        [Behavior::Status {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: endless.clone(),
        }],
    );
    let response = harness.send(true, "x").await;
    assert_eq!(response.status(), 200);
    let relayed = response.bytes().await.unwrap();
    assert_eq!(
        relayed.len(),
        endless.len(),
        "every byte reached the client"
    );
    let record = harness.records(1).await.remove(0);
    assert_eq!(record.error_kind.as_deref(), Some("usage_unreadable"));
    assert_eq!(record.usage.input_tokens, 7, "what was readable is kept");
}

#[tokio::test]
async fn only_the_beta_parameter_is_forwarded_and_two_different_keys_are_refused() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let response = harness
        .post(
            "/v1/messages?beta=true&key=AIza-client-secret",
            messages_body(false, "x"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = harness.mock.requests().remove(0);
    assert_eq!(forwarded.query.as_deref(), Some("beta=true"));

    let ambiguous = harness
        .post("/v1/messages", messages_body(false, "x"))
        .bearer_auth("cr_some_other_key")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(ambiguous).await,
        (400, "invalid_request_error".into())
    );
    let same_twice = harness
        .post("/v1/messages", messages_body(false, "x"))
        .bearer_auth(&harness.key)
        .send()
        .await
        .unwrap();
    assert_eq!(same_twice.status(), 200);
}

#[tokio::test]
async fn an_absurd_retry_after_is_bounded_and_the_request_still_recorded() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness.mock.script(
        "sk-main",
        [Behavior::status_with_headers(
            429,
            &[("retry-after", "1e20")],
        )],
    );
    let response = harness.send(false, "x").await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after <= 7 * 86_400, "{retry_after}");
    let record = harness.records(1).await.remove(0);
    assert_eq!(record.outcome, "upstream_error");
}

#[tokio::test]
async fn a_huge_user_agent_is_served_and_stored_cut_to_its_bound() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    let agent = format!("huge-client/1.0 {}", "a".repeat(100_000));
    let served = harness
        .post("/v1/messages", messages_body(false, "x"))
        .header("user-agent", &agent)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let stored = harness.records(1).await.remove(0).user_agent.unwrap();
    assert_eq!(stored.len(), 512);
    assert!(agent.starts_with(&stored));
}

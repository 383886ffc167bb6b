//! The relay path end to end: responses, forwarded headers, failover, usage records, errors.

use std::time::Duration;

use relay_core::pricing::cost_nano_usd;
use relay_core::RelaySettings;
use relay_protocol::Usage;
use relay_server::ServerSettings;
use relay_testkit::{expected_usage, Behavior};
use serde_json::{json, Value};

use crate::harness::{account, error_of, messages_body, AccountSpec, Harness};

fn usage_of(body: &Value, output_tokens: u64) -> Usage {
    let expected = expected_usage(body);
    Usage {
        input_tokens: expected.input_tokens,
        output_tokens,
        cache_creation_5m_tokens: expected.cache_creation_5m,
        cache_creation_1h_tokens: expected.cache_creation_1h,
        cache_read_tokens: expected.cache_read,
        reasoning_tokens: 0,
    }
}

#[tokio::test]
async fn non_streaming_request_is_relayed_with_the_account_credential_and_recorded() {
    let harness = Harness::start(vec![account("main", "sk-upstream-main", 10)]).await;
    let body = messages_body(false, "hello");
    let response = harness
        .post("/v1/messages?beta=true", body.clone())
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .header("user-agent", "claude-cli/2.1.197 (external, sdk-cli)")
        .header("x-claude-code-session-id", "session-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-request-id").is_some());
    assert!(
        response
            .headers()
            .get("anthropic-organization-id")
            .is_none(),
        "account identity leaked"
    );
    assert_eq!(response.headers()["request-id"], "req_mock_upstream");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["content"][0]["text"],
        "MOCK_OK from claude-sonnet-4-5-20250929."
    );

    let upstream = harness.mock.requests();
    assert_eq!(upstream.len(), 1);
    let seen = &upstream[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.query.as_deref(), Some("beta=true"));
    assert_eq!(seen.api_key, "sk-upstream-main");
    assert_eq!(seen.body, body, "the body must pass through unchanged");
    assert_eq!(
        seen.headers["anthropic-beta"],
        "claude-code-20250219,interleaved-thinking-2025-05-14"
    );
    assert_eq!(
        seen.headers["user-agent"],
        "claude-cli/2.1.197 (external, sdk-cli)"
    );
    assert_eq!(seen.headers["x-claude-code-session-id"], "session-1");
    for (name, value) in &seen.headers {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(&harness.key),
            "client key forwarded in {name}"
        );
    }
    assert!(seen.headers.get("authorization").is_none());

    let records = harness.records(1).await;
    let record = &records[0];
    let expected = usage_of(&body, 4);
    assert_eq!(record.usage, expected);
    assert_eq!(record.outcome, "ok");
    assert_eq!(record.status, 200);
    assert_eq!(record.key_id, harness.key_id);
    assert!(!record.stream);
    assert_eq!(
        record.cost_nano_usd,
        cost_nano_usd("claude-sonnet-4-5", &expected)
    );
    assert_eq!(
        record.user_agent.as_deref(),
        Some("claude-cli/2.1.197 (external, sdk-cli)")
    );
}

#[tokio::test]
async fn streaming_is_relayed_event_by_event_and_usage_is_not_counted_twice() {
    let harness = Harness::start(vec![account("main", "sk-upstream-main", 10)]).await;
    let body = messages_body(true, "hello stream");
    let response = harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .bearer_auth(&harness.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"ping"));
    assert!(text.contains("\"text\":\"MOCK_OK \""));

    let records = harness.records(1).await;
    // message_delta repeats input and cache counts: summing them would double the bill.
    assert_eq!(records[0].usage, usage_of(&body, 4));
    assert!(records[0].stream);
    assert_eq!(records[0].outcome, "ok");
    assert_eq!(
        records[0].upstream_model.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
}

#[tokio::test]
async fn failover_before_the_first_byte_and_rate_limited_accounts_cool_down() {
    let harness = Harness::start(vec![
        account("first", "sk-first", 1),
        account("second", "sk-second", 2),
    ])
    .await;
    // Overloaded on every try (one attempt and two same-account retries): the next account.
    harness
        .mock
        .script("sk-first", (0..3).map(|_| Behavior::status(529)));
    let response = harness.send(true, "a").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("message_stop"));
    assert_eq!(harness.mock.count_for("sk-first"), 3);
    assert_eq!(harness.mock.count_for("sk-second"), 1);

    // 429 with retry-after: the account cools, so the next request skips it entirely.
    harness.mock.script(
        "sk-first",
        [Behavior::status_with_headers(429, &[("retry-after", "30")])],
    );
    for _ in 0..2 {
        let response = harness.send(false, "b").await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        harness.mock.count_for("sk-first"),
        4,
        "a cooling account got traffic"
    );
    assert_eq!(harness.mock.count_for("sk-second"), 3);

    let records = harness.records(3).await;
    assert_eq!(records[0].attempts, 2);
    assert_eq!(
        records
            .iter()
            .map(|record| record.outcome.as_str())
            .collect::<Vec<_>>(),
        ["ok", "ok", "ok"]
    );
    let second_id = harness
        .admin
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|account| account.name == "second")
        .unwrap()
        .id;
    assert_eq!(records[0].account_id.as_deref(), Some(second_id.as_str()));
}

#[tokio::test]
async fn exhausted_failover_answers_in_anthropic_shape_and_is_recorded() {
    let harness = Harness::start(vec![account("only", "sk-only", 1)]).await;
    // 529 with a JSON body passes through: the client's own retry logic understands it.
    harness
        .mock
        .script("sk-only", (0..3).map(|_| Behavior::status(529)));
    let response = harness.send(false, "x").await;
    assert_eq!(error_of(response).await, (529, "overloaded_error".into()));

    // A 5xx is not passed through (it may be an HTML page); the relay says 502 in its words.
    harness.mock.script(
        "sk-only",
        [Behavior::Status {
            status: 503,
            headers: vec![("content-type".into(), "text/html".into())],
            body: "<html>bad gateway</html>".into(),
        }],
    );
    let response = harness.send(false, "x").await;
    assert_eq!(error_of(response).await, (502, "api_error".into()));

    // A 400 is the client's fault: passed through as is, no failover.
    harness.mock.script("sk-only", [Behavior::status(400)]);
    let response = harness.send(false, "x").await;
    assert_eq!(
        error_of(response).await,
        (400, "invalid_request_error".into())
    );

    // Upstream 401 means the relay's account is bad, not the client's key.
    harness.mock.script("sk-only", [Behavior::status(401)]);
    let response = harness.send(false, "x").await;
    assert_eq!(response.status(), 502);
    // …and takes that account out of rotation for a while: with no other account, callers are
    // told when to come back.
    let response = harness.send(false, "x").await;
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(error_of(response).await, (429, "rate_limit_error".into()));
    assert_eq!(harness.mock.count_for("sk-only"), 6);

    let records = harness.records(4).await;
    let summary: Vec<(u16, &str, Option<&str>)> = records
        .iter()
        .map(|record| {
            (
                record.status,
                record.outcome.as_str(),
                record.error_kind.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (529, "upstream_error", Some("overloaded")),
            (502, "upstream_error", Some("server_error")),
            (400, "upstream_error", Some("invalid_request_error")),
            (502, "upstream_error", Some("unauthorized")),
        ]
    );
}

#[tokio::test]
async fn refused_connection_fails_over_and_alone_is_a_502() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let harness = Harness::start(vec![
        AccountSpec {
            base_url: Some(closed.clone()),
            ..account("dead", "sk-dead", 1)
        },
        account("alive", "sk-alive", 2),
    ])
    .await;
    let response = harness.send(false, "x").await;
    assert_eq!(response.status(), 200);
    harness
        .admin
        .set_account_enabled("alive", false)
        .await
        .unwrap();
    // The change reaches the running relay through the revision poll.
    let mut status = 0;
    for _ in 0..40 {
        let response = harness.send(false, "x").await;
        status = response.status().as_u16();
        if status != 200 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "api_error");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 502);
}

#[tokio::test]
async fn mid_stream_upstream_drop_reaches_the_client_as_an_error_and_is_recorded() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness
        .mock
        .script("sk-main", [Behavior::AbortAfterEvents(3)]);
    let body = messages_body(true, "one two three four five six");
    let response = harness
        .post("/v1/messages", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.text().await.is_err(),
        "a dropped upstream must not look like a clean end"
    );
    let records = harness.records(1).await;
    assert_eq!(records[0].outcome, "upstream_interrupted");
    assert_eq!(records[0].error_kind.as_deref(), Some("stream_error"));
    // What message_start said is kept.
    assert_eq!(records[0].usage, usage_of(&body, 1));
    assert_eq!(
        harness.mock.count_for("sk-main"),
        1,
        "never retried after the first byte"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_recorded_as_partial() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness.mock.script(
        "sk-main",
        [Behavior::SlowEvents(Duration::from_millis(300))],
    );
    let body = messages_body(true, "a long answer please");
    let mut response = harness
        .post("/v1/messages", body.clone())
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(response);
    let records = harness.records(1).await;
    assert_eq!(records[0].outcome, "partial");
    assert_eq!(
        records[0].usage.input_tokens,
        usage_of(&body, 0).input_tokens
    );
    let metrics = harness
        .client
        .get(format!("{}/metrics", harness.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("claude_relay_active_streams 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish_and_flushes_usage() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    harness.mock.script(
        "sk-main",
        [Behavior::SlowEvents(Duration::from_millis(100))],
    );
    let request = harness
        .post("/v1/messages", messages_body(true, "finish me please"))
        .send();
    let response = request.await.unwrap();
    let reader = tokio::spawn(async move { response.text().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let records = harness.shutdown().await;
    let text = reader.await.unwrap().unwrap();
    assert!(
        text.contains("message_stop"),
        "the in-flight stream was cut: {text}"
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "ok");
}

#[tokio::test]
async fn slow_first_byte_times_out_with_504() {
    let settings = RelaySettings {
        first_byte_timeout: Duration::from_millis(500),
        ..RelaySettings::default()
    };
    let harness = Harness::start_with(
        vec![account("slow", "sk-slow", 1)],
        settings,
        ServerSettings::default(),
    )
    .await;
    harness
        .mock
        .script("sk-slow", [Behavior::SlowFirstByte(Duration::from_secs(3))]);
    let response = harness.send(false, "x").await;
    assert_eq!(error_of(response).await, (504, "timeout_error".into()));
    let records = harness.records(1).await;
    assert_eq!(records[0].error_kind.as_deref(), Some("timeout"));
}

#[tokio::test]
async fn bad_requests_get_clean_anthropic_errors() {
    let server_settings = ServerSettings {
        max_body_bytes: 4096,
        ..ServerSettings::default()
    };
    let harness = Harness::start_with(
        vec![account("main", "sk-main", 1)],
        RelaySettings::default(),
        server_settings,
    )
    .await;
    let url = |path: &str| format!("{}{path}", harness.url);

    let missing = harness
        .client
        .post(url("/v1/messages"))
        .json(&messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(missing).await,
        (401, "authentication_error".into())
    );
    let wrong = harness
        .client
        .post(url("/v1/messages"))
        .header("x-api-key", "cr_wrong")
        .json(&messages_body(false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(wrong).await, (401, "authentication_error".into()));
    let malformed = harness
        .client
        .post(url("/v1/messages"))
        .header("x-api-key", &harness.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(malformed).await,
        (400, "invalid_request_error".into())
    );
    let no_model = harness
        .post("/v1/messages", json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(no_model).await,
        (400, "invalid_request_error".into())
    );
    let huge = harness
        .post("/v1/messages", messages_body(false, &"x".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(huge).await, (413, "request_too_large".into()));
    let unknown = harness.client.get(url("/v1/nothing")).send().await.unwrap();
    assert_eq!(error_of(unknown).await, (404, "not_found_error".into()));
    let wrong_method = harness
        .client
        .get(url("/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(wrong_method).await,
        (405, "invalid_request_error".into())
    );
    assert!(
        harness.mock.requests().is_empty(),
        "refused requests must not reach the upstream"
    );

    harness
        .admin
        .set_key_enabled("tester", false)
        .await
        .unwrap();
    let mut last = (0, String::new());
    for _ in 0..40 {
        let response = harness.send(false, "x").await;
        if response.status() != 200 {
            last = error_of(response).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last,
        (403, "permission_error".into()),
        "a disabled key must be refused within a second"
    );
}

#[tokio::test]
async fn aliases_count_tokens_and_models() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    for prefix in ["", "/api", "/claude"] {
        let response = harness
            .post(&format!("{prefix}/v1/messages"), messages_body(false, "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "prefix {prefix}");
    }
    let body = messages_body(false, "count me");
    let counted: Value = harness
        .post("/api/v1/messages/count_tokens", body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counted["input_tokens"], expected_usage(&body).input_tokens);
    assert_eq!(
        harness.mock.requests().last().unwrap().path,
        "/v1/messages/count_tokens"
    );
    let models: Value = harness
        .client
        .get(format!("{}/claude/v1/models", harness.url))
        .header("x-api-key", &harness.key)
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
    assert!(ids.contains(&"claude-sonnet-4-5"));
    assert_eq!(models["has_more"], false);
    let records = harness.records(4).await;
    assert_eq!(records[3].endpoint, "count_tokens");
    assert_eq!(records[3].cost_nano_usd, Some(0));
}

#[tokio::test]
async fn health_and_metrics_answer_without_a_key() {
    let harness = Harness::start(vec![account("main", "sk-main", 1)]).await;
    for route in relay_server::UNAUTHENTICATED_ROUTES {
        let url = format!("{}{route}", harness.url);
        // The sign-in route takes a POST; reaching its body check proves no session is needed.
        let (request, expected) = if *route == "/admin/v1/login" {
            (harness.client.post(url).json(&serde_json::json!({})), 400)
        } else {
            (harness.client.get(url), 200)
        };
        assert_eq!(request.send().await.unwrap().status(), expected, "{route}");
    }
    harness.send(false, "x").await;
    let metrics = harness
        .client
        .get(format!("{}/metrics", harness.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("claude_relay_requests_total{route=\"messages\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("claude_relay_usage_queue_depth"));
    assert!(
        metrics.contains("claude_relay_tokens_total{kind=\"output\"} 4"),
        "{metrics}"
    );
    assert!(!metrics.contains(&harness.key));
    assert!(!metrics.contains("sk-main"));
}

#[tokio::test]
async fn idle_timeout_cuts_a_silent_stream_but_not_a_slow_live_one() {
    let settings = RelaySettings {
        idle_timeout: Duration::from_millis(600),
        ..RelaySettings::default()
    };
    let harness = Harness::start_with(
        vec![account("main", "sk-main", 1)],
        settings,
        ServerSettings::default(),
    )
    .await;
    // Events every 100 ms: the stream outlives the idle timeout, yet is live throughout.
    harness.mock.script(
        "sk-main",
        [Behavior::SlowEvents(Duration::from_millis(100))],
    );
    let live = harness
        .send(true, "one two three four five six seven")
        .await;
    let text = live.text().await.unwrap();
    assert!(
        text.contains("message_stop"),
        "a live stream was cut: {text}"
    );

    // A 1 s silence after the first event exceeds it.
    harness.mock.script(
        "sk-main",
        [Behavior::SlowEvents(Duration::from_millis(1000))],
    );
    let silent = harness.send(true, "x").await;
    assert_eq!(silent.status(), 200);
    assert!(
        silent.text().await.is_err(),
        "a silent upstream must end in an error"
    );

    let records = harness.records(2).await;
    assert_eq!(records[0].outcome, "ok");
    assert_eq!(records[1].outcome, "upstream_interrupted");
    assert_eq!(records[1].error_kind.as_deref(), Some("idle_timeout"));
}

//! Many dialects, one core: OpenAI clients served by Anthropic accounts, Anthropic clients served
//! by OpenAI-compatible accounts, pass-through on both sides, failover across platforms, errors in
//! the caller's dialect and one usage record per request with the upstream's own figures.

use relay_testkit::openai::expected_chat_usage;
use relay_testkit::{expected_usage, Behavior};
use serde_json::{json, Value};

use crate::harness::{account, openai_account, Harness};

fn chat_body(stream: bool, prompt: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "stream": stream,
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": prompt},
        ],
        "tools": [{"type": "function", "function": {
            "name": "Bash",
            "description": "Run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        }}],
    })
}

fn post_chat(harness: &Harness, body: &Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}/v1/chat/completions", harness.url))
        .bearer_auth(&harness.key)
        .json(body)
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The `event:` names of an SSE body, in order.
fn sse_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_openai_client_is_served_by_an_anthropic_account() {
    let harness = Harness::start(vec![account("claude", "sk-ant-1", 1)]).await;

    // Not streamed: a chat.completion built from the Anthropic message.
    let response = post_chat(&harness, &chat_body(false, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "MOCK_OK from claude-sonnet-4-5-20250929."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The upstream got an Anthropic request: system on top, the tool's schema as input_schema.
    let upstream = harness.mock.requests();
    assert_eq!(upstream.len(), 1);
    let sent = &upstream[0].body;
    assert_eq!(upstream[0].path, "/v1/messages");
    assert_eq!(upstream[0].api_key, "sk-ant-1");
    assert!(sent["system"].to_string().contains("be brief"), "{sent}");
    assert_eq!(sent["tools"][0]["name"], "Bash");
    assert!(sent["tools"][0]["input_schema"].is_object(), "{sent}");
    assert_eq!(sent["max_tokens"], 64);
    // Usage in OpenAI's convention: prompt tokens include the cached ones.
    let expected = expected_usage(sent);
    let prompt = expected.input_tokens
        + expected.cache_creation_5m
        + expected.cache_creation_1h
        + expected.cache_read;
    assert_eq!(body["usage"]["prompt_tokens"], prompt);

    // Streamed, with a tool call: chat.completion.chunk events ending in [DONE], the call's
    // arguments in pieces, and no usage chunk the client did not ask for.
    let response = post_chat(&harness, &chat_body(true, "USE_TOOL:Bash NONCE-q1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "chat.completion.chunk"));
    assert!(
        chunks.iter().all(|chunk| chunk["usage"].is_null()),
        "{text}"
    );
    let arguments: String = chunks
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments["command"], "echo TOOLRESULT-q1");
    assert!(chunks
        .iter()
        .any(|chunk| chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "Bash"));
    assert!(chunks
        .iter()
        .any(|chunk| chunk["choices"][0]["finish_reason"] == "tool_calls"));

    // Streamed with include_usage: the usage chunk comes, with the upstream's figures.
    let mut body = chat_body(true, "hello again");
    body["stream_options"] = json!({"include_usage": true});
    let text = post_chat(&harness, &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let usage_chunk: Value = sse_data(&text)
        .iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .find(|chunk| !chunk["usage"].is_null())
        .expect("a usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));

    let records = harness.shutdown().await;
    assert_eq!(records.len(), 3, "one record per request");
    for record in &records {
        assert_eq!(record.platform, "anthropic");
        assert_eq!(record.endpoint, "chat_completions");
        assert_eq!(record.outcome, "ok");
        assert!(record.cost_nano_usd.unwrap() > 0);
    }
    assert_eq!(records[0].usage.input_tokens, expected.input_tokens);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        records[2].usage.output_tokens
    );
}

fn deepseek_body(stream: bool, prompt: &str) -> Value {
    json!({
        "model": "deepseek-chat",
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": prompt}],
        "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    })
}

#[tokio::test]
async fn an_anthropic_client_is_served_by_an_openai_compatible_account() {
    let harness = Harness::start(vec![
        account("claude", "sk-ant-1", 1),
        openai_account("deepseek", "sk-ds-1", 1, &["deepseek-*"]),
    ])
    .await;

    // Not streamed, with a tool call: an Anthropic message with a tool_use block.
    let response = harness
        .post(
            "/v1/messages",
            deepseek_body(false, "USE_TOOL:Bash NONCE-d1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["stop_reason"], "tool_use");
    let tool_use = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|block| block["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(tool_use["name"], "Bash");
    assert_eq!(tool_use["input"]["command"], "echo TOOLRESULT-d1");
    // The upstream got a Chat Completions request with the account's bearer key.
    let upstream = harness.openai.requests();
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].path, "/v1/chat/completions");
    assert_eq!(upstream[0].api_key, "sk-ds-1");
    assert!(upstream[0].headers.get("x-api-key").is_none());
    assert!(upstream[0].headers.get("anthropic-version").is_none());
    let sent = &upstream[0].body;
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["tools"][0]["function"]["name"], "Bash");
    let first_usage = expected_chat_usage(sent);

    // Streamed: Anthropic's event sequence, text deltas, usage in message_delta.
    let response = harness
        .post("/v1/messages", deepseek_body(true, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(
        events.first().map(String::as_str),
        Some("message_start"),
        "{text}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("message_stop"),
        "{text}"
    );
    assert!(events.iter().any(|event| event == "content_block_delta"));
    let delta: Value = sse_data(&text)
        .iter()
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .find(|event| event["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let streamed_text: String = sse_data(&text)
        .iter()
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .filter_map(|event| event["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed_text, "MOCK_OK from deepseek-chat.");
    // The relay asked for the usage chunk it needs to bill.
    let streamed_request = &harness.openai.requests()[1].body;
    assert_eq!(streamed_request["stream_options"]["include_usage"], true);
    let second_usage = expected_chat_usage(streamed_request);
    assert_eq!(
        delta["usage"]["output_tokens"],
        second_usage.completion_tokens
    );

    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    for (record, usage) in records.iter().zip([first_usage, second_usage]) {
        assert_eq!(record.platform, "openai");
        assert_eq!(record.endpoint, "messages");
        assert_eq!(record.outcome, "ok");
        assert_eq!(record.model, "deepseek-chat");
        // One convention: input excludes cached reads; output includes reasoning.
        assert_eq!(
            record.usage.input_tokens,
            usage.prompt_tokens - usage.cached_tokens
        );
        assert_eq!(record.usage.cache_read_tokens, usage.cached_tokens);
        assert_eq!(record.usage.output_tokens, usage.completion_tokens);
        assert_eq!(
            record.cost_nano_usd, None,
            "deepseek-chat is not in the price table"
        );
    }
}

#[tokio::test]
async fn an_openai_client_passes_through_to_an_openai_account_and_the_usage_chunk_stays_hidden() {
    let harness = Harness::start(vec![openai_account("oai", "sk-oai", 1, &["gpt-*"])]).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "low",
        "some_future_field": {"kept": true},
    });
    let response = post_chat(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.iter().all(|chunk| !chunk.contains("\"usage\":{")),
        "the client did not ask for usage: {text}"
    );
    // Everything the client sent went as it was, plus the usage request.
    let sent = &harness.openai.requests()[0].body;
    assert_eq!(sent["some_future_field"]["kept"], true);
    assert_eq!(sent["reasoning_effort"], "low");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let expected = expected_chat_usage(sent);
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].usage.output_tokens, expected.completion_tokens);
    assert_eq!(records[0].endpoint, "chat_completions");
    assert!(
        records[0].cost_nano_usd.unwrap() > 0,
        "gpt-4o-mini is priced"
    );
}

#[tokio::test]
async fn failover_from_an_openai_account_to_an_anthropic_account_before_the_first_byte() {
    let harness = Harness::start(vec![
        openai_account("oai", "sk-oai", 1, &["claude-*"]),
        account("claude", "sk-ant-1", 2),
    ])
    .await;
    harness.openai.script(
        "sk-oai",
        [Behavior::Status {
            status: 500,
            headers: Vec::new(),
            body: json!({"error": {"message": "boom", "type": "server_error"}}).to_string(),
        }],
    );
    let response = harness.send(true, "hello").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let streamed: String = sse_data(&text)
        .iter()
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .filter_map(|event| event["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "MOCK_OK from claude-sonnet-4-5-20250929.");
    assert_eq!(harness.openai.count_for("sk-oai"), 1);
    assert_eq!(harness.mock.count_for("sk-ant-1"), 1);
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 1, "one record for the request");
    assert_eq!(records[0].attempts, 2);
    assert_eq!(records[0].platform, "anthropic");
}

#[tokio::test]
async fn errors_reach_an_openai_client_in_its_own_shape() {
    let harness = Harness::start(vec![account("claude", "sk-ant-1", 1)]).await;
    // A bad relay key.
    let response = harness
        .client
        .post(format!("{}/openai/v1/chat/completions", harness.url))
        .bearer_auth("cr_not_a_key")
        .json(&chat_body(false, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert!(body["type"].is_null(), "not Anthropic's shape: {body}");

    // The upstream refuses the request (400): the client reads it as an OpenAI error.
    harness.mock.script(
        "sk-ant-1",
        [Behavior::Status {
            status: 400,
            headers: Vec::new(),
            body: json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: too long"}}).to_string(),
        }],
    );
    let response = post_chat(&harness, &chat_body(false, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "messages: too long", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // A request the other dialect cannot express: a clear 400, nothing sent upstream.
    let before = harness.mock.requests().len();
    let mut body = chat_body(false, "hi");
    body["n"] = json!(3);
    let response = post_chat(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains('n'),
        "{body}"
    );
    assert_eq!(harness.mock.requests().len(), before);

    // Rate limited upstream, nowhere else to go: a 429 with retry-after, in OpenAI's shape.
    harness.mock.script(
        "sk-ant-1",
        [Behavior::status_with_headers(429, &[("retry-after", "7")])],
    );
    let response = post_chat(&harness, &chat_body(false, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["type"].is_null(), "{body}");

    // Unknown paths answer in the dialect the path implies.
    let response = harness
        .client
        .post(format!("{}/v1/chat/nothing", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string() && body["type"].is_null());
    harness.shutdown().await;
}

#[tokio::test]
async fn models_answer_in_the_shape_the_client_speaks_and_routing_follows_the_model() {
    let harness = Harness::start(vec![
        account("claude", "sk-ant-1", 1),
        openai_account("ds", "sk-ds", 1, &["deepseek-chat"]),
    ])
    .await;
    let openai: Value = harness
        .client
        .get(format!("{}/v1/models", harness.url))
        .bearer_auth(&harness.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "list");
    let ids: Vec<&str> = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|model| model["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"deepseek-chat") && ids.contains(&"claude-opus-4-8"),
        "{ids:?}"
    );
    let anthropic: Value = harness
        .client
        .get(format!("{}/v1/models", harness.url))
        .header("x-api-key", &harness.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["has_more"], false, "{anthropic}");
    assert_eq!(anthropic["data"][0]["type"], "model");

    // A model no account serves is refused before any upstream, in the caller's dialect.
    let mut body = chat_body(false, "hi");
    body["model"] = json!("qwen-max");
    let response = post_chat(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(harness.openai.requests().is_empty() && harness.mock.requests().is_empty());

    // count_tokens on a model only the OpenAI-compatible account serves: a flagged estimate.
    let response = harness
        .post(
            "/v1/messages/count_tokens",
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "count me"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-claude-relay-estimate"],
        "body-bytes/4"
    );
    let counted: Value = response.json().await.unwrap();
    assert!(counted["input_tokens"].as_u64().unwrap() > 0);
    assert!(
        harness.openai.requests().is_empty(),
        "an estimate is not sent upstream"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_translated_stream_that_breaks_reaches_the_client_broken_and_is_recorded_once() {
    let harness = Harness::start(vec![openai_account("ds", "sk-ds", 1, &["deepseek-*"])]).await;
    harness
        .openai
        .script("sk-ds", [Behavior::AbortAfterEvents(3)]);
    let response = harness
        .post("/v1/messages", deepseek_body(true, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the first byte had arrived: committed"
    );
    let mut body = response;
    let mut received = Vec::new();
    let ending = loop {
        match body.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break "clean end",
            Err(_) => break "broken",
        }
    };
    assert_eq!(
        ending, "broken",
        "an upstream drop must not look like a clean end"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("message_start"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");

    // A client that leaves a translated stream early: recorded once, as partial.
    harness.openai.script(
        "sk-ds",
        [Behavior::SlowEvents(std::time::Duration::from_millis(300))],
    );
    let mut response = harness
        .post("/v1/messages", deepseek_body(true, "hello"))
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(response);

    let records = harness.records(2).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].outcome, "upstream_interrupted");
    assert_eq!(records[0].error_kind.as_deref(), Some("stream_error"));
    assert_eq!(records[1].outcome, "partial");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        harness.shutdown().await.len(),
        2,
        "exactly one record per request"
    );
}

#[tokio::test]
async fn an_openai_accounts_rate_limit_cools_it_and_the_next_account_serves() {
    let harness = Harness::start(vec![
        openai_account("first", "sk-first", 1, &["deepseek-*"]),
        openai_account("second", "sk-second", 2, &["deepseek-*"]),
    ])
    .await;
    harness.openai.script(
        "sk-first",
        [Behavior::openai_status_with_headers(
            429,
            &[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "6m0s"),
            ],
        )],
    );
    for _ in 0..3 {
        let response = harness
            .post("/v1/messages", deepseek_body(false, "hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // One 429, then the first account sits out for the six minutes it was told.
    assert_eq!(harness.openai.count_for("sk-first"), 1);
    assert_eq!(harness.openai.count_for("sk-second"), 3);
    let status = harness
        .relay
        .account_statuses()
        .into_iter()
        .find(|status| status.name == "first")
        .unwrap();
    assert_eq!(status.state, "cooling");
    let cooling_s = (status.cooling_until_ms.unwrap() - relay_core::clock::now_ms()) / 1000;
    assert!((350..=360).contains(&cooling_s), "{cooling_s}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_keys_service_restricts_the_ingress_protocol() {
    let harness = Harness::start(vec![account("claude", "sk-ant-1", 1)]).await;
    let policy = relay_core::policy::KeyPolicy {
        services: Some(vec![relay_core::policy::Service::Claude]),
        ..Default::default()
    };
    let (key, _) = harness.key_with("claude-only", &policy).await;
    let refused = harness
        .client
        .post(format!("{}/v1/chat/completions", harness.url))
        .bearer_auth(&key)
        .json(&chat_body(false, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"].is_string() && body["type"].is_null(),
        "{body}"
    );
    let allowed = harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", &key)
        .json(&crate::harness::messages_body(false, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(harness.mock.requests().len() == 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn reasoning_becomes_thinking_and_its_tokens_are_recorded() {
    let harness = Harness::start(vec![openai_account("ds", "sk-ds", 1, &["deepseek-*"])]).await;
    let mut body = deepseek_body(true, "hello");
    body["model"] = json!("deepseek-reasoner");
    let text = harness
        .post("/v1/messages", body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let thinking: String = events
        .iter()
        .filter_map(|event| event["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, relay_testkit::openai::REASONING, "{text}");
    let first_block = events
        .iter()
        .find(|event| event["type"] == "content_block_start")
        .unwrap();
    assert_eq!(first_block["content_block"]["type"], "thinking");
    let sent = harness.openai.requests().remove(0).body;
    let expected = expected_chat_usage(&sent);
    let records = harness.shutdown().await;
    assert_eq!(records[0].usage.reasoning_tokens, expected.reasoning_tokens);
    assert!(expected.reasoning_tokens > 0);
    assert_eq!(records[0].usage.output_tokens, expected.completion_tokens);
}

#[tokio::test]
async fn testing_an_openai_compatible_account_sends_a_model_it_serves() {
    let harness = Harness::start(vec![
        openai_account("named", "sk-named", 1, &["deepseek-chat", "deepseek-*"]),
        openai_account("patterns", "sk-patterns", 1, &["gpt-*"]),
    ])
    .await;
    let named = harness.relay.test_account("named").await.unwrap();
    assert!(named.ok, "{named:?}");
    let patterns = harness.relay.test_account("patterns").await.unwrap();
    assert!(patterns.ok, "{patterns:?}");
    let requests = harness.openai.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["model"], "deepseek-chat");
    assert_eq!(requests[0].api_key, "sk-named");
    assert_eq!(
        requests[1].body["model"], "gpt-4o-mini",
        "the platform's probe"
    );
    assert_eq!(requests[1].body["messages"][0]["role"], "user");
    harness.shutdown().await;
}

#[tokio::test]
async fn thinking_converted_from_an_openai_host_is_not_sent_to_an_anthropic_account() {
    let harness = Harness::start(vec![account("claude", "sk-ant-1", 1)]).await;
    let marker = relay_protocol::convert::UNSIGNED_THINKING_SIGNATURE;
    let mut body = crate::harness::messages_body(false, "go on");
    body["messages"] = json!([
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "from the OpenAI-compatible host", "signature": marker},
            {"type": "text", "text": "MOCK_OK from deepseek-chat."},
        ]},
        {"role": "user", "content": "go on"},
    ]);
    let response = harness.post("/v1/messages", body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let sent = &harness.mock.requests()[0].body;
    let blocks = sent["messages"][1]["content"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{sent}");
    assert_eq!(blocks[0]["type"], "text");
    assert!(!sent.to_string().contains(marker));
    harness.shutdown().await;
}

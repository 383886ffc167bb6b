//! The Responses API (`/v1/responses`, Codex CLI's protocol) passed through to Responses
//! accounts: bodies and streams as they came, usage from `response.completed`, conversations
//! sticking by Codex's session id, the WebSocket upgrade refused at once.

use relay_testkit::responses::expected_responses_usage;
use serde_json::{json, Value};

use crate::harness::{responses_account, Harness};

/// A first turn as Codex sends it (trimmed): developer and user items, its tool types.
pub fn codex_body(stream: bool, prompt: &str) -> Value {
    json!({
        "model": "gpt-5-codex",
        "stream": stream,
        "store": false,
        "include": ["reasoning.encrypted_content"],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"},
        "prompt_cache_key": "0199-session",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]},
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Runs a command",
             "strict": false, "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "namespace", "name": "multi_agent_v1", "tools": []},
            {"type": "web_search", "external_web_access": false},
        ],
        "client_metadata": {"session_id": "0199-session"},
    })
}

/// The JSON payloads of a Responses event stream, in order.
pub fn event_payloads(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

fn post(harness: &Harness, body: &Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}/v1/responses", harness.url))
        .bearer_auth(&harness.key)
        .header("session-id", "0199-session")
        .json(body)
}

#[tokio::test]
async fn a_responses_client_passes_through_and_its_usage_is_recorded() {
    let harness = Harness::start(vec![responses_account("codex", "sk-resp", 1)]).await;

    // Streamed, with a tool call: the events come back as the upstream sent them.
    let body = codex_body(true, "USE_TOOL:Bash NONCE-abc");
    let response = post(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"response.created"));
    assert_eq!(events.last(), Some(&"response.completed"));
    assert!(events.contains(&"response.function_call_arguments.delta"));
    assert!(
        text.contains(r#"\"cmd\":\"echo TOOLRESULT-abc\""#),
        "{text}"
    );

    // The whole body went as the client sent it, to `{base}/responses`, with the account's key.
    let sent = &harness.openai.requests()[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(sent.api_key, "sk-resp");
    assert_eq!(sent.body, body);
    assert_eq!(sent.headers["session-id"], "0199-session");
    let streamed = expected_responses_usage(&sent.body);

    // Not streamed: the response object.
    let second = codex_body(false, "hello");
    let response = post(&harness, &second).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "MOCK_OK from gpt-5-codex."
    );
    let whole = expected_responses_usage(&harness.openai.requests()[1].body);

    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    for (record, expected, stream) in [(&records[0], streamed, true), (&records[1], whole, false)] {
        assert_eq!(record.endpoint, "responses");
        assert_eq!(record.platform, "openai-responses");
        assert_eq!(record.stream, stream);
        assert_eq!(record.outcome, "ok");
        assert_eq!(
            record.usage.input_tokens + record.usage.cache_read_tokens,
            expected.input_tokens
        );
        assert_eq!(record.usage.cache_read_tokens, expected.cached_tokens);
        assert_eq!(record.usage.output_tokens, expected.output_tokens);
        assert!(record.cost_nano_usd.unwrap() > 0, "gpt-5-codex is priced");
    }
}

#[tokio::test]
async fn a_tool_result_turn_is_answered_and_its_cached_input_recorded() {
    let harness = Harness::start(vec![responses_account("codex", "sk-resp", 1)]).await;
    let mut body = codex_body(false, "USE_TOOL:Bash NONCE-t2");
    body["input"].as_array_mut().unwrap().extend([
        json!({"type": "function_call", "id": "fc_mock", "call_id": "call_mock_t2", "name": "exec_command",
               "arguments": "{\"cmd\":\"echo TOOLRESULT-t2\"}", "status": "completed"}),
        json!({"type": "function_call_output", "call_id": "call_mock_t2", "output": "TOOLRESULT-t2\n"}),
    ]);
    let answer: Value = post(&harness, &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "TOOL_DONE: TOOLRESULT-t2"
    );
    let expected = expected_responses_usage(&harness.openai.requests()[0].body);
    assert!(expected.cached_tokens > 0);
    let records = harness.shutdown().await;
    assert_eq!(records[0].usage.cache_read_tokens, expected.cached_tokens);
    assert_eq!(
        records[0].usage.input_tokens,
        expected.input_tokens - expected.cached_tokens,
        "cached input is counted once, as a cache read"
    );
}

#[tokio::test]
async fn a_codex_conversation_sticks_to_its_account() {
    let harness = Harness::start(vec![
        responses_account("one", "sk-one", 1),
        responses_account("two", "sk-two", 1),
    ])
    .await;
    for _ in 0..6 {
        let response = post(&harness, &codex_body(false, "hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let keys: Vec<String> = harness
        .openai
        .requests()
        .iter()
        .map(|request| request.api_key.clone())
        .collect();
    assert!(
        keys.iter().all(|key| *key == keys[0]),
        "one session, one account: {keys:?}"
    );
    // Without the header, the prompt cache key (the same session) holds it too.
    let response = harness
        .client
        .post(format!("{}/v1/responses", harness.url))
        .bearer_auth(&harness.key)
        .json(&codex_body(false, "again"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let last = harness.openai.requests().last().unwrap().api_key.clone();
    assert_eq!(last, keys[0]);
}

#[tokio::test]
async fn the_websocket_upgrade_is_refused_at_once_and_a_bad_key_in_openai_shape() {
    let harness = Harness::start(vec![responses_account("codex", "sk-resp", 1)]).await;
    let response = harness
        .client
        .get(format!("{}/v1/responses", harness.url))
        .bearer_auth(&harness.key)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 426);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("POST /v1/responses"));

    let response = harness
        .client
        .post(format!("{}/v1/responses", harness.url))
        .bearer_auth("cr_not-a-key")
        .json(&codex_body(true, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert!(harness.openai.requests().is_empty());
}

#[tokio::test]
async fn a_responses_client_is_served_by_an_anthropic_account_through_conversion() {
    let harness = Harness::start(vec![crate::harness::account("claude", "sk-ant-1", 1)]).await;
    let mut body = codex_body(true, "USE_TOOL:Bash NONCE-cv1");
    body["model"] = json!("claude-sonnet-4-5");

    // Streamed: the Anthropic stream comes back as Responses events, the tool call as a
    // function_call item Codex can run.
    let response = post(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = event_payloads(&text);
    assert_eq!(events[0]["type"], "response.created");
    let completed = &events.last().unwrap()["response"];
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let call = &completed["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "exec_command");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"cmd": "echo TOOLRESULT-cv1"})
    );
    // What went up was an Anthropic request: Codex's developer items as system, its hosted
    // tools left out.
    let sent = &harness.mock.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["system"][0]["text"], "You are Codex.");
    let tools: Vec<&str> = sent.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["exec_command"]);
    let first_turn = relay_testkit::expected_usage(&sent.body);

    // The tool's output, not streamed: the answer as a response object.
    let mut second = body.clone();
    second["stream"] = json!(false);
    second["input"].as_array_mut().unwrap().extend([
        json!({"type": "function_call", "call_id": call["call_id"], "name": "exec_command", "arguments": call["arguments"]}),
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "TOOLRESULT-cv1"}),
    ]);
    let answer: Value = post(&harness, &second)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "TOOL_DONE: TOOLRESULT-cv1"
    );
    assert_eq!(
        answer["usage"]["input_tokens_details"]["cached_tokens"],
        relay_testkit::expected_usage(&harness.mock.requests()[1].body).cache_read
    );

    // Usage is read from the Anthropic answer, exact.
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].endpoint, "responses");
    assert_eq!(records[0].platform, "anthropic");
    assert_eq!(records[0].usage.input_tokens, first_turn.input_tokens);
    assert!(records.iter().all(|record| record.outcome == "ok"));
}

#[tokio::test]
async fn a_previous_response_id_an_anthropic_account_cannot_resolve_is_a_clear_400() {
    let harness = Harness::start(vec![crate::harness::account("claude", "sk-ant-1", 1)]).await;
    let mut body = codex_body(false, "hello");
    body["model"] = json!("claude-sonnet-4-5");
    body["previous_response_id"] = json!("resp_123");
    let response = post(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("previous_response_id"));
    assert!(harness.mock.requests().is_empty());
}

#[tokio::test]
async fn a_responses_client_is_served_by_an_openai_chat_account_through_conversion() {
    let harness = Harness::start(vec![crate::harness::openai_account(
        "deepseek",
        "sk-ds",
        1,
        &["deepseek-chat"],
    )])
    .await;
    let mut body = codex_body(true, "USE_TOOL:Bash NONCE-ds1");
    body["model"] = json!("deepseek-chat");
    let response = post(&harness, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = event_payloads(&text);
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
    let call = &last["response"]["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "exec_command");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"cmd": "echo TOOLRESULT-ds1"})
    );
    let sent = &harness.openai.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["messages"][0]["role"], "system");
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    let first_turn = relay_testkit::openai::expected_chat_usage(&sent.body);

    // The tool's output, not streamed.
    let mut second = body.clone();
    second["stream"] = json!(false);
    second["input"].as_array_mut().unwrap().extend([
        json!({"type": "function_call", "call_id": call["call_id"], "name": "exec_command", "arguments": call["arguments"]}),
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "TOOLRESULT-ds1"}),
    ]);
    let answer: Value = post(&harness, &second)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["output"][0]["content"][0]["text"], "TOOL_DONE: TOOLRESULT-ds1",
        "{answer}"
    );
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].platform, "openai");
    assert_eq!(records[0].endpoint, "responses");
    assert_eq!(records[0].usage.output_tokens, first_turn.completion_tokens);
    assert!(records.iter().all(|record| record.outcome == "ok"));
}

#[tokio::test]
async fn anthropic_and_chat_clients_are_served_by_a_responses_account_through_conversion() {
    let harness = Harness::start(vec![responses_account("gpt", "sk-resp", 1)]).await;

    // An Anthropic client, streamed, asking for a tool.
    let body = json!({
        "model": "gpt-5-mini",
        "max_tokens": 256,
        "stream": true,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "USE_TOOL:Bash NONCE-ar1"}],
        "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    });
    let response = harness
        .client
        .post(format!("{}/v1/messages", harness.url))
        .header("x-api-key", &harness.key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("\"type\":\"tool_use\""), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let sent = &harness.openai.requests()[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(sent.body["instructions"], "Be brief.");
    assert_eq!(sent.body["tools"][0]["name"], "Bash");
    let anthropic_turn = expected_responses_usage(&sent.body);

    // A Chat client, not streamed, then streamed with the usage chunk.
    let chat = json!({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]});
    let answer: Value = harness
        .client
        .post(format!("{}/v1/chat/completions", harness.url))
        .bearer_auth(&harness.key)
        .json(&chat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "MOCK_OK from gpt-5-mini."
    );
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let text = harness
        .client
        .post(format!("{}/v1/chat/completions", harness.url))
        .bearer_auth(&harness.key)
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"usage\":{"), "{text}");

    let records = harness.shutdown().await;
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].endpoint, "messages");
    assert_eq!(records[0].platform, "openai-responses");
    assert_eq!(records[0].usage.output_tokens, anthropic_turn.output_tokens);
    assert_eq!(records[1].endpoint, "chat_completions");
    assert!(records.iter().all(|record| record.outcome == "ok"));
}

#[tokio::test]
async fn a_compaction_passes_through_to_a_responses_account_and_is_summarised_elsewhere() {
    let harness = Harness::start(vec![
        responses_account("gpt", "sk-resp", 1),
        crate::harness::account("claude", "sk-ant-1", 1),
    ])
    .await;
    let history = json!([
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a.txt"}]},
    ]);
    let compact = |model: &str| {
        harness
            .client
            .post(format!("{}/v1/responses/compact", harness.url))
            .bearer_auth(&harness.key)
            .json(&json!({"model": model, "input": history, "instructions": "Summarise the conversation."}))
    };

    // A Responses account compacts it itself.
    let passed: Value = compact("gpt-5-codex")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(passed["object"], "response.compaction");
    assert_eq!(
        passed["output"][0]["content"][0]["text"],
        "COMPACTED 2 items"
    );
    assert_eq!(harness.openai.requests()[0].path, "/v1/responses/compact");

    // An Anthropic account is asked for the summary under Codex's instructions.
    let summarised: Value = compact("claude-sonnet-4-5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summarised["object"], "response.compaction", "{summarised}");
    assert_eq!(summarised["output"][0]["role"], "user");
    assert_eq!(
        summarised["output"][0]["content"][0]["text"],
        "MOCK_OK from claude-sonnet-4-5."
    );
    let sent = &harness.mock.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.body["system"][0]["text"],
        "Summarise the conversation."
    );
    assert!(sent.body.get("stream").is_none());

    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|record| record.endpoint == "responses_compact" && record.outcome == "ok"));
    assert!(records.iter().all(|record| record.usage.output_tokens > 0));
}

/// Codex's newer remote compaction on a Chat account: the trigger becomes a request for a
/// summary (no tool to be called), the answer one `compaction` item, streamed or whole, and the
/// next turn carries that summary as text.
#[tokio::test]
async fn a_compaction_trigger_is_answered_by_a_chat_accounts_model_as_one_compaction_item() {
    let harness = Harness::start(vec![crate::harness::openai_account(
        "deepseek",
        "sk-ds",
        1,
        &["deepseek-chat"],
    )])
    .await;
    let mut body = codex_body(true, "fix it");
    body["model"] = json!("deepseek-chat");
    body["input"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "compaction_trigger"}));
    let text = post(&harness, &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = event_payloads(&text);
    let done: Vec<&Value> = events
        .iter()
        .filter(|event| event["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done.len(), 1, "{text}");
    let item = done[0]["item"].clone();
    assert_eq!(item["type"], "compaction");
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed");
    assert_eq!(completed["response"]["output"], json!([item]));
    assert!(
        completed["response"]["usage"]["output_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let sent = &harness.openai.requests()[0].body;
    assert_eq!(sent["tool_choice"], "none");
    let asked = sent["messages"].as_array().unwrap().last().unwrap()["content"].to_string();
    assert!(asked.contains("hand-off summary"), "{asked}");

    // Whole, too.
    body["stream"] = json!(false);
    let whole: Value = post(&harness, &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["output"].as_array().unwrap().len(), 1, "{whole}");
    assert_eq!(whole["output"][0]["type"], "compaction");

    // The next turn: the compacted history, the summary read back as text.
    let mut next = codex_body(false, "fix it");
    next["model"] = json!("deepseek-chat");
    next["input"].as_array_mut().unwrap().push(item);
    let answer: Value = post(&harness, &next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "completed", "{answer}");
    let sent = harness.openai.requests()[2].body["messages"].to_string();
    assert!(
        sent.contains("Summary of the conversation so far:")
            && sent.contains("MOCK_OK from deepseek-chat."),
        "{sent}"
    );
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|record| record.outcome == "ok"));
}

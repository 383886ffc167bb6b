//! The mock OpenAI-compatible upstream over real HTTP: replies, streaming shape, usage,
//! reasoning, scripted faults.

mod common;

use std::time::Duration;

use common::{send, send_with};
use relay_testkit::openai::{expected_chat_usage, Behavior, MockOpenAi, REASONING};
use serde_json::{json, Value};

const KEY: &str = "sk-mock-openai";

fn chat_url(mock: &MockOpenAi) -> String {
    format!("{}/chat/completions", mock.base_url())
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// Concatenates a delta field over all chunks.
fn joined(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"][field].as_str())
        .collect()
}

#[tokio::test]
async fn urls_and_models_list() {
    let mock = MockOpenAi::start().await;
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    assert_eq!(mock.base_url(), format!("{}/v1", mock.url()));
    let reply = send(
        "GET",
        &format!("{}/models", mock.base_url()),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let list = reply.json();
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"][0],
        json!({"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"mock"})
    );
    assert!(list["data"].as_array().is_some_and(|data| data.len() > 1));
    assert_eq!(mock.requests()[0].path, "/v1/models");
}

#[tokio::test]
async fn plain_reply_and_recorded_request() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ]});
    let reply = send(
        "POST",
        &format!("{}?trace=1", chat_url(&mock)),
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .is_some_and(|value| value.starts_with("application/json")));
    let completion = reply.json();
    assert_eq!(completion["id"], "chatcmpl-mock");
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["created"]
        .as_u64()
        .is_some_and(|created| created > 0));
    assert_eq!(completion["model"], "gpt-4o-mini");
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "MOCK_OK from gpt-4o-mini.");
    assert!(choice["message"].get("tool_calls").is_none());
    assert!(choice["message"].get("reasoning_content").is_none());
    assert_eq!(choice["finish_reason"], "stop");
    let usage = expected_chat_usage(&body);
    assert_eq!(usage.cached_tokens, 0, "first turn: nothing cached");
    assert_eq!(usage.reasoning_tokens, 0);
    assert_eq!(
        completion["usage"],
        json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].query.as_deref(), Some("trace=1"));
    assert_eq!(requests[0].api_key, KEY);
    assert_eq!(requests[0].body, body);
    assert_eq!(
        requests[0]
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer sk-mock-openai")
    );
    assert_eq!(mock.count_for(KEY), 1);
    assert_eq!(mock.count_for("other"), 0);
}

#[tokio::test]
async fn missing_bearer_is_an_openai_401() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [user("hi")]});
    let reply = send("POST", &chat_url(&mock), None, Some(&body)).await;
    assert_eq!(reply.status, 401);
    let error = reply.json();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("API key")));
    assert!(error["error"].get("param").is_some() && error["error"].get("code").is_some());
    assert_eq!(mock.count_for(""), 1);

    // An Anthropic-style key header is not an OpenAI credential.
    let anthropic_style =
        send_with("POST", &chat_url(&mock), &[("x-api-key", KEY)], Some(&body)).await;
    assert_eq!(anthropic_style.status, 401);
    assert_eq!(mock.count_for(""), 2);
    assert_eq!(mock.count_for(KEY), 0);

    let models = send("GET", &format!("{}/models", mock.base_url()), None, None).await;
    assert_eq!(models.status, 401);
}

#[tokio::test]
async fn malformed_request_is_an_openai_400() {
    let mock = MockOpenAi::start().await;
    let no_model = json!({"messages": [user("hi")]});
    let reply = send("POST", &chat_url(&mock), Some(KEY), Some(&no_model)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let no_messages = json!({"model": "gpt-4o-mini"});
    let reply = send("POST", &chat_url(&mock), Some(KEY), Some(&no_messages)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "missing_required_parameter");
    assert_eq!(mock.count_for(KEY), 2);
}

#[tokio::test]
async fn tool_call_not_streamed() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "deepseek-chat", "messages": [user("Run it: USE_TOOL:Bash NONCE-xyz7 please")]});
    let completion = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .json();
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_xyz7");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "Bash");
    let arguments: Value = serde_json::from_str(
        call["function"]["arguments"]
            .as_str()
            .expect("string arguments"),
    )
    .expect("JSON arguments");
    assert_eq!(
        arguments,
        json!({"command": "echo TOOLRESULT-xyz7", "description": "Echo the nonce"})
    );
    assert_eq!(completion["usage"], expected_chat_usage(&body).to_json());

    // The tool result comes back: the answer quotes it.
    let body = json!({"model": "deepseek-chat", "messages": [
        user("Run it: USE_TOOL:Bash NONCE-xyz7 please"),
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_mock_xyz7", "content": "TOOLRESULT-xyz7\n"},
    ]});
    let completion = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .json();
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "TOOL_DONE: TOOLRESULT-xyz7"
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tool_call_streamed() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "gpt-4o", "stream": true,
        "messages": [user("USE_TOOL:Bash NONCE-abc")]});
    let reply = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.complete);
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"));
    let chunks = reply.chunks();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "chatcmpl-mock");
        assert_eq!(chunk["model"], "gpt-4o");
        assert!(
            chunk.get("usage").is_none(),
            "no usage without include_usage"
        );
        assert_eq!(chunk["choices"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(calls.len() >= 3, "a head and 2+ argument pieces");
    assert_eq!(
        calls[0],
        &json!({"index": 0, "id": "call_mock_abc", "type": "function",
            "function": {"name": "Bash", "arguments": ""}})
    );
    for piece in &calls[1..] {
        assert_eq!(piece["index"], 0);
        assert!(piece.get("id").is_none());
    }
    let arguments: String = calls
        .iter()
        .filter_map(|call| call["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("JSON arguments"),
        json!({"command": "echo TOOLRESULT-abc", "description": "Echo the nonce"})
    );
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let finishes = chunks
        .iter()
        .filter(|chunk| !chunk["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1);
}

#[tokio::test]
async fn usage_chunk_only_with_include_usage() {
    let mock = MockOpenAi::start().await;
    let mut body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [
        user("first"), {"role": "assistant", "content": "ok"}, user("second"),
    ]});
    let plain = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    let chunks = plain.chunks();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(joined(&chunks, "content"), "MOCK_OK from gpt-4o-mini.");
    assert!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count()
            > 2,
        "content streamed word by word"
    );

    body["stream_options"] = json!({"include_usage": true});
    let with_usage = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert!(with_usage.complete);
    let events = with_usage.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = with_usage.chunks();
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = expected_chat_usage(&body);
    assert!(usage.cached_tokens > 0, "second user turn: cache hit");
    assert!(usage.cached_tokens <= usage.prompt_tokens);
    assert_eq!(usage_chunk["usage"], usage.to_json());
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        usage.cached_tokens
    );
    for chunk in rest {
        assert_eq!(
            chunk["usage"],
            Value::Null,
            "other chunks carry usage: null"
        );
    }
    assert_eq!(
        rest.last().expect("finish")["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(joined(rest, "content"), "MOCK_OK from gpt-4o-mini.");
}

#[tokio::test]
async fn reasoner_reasons_before_answering() {
    let mock = MockOpenAi::start().await;
    let mut body = json!({"model": "deepseek-reasoner", "messages": [user("why?")]});
    let usage = expected_chat_usage(&body);
    assert!(usage.reasoning_tokens > 0);
    assert!(usage.completion_tokens > usage.reasoning_tokens);
    let completion = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .json();
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], REASONING);
    assert_eq!(message["content"], "MOCK_OK from deepseek-reasoner.");
    assert_eq!(
        completion["usage"]["completion_tokens_details"]["reasoning_tokens"],
        usage.reasoning_tokens
    );
    assert_eq!(completion["usage"], usage.to_json());

    body["stream"] = json!(true);
    let chunks = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(joined(&chunks, "reasoning_content"), REASONING);
    assert_eq!(
        joined(&chunks, "content"),
        "MOCK_OK from deepseek-reasoner."
    );
    let position = |field: &str| {
        chunks.iter().position(|chunk| {
            chunk["choices"][0]["delta"][field]
                .as_str()
                .is_some_and(|text| !text.is_empty())
        })
    };
    let last_reasoning = chunks.iter().rposition(|chunk| {
        chunk["choices"][0]["delta"]["reasoning_content"]
            .as_str()
            .is_some_and(|text| !text.is_empty())
    });
    assert!(position("reasoning_content") < position("content"));
    assert!(
        last_reasoning < position("content"),
        "all reasoning before content"
    );

    // Not a reasoner: no reasoning at all.
    body["model"] = json!("deepseek-chat");
    let chunks = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .chunks();
    assert_eq!(joined(&chunks, "reasoning_content"), "");
}

#[tokio::test]
async fn json_schema_reply() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [user("title this")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "object"}}}});
    let completion = send("POST", &chat_url(&mock), Some(KEY), Some(&body))
        .await
        .json();
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(
        serde_json::from_str::<Value>(content).expect("JSON content"),
        json!({"title": "Mock title"})
    );
}

#[tokio::test]
async fn scripted_429_with_headers_then_normal() {
    let mock = MockOpenAi::start().await;
    mock.script(
        KEY,
        [Behavior::openai_status_with_headers(
            429,
            &[
                ("retry-after", "7"),
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "1s"),
            ],
        )],
    );
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [user("hi")]});
    let limited = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("7"));
    assert_eq!(limited.header("x-ratelimit-reset-requests"), Some("6m0s"));
    assert_eq!(limited.header("x-ratelimit-reset-tokens"), Some("1s"));
    assert!(limited
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    let error = limited.json();
    assert_eq!(error["error"]["type"], "requests");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["param"], Value::Null);
    assert!(error["error"]["message"].is_string());

    // Another key is not affected; the script is consumed.
    let other = send("POST", &chat_url(&mock), Some("sk-other"), Some(&body)).await;
    assert_eq!(other.status, 200);
    let again = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(again.status, 200);
    assert_eq!(mock.count_for(KEY), 2);
    assert_eq!(mock.count_for("sk-other"), 1);

    mock.script(
        KEY,
        [
            Behavior::openai_quota_exceeded(),
            Behavior::openai_status(503),
        ],
    );
    let quota = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(quota.status, 429);
    assert_eq!(quota.json()["error"]["code"], "insufficient_quota");
    let overloaded = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(overloaded.status, 503);
    assert_eq!(overloaded.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn abort_mid_stream() {
    let mock = MockOpenAi::start().await;
    mock.script(KEY, [Behavior::AbortAfterEvents(3)]);
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [user("a longer question")]});
    let cut = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(cut.status, 200);
    assert!(!cut.complete, "the connection is cut mid-body");
    let events = cut.events();
    assert_eq!(events.len(), 3);
    assert!(!events.iter().any(|event| event == "[DONE]"));
    assert!(cut
        .chunks()
        .iter()
        .all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));

    let whole = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert!(whole.complete);
    assert!(whole.events().len() > 3);
}

#[tokio::test]
async fn slow_and_header_faults_on_streams() {
    let mock = MockOpenAi::start().await;
    mock.script(
        KEY,
        [
            Behavior::SlowFirstByte(Duration::from_millis(150)),
            Behavior::SlowEvents(Duration::from_millis(30)),
            Behavior::NormalWithHeaders(vec![(
                "x-ratelimit-remaining-requests".to_owned(),
                "42".to_owned(),
            )]),
        ],
    );
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [user("hi")]});
    let started = std::time::Instant::now();
    let slow_head = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(slow_head.complete);

    let started = std::time::Instant::now();
    let slow = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    let gaps = slow.events().len() as u32 - 1;
    assert!(started.elapsed() >= Duration::from_millis(30) * gaps);
    assert!(slow.complete);

    let headed = send("POST", &chat_url(&mock), Some(KEY), Some(&body)).await;
    assert_eq!(headed.header("x-ratelimit-remaining-requests"), Some("42"));
    assert!(headed.complete);
}

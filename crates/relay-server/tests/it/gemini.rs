//! The Gemini API passed through to `gemini` accounts: `generateContent`, both stream forms
//! (`?alt=sse` and the JSON array), `countTokens`, the model listing; the relay key in any of the
//! places Gemini clients put it and never forwarded; errors in Gemini's shape; usage from the
//! last chunk's `usageMetadata`.

use relay_testkit::gemini::{expected_gemini_usage, Behavior};
use serde_json::{json, Value};

use crate::harness::{gemini_account, Harness};

const MODEL: &str = "gemini-2.5-flash";

/// A turn as Gemini CLI sends it (trimmed): system instruction, contents, a tool, config.
fn gemini_body(prompt: &str) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI."}]},
        "tools": [{"functionDeclarations": [{"name": "read_file", "description": "Reads a file",
            "parametersJsonSchema": {"type": "object", "properties": {"absolute_path": {"type": "string"}}, "required": ["absolute_path"]}}]}],
        "generationConfig": {"temperature": 0, "maxOutputTokens": 256, "thinkingConfig": {"includeThoughts": true}},
    })
}

/// `POST /v1/responses` with the harness's key.
fn responses_post(harness: &Harness, body: &Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}/v1/responses", harness.url))
        .bearer_auth(&harness.key)
        .json(body)
}

/// The body of the answer to `request`, as text.
async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// The JSON body of the answer to `request`.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

fn get(harness: &Harness, path: &str) -> reqwest::RequestBuilder {
    harness
        .client
        .get(format!("{}{path}", harness.url))
        .header("x-goog-api-key", &harness.key)
}

fn post(harness: &Harness, path_and_query: &str, body: &Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}{path_and_query}", harness.url))
        .header("x-goog-api-key", &harness.key)
        .json(body)
}

#[tokio::test]
async fn gemini_requests_pass_through_in_every_form_with_exact_usage() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 1)]).await;
    let body = gemini_body("USE_TOOL:Bash NONCE-gm1");

    // Whole: a function call for the tool Gemini CLI declared.
    let whole: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &body,
    ))
    .await;
    let call = &whole["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "read_file", "{whole}");
    assert_eq!(call["args"]["absolute_path"], "TOOLRESULT-gm1.txt");

    // Streamed as SSE, the key in `?key=` as google-genai may send it: never forwarded.
    let text = text_of(
        harness
            .client
            .post(format!(
                "{}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse&key={}",
                harness.url, harness.key
            ))
            .json(&gemini_body("hello")),
    )
    .await;
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let said: String = chunks
        .iter()
        .filter_map(|chunk| chunk["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(said, format!("MOCK_OK from {MODEL}."));
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );

    // Streamed as the default JSON array, on the `/v1/` path the Python SDK uses, with a
    // bearer key; then a token count under the `/gemini` alias.
    let array: Value = json_of(
        harness
            .client
            .post(format!(
                "{}/v1/models/{MODEL}:streamGenerateContent",
                harness.url
            ))
            .bearer_auth(&harness.key)
            .json(&gemini_body("again")),
    )
    .await;
    assert!(array.as_array().unwrap().len() > 1, "{array}");
    let counted: Value = json_of(post(
        &harness,
        &format!("/gemini/v1beta/models/{MODEL}:countTokens"),
        &json!({"contents": [{"role": "user", "parts": [{"text": "count me"}]}]}),
    ))
    .await;
    assert!(counted["totalTokens"].as_u64().unwrap() > 0, "{counted}");

    let sent = harness.gemini.requests();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[0].path,
        format!("/v1beta/models/{MODEL}:generateContent")
    );
    assert_eq!(sent[0].body, body, "the body goes as it came");
    assert!(sent.iter().all(|request| request.api_key == "AIza-upstream"
        && request.headers.get("authorization").is_none()));
    assert_eq!(
        sent[1].query.as_deref(),
        Some("alt=sse"),
        "the relay key stays here"
    );
    assert_eq!(sent[2].query, None);
    assert_eq!(sent[3].path, format!("/v1beta/models/{MODEL}:countTokens"));

    let expected: Vec<_> = sent
        .iter()
        .take(3)
        .map(|request| expected_gemini_usage(MODEL, &request.body))
        .collect();
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 4);
    for (record, expected) in records.iter().zip(&expected) {
        assert_eq!(record.platform, "gemini");
        assert_eq!(record.endpoint, "gemini_generate");
        assert_eq!(record.outcome, "ok", "{record:?}");
        assert_eq!(record.usage.input_tokens, expected.prompt_tokens);
        assert_eq!(
            record.usage.output_tokens,
            expected.candidates_tokens + expected.thoughts_tokens
        );
    }
    assert!(records[1].stream && records[2].stream && !records[0].stream);
    assert_eq!(records[3].endpoint, "gemini_count_tokens");
}

#[tokio::test]
async fn a_bad_key_and_upstream_errors_answer_in_geminis_shape() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 1)]).await;
    let bad = harness
        .client
        .post(format!(
            "{}/v1beta/models/{MODEL}:generateContent",
            harness.url
        ))
        .header("x-goog-api-key", "cr_not-a-key")
        .json(&gemini_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(error["error"]["details"][0]["reason"], "API_KEY_INVALID");
    assert!(harness.gemini.requests().is_empty());

    // An unknown method, and the listing.
    let unknown = post(
        &harness,
        &format!("/v1beta/models/{MODEL}:embedContent"),
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["status"],
        "NOT_FOUND"
    );
    let listed: Value = json_of(get(&harness, "/v1beta/models")).await;
    assert!(listed["models"].is_array(), "{listed}");
    let one: Value = json_of(get(&harness, &format!("/v1beta/models/{MODEL}"))).await;
    assert_eq!(one["name"], format!("models/{MODEL}"));

    // The upstream's 429 reaches the client in Gemini's shape, and the account cools.
    harness
        .gemini
        .script("AIza-upstream", [Behavior::gemini_status(429)]);
    let limited = post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("hi"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.json::<Value>().await.unwrap()["error"]["status"],
        "RESOURCE_EXHAUSTED"
    );
    assert_eq!(harness.relay.account_statuses()[0].state, "cooling");
}

/// The data chunks of a Gemini SSE stream.
fn sse_chunks(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

fn said(chunks: &[Value]) -> String {
    chunks
        .iter()
        .flat_map(|chunk| {
            chunk["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_gemini_client_is_served_by_an_anthropic_account_through_conversion() {
    let mut claude = crate::harness::account("claude", "sk-ant-g", 1);
    claude.models = Some(vec!["gemini-*".into()]);
    let harness = Harness::start(vec![claude]).await;

    // Streamed as SSE: Anthropic's events become Gemini chunks, the last with the finish
    // reason and the usage.
    let text = text_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        &gemini_body("hello"),
    ))
    .await;
    let chunks = sse_chunks(&text);
    assert_eq!(said(&chunks), format!("MOCK_OK from {MODEL}."), "{text}");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(last["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
    let sent = &harness.mock.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["system"][0]["text"], "You are Gemini CLI.");
    assert_eq!(sent.body["tools"][0]["name"], "read_file");

    // The default JSON-array stream, and a whole answer with a tool call.
    let array: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent"),
        &gemini_body("again"),
    ))
    .await;
    assert_eq!(
        said(array.as_array().unwrap()),
        format!("MOCK_OK from {MODEL}.")
    );
    let whole: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("USE_TOOL:Bash NONCE-ga1"),
    ))
    .await;
    let call = &whole["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "read_file", "{whole}");
    assert_eq!(call["args"]["absolute_path"], "TOOLRESULT-ga1.txt");

    // An Anthropic 429 reaches the Gemini client in Gemini's shape.
    harness
        .mock
        .script("sk-ant-g", [relay_testkit::Behavior::status(429)]);
    let limited = post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("hi"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.json::<Value>().await.unwrap()["error"]["status"],
        "RESOURCE_EXHAUSTED"
    );
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 4);
    assert!(records[..3].iter().all(|record| record.outcome == "ok"
        && record.platform == "anthropic"
        && record.usage.output_tokens > 0));
}

#[tokio::test]
async fn anthropic_and_chat_clients_are_served_by_a_gemini_account_through_conversion() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 1)]).await;
    // Claude Code's shape, streamed: Gemini's SSE (asked for by the relay) becomes Anthropic's.
    let mut messages = crate::harness::messages_body(true, "USE_TOOL:Bash NONCE-ag1");
    messages["model"] = json!(MODEL);
    messages["tools"] = json!([{"name": "Bash", "description": "Runs a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]);
    let text = text_of(harness.post("/v1/messages", messages.clone())).await;
    assert!(text.contains("\"type\":\"tool_use\""), "{text}");
    assert!(text.contains("echo TOOLRESULT-ag1"), "{text}");
    assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let sent = harness.gemini.requests()[0].clone();
    assert_eq!(
        sent.path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    assert_eq!(sent.body["contents"][0]["role"], "user");

    // The tool's result, not streamed: answered from the function response.
    let mut second = messages.clone();
    second["stream"] = json!(false);
    second["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_gemini_1", "name": "Bash",
            "input": {"command": "echo TOOLRESULT-ag1"}}]}),
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_gemini_1", "content": "TOOLRESULT-ag1"}]}),
    ]);
    let answer: Value = json_of(harness.post("/v1/messages", second)).await;
    assert_eq!(
        answer["content"][0]["text"], "TOOL_DONE: TOOLRESULT-ag1",
        "{answer}"
    );
    let sent = &harness.gemini.requests()[1].body;
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["name"],
        "Bash"
    );

    // An OpenAI Chat client, whole.
    let chat: Value = json_of(
        harness
            .client
            .post(format!("{}/v1/chat/completions", harness.url))
            .bearer_auth(&harness.key)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        format!("MOCK_OK from {MODEL}.")
    );
    let expected: Vec<_> = harness
        .gemini
        .requests()
        .iter()
        .map(|request| expected_gemini_usage(MODEL, &request.body))
        .collect();
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 3);
    for (record, expected) in records.iter().zip(&expected) {
        assert_eq!(record.platform, "gemini");
        assert_eq!(record.outcome, "ok", "{record:?}");
        assert_eq!(
            record.usage.input_tokens + record.usage.cache_read_tokens,
            expected.prompt_tokens
        );
        assert_eq!(record.usage.cache_read_tokens, expected.cached_tokens);
        assert_eq!(record.usage.output_tokens, expected.candidates_tokens);
    }
}

#[tokio::test]
async fn a_key_over_its_rate_gets_geminis_429_with_retry_info() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 1)]).await;
    let policy = relay_core::policy::KeyPolicy {
        rate_window_secs: Some(3600),
        rate_requests: Some(1),
        ..relay_core::policy::KeyPolicy::default()
    };
    let (key, _) = harness.key_with("windowed", &policy).await;
    let send = || {
        harness
            .client
            .post(format!(
                "{}/v1beta/models/{MODEL}:generateContent",
                harness.url
            ))
            .header("x-goog-api-key", &key)
            .json(&gemini_body("hi"))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let refused = send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        error["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let delay = error["error"]["details"][0]["retryDelay"].as_str().unwrap();
    assert!(delay.ends_with('s') && delay.trim_end_matches('s').parse::<u64>().unwrap() > 0);
}

/// Signs a Google account in through the admin flow against the mock: the consent page shows
/// the code, the relay finds (here: sets up) the account's Code Assist project.
async fn google_sign_in(harness: &Harness, name: &str) {
    let settings =
        crate::harness::oauth_settings(&harness.mock, &harness.chatgpt, &harness.code_assist);
    let url = harness
        .admin
        .start_oauth(name, "gemini-oauth", &settings)
        .await
        .unwrap();
    assert!(
        url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
        "{url}"
    );
    assert!(
        url.contains("access_type=offline") && url.contains("code_challenge="),
        "{url}"
    );
    harness
        .admin
        .finish_oauth(
            name,
            relay_testkit::code_assist::AUTH_CODE,
            &settings,
            Some(harness.code_assist.url()),
            1,
        )
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
}

#[tokio::test]
async fn a_google_account_is_served_by_code_assist_in_every_form() {
    let harness = Harness::start(vec![]).await;
    google_sign_in(&harness, "google").await;
    assert_eq!(
        harness.admin.list_accounts().await.unwrap()[0].platform,
        "gemini-oauth"
    );
    // Whole, SSE and the JSON array for a Gemini client; the envelope never shows.
    let whole: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("hello"),
    ))
    .await;
    assert_eq!(
        whole["candidates"][0]["content"]["parts"][0]["text"],
        format!("MOCK_OK from {MODEL}."),
        "{whole}"
    );
    let text = text_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        &gemini_body("again"),
    ))
    .await;
    assert_eq!(
        said(&sse_chunks(&text)),
        format!("MOCK_OK from {MODEL}."),
        "{text}"
    );
    let array: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent"),
        &gemini_body("third"),
    ))
    .await;
    assert_eq!(
        said(array.as_array().unwrap()),
        format!("MOCK_OK from {MODEL}.")
    );
    // Claude Code's shape, streamed, through conversion.
    let mut messages = crate::harness::messages_body(true, "hi");
    messages["model"] = json!(MODEL);
    let text = text_of(harness.post("/v1/messages", messages)).await;
    assert!(
        text.contains("\"text\":\"MOCK_OK \"") && text.contains("event: message_stop"),
        "{text}"
    );

    let sent = harness.code_assist.requests();
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|request| request.body["project"]
        == relay_testkit::code_assist::PROJECT
        && request.body["model"] == MODEL
        && request.body["request"]["contents"].is_array()));
    assert_eq!(sent[0].path, "/v1internal:generateContent");
    assert!(sent[1..].iter().all(
        |request| request.path == "/v1internal:streamGenerateContent"
            && request.query.as_deref() == Some("alt=sse")
    ));
    let expected: Vec<_> = sent
        .iter()
        .map(|request| expected_gemini_usage(MODEL, &request.body["request"]))
        .collect();
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 4);
    for (record, expected) in records.iter().zip(&expected) {
        assert_eq!(record.platform, "gemini-oauth");
        assert_eq!(record.outcome, "ok", "{record:?}");
        assert_eq!(record.usage.input_tokens, expected.prompt_tokens);
        assert_eq!(record.usage.output_tokens, expected.candidates_tokens);
    }
}

#[tokio::test]
async fn a_google_token_is_refreshed_once_for_many_requests_and_gemini_cli_credentials_import() {
    let harness = Harness::start(vec![]).await;
    harness
        .code_assist
        .set_token_behavior(60, std::time::Duration::from_millis(200));
    google_sign_in(&harness, "google").await;
    harness
        .code_assist
        .set_token_behavior(3600, std::time::Duration::from_millis(200));
    let harness_ref = &harness;
    let statuses = futures_util::future::join_all((0..20).map(|n| async move {
        post(
            harness_ref,
            &format!("/v1beta/models/{MODEL}:generateContent"),
            &gemini_body(&format!("burst {n}")),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
    }))
    .await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(harness.code_assist.refresh_count(), 1);
    let tokens: std::collections::HashSet<String> = harness
        .code_assist
        .requests()
        .iter()
        .map(|request| request.api_key.clone())
        .collect();
    assert_eq!(tokens.len(), 1, "every request waits for the new token");

    // Gemini CLI's own sign-in, imported: the project is found for it too.
    let creds = harness.code_assist.oauth_creds();
    harness
        .admin
        .add_account(relay_core::admin::NewAccountInput {
            platform: "gemini-oauth".into(),
            name: "laptop".into(),
            base_url: Some(harness.code_assist.url()),
            priority: 5,
            auth_json: Some(creds),
            ..relay_core::admin::NewAccountInput::default()
        })
        .await
        .unwrap();
    let refused = harness
        .admin
        .add_account(relay_core::admin::NewAccountInput {
            platform: "gemini-oauth".into(),
            name: "nokey".into(),
            api_key: "AIza-not-a-sign-in".into(),
            ..relay_core::admin::NewAccountInput::default()
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--oauth-creds"), "{refused}");
}

#[tokio::test]
async fn a_gemini_client_is_served_by_an_openai_compatible_account_through_conversion() {
    let harness = Harness::start(vec![crate::harness::openai_account(
        "deepseek",
        "sk-ds",
        1,
        &["gemini-*"],
    )])
    .await;
    let text = text_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        &gemini_body("hello"),
    ))
    .await;
    let chunks = sse_chunks(&text);
    assert_eq!(said(&chunks), format!("MOCK_OK from {MODEL}."), "{text}");
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );
    let whole: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("USE_TOOL:Bash NONCE-go2"),
    ))
    .await;
    assert_eq!(
        whole["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "Bash",
        "{whole}"
    );
    let sent = harness.openai.requests();
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(sent[0].body["stream"], true);
    assert_eq!(sent[0].body["messages"][0]["role"], "system");
    assert_eq!(sent[1].body["tools"][0]["function"]["name"], "read_file");
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|record| record.outcome == "ok"
        && record.platform == "openai"
        && record.usage.output_tokens > 0));
}

#[tokio::test]
async fn a_code_assist_quota_error_cools_the_google_account_for_the_delay_it_names() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 2)]).await;
    google_sign_in(&harness, "google").await;
    let token = harness.code_assist.requests().first().map_or_else(
        || "ya29.mock-1".to_owned(),
        |request| request.api_key.clone(),
    );
    harness.code_assist.script(
        &token,
        [relay_testkit::Behavior::Status {
            status: 429,
            headers: Vec::new(),
            body: json!({"error": {"code": 429, "message": "Quota exceeded for quota metric 'Gemini 2.5 Flash Requests'",
                "status": "RESOURCE_EXHAUSTED", "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "90s"}]}})
            .to_string(),
        }],
    );
    let before = relay_core::clock::now_ms();
    // Served by the API-key account meanwhile; the Google account rests 90 s.
    let whole: Value = json_of(post(
        &harness,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &gemini_body("hi"),
    ))
    .await;
    assert!(whole["candidates"].is_array(), "{whole}");
    assert_eq!(harness.gemini.requests().len(), 1);
    let status = harness
        .relay
        .account_statuses()
        .into_iter()
        .find(|status| status.name == "google")
        .unwrap();
    assert_eq!(status.state, "cooling");
    let until = status.cooling_until_ms.unwrap();
    assert!(
        (before + 89_000..=relay_core::clock::now_ms() + 91_000).contains(&until),
        "{until} vs {before}"
    );
}

#[tokio::test]
async fn a_responses_client_is_served_by_a_gemini_account_through_conversion() {
    let harness = Harness::start(vec![gemini_account("gemini", "AIza-upstream", 1)]).await;
    let mut body = crate::responses::codex_body(true, "hello");
    body["model"] = json!(MODEL);
    let text = text_of(responses_post(&harness, &body)).await;
    let events = crate::responses::event_payloads(&text);
    assert_eq!(events[0]["type"], "response.created", "{text}");
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{text}");
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        format!("MOCK_OK from {MODEL}.")
    );
    // Whole, and a compaction trigger answered with one compaction item.
    body["stream"] = json!(false);
    let whole: Value = json_of(responses_post(&harness, &body)).await;
    assert_eq!(whole["object"], "response", "{whole}");
    body["stream"] = json!(true);
    body["input"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "compaction_trigger"}));
    let text = text_of(responses_post(&harness, &body)).await;
    let done: Vec<Value> = crate::responses::event_payloads(&text)
        .into_iter()
        .filter(|event| event["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done.len(), 1, "{text}");
    assert_eq!(done[0]["item"]["type"], "compaction");
    let sent = harness.gemini.requests();
    assert_eq!(sent.len(), 3);
    assert!(sent[0].path.ends_with(":streamGenerateContent"));
    assert_eq!(sent[0].body["contents"][0]["role"], "user");
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|record| record.outcome == "ok"
        && record.platform == "gemini"
        && record.usage.output_tokens > 0));
}

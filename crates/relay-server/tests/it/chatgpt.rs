//! ChatGPT subscription accounts (`codex`): sign-in as `codex login` does it (or Codex's
//! `auth.json` imported), requests to the ChatGPT backend with the workspace header, unstored and
//! always streamed (assembled for clients that did not stream), tokens refreshed once for many
//! requests, rotating refresh tokens, the usage windows kept, a used-up window resting the account.

use std::time::Duration;

use relay_testkit::chatgpt::{Behavior, ACCOUNT_ID, AUTH_CODE};
use relay_testkit::responses::expected_responses_usage;
use serde_json::{json, Value};

use crate::harness::{oauth_settings, responses_account, Harness};
use crate::responses::{codex_body, event_payloads};

/// Signs a ChatGPT account in through the admin flow against the mock: the operator opens the
/// URL, and pastes the address the browser was sent to.
async fn sign_in(harness: &Harness, name: &str, priority: i64) {
    let settings = oauth_settings(&harness.mock, &harness.chatgpt, &harness.code_assist);
    let url = harness
        .admin
        .start_oauth(name, "codex", &settings)
        .await
        .unwrap();
    assert!(
        url.starts_with("https://auth.openai.com/oauth/authorize?"),
        "{url}"
    );
    assert!(
        url.contains("client_id=app_EMoamEEZ73f0CkXaXp7hrann"),
        "{url}"
    );
    let state = url
        .split('&')
        .find_map(|pair| pair.strip_prefix("state="))
        .unwrap()
        .to_owned();
    let callback = format!(
        "http://localhost:1455/auth/callback?code={AUTH_CODE}&scope=openid+profile&state={state}"
    );
    harness
        .admin
        .finish_oauth(
            name,
            &callback,
            &settings,
            Some(harness.chatgpt.base_url()),
            priority,
        )
        .await
        .unwrap();
    harness.snapshots.reload().await.unwrap();
}

fn post(harness: &Harness, path: &str, body: &Value) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}{path}", harness.url))
        .bearer_auth(&harness.key)
        .header("session-id", "0199-session")
        .json(body)
}

/// A Codex turn of no conversation (no session id, no prompt cache key): it sticks to no account.
fn unbound(prompt: &str) -> Value {
    let mut body = codex_body(true, prompt);
    body.as_object_mut().unwrap().remove("prompt_cache_key");
    body
}

fn post_unbound(harness: &Harness, prompt: &str) -> reqwest::RequestBuilder {
    harness
        .client
        .post(format!("{}/v1/responses", harness.url))
        .bearer_auth(&harness.key)
        .json(&unbound(prompt))
}

fn backend_tokens(harness: &Harness) -> Vec<String> {
    harness
        .chatgpt
        .requests()
        .iter()
        .map(|request| request.api_key.clone())
        .collect()
}

#[tokio::test]
async fn a_signed_in_chatgpt_subscription_serves_codex_streamed_and_whole() {
    let harness = Harness::start(vec![]).await;
    sign_in(&harness, "plus", 1).await;
    let listed = harness.admin.list_accounts().await.unwrap();
    assert_eq!(listed[0].platform, "codex");
    assert!(
        listed[0].settings.contains(r#""plan":"plus""#),
        "{}",
        listed[0].settings
    );
    assert!(!format!("{listed:?}").contains("chatgpt-refresh"));

    // Streamed, as Codex asks: the events come back as the backend sent them.
    let body = codex_body(true, "USE_TOOL:Bash NONCE-cg1");
    let response = post(&harness, "/v1/responses", &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = event_payloads(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let sent = harness.chatgpt.requests()[0].clone();
    assert_eq!(sent.path, "/backend-api/codex/responses");
    assert_eq!(sent.headers["chatgpt-account-id"], ACCOUNT_ID);
    assert_eq!(sent.api_key, harness.chatgpt.current_access());
    assert_eq!(sent.headers["session-id"], "0199-session");
    assert_eq!(sent.body, body, "Codex's own request goes as it came");

    // Not streamed, from an SDK, with settings a subscription does not take: the backend gets
    // a stream without them, the client one whole response.
    let mut whole = codex_body(false, "hello");
    whole["store"] = json!(true);
    whole["max_output_tokens"] = json!(64);
    whole["temperature"] = json!(0.2);
    let response = post(&harness, "/v1/responses", &whole)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "MOCK_OK from gpt-5-codex."
    );
    let sent = harness.chatgpt.requests()[1].body.clone();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["store"], false);
    assert!(sent.get("max_output_tokens").is_none() && sent.get("temperature").is_none());

    // The usage windows the backend reported are the account's live state.
    let status = harness.relay.account_statuses().remove(0);
    let windows = status.windows.unwrap();
    assert_eq!(windows.primary.as_ref().unwrap().used_percent, 12.0);
    assert_eq!(windows.primary.as_ref().unwrap().window_minutes, Some(300));
    assert_eq!(windows.secondary.as_ref().unwrap().used_percent, 30.0);

    let expected = [
        expected_responses_usage(&harness.chatgpt.requests()[0].body),
        expected_responses_usage(&harness.chatgpt.requests()[1].body),
    ];
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    for (record, expected) in records.iter().zip(expected) {
        assert_eq!(record.platform, "codex");
        assert_eq!(record.outcome, "ok");
        assert_eq!(
            record.usage.input_tokens + record.usage.cache_read_tokens,
            expected.input_tokens
        );
        assert_eq!(record.usage.output_tokens, expected.output_tokens);
    }
    assert!(!records[1].stream);
}

#[tokio::test]
async fn chat_and_anthropic_clients_are_served_by_a_chatgpt_subscription() {
    let harness = Harness::start(vec![]).await;
    sign_in(&harness, "plus", 1).await;
    let chat = json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
    let response = post(&harness, "/v1/chat/completions", &chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "MOCK_OK from gpt-5-codex."
    );
    let mut messages = crate::harness::messages_body(true, "hello");
    messages["model"] = json!("gpt-5-codex");
    let response = harness.post("/v1/messages", messages).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(text.contains("MOCK_OK"), "{text}");
    for sent in harness.chatgpt.requests() {
        assert_eq!(sent.body["stream"], true);
        assert_eq!(sent.body["store"], false);
        assert!(
            sent.body.get("max_output_tokens").is_none(),
            "{}",
            sent.body
        );
    }
    let records = harness.shutdown().await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|record| record.outcome == "ok"
        && record.platform == "codex"
        && record.usage.output_tokens > 0));
}

#[tokio::test]
async fn fifty_requests_with_an_expiring_token_refresh_it_once_and_all_use_the_new_one() {
    let harness = Harness::start(vec![]).await;
    harness
        .chatgpt
        .set_token_behavior(60, Duration::from_millis(200));
    sign_in(&harness, "plus", 1).await;
    let first = harness.chatgpt.current_access();
    harness
        .chatgpt
        .set_token_behavior(3600, Duration::from_millis(200));
    let harness_ref = &harness;
    let statuses = futures_util::future::join_all((0..50).map(|n| async move {
        post(
            harness_ref,
            "/v1/responses",
            &codex_body(true, &format!("burst {n}")),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
    }))
    .await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(
        harness.chatgpt.refresh_count(),
        1,
        "a rotating refresh token is used once"
    );
    let renewed = harness.chatgpt.current_access();
    assert_ne!(renewed, first);
    let used = backend_tokens(&harness);
    assert_eq!(used.len(), 50);
    assert!(
        used.iter().all(|token| *token == renewed),
        "every request waits for the new token"
    );
    // The new tokens are stored: after a reload the account works without another refresh.
    harness.snapshots.reload().await.unwrap();
    let response = post(&harness, "/v1/responses", &codex_body(true, "after"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(harness.chatgpt.refresh_count(), 1);
}

#[tokio::test]
async fn an_imported_auth_json_works_and_a_refresh_token_used_elsewhere_takes_the_account_out() {
    let harness = Harness::start(vec![responses_account("api", "sk-api", 2)]).await;
    // Through the admin API, as the console will: Codex's auth.json in place of a key.
    harness.chatgpt.set_token_behavior(60, Duration::ZERO);
    let auth_json = harness.chatgpt.auth_json();
    let login = harness
        .client
        .post(format!("{}/admin/v1/login", harness.url))
        .json(&json!({"username": "admin", "password": crate::harness::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_owned();
    let added = harness
        .client
        .post(format!("{}/admin/v1/accounts", harness.url))
        .bearer_auth(&token)
        .json(
            &json!({"platform": "codex", "name": "laptop", "priority": 1,
            "base_url": harness.chatgpt.base_url(), "auth_json": auth_json}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201, "{}", added.text().await.unwrap());
    // A codex account without a sign-in is refused with what to do instead.
    let refused = harness
        .client
        .post(format!("{}/admin/v1/accounts", harness.url))
        .bearer_auth(&token)
        .json(&json!({"platform": "codex", "name": "nokey", "api_key": "sk-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("--auth-json"));
    harness.snapshots.reload().await.unwrap();

    // The imported access token expires within the refresh margin (the JWT says so): the first
    // request refreshes it.
    let response = post(&harness, "/v1/responses", &codex_body(true, "one"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(harness.chatgpt.refresh_count(), 1);
    assert_eq!(backend_tokens(&harness).len(), 1);

    // Codex on the laptop signs in again with the same login: the relay's refresh token is
    // burnt. Its access token (again within the margin) needs a refresh that fails: the
    // account is out, and traffic goes to the API-key account.
    let _elsewhere = harness.chatgpt.auth_json();
    for n in 0..2 {
        let response = post(
            &harness,
            "/v1/responses",
            &codex_body(true, &format!("t{n}")),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(harness.openai.count_for("sk-api"), 2);
    assert_eq!(
        harness.chatgpt.refresh_count(),
        1,
        "no second refresh succeeded"
    );
    let status = harness
        .relay
        .account_statuses()
        .into_iter()
        .find(|status| status.name == "laptop")
        .unwrap();
    assert_eq!(status.state, "cooling", "{status:?}");
}

#[tokio::test]
async fn a_used_up_window_or_a_usage_limit_rests_the_subscription_until_its_reset() {
    let harness = Harness::start(vec![responses_account("api", "sk-api", 2)]).await;
    sign_in(&harness, "plus", 1).await;

    // A 429 `usage_limit_reached` names its reset: the account cools until then, and the
    // request is served by the other account.
    let access = harness.chatgpt.current_access();
    harness
        .chatgpt
        .script(&access, [Behavior::codex_usage_limit(120)]);
    let before = now_ms();
    let response = post_unbound(&harness, "one").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(harness.openai.count_for("sk-api"), 1);
    let status = harness.relay.account_statuses().remove(0);
    assert_eq!(status.name, "plus");
    assert_eq!(status.state, "cooling");
    let until = status.cooling_until_ms.unwrap();
    assert!(
        (before + 119_000..=now_ms() + 121_000).contains(&until),
        "{until} vs {before}"
    );
    assert!(status.reason.unwrap().contains("usage_limit_reached"));

    // After an operator reset it serves again; a response whose window reads 100 % rests it
    // until that window's reset (an hour, as the backend said), before any 429.
    harness.admin.reset_account("plus").await.unwrap();
    harness.snapshots.reload().await.unwrap();
    harness.chatgpt.set_windows(100.0, 41.0);
    let response = post_unbound(&harness, "two").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let served_by_plus = harness.chatgpt.requests().len();
    assert_eq!(served_by_plus, 2);
    let status = harness.relay.account_statuses().remove(0);
    assert_eq!(status.state, "cooling");
    let until = status.cooling_until_ms.unwrap();
    assert!(
        until > now_ms() + 3_500_000 && until < now_ms() + 3_700_000,
        "{until}"
    );
    let response = post_unbound(&harness, "three").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(harness.chatgpt.requests().len(), served_by_plus);
    assert_eq!(harness.openai.count_for("sk-api"), 2);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

//! Canaries: unique upstream secrets (an Anthropic and an OpenAI-compatible account), OAuth
//! access and refresh tokens and a relay key are used through every path — requests, streams,
//! failover, both ingresses, conversions both ways, upstreams that echo their credential in
//! errors the relay passes on or converts (400 and 429), a token endpoint answering with an
//! unexpected shape, the admin API, the CLI —
//! and afterwards none of them appears in the log, the data directory's files, the metrics,
//! the CSV export or any answer.

use std::path::Path;

use relay_testkit::openai::MockOpenAi;
use relay_testkit::{Behavior, MockUpstream};
use serde_json::json;

use crate::support::{add_account, admin_login, cli, create_key, relay_command, RunningRelay};

/// Every file under `dir`, read raw.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

/// A response's status, and its headers and body as text.
async fn answer(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    (
        status,
        format!("{headers}\n{}", response.text().await.unwrap()),
    )
}

/// A path, its body, and the fault an account (by name) answers it with first.
type Crossing<'a> = (&'a str, serde_json::Value, Option<(&'a str, Behavior)>);

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_reach_logs_files_metrics_csv_or_answers() {
    let unique = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let upstream_secret = format!("sk-ant-api03-CANARY{unique}UPSTREAM");
    let access_token = format!("sk-ant-oat01-CANARY{unique}ACCESS");
    let refresh_token = format!("sk-ant-ort01-CANARY{unique}REFRESH");
    let openai_secret = format!("sk-proj-CANARY{unique}OPENAI");
    let mock = MockUpstream::start().await;
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token_url = mock.token_url();
    let env = [("CLAUDE_RELAY_OAUTH_TOKEN_URL", token_url.as_str())];
    let mut answers: Vec<(String, String)> = Vec::new();
    let mut cli_with_token_url = |args: &[&str]| {
        let output = relay_command()
            .args(args)
            .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
            .envs(env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        answers.push((format!("cli {args:?}"), format!("{stdout}{stderr}")));
        stdout
    };

    add_account(&data_dir, "main", &upstream_secret, &mock.url(), 10);
    cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "openai",
            "--name",
            "oai",
            "--api-key",
            &openai_secret,
            "--base-url",
            &openai.base_url(),
            "--model",
            "gpt-4o-mini",
        ],
    );
    // A subscription signs in; the token endpoint issues the canary tokens, expiring at once.
    mock.set_token_reply(Some(
        &json!({"access_token": access_token, "refresh_token": refresh_token, "expires_in": 1})
            .to_string(),
    ));
    let authorize = cli_with_token_url(&["account", "oauth-start", "--name", "max"]);
    let state = crate::support::authorize_state(&authorize);
    let code = format!("mock-code#{state}");
    let base_url = mock.url();
    let finished = cli_with_token_url(&[
        "account",
        "oauth-finish",
        "--name",
        "max",
        "--code",
        &code,
        "--base-url",
        &base_url,
        "--priority",
        "1",
        "--json",
    ]);
    assert!(finished.contains("claude-oauth"), "{answers:?}");
    // From now on the token endpoint answers 200 in a shape nobody expects, echoing the tokens.
    mock.set_token_reply(Some(
        &json!({"unexpected": {"access_token": access_token, "refresh_token": refresh_token}})
            .to_string(),
    ));
    let relay_key = create_key(&data_dir, "canary");
    let relay = RunningRelay::start_with_env(&data_dir, Some("canary-admin-pw"), &env);
    let client = reqwest::Client::new();
    let mut record = |what: &str, (status, text): (u16, String)| {
        answers.push((format!("{what} ({status})"), text));
    };
    let message = |stream: bool| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": stream,
               "messages": [{"role": "user", "content": "hello"}]})
    };
    let message_for = |model: &str| {
        json!({"model": model, "max_tokens": 16,
               "messages": [{"role": "user", "content": "hello"}]})
    };
    let chat = |model: &str| {
        json!({"model": model, "max_tokens": 16,
               "messages": [{"role": "user", "content": "hello"}]})
    };
    let echo = |status: u16, secret: &str| Behavior::Status {
        status,
        headers: Vec::new(),
        body: json!({"error": {"type": "invalid_request_error",
            "message": format!("this key is not valid here: {secret}")}})
        .to_string(),
    };
    // Both ingresses, both directions of conversion, and upstream errors that quote the
    // account's credential: passed through (429 JSON), converted (400 and 429).
    let crossings: [Crossing; 5] = [
        ("/v1/chat/completions", chat("gpt-4o-mini"), None),
        (
            "/v1/messages",
            message_for("gpt-4o-mini"),
            Some(("oai", echo(400, &openai_secret))),
        ),
        (
            "/v1/messages",
            message_for("gpt-4o-mini"),
            Some(("oai", echo(429, &openai_secret))),
        ),
        (
            "/openai/v1/chat/completions",
            chat("claude-sonnet-4-5"),
            Some(("main", echo(400, &upstream_secret))),
        ),
        (
            "/v1/chat/completions",
            chat("gpt-4o-mini"),
            Some(("oai", echo(429, &openai_secret))),
        ),
    ];
    for (path, body, fault) in crossings {
        match fault {
            Some(("oai", behavior)) => openai.script(&openai_secret, [behavior]),
            Some((_, behavior)) => mock.script(&upstream_secret, [behavior]),
            None => {}
        }
        let response = client
            .post(format!("{}{path}", relay.url))
            .bearer_auth(&relay_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        record(path, answer(response).await);
    }
    let paths: [(&str, serde_json::Value); 4] = [
        // The subscription's refresh fails on the odd answer: failover to the key account.
        ("/v1/messages", message(false)),
        ("/v1/messages?beta=true", message(true)),
        ("/v1/messages/count_tokens", message(false)),
        // The upstream refuses the key and quotes it back.
        ("/v1/messages", message(false)),
    ];
    for (n, (path, body)) in paths.into_iter().enumerate() {
        if n == 3 {
            mock.script(
                &upstream_secret,
                [Behavior::Status {
                    status: 401,
                    headers: Vec::new(),
                    body: json!({"type": "error", "error": {"type": "authentication_error",
                        "message": format!("invalid x-api-key: {upstream_secret}")}})
                    .to_string(),
                }],
            );
        }
        let response = client
            .post(format!("{}{path}", relay.url))
            .header("x-api-key", &relay_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        record(path, answer(response).await);
    }
    for path in ["/v1/usage", "/v1/models", "/metrics", "/health"] {
        let response = client
            .get(format!("{}{path}", relay.url))
            .header("x-api-key", &relay_key)
            .send()
            .await
            .unwrap();
        record(path, answer(response).await);
    }
    let token = admin_login(&relay, "canary-admin-pw").await;
    for path in [
        "/admin/v1/keys",
        "/admin/v1/keys/canary",
        "/admin/v1/keys.csv",
        "/admin/v1/accounts",
        "/admin/v1/accounts/main/events",
        "/admin/v1/accounts/max/events",
        "/admin/v1/accounts/oai/events",
    ] {
        let response = client
            .get(format!("{}{path}", relay.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        record(path, answer(response).await);
    }
    let tested = client
        .post(format!("{}/admin/v1/accounts/main/test", relay.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    record("account test", answer(tested).await);
    assert!(
        answers
            .iter()
            .any(|(what, _)| what.starts_with("/v1/messages (200)")),
        "the relay served through failover: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|(what, _)| what.starts_with("/v1/chat/completions (200)")),
        "the OpenAI-compatible account served: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(what, _)| what.ends_with("(400)") || what.ends_with("(429)"))
            .count()
            >= 4,
        "the echoing errors reached the client: {answers:?}"
    );
    let (exit, log) = relay.stop();
    assert!(exit.success(), "{log}");
    for args in [
        &["key", "list", "--json"][..],
        &["key", "export"],
        &["account", "list", "--json"],
        &["account", "events", "max"],
        &["account", "events", "main"],
        &["account", "events", "oai"],
        &["usage", "--json"],
    ] {
        answers.push((format!("cli {args:?}"), cli(&data_dir, args)));
    }

    // The key was shown once, at creation; the upstream did get its credentials. Nothing else.
    let files = files_under(&data_dir);
    assert!(files.len() >= 3, "{files:?}");
    for canary in [
        &upstream_secret,
        &openai_secret,
        &access_token,
        &refresh_token,
        &relay_key,
    ] {
        assert!(
            !log.contains(canary.as_str()),
            "{canary} in the log:\n{log}"
        );
        for (what, text) in &answers {
            assert!(
                !text.contains(canary.as_str()),
                "{canary} in {what}: {text}"
            );
        }
        for (path, bytes) in &files {
            assert!(!contains(bytes, canary), "{canary} in {path}");
        }
    }
    assert!(
        log.contains("refresh failed") || log.contains("refresh_failed"),
        "the malformed token answer was exercised: {log}"
    );
}

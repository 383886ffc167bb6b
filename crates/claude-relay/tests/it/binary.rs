//! The binary as an operator uses it: first start, CLI changes picked up live, SIGTERM.

use std::time::Duration;

use relay_testkit::MockUpstream;
use serde_json::json;

use crate::support::{add_account, cli, cli_json, create_key, usage_when, RunningRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_through_the_cli_against_a_running_server() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let relay = RunningRelay::start(&data_dir, None);

    // First start: data directory, private master key, database, an admin with a printed password.
    let key_file = data_dir.join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(data_dir.join("relay.db").exists());
    assert!(relay
        .stderr()
        .contains("created admin user 'admin' with password: "));

    let account = cli_json(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            "main",
            "--api-key",
            "sk-ant-upstream-secret",
            "--base-url",
            &mock.url(),
            "--priority",
            "5",
            "--json",
        ],
    );
    assert_eq!(account["name"], "main");
    assert_eq!(account["secret_hint"], "…cret");
    assert!(!account.to_string().contains("sk-ant-upstream-secret"));
    let key = create_key(&data_dir, "alice");
    assert!(
        key.starts_with("cr_") && !key.contains(char::is_whitespace),
        "stdout must be the key alone: {key:?}"
    );

    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("{}/v1/messages", relay.url))
            .header("x-api-key", &key)
            .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // The running server picks the new key and account up within a second.
    let mut status = 0;
    for _ in 0..40 {
        status = send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);

    cli(&data_dir, &["key", "disable", "alice"]);
    let mut refused = false;
    for _ in 0..20 {
        if send().await.unwrap().status() == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a disabled key must be refused within one second");
    cli(&data_dir, &["key", "enable", "alice"]);

    let keys = cli_json(&data_dir, &["key", "list", "--json"]);
    assert_eq!(keys[0]["status"], "active");
    assert!(!keys.to_string().contains(&key));
    let accounts = cli_json(&data_dir, &["account", "list", "--json"]);
    assert_eq!(accounts[0]["priority"], 5);

    let usage = usage_when(&data_dir, Some("alice"), 1).await;
    assert!(usage["input_tokens"].as_i64().unwrap() > 0);
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);
    for field in [
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(usage.get(field).is_some(), "usage --json lacks {field}");
    }

    let logs = relay.stderr();
    let exit = relay.terminate();
    assert!(exit.success(), "relay exited with {exit}");
    assert!(!logs.contains(&key), "relay key in logs");
    assert!(
        !logs.contains("sk-ant-upstream-secret"),
        "upstream key in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_and_records_it() {
    let mock = MockUpstream::start().await;
    mock.script(
        "sk-slow",
        [relay_testkit::Behavior::SlowEvents(Duration::from_millis(
            150,
        ))],
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "slow", "sk-slow", &mock.url(), 50);
    let key = create_key(&data_dir, "bob");
    let relay = RunningRelay::start(&data_dir, Some("chosen-password"));
    assert!(!relay.stderr().contains("chosen-password"));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.url))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "a b c d e"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(async move { response.text().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exit = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .unwrap();
    assert!(exit.success());
    let text = reader.await.unwrap().unwrap();
    assert!(
        text.contains("message_stop"),
        "stream cut by shutdown: {text}"
    );
    let usage = cli_json(&data_dir, &["usage", "--json"]);
    assert_eq!(usage["requests"], 1, "usage was not flushed on shutdown");
    assert_eq!(usage["partial_requests"], 0);
}

//! Several instances of the real binary on one PostgreSQL database (skipped with a message where
//! PostgreSQL does not run, mandatory in CI).

use std::time::Duration;

use relay_testkit::MockUpstream;
use serde_json::json;

use crate::support::{cli_env, message_status, usage_when_env, RunningRelay};

/// Sends a message through `relay` with `key` until it gets `want` (at most ~1 s); the last
/// status. `answered` counts the requests that were served.
async fn status_within_a_second(
    relay: &RunningRelay,
    key: &str,
    want: u16,
    answered: &mut i64,
) -> u16 {
    let client = reqwest::Client::new();
    let mut status = 0;
    for _ in 0..20 {
        status = message_status(&client, relay, key).await;
        *answered += i64::from(status == 200);
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_the_cli_share_one_postgres_database() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let env = [("CLAUDE_RELAY_DATABASE_URL", url.as_str())];
    // Both from the same data directory (one master key), started together.
    let first = RunningRelay::start_with_env(&data_dir, Some("first-admin-password"), &env);
    let second = RunningRelay::start_with_env(&data_dir, None, &env);
    assert!(
        !data_dir.join("relay.db").exists(),
        "no SQLite file in this mode"
    );
    assert!(first.stderr().contains("PostgreSQL without Redis"));
    assert!(
        !second.stderr().contains("created admin user"),
        "the admin is created once, by whichever instance came first"
    );

    cli_env(
        &data_dir,
        &env,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            "main",
            "--api-key",
            "sk-ant-shared-secret",
            "--base-url",
            &mock.url(),
        ],
    );
    let key = cli_env(&data_dir, &env, &["key", "create", "--name", "alice"])
        .trim()
        .to_owned();
    let mut answered = 0;
    for relay in [&first, &second] {
        assert_eq!(
            status_within_a_second(relay, &key, 200, &mut answered).await,
            200
        );
    }
    cli_env(&data_dir, &env, &["key", "disable", "alice"]);
    for relay in [&first, &second] {
        assert_eq!(
            status_within_a_second(relay, &key, 403, &mut answered).await,
            403,
            "a key disabled through the CLI is refused by every instance within a second"
        );
    }
    let usage = usage_when_env(&data_dir, &env, Some("alice"), answered).await;
    assert_eq!(
        usage["requests"], answered,
        "every answered request of both instances, in one table"
    );
    assert!(usage["input_tokens"].as_i64().unwrap() > 0);

    // The admin signs in on either instance.
    let response = reqwest::Client::new()
        .post(format!("{}/admin/v1/login", second.url))
        .json(&json!({"username": "admin", "password": "first-admin-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let keys: serde_json::Value =
        serde_json::from_str(&cli_env(&data_dir, &env, &["key", "list", "--json"])).unwrap();
    assert_eq!(keys[0]["status"], "disabled");
    for relay in [first, second] {
        let (exit, log) = relay.stop();
        assert!(exit.success(), "relay exited with {exit}: {log}");
        assert!(!log.contains(&key) && !log.contains("sk-ant-shared-secret"));
    }
}

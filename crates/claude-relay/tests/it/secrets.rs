//! Secrets and data at rest, through the binary: admin sessions, all-or-nothing account creation.

use serde_json::{json, Value};

use crate::support::{cli, cli_fails, cli_json, RunningRelay};

async fn admin_login(relay: &RunningRelay, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/admin/v1/login", relay.url))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn admin_status(relay: &RunningRelay, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/admin/v1/keys", relay.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_or_revoke_sessions_signs_every_session_out() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let relay = RunningRelay::start(&data_dir, Some("first-password"));
    let first = admin_login(&relay, "first-password").await;
    let second = admin_login(&relay, "first-password").await;
    assert_eq!(admin_status(&relay, &first).await, 200);

    let password = cli(&data_dir, &["admin", "reset-password"]);
    assert_eq!(admin_status(&relay, &first).await, 401);
    assert_eq!(admin_status(&relay, &second).await, 401);

    let third = admin_login(&relay, password.trim()).await;
    assert_eq!(admin_status(&relay, &third).await, 200);
    let revoked = cli(&data_dir, &["admin", "revoke-sessions"]);
    assert!(revoked.contains("revoked 1 admin session"), "{revoked}");
    assert_eq!(admin_status(&relay, &third).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_an_invalid_proxy_or_setting_is_not_created_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let add = |extra: &str| -> Vec<String> {
        format!("account add --platform anthropic --name main --api-key sk-main {extra}")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for (extra, complaint) in [
        ("--proxy ftp://proxy.example:21", "proxy"),
        ("--map-model no-equals-sign", "--map-model"),
        ("--weight 0", "weight"),
    ] {
        let args = add(extra);
        let error = cli_fails(
            &data_dir,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(error.contains(complaint), "{extra}: {error}");
        assert_eq!(
            cli_json(&data_dir, &["account", "list", "--json"]),
            json!([]),
            "{extra} left an account behind"
        );
    }
    let args = add("--weight 2 --json");
    let added = cli_json(
        &data_dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(added["name"], "main");
    let listed = cli_json(&data_dir, &["account", "list", "--json"]);
    assert_eq!(listed[0]["settings"]["weight"], 2);
}

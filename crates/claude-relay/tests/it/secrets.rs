//! Secrets and data at rest, through the binary: admin sessions.

use serde_json::{json, Value};

use crate::support::{cli, RunningRelay};

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

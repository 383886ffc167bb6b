//! Secrets and data at rest, through the binary: private files, admin sessions, all-or-nothing
//! account creation.

use std::path::Path;

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

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Asserts the directory is 0700 and every file in it 0600; returns the file names.
#[cfg(unix)]
fn assert_private(data_dir: &Path) -> Vec<String> {
    assert_eq!(mode(data_dir), 0o700, "{}", data_dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(data_dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_and_a_loose_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    cli(&data_dir, &["key", "create", "--name", "alice"]);
    let names = assert_private(&data_dir);
    for owned in ["relay.db", "relay.db-wal", "relay.db-shm", "master.key"] {
        assert!(
            names.iter().any(|name| name == owned),
            "{owned} in {names:?}"
        );
    }
    assert!(relay.terminate().success());

    // An installation from before: a loose directory and database are tightened, and said so.
    set_mode(&data_dir, 0o755);
    set_mode(&data_dir.join("relay.db"), 0o644);
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    assert_private(&data_dir);
    let logs = relay.stderr();
    assert!(
        logs.contains("tightened") && logs.contains("relay.db"),
        "{logs}"
    );
    assert!(relay.terminate().success());

    // A master key others could read may have been exposed: refused, saying how to fix it.
    let key_file = data_dir.join("master.key");
    set_mode(&key_file, 0o644);
    let fix = format!("chmod 600 {}", key_file.display());
    let error = crate::support::cli_fails(&data_dir, &["key", "list"]);
    assert!(error.contains(&fix), "{error}");
    let serve = crate::support::relay_command()
        .arg("serve")
        .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
        .env("CLAUDE_RELAY_LISTEN", "127.0.0.1:0")
        .env_remove("CLAUDE_RELAY_CONFIG")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains(&fix));
    set_mode(&key_file, 0o600);
    cli(&data_dir, &["key", "list"]);
}

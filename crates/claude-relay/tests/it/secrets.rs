//! Secrets and data at rest, through the binary: private files, master-key rotation, admin
//! sessions, all-or-nothing account creation.

use std::path::Path;

use serde_json::json;

use relay_testkit::{MockUpstream, ProxyProtocol, TestProxy};

use crate::support::{
    add_account, admin_login, cli, cli_env, cli_env_fails, cli_fails, cli_json, RunningRelay,
};

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

/// `POST /v1/messages` with `key`; returns the status.
async fn send(relay: &RunningRelay, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.url))
        .header("x-api-key", key)
        .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `key create --dedicated-account`; returns the key.
fn key_for(data_dir: &Path, env: &[(&str, &str)], name: &str, account: &str) -> String {
    cli_env(
        data_dir,
        env,
        &[
            "key",
            "create",
            "--name",
            name,
            "--dedicated-account",
            account,
        ],
    )
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_reseals_every_secret_and_issued_keys_keep_working() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::start(ProxyProtocol::HttpConnect, Some(("relay", "p@ss"))).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token_url = mock.token_url();
    let env = [("CLAUDE_RELAY_OAUTH_TOKEN_URL", token_url.as_str())];
    // Every kind of sealed secret: an API key, a proxy URL, subscription tokens, and the
    // verifier of a sign-in still under way.
    add_account(&data_dir, "direct", "sk-direct", &mock.url(), 1);
    let proxy_url = proxy.url(Some(("relay", "p%40ss")));
    cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            "proxied",
            "--api-key",
            "sk-proxied",
            "--base-url",
            &mock.url(),
            "--proxy",
            &proxy_url,
        ],
    );
    let sign_in = |name: &str, started: Option<String>| {
        let url = started.unwrap_or_else(|| {
            cli_env(&data_dir, &env, &["account", "oauth-start", "--name", name])
        });
        let state = crate::support::authorize_state(&url);
        cli_env(
            &data_dir,
            &env,
            &[
                "account",
                "oauth-finish",
                "--name",
                name,
                "--code",
                &format!("mock-code#{state}"),
                "--base-url",
                &mock.url(),
            ],
        );
    };
    sign_in("sub", None);
    let later = cli_env(
        &data_dir,
        &env,
        &["account", "oauth-start", "--name", "later"],
    );
    let keys: Vec<String> = [
        ("k-direct", "direct"),
        ("k-proxied", "proxied"),
        ("k-sub", "sub"),
    ]
    .iter()
    .map(|(name, account)| key_for(&data_dir, &[], name, account))
    .collect();

    // A running server has the installation open: the rotation waits until it is stopped.
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let refused = cli_fails(&data_dir, &["admin", "rotate-master-key"]);
    assert!(refused.contains("stop it"), "{refused}");
    assert!(relay.terminate().success());

    let key_file = data_dir.join("master.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let rotated = cli(&data_dir, &["admin", "rotate-master-key"]);
    // Three credentials, one proxy, one pending verifier, the key-hash key.
    assert!(rotated.contains("6 secrets re-sealed"), "{rotated}");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(new_key.trim().len(), 64);
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(64)
                .any(|window| window == old_key.trim().as_bytes()),
            "the old key is still in {}",
            path.display()
        );
    }
    #[cfg(unix)]
    assert_private(&data_dir);

    // The sign-in started before the rotation finishes after it.
    sign_in("later", Some(later));
    // Restarted, the relay opens every secret with the new key; every issued key still works.
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    for key in &keys {
        assert_eq!(send(&relay, key).await, 200, "{key}");
    }
    let credentials: Vec<String> = mock
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .map(|request| {
            let header = |name: &str| {
                request
                    .headers
                    .get(name)
                    .map(|value| value.to_str().unwrap().to_owned())
            };
            header("x-api-key")
                .or_else(|| header("authorization"))
                .unwrap()
        })
        .collect();
    assert_eq!(credentials.len(), 3, "{credentials:?}");
    assert!(
        credentials.contains(&"sk-direct".to_owned()),
        "{credentials:?}"
    );
    assert!(
        credentials.contains(&"sk-proxied".to_owned()),
        "{credentials:?}"
    );
    assert!(credentials
        .iter()
        .any(|value| value.starts_with("Bearer mock-access-")));
    assert_eq!(
        proxy.tunnels(),
        1,
        "the proxied account did not use its proxy"
    );
    let logs = relay.stderr();
    assert!(
        !logs.contains("cannot be opened") && !logs.contains("cannot be read"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_master_key_given_in_the_environment_prints_the_new_one_once() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let old_key = "17".repeat(32);
    let old_env = [("CLAUDE_RELAY_MASTER_KEY", old_key.as_str())];
    cli_env(
        &data_dir,
        &old_env,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            "main",
            "--api-key",
            "sk-main",
            "--base-url",
            &mock.url(),
        ],
    );
    let key = key_for(&data_dir, &old_env, "alice", "main");

    let new_key = cli_env(&data_dir, &old_env, &["admin", "rotate-master-key"]);
    let new_key = new_key.trim();
    assert!(
        new_key.len() == 64 && new_key.chars().all(|c| c.is_ascii_hexdigit()),
        "stdout must be the new key alone: {new_key:?}"
    );
    assert_ne!(new_key, old_key);
    assert!(!data_dir.join("master.key").exists());
    // The old key no longer opens the installation, and the refusal says why.
    let refused = cli_env_fails(&data_dir, &old_env, &["key", "list"]);
    assert!(refused.contains("master key"), "{refused}");

    let relay = RunningRelay::start_with_env(
        &data_dir,
        Some("pw"),
        &[("CLAUDE_RELAY_MASTER_KEY", new_key)],
    );
    assert_eq!(send(&relay, &key).await, 200);
}

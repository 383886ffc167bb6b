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

    let edited = cli_json(
        &data_dir,
        &[
            "key",
            "edit",
            "alice",
            "--concurrency",
            "4",
            "--rate-requests",
            "100",
            "--rate-tokens",
            "1000000",
            "--rate-cost-usd",
            "2.5",
            "--rate-window",
            "5h",
            "--daily-cost-usd",
            "10",
            "--weekly-cost-usd",
            "50",
            "--monthly-cost-usd",
            "150",
            "--total-cost-usd",
            "1000",
            "--weekly-family-cost-usd",
            "opus=20",
            "--weekly-family-reset",
            "fri@18",
            "--token-quota",
            "90000000",
            "--allow-model",
            "claude-sonnet-*",
            "--allow-model",
            "claude-opus-4-8",
            "--deny-model",
            "claude-sonnet-4",
            "--allow-client",
            "claude-code",
            "--allow-client",
            "ua:my-bot/*",
            "--allow-ip",
            "127.0.0.0/8",
            "--allow-ip",
            "::1",
            "--service",
            "claude",
            "--expires-at",
            "2099-12-31",
            "--expires-after-first-use",
            "30d",
            "--json",
        ],
    );
    let policy = &edited["policy"];
    assert_eq!(policy["concurrency"], 4);
    assert_eq!(policy["rate_window_secs"], 18_000);
    assert_eq!(policy["rate_cost_nano_usd"], 2_500_000_000_i64);
    assert_eq!(policy["family_weekly"]["family"], "opus");
    assert_eq!(policy["family_weekly"]["reset_weekday"], 4);
    assert_eq!(policy["family_weekly"]["reset_hour"], 18);
    assert_eq!(policy["allowed_models"][1], "claude-opus-4-8");
    assert_eq!(policy["allowed_ips"][1], "::1");
    assert_eq!(policy["expires_after_first_use_secs"], 2_592_000);
    // Bad values are refused with the setting named.
    let bad = crate::support::relay_command()
        .args(["key", "edit", "alice", "--allow-ip", "10.0.0.0/99"])
        .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("10.0.0.0/99"));
    // Clearing lists and lifting limits brings the key back to no limits.
    let cleared = cli_json(
        &data_dir,
        &[
            "key",
            "edit",
            "alice",
            "--concurrency",
            "0",
            "--rate-requests",
            "0",
            "--rate-tokens",
            "0",
            "--rate-cost-usd",
            "0",
            "--rate-window",
            "0",
            "--daily-cost-usd",
            "0",
            "--weekly-cost-usd",
            "0",
            "--monthly-cost-usd",
            "0",
            "--total-cost-usd",
            "0",
            "--token-quota",
            "0",
            "--clear",
            "weekly-family-cost",
            "--clear",
            "allowed-models",
            "--clear",
            "denied-models",
            "--clear",
            "allowed-clients",
            "--clear",
            "allowed-ips",
            "--clear",
            "services",
            "--clear",
            "expiry",
            "--json",
        ],
    );
    assert_eq!(cleared["policy"], json!({}));

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_set_from_the_cli_hold_across_a_restart() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "main", "sk-main", &mock.url(), 50);
    let key = create_key(&data_dir, "quota");
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});
    let body_len = serde_json::to_vec(&body).unwrap().len() as i64;
    let estimate_tokens = (body_len + 3) / 4 + 5;
    let send = |url: String| {
        let body = body.clone();
        let key = key.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/messages"))
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let relay = RunningRelay::start(&data_dir, Some("pw"));
    assert_eq!(send(relay.url.clone()).await.status(), 200);
    let used = usage_when(&data_dir, Some("quota"), 1).await;
    let spent_tokens = [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .map(|field| used[field].as_i64().unwrap())
    .sum::<i64>();
    // One token short of what a second request could need: it must be refused.
    let quota = spent_tokens + estimate_tokens - 1;
    let edited = cli_json(
        &data_dir,
        &[
            "key",
            "edit",
            "quota",
            "--token-quota",
            &quota.to_string(),
            "--json",
        ],
    );
    assert_eq!(edited["policy"]["token_quota"], quota);
    // Until the running server reloads (within a second) requests still pass.
    let mut served = 1;
    let mut refused = None;
    for _ in 0..40 {
        let response = send(relay.url.clone()).await;
        if response.status() != 200 {
            refused = Some(response);
            break;
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the new quota never took effect");
    assert_eq!(refused.status(), 402);
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "billing_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("quota"));
    assert!(relay.terminate().success());

    // After a restart the spend is read back from the usage records: still refused.
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    assert_eq!(send(relay.url.clone()).await.status(), 402);
    // Lifting the limit (0 removes it) lets the key work again.
    cli(&data_dir, &["key", "edit", "quota", "--token-quota", "0"]);
    let mut status = 0;
    for _ in 0..40 {
        status = send(relay.url.clone()).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(
        mock.requests().len(),
        served + 1,
        "refused requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_keys_trash_restore_and_csv_export() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "main", "sk-main", &mock.url(), 50);

    // A batch of five, printed once as "name<TAB>key".
    let batch = cli(
        &data_dir,
        &[
            "key",
            "create",
            "--name",
            "intern-{n}",
            "--count",
            "5",
            "--tag",
            "interns",
            "--owner",
            "alice",
            "--daily-cost-usd",
            "2",
        ],
    );
    let created: Vec<(&str, &str)> = batch
        .lines()
        .map(|line| line.split_once('\t').unwrap())
        .collect();
    assert_eq!(
        created.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        ["intern-1", "intern-2", "intern-3", "intern-4", "intern-5"]
    );
    assert!(created.iter().all(|(_, key)| key.starts_with("cr_")));
    // A batch whose names collide makes nothing.
    let collision = crate::support::relay_command()
        .args(["key", "create", "--name", "intern-{n}", "--count", "6"])
        .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(!collision.status.success());
    assert_eq!(
        cli_json(&data_dir, &["key", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // Batch edit: limits and notes on several keys at once.
    cli(
        &data_dir,
        &[
            "key",
            "edit",
            "intern-1",
            "intern-2",
            "--concurrency",
            "1",
            "--description",
            "summer cohort",
        ],
    );
    let keys = cli_json(&data_dir, &["key", "list", "--json"]);
    assert_eq!(keys[0]["policy"]["concurrency"], 1);
    assert_eq!(keys[1]["description"], "summer cohort");
    assert_eq!(keys[1]["tags"][0], "interns");
    assert_eq!(keys[2]["owner"], "alice");
    assert!(keys[2]["policy"].get("concurrency").is_none());

    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let send = |key: &str| {
        let key = key.to_owned();
        let url = relay.url.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/messages"))
                .header("x-api-key", key)
                .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(created[2].1).await, 200);

    // Delete: the key stops working and moves to the trash; restore brings it back.
    cli(&data_dir, &["key", "delete", "intern-3", "intern-4"]);
    let trash = cli_json(&data_dir, &["key", "list", "--trash", "--json"]);
    assert_eq!(trash.as_array().unwrap().len(), 2);
    assert_eq!(
        cli_json(&data_dir, &["key", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let mut refused = false;
    for _ in 0..40 {
        if send(created[2].1).await == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a deleted key must stop working within a second");
    cli(&data_dir, &["key", "restore", "intern-3"]);
    let mut restored = false;
    for _ in 0..40 {
        if send(created[2].1).await == 200 {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restored);
    let purged = cli(&data_dir, &["key", "purge"]);
    assert_eq!(purged.trim(), "purged key 'intern-4'");
    assert!(cli_json(&data_dir, &["key", "list", "--trash", "--json"])
        .as_array()
        .unwrap()
        .is_empty());

    // Batch disable.
    cli(&data_dir, &["key", "disable", "intern-1", "intern-5"]);
    let csv = cli(&data_dir, &["key", "export"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "name,key_hint,status,owner,tags,description,created_at_ms,deleted_at_ms,policy"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[1].starts_with("intern-1,cr_…"));
    assert!(lines[1].contains(",disabled,alice,interns,summer cohort,"));
    assert!(
        lines[1].ends_with(r#""{""concurrency"":1,""daily_cost_nano_usd"":2000000000}""#),
        "{}",
        lines[1]
    );
    for (_, key) in &created {
        assert!(!csv.contains(key), "the export must not contain secrets");
    }
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_accounts_sign_in_from_the_cli_and_setup_tokens_import() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let run = |args: &[&str]| {
        let output = crate::support::relay_command()
            .args(args)
            .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
            .env("CLAUDE_RELAY_OAUTH_TOKEN_URL", mock.token_url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let url = run(&["account", "oauth-start", "--name", "max"]);
    assert!(
        url.starts_with("https://claude.ai/oauth/authorize?"),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"));
    let state = crate::support::authorize_state(&url);
    let added = run(&[
        "account",
        "oauth-finish",
        "--name",
        "max",
        "--code",
        &format!("mock-code#{state}"),
        "--base-url",
        &mock.url(),
        "--priority",
        "1",
        "--json",
    ]);
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!(added["platform"], "claude-oauth");
    // A setup token from `claude setup-token` is imported as a key.
    run(&[
        "account",
        "add",
        "--platform",
        "claude-oauth",
        "--name",
        "setup",
        "--api-key",
        "sk-ant-oat01-setup-token",
        "--base-url",
        &mock.url(),
        "--priority",
        "2",
    ]);
    cli(&data_dir, &["account", "disable", "max"]);
    let key = create_key(&data_dir, "member");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.url))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request = mock
        .requests()
        .into_iter()
        .find(|request| request.path == "/v1/messages")
        .unwrap();
    assert_eq!(
        request.headers["authorization"],
        "Bearer sk-ant-oat01-setup-token"
    );
    let logs = relay.stderr();
    assert!(
        !logs.contains("sk-ant-oat01-setup-token") && !logs.contains("mock-refresh"),
        "secrets in logs"
    );
}

/// A soft limit on open files below the hard one is raised to it at start, and the connection
/// cap is derived from the raised limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_one_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RunningRelay::start_under_ulimit(&dir.path().join("data"), "-Sn 256");
    let (soft, hard) = relay.open_files_limit();
    assert_ne!(soft, "256", "still the soft limit it was started with");
    assert_eq!(soft, hard);
    let (exit, log) = relay.stop();
    assert!(exit.success());
    let cap_line = log
        .lines()
        .find(|line| line.contains("connection cap"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(cap_line.contains(&hard), "{cap_line}");
}

/// Under a 128-file limit, 200 idle sockets cannot lock clients out: the oldest idle ones make
/// room, and `/health` still answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_sockets_under_ulimit_128_do_not_lock_out_health() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RunningRelay::start_with_fd_limit(&dir.path().join("data"), 128);
    let address = relay.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..3 {
        let health = client.get(format!("{}/health", relay.url)).send().await;
        assert_eq!(
            health.map(|response| response.status().as_u16()).ok(),
            Some(200),
            "{}",
            relay.stderr()
        );
    }
    let log = relay.stderr();
    let cap_line = log
        .lines()
        .find(|line| line.contains("connection cap"))
        .unwrap_or_default();
    assert!(
        cap_line.ends_with("32"),
        "the cap derives from the file limit: {cap_line}"
    );
    drop(idle);
    assert!(relay.terminate().success());
}

/// One egress guard: internal targets are refused when saved (with how to allow them), and a
/// target saved while allowed is refused at connect time once the allowlist no longer has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_guard_refuses_internal_targets_when_saved_and_when_connecting() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (flag, url) in [
        ("--base-url", "http://169.254.169.254/latest"),
        ("--base-url", "http://metadata.google.internal"),
        ("--base-url", "http://0x7f000001:9"),
        ("--proxy", "http://10.0.0.1:3128"),
    ] {
        let mut command = crate::support::relay_command();
        command.args(["account", "add", "--platform", "anthropic", "--name", "bad"]);
        command.args(["--api-key", "sk-x", flag, url]);
        if flag == "--proxy" {
            command.args(["--base-url", "https://api.example.com"]);
        }
        let output = command
            .env("CLAUDE_RELAY_DATA_DIR", &data_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} was saved");
        assert!(
            stderr.contains("CLAUDE_RELAY_EGRESS_ALLOWLIST") || stderr.contains("non-standard"),
            "{url}: {stderr}"
        );
    }
    assert_eq!(
        cli_json(&data_dir, &["account", "list", "--json"]),
        json!([])
    );
    // Saved while loopback was allowed; served by a relay whose allowlist no longer has it.
    add_account(&data_dir, "local", "sk-local", &mock.url(), 10);
    let key = create_key(&data_dir, "alice");
    let relay = RunningRelay::start_without_egress_allowlist(&data_dir);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.url))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502, "{}", relay.stderr());
    assert!(
        mock.requests().is_empty(),
        "nothing reached the internal target"
    );
    // The whole log: the pipe's reader may not have reached the line when the answer came.
    let (status, log) = relay.stop();
    assert!(status.success());
    assert!(log.contains("egress guard"), "{log}");
}

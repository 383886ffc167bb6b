//! `claude-relay db copy`: a SQLite installation moved to PostgreSQL with one command keeps
//! working there — every key, every sealed secret, the admin, the usage history.

use relay_testkit::MockUpstream;

use crate::support::{
    add_account, admin_login, cli, cli_env, cli_env_fails, create_key, message_status, until_known,
    usage_when, RunningRelay,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_installation_copied_to_postgres_keeps_its_keys_secrets_and_history() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let relay = RunningRelay::start(&data_dir, Some("copied-admin-password"));
    add_account(&data_dir, "first", "sk-ant-copy-first", &mock.url(), 1);
    add_account(&data_dir, "second", "sk-ant-copy-second", &mock.url(), 2);
    let keys: Vec<String> = (0..3)
        .map(|n| create_key(&data_dir, &format!("member-{n}")))
        .collect();
    cli(&data_dir, &["key", "disable", "member-2"]);
    until_known(&[&relay], &keys[1]).await;
    let client = reqwest::Client::new();
    for (n, key) in keys[..2].iter().enumerate() {
        for _ in 0..=n {
            assert_eq!(message_status(&client, &relay, key).await, 200);
        }
    }
    let before = usage_when(&data_dir, None, 3).await;
    let (exit, _) = relay.stop();
    assert!(exit.success());

    let printed = cli(&data_dir, &["db", "copy", "--to", &url]);
    assert!(printed.contains("relay_keys: 3 rows"), "{printed}");
    assert!(printed.contains("usage_records: 3 rows"), "{printed}");
    let env = [("CLAUDE_RELAY_DATABASE_URL", url.as_str())];
    let refused = cli_env_fails(&data_dir, &[], &["db", "copy", "--to", &url]);
    assert!(refused.contains("already holds data"), "{refused}");
    // The same totals, overall and per key, to the nano-dollar.
    for key in [None, Some("member-0"), Some("member-1")] {
        let mut args = vec!["usage", "--json"];
        args.extend(key.map(|key| ["--key", key]).into_iter().flatten());
        let sqlite: serde_json::Value = serde_json::from_str(&cli(&data_dir, &args)).unwrap();
        let postgres: serde_json::Value =
            serde_json::from_str(&cli_env(&data_dir, &env, &args)).unwrap();
        assert_eq!(sqlite, postgres, "{key:?}");
        if key.is_none() {
            assert_eq!(postgres, before);
        }
    }

    // The same data directory (its master key), now on PostgreSQL.
    let relay = RunningRelay::start_with_env(&data_dir, None, &env);
    for key in &keys[..2] {
        assert_eq!(
            message_status(&client, &relay, key).await,
            200,
            "keys authenticate"
        );
    }
    assert_eq!(
        message_status(&client, &relay, &keys[2]).await,
        403,
        "a disabled key stays disabled"
    );
    assert!(
        mock.count_for("sk-ant-copy-first") >= 5,
        "the account's sealed API key opened and was sent"
    );
    // The second account's secret opens too: with the first one out, it serves.
    cli_env(&data_dir, &env, &["account", "disable", "first"]);
    let mut served_by_second = false;
    for _ in 0..20 {
        assert_eq!(message_status(&client, &relay, &keys[0]).await, 200);
        if mock.count_for("sk-ant-copy-second") > 0 {
            served_by_second = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served_by_second);
    admin_login(&relay, "copied-admin-password").await;
    let (exit, log) = relay.stop();
    assert!(exit.success(), "{log}");
    let totals: serde_json::Value =
        serde_json::from_str(&cli_env(&data_dir, &env, &["usage", "--json"])).unwrap();
    let later_requests =
        totals["requests"].as_i64().unwrap() - before["requests"].as_i64().unwrap();
    assert!(
        later_requests >= 3,
        "history plus the new requests: {totals}"
    );
}

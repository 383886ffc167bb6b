//! An installation with 100,000 keys, on SQLite (one instance) and PostgreSQL (two): a key made
//! or disabled through the CLI works or stops on every instance within a second, and a thousand
//! changes in a row leave the memory where it was. Run alone (`.config/nextest.toml`): it
//! measures memory and time.

use std::path::Path;
use std::time::{Duration, Instant};

use relay_store::Store;
use relay_testkit::MockUpstream;

use crate::support::{add_account_env, cli_env, message_status, RunningRelay};

const KEYS: usize = 100_000;

/// Sends a message with `key` to every relay until each answers `want`; how long that took.
async fn until_every_instance_answers(relays: &[&RunningRelay], key: &str, want: u16) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    for relay in relays {
        loop {
            let status = message_status(&client, relay, key).await;
            if status == want {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} still answers {status}, not {want}",
                relay.url
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

async fn exercise(data_dir: &Path, env: &[(&str, &str)], store: Store, instances: usize) {
    let mock = MockUpstream::start().await;
    add_account_env(data_dir, env, "main", "sk-ant-x", &mock.url(), 1);
    let started = Instant::now();
    let relays: Vec<RunningRelay> = (0..instances)
        .map(|_| RunningRelay::start_with_env(data_dir, None, env))
        .collect();
    let relays: Vec<&RunningRelay> = relays.iter().collect();
    let start_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = relays[0].rss_bytes();

    let key = cli_env(data_dir, env, &["key", "create", "--name", "new"])
        .trim()
        .to_owned();
    let created = until_every_instance_answers(&relays, &key, 200).await;
    cli_env(data_dir, env, &["key", "disable", "new"]);
    let disabled = until_every_instance_answers(&relays, &key, 403).await;

    let before = relays[0].rss_bytes();
    for n in 0..1_000 {
        let status = if n % 2 == 0 { "disabled" } else { "active" };
        assert!(store
            .set_key_status(&format!("filler-{n}"), status, 2)
            .await
            .unwrap());
    }
    cli_env(data_dir, env, &["key", "enable", "new"]);
    until_every_instance_answers(&relays, &key, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = relays[0].rss_bytes();
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    eprintln!(
        "{KEYS} keys on {:?}: started in {start_secs:.2} s; idle RSS {:.1} MiB; a new key live \
         on {instances} instance(s) in {created:?}, a disabled one in {disabled:?}; RSS {:.1} MiB \
         before and {:.1} MiB after 1,000 changes",
        store.backend(),
        mib(idle),
        mib(before),
        mib(after)
    );
    assert!(
        created < Duration::from_secs(1) && disabled < Duration::from_secs(1),
        "a change takes effect within a second: {created:?}, {disabled:?}"
    );
    // Generous, for a debug build: what a reload per change used to leave behind was hundreds
    // of MiB.
    assert!(
        after < before + 32 * 1_048_576,
        "memory stays flat over 1,000 changes: {:.1} → {:.1} MiB",
        mib(before),
        mib(after)
    );
    assert!(idle < 200 * 1_048_576, "idle RSS {:.1} MiB", mib(idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_change_one_at_a_time_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The installation, made by the CLI; then the keys, straight into its database.
    cli_env(&data_dir, &[], &["key", "list"]);
    let store = Store::open(&data_dir.join("relay.db")).await.unwrap();
    relay_store::testing::insert_filler_keys(&store, KEYS).await;
    exercise(&data_dir, &[], store, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_change_one_at_a_time_on_two_postgres_instances() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let env = [("CLAUDE_RELAY_DATABASE_URL", url.as_str())];
    cli_env(&data_dir, &env, &["key", "list"]);
    let store = Store::connect(&url).await.unwrap();
    relay_store::testing::insert_filler_keys(&store, KEYS).await;
    exercise(&data_dir, &env, store, 2).await;
}

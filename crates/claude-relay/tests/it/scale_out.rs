//! Several instances of the real binary on one PostgreSQL database (skipped with a message where
//! PostgreSQL does not run, mandatory in CI).

use std::time::Duration;

use relay_testkit::{Behavior, MockUpstream};
use serde_json::json;

use crate::support::{
    add_account_env, cli_env, cli_env_fails, message_status, until_known, usage_when_env,
    RunningRelay,
};

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

const PAIR_ADMIN_PASSWORD: &str = "pair-admin-password";

/// Two instances on one PostgreSQL database and one Redis (under a prefix of this test's own).
struct SharedPair {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    relays: Vec<RunningRelay>,
}

impl SharedPair {
    async fn start() -> Option<Self> {
        relay_coord::testing::redis().await?;
        Self::start_on(&relay_coord::testing::redis_url(), &[&[], &[]]).await
    }

    /// One instance per entry of `extra_env`, with those variables set as well.
    async fn start_on(redis_url: &str, extra_env: &[&[(&str, &str)]]) -> Option<Self> {
        let url = relay_store::testing::postgres_url().await?;
        Some(Self::start_with(url, redis_url, extra_env))
    }

    /// [`SharedPair::start_on`] a database of the caller's (`url` is what the CLI uses; an
    /// instance's `extra_env` may point it elsewhere).
    fn start_with(url: String, redis_url: &str, extra_env: &[&[(&str, &str)]]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let env = vec![
            ("CLAUDE_RELAY_DATABASE_URL".to_owned(), url),
            ("CLAUDE_RELAY_REDIS_URL".to_owned(), redis_url.to_owned()),
            (
                "CLAUDE_RELAY_REDIS_PREFIX".to_owned(),
                relay_coord::testing::unique_prefix(),
            ),
        ];
        let mut pair = Self {
            _dir: dir,
            data_dir,
            env,
            relays: Vec::new(),
        };
        for (index, extra) in extra_env.iter().enumerate() {
            let mut env = pair.env_pairs();
            env.extend_from_slice(extra);
            // The first creates the admin before the next one starts.
            let password = (index == 0).then_some(PAIR_ADMIN_PASSWORD);
            let relay = RunningRelay::start_with_env(&pair.data_dir, password, &env);
            pair.relays.push(relay);
        }
        pair
    }

    fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_env(&self.data_dir, &self.env_pairs(), args)
    }

    /// An account at `mock` with `upstream_key`, and a key `name` with these policy flags, once
    /// every instance knows it; the key.
    async fn account_and_key(
        &self,
        mock: &MockUpstream,
        upstream_key: &str,
        name: &str,
        policy: &[&str],
    ) -> String {
        self.accounts_and_key(mock, &[("main", upstream_key, 1)], name, policy)
            .await
    }

    /// Accounts at `mock` (`(name, upstream key, priority)`), then a key `name` with these
    /// policy flags, once every instance knows it (and so the accounts); the key.
    async fn accounts_and_key(
        &self,
        mock: &MockUpstream,
        accounts: &[(&str, &str, i64)],
        name: &str,
        policy: &[&str],
    ) -> String {
        for (account, upstream_key, priority) in accounts {
            add_account_env(
                &self.data_dir,
                &self.env_pairs(),
                account,
                upstream_key,
                &mock.url(),
                *priority,
            );
        }
        let mut args = vec!["key", "create", "--name", name];
        args.extend_from_slice(policy);
        let key = self.cli(&args).trim().to_owned();
        until_known(&self.relays.iter().collect::<Vec<_>>(), &key).await;
        key
    }
}

/// The account named `name` as `relay`'s admin API lists it (with its live state), if listed.
async fn admin_account(relay: &RunningRelay, token: &str, name: &str) -> Option<serde_json::Value> {
    let accounts =
        crate::support::get_json(&format!("{}/admin/v1/accounts", relay.url), Some(token)).await;
    accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["name"] == name)
        .cloned()
}

/// A message of conversation `conversation` through `relay`; the upstream key that served it
/// (the request is read to its end).
async fn served_by(
    relay: &RunningRelay,
    key: &str,
    conversation: &str,
    mock: &MockUpstream,
) -> String {
    let before = mock.requests().len();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.url))
        .header("x-api-key", key)
        .json(&json!({
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": conversation}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let requests = mock.requests();
    requests[before..]
        .iter()
        .rfind(|request| request.path == "/v1/messages")
        .map(|request| request.api_key.clone())
        .unwrap()
}

/// What `key`'s own report on `relay` says it spent (nano-USD).
async fn spent(relay: &RunningRelay, key: &str) -> i64 {
    let url = format!("{}/v1/usage", relay.url);
    let report: serde_json::Value = reqwest::Client::new()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["total_cost"]["used_exact"].as_i64().unwrap()
}

const RACE_BODY: &str =
    r#"{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"race"}]}"#;

/// Sends `count` requests at once, alternating between the instances; their statuses.
async fn burst(relays: &[&RunningRelay], key: &str, count: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let requests = (0..count).map(|n| {
        let request = client
            .post(format!("{}/v1/messages", relays[n % relays.len()].url))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(RACE_BODY);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            if ![200, 402, 429].contains(&status) {
                eprintln!("{status}: {}", response.text().await.unwrap());
            }
            status
        }
    });
    futures_util::future::join_all(requests).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_every_key_limit() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    add_account_env(
        &pair.data_dir,
        &pair.env_pairs(),
        "main",
        "sk-ant-race",
        &mock.url(),
        1,
    );
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    assert!(relays[0].stderr().contains("shared through Redis"));
    // Every request stays in flight long enough for all of the burst to be admitted or refused
    // while the first ones still hold their reservations.
    mock.script(
        "sk-ant-race",
        std::iter::repeat_n(Behavior::SlowFirstByte(Duration::from_millis(800)), 2_000),
    );
    let estimate =
        relay_core::relay::estimate("claude-haiku-4-5", RACE_BODY.len(), Some(16), 1, None);
    // Room for ten reservations and a half.
    let budget_usd = (estimate.cost_nano_usd as f64 * 10.5) / 1e9;
    for round in 0..20 {
        let name = format!("race-{round}");
        let key = pair
            .cli(&[
                "key",
                "create",
                "--name",
                &name,
                "--total-cost-usd",
                &format!("{budget_usd:.9}"),
            ])
            .trim()
            .to_owned();
        until_known(&relays, &key).await;
        let statuses = burst(&relays, &key, 50).await;
        let admitted = statuses.iter().filter(|status| **status == 200).count();
        assert_eq!(admitted, 10, "round {round}: {statuses:?}");
        assert!(
            statuses.iter().all(|status| [200, 402].contains(status)),
            "{statuses:?}"
        );
    }

    let key = pair
        .cli(&[
            "key",
            "create",
            "--name",
            "two-at-a-time",
            "--concurrency",
            "2",
        ])
        .trim()
        .to_owned();
    until_known(&relays, &key).await;
    let statuses = burst(&relays, &key, 10).await;
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        2,
        "two in flight across both instances: {statuses:?}"
    );
    // Released: the next burst gets its two again.
    let statuses = burst(&relays, &key, 4).await;
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        2,
        "{statuses:?}"
    );

    // A key's own report shows what it spent on every instance.
    mock.script("sk-ant-race", []);
    let key = pair
        .cli(&[
            "key",
            "create",
            "--name",
            "reported",
            "--total-cost-usd",
            "100",
        ])
        .trim()
        .to_owned();
    until_known(&relays, &key).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(message_status(&client, relays[0], &key).await, 200);
    }
    for attempt in 0.. {
        let (on_a, on_b) = (spent(relays[0], &key).await, spent(relays[1], &key).await);
        if on_a > 0 && on_a == on_b {
            break;
        }
        assert!(attempt < 100, "B reports {on_b}, A {on_a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gauge of `relay`'s `/metrics`.
async fn gauge(relay: &RunningRelay, name: &str) -> f64 {
    let metrics = reqwest::get(format!("{}/metrics", relay.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_admitted_from_allotments_on_both_instances_and_its_spend_is_exact() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .account_and_key(&mock, "sk-ant-busy", "busy", &["--total-cost-usd", "1000"])
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    let client = reqwest::Client::new();
    // What one request costs, on a key of its own.
    let one = pair
        .cli(&["key", "create", "--name", "one"])
        .trim()
        .to_owned();
    until_known(&relays, &one).await;
    assert_eq!(message_status(&client, relays[0], &one).await, 200);
    let mut cost = 0;
    for _ in 0..100 {
        cost = spent(relays[0], &one).await;
        if cost > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cost > 0);

    // Sixteen clients on each instance, back to back.
    const CLIENTS: usize = 32;
    const EACH: usize = 40;
    let statuses = futures_util::future::join_all((0..CLIENTS).map(|client_index| {
        let (client, key, relay) = (client.clone(), key.clone(), relays[client_index % 2]);
        async move {
            let mut statuses = Vec::with_capacity(EACH);
            for _ in 0..EACH {
                statuses.push(message_status(&client, relay, &key).await);
            }
            statuses
        }
    }))
    .await;
    assert!(statuses.iter().flatten().all(|status| *status == 200));
    for relay in &relays {
        let allotted = gauge(relay, "claude_relay_redis_allotted_admissions").await;
        assert!(
            allotted > 0.0,
            "each instance admitted some requests from its allotment"
        );
    }
    // Every request settled once in the shared ledger, whichever way it was admitted: both
    // instances report the spend of all of them.
    let want = cost * (CLIENTS * EACH) as i64;
    for attempt in 0.. {
        let (on_a, on_b) = (spent(relays[0], &key).await, spent(relays[1], &key).await);
        if on_a == want && on_b == want {
            break;
        }
        assert!(
            attempt < 100,
            "A reports {on_a}, B {on_b}, the requests cost {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_gives_its_reservations_back_within_the_lease_ttl() {
    let Some(mut pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .account_and_key(&mock, "sk-ant-kill", "held", &["--concurrency", "2"])
        .await;
    // Two requests completed on the instance about to die, then two that hang there.
    let client = reqwest::Client::new();
    let mut answered = 0;
    for _ in 0..2 {
        // Read to the end: the request is complete (and its slot given back) only then.
        let response = client
            .post(format!("{}/v1/messages", pair.relays[0].url))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(RACE_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
        answered += 1;
    }
    // Their leases are finished off the request path, promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.script(
        "sk-ant-kill",
        [
            Behavior::SlowFirstByte(Duration::from_secs(300)),
            Behavior::SlowFirstByte(Duration::from_secs(300)),
        ],
    );
    let doomed = pair.relays[0].url.clone();
    for _ in 0..2 {
        let request = client
            .post(format!("{doomed}/v1/messages"))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(RACE_BODY)
            .send();
        #[allow(clippy::disallowed_methods)] // cut short by the kill below
        tokio::spawn(request);
    }
    for attempt in 0.. {
        if mock.requests().len() == 4 {
            break;
        }
        assert!(
            attempt < 500,
            "the two hanging requests never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The records of the completed requests are written off the request path, promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.relays[0].kill();
    let killed_at = std::time::Instant::now();
    let survivor = pair.relays.pop().unwrap();
    assert_eq!(
        message_status(&client, &survivor, &key).await,
        429,
        "the dead instance's two slots are still held"
    );
    loop {
        let status = message_status(&client, &survivor, &key).await;
        if status == 200 {
            break;
        }
        assert!(
            killed_at.elapsed() < relay_coord::LEASE_TTL + Duration::from_secs(5),
            "the slots came back within the lease TTL ({status})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    answered += 1;
    eprintln!("slots back {:?} after the kill", killed_at.elapsed());
    let usage = usage_when_env(&pair.data_dir, &pair.env_pairs(), Some("held"), answered).await;
    assert!(usage["requests"].as_i64().unwrap() >= answered, "{usage}");
}

/// A Redis server of this test's own, on a free loopback port, keeping nothing on disk.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_restarts_limits_are_refused_or_counted_locally_and_then_shared_again() {
    // The shared Redis must answer for this test to matter (it starts its own, but skips with
    // the others where services are absent).
    if relay_coord::testing::redis().await.is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port);
    let refuse: &[(&str, &str)] = &[];
    let local: &[(&str, &str)] = &[("CLAUDE_RELAY_REDIS_UNAVAILABLE", "local")];
    let Some(pair) = SharedPair::start_on(&redis.url(), &[refuse, local]).await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .account_and_key(&mock, "sk-ant-r", "k", &["--concurrency", "4"])
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    let client = reqwest::Client::new();
    let mut answered = 0;
    for relay in &relays {
        assert_eq!(message_status(&client, relay, &key).await, 200);
        answered += 1;
    }

    let probe = |relay: &RunningRelay, route: &str| {
        let request = client.get(format!("{}{route}", relay.url)).send();
        async move {
            let response = request.await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, health) = probe(relays[0], "/health").await;
    assert_eq!(
        (status, &health["redis"], &health["store_backend"]),
        (200, &json!("ok"), &json!("postgres")),
        "{health}"
    );

    drop(redis);
    let (status, health) = probe(relays[0], "/health").await;
    assert_eq!(
        (status, &health["redis"]),
        (503, &json!("unreachable")),
        "{health}"
    );
    assert_eq!(
        probe(relays[0], "/ready").await.0,
        503,
        "refusing: not ready"
    );
    assert_eq!(
        probe(relays[1], "/ready").await.0,
        200,
        "counting locally: ready"
    );
    let status = message_status(&client, relays[0], &key).await;
    assert_eq!(status, 503, "without Redis, the default refuses");
    assert_eq!(
        message_status(&client, relays[1], &key).await,
        200,
        "`local` counts in the instance and serves"
    );
    answered += 1;

    // Back, empty: the ledgers are seeded again from the usage records.
    let _redis = OwnRedis::start(port);
    let started = std::time::Instant::now();
    loop {
        let status = message_status(&client, relays[0], &key).await;
        if status == 200 {
            answered += 1;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relays[0].stderr().contains("do not answer"));
    assert_eq!(probe(relays[0], "/ready").await.0, 200);
    let usage = usage_when_env(&pair.data_dir, &pair.env_pairs(), Some("k"), answered).await;
    assert_eq!(usage["requests"], answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_cooled_on_one_instance_is_skipped_by_the_other() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .accounts_and_key(
            &mock,
            &[("first", "sk-ant-first", 1), ("second", "sk-ant-second", 2)],
            "cool",
            &[],
        )
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    mock.script(
        "sk-ant-first",
        [Behavior::status_with_headers(
            429,
            &[("retry-after", "120")],
        )],
    );
    assert_eq!(
        served_by(relays[0], &key, "hello", &mock).await,
        "sk-ant-second",
        "the first account answered 429 on A; A failed over"
    );
    // B shows the first account cooling, with A's evidence, without a request of its own.
    let token = crate::support::admin_login(relays[1], PAIR_ADMIN_PASSWORD).await;
    for attempt in 0.. {
        let first = admin_account(relays[1], &token, "first").await.unwrap();
        if first["live"]["state"] == "cooling" {
            let until = first["live"]["cooling_until_ms"].as_i64().unwrap();
            let now = relay_core::clock::now_ms();
            assert!((100_000..=121_000).contains(&(until - now)), "{first}");
            assert!(
                first["live"]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("rate_limited"),
                "{first}"
            );
            break;
        }
        assert!(attempt < 100, "B never learnt of the cooldown: {first}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 0..5 {
        assert_eq!(
            served_by(relays[1], &key, &format!("on B {n}"), &mock).await,
            "sk-ant-second"
        );
    }
    assert_eq!(
        mock.count_for("sk-ant-first"),
        1,
        "B never sent to the account A saw cooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_sticks_to_its_account_on_every_instance() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .accounts_and_key(
            &mock,
            &[("left", "sk-ant-left", 1), ("right", "sk-ant-right", 1)],
            "sticky",
            &[],
        )
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    // B's rotation is one step ahead of A's: left to itself, B would pick the other account.
    served_by(relays[1], &key, "warming B up", &mock).await;
    let mut first_accounts = Vec::new();
    for conversation in 0..6 {
        let text = format!("conversation {conversation}");
        let account = served_by(relays[0], &key, &text, &mock).await;
        // The binding is written off the request path.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for turn in 0..4 {
            assert_eq!(
                served_by(relays[(turn + 1) % 2], &key, &text, &mock).await,
                account,
                "conversation {conversation}, turn {turn}"
            );
        }
        first_accounts.push(account);
    }
    assert!(
        first_accounts.contains(&"sk-ant-left".to_owned())
            && first_accounts.contains(&"sk-ant-right".to_owned()),
        "new conversations are spread over both accounts: {first_accounts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_concurrency_limit_counts_requests_on_both_instances() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let env = pair.env_pairs();
    add_account_env(&pair.data_dir, &env, "solo", "sk-ant-solo", &mock.url(), 1);
    pair.cli(&["account", "edit", "solo", "--account-concurrency", "1"]);
    let key = pair
        .cli(&["key", "create", "--name", "many"])
        .trim()
        .to_owned();
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    until_known(&relays, &key).await;
    mock.script(
        "sk-ant-solo",
        std::iter::repeat_n(Behavior::SlowFirstByte(Duration::from_millis(800)), 100),
    );
    for round in 0..3 {
        let statuses = burst(&relays, &key, 6).await;
        assert_eq!(
            statuses.iter().filter(|status| **status == 200).count(),
            1,
            "round {round}: one request at a time on the account, across both: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|status| [200, 503].contains(status)),
            "{statuses:?}"
        );
        // The place is given back off the request path.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_on_two_instances_refresh_an_expiring_token_once() {
    let mock = MockUpstream::start().await;
    let token_url = mock.token_url();
    let oauth_env = [("CLAUDE_RELAY_OAUTH_TOKEN_URL", token_url.as_str())];
    let Some(pair) = (match relay_coord::testing::redis().await {
        Some(_) => {
            SharedPair::start_on(
                &relay_coord::testing::redis_url(),
                &[&oauth_env, &oauth_env],
            )
            .await
        }
        None => None,
    }) else {
        return;
    };
    let mut env = pair.env_pairs();
    env.extend_from_slice(&oauth_env);
    // Signed in with tokens that expire within the refresh margin; a slow token endpoint.
    mock.set_token_behavior(60, Duration::from_millis(200));
    let authorize = cli_env(
        &pair.data_dir,
        &env,
        &["account", "oauth-start", "--name", "max"],
    );
    let state = crate::support::authorize_state(&authorize);
    let code = format!("mock-code#{state}");
    let base_url = mock.url();
    cli_env(
        &pair.data_dir,
        &env,
        &[
            "account",
            "oauth-finish",
            "--name",
            "max",
            "--code",
            &code,
            "--base-url",
            &base_url,
        ],
    );
    mock.set_token_behavior(3600, Duration::from_millis(200));
    let key = pair
        .cli(&["key", "create", "--name", "burst"])
        .trim()
        .to_owned();
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    until_known(&relays, &key).await;
    let statuses = burst(&relays, &key, 50).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(
        mock.refresh_count(),
        1,
        "a rotating refresh token is used once, whichever instance refreshes"
    );
    let used: Vec<String> = mock
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .map(|request| request.api_key.clone())
        .collect();
    assert_eq!(used.len(), 50);
    assert!(
        used.iter().all(|token| *token == used[0]) && used[0] != "mock-access-1",
        "every request of both instances used the one refreshed token: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_another_instance_cooled_before_this_one_knew_it_arrives_cooling() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    if relay_coord::testing::redis().await.is_none() {
        return;
    }
    // B reaches the database through a forwarder, so it can be kept from seeing a new account
    // while A serves it.
    let database = Cuttable::to_postgres(&url).await;
    let proxied = database.url(&url);
    let through: &[(&str, &str)] = &[("CLAUDE_RELAY_DATABASE_URL", proxied.as_str())];
    let pair = SharedPair::start_with(
        url.clone(),
        &relay_coord::testing::redis_url(),
        &[&[], through],
    );
    let mock = MockUpstream::start().await;
    let key = pair
        .accounts_and_key(&mock, &[("backup", "sk-ant-backup", 5)], "late", &[])
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();

    database.cut();
    mock.script(
        "sk-ant-fresh",
        [Behavior::status_with_headers(
            429,
            &[("retry-after", "120")],
        )],
    );
    add_account_env(
        &pair.data_dir,
        &pair.env_pairs(),
        "fresh",
        "sk-ant-fresh",
        &mock.url(),
        1,
    );
    // A learns of the new account, tries it first, is told 429 and shares the cooldown; B,
    // without its database, does not know the account yet and passes the notice by.
    for attempt in 0.. {
        assert_eq!(
            served_by(relays[0], &key, &format!("on A {attempt}"), &mock).await,
            "sk-ant-backup"
        );
        if mock.count_for("sk-ant-fresh") == 1 {
            break;
        }
        assert!(attempt < 100, "A never used the new account");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    database.restore();
    for attempt in 0.. {
        let ready = reqwest::get(format!("{}/ready", relays[1].url))
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(attempt < 200, "B never got its database back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = crate::support::admin_login(relays[1], PAIR_ADMIN_PASSWORD).await;
    for attempt in 0.. {
        let fresh = admin_account(relays[1], &token, "fresh").await;
        if fresh
            .as_ref()
            .is_some_and(|fresh| fresh["live"]["state"] == "cooling")
        {
            break;
        }
        assert!(
            attempt < 200,
            "B took the account without A's cooldown: {fresh:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..3 {
        assert_eq!(
            served_by(relays[1], &key, &format!("on B {n}"), &mock).await,
            "sk-ant-backup"
        );
    }
    assert_eq!(
        mock.count_for("sk-ant-fresh"),
        1,
        "B never sent to the cooled account"
    );
}

/// A TCP forwarder to PostgreSQL that can be cut (every connection dropped, new ones refused)
/// and restored: the database "unreachable" without touching the server other tests use.
struct Cuttable {
    address: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (open, connections) = (open.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let forward = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(forward.abort_handle());
                }
            }
        });
        Self {
            address,
            open,
            connections,
            accept,
        }
    }

    /// A forwarder to the PostgreSQL server of `url`.
    async fn to_postgres(url: &str) -> Self {
        let parsed = reqwest::Url::parse(url).unwrap();
        let host = parsed.host_str().unwrap().to_owned();
        let server = tokio::net::lookup_host((host, parsed.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap();
        Self::start(server).await
    }

    /// `url` (a PostgreSQL URL) through this forwarder.
    fn url(&self, url: &str) -> String {
        let mut url = reqwest::Url::parse(url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.address.port())).unwrap();
        url.to_string()
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_served_through_by_both_instances_and_loses_no_usage() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    if relay_coord::testing::redis().await.is_none() {
        return;
    }
    let database = Cuttable::to_postgres(&url).await;
    let mock = MockUpstream::start().await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("relay.toml");
    std::fs::write(&config, "[limits]\nusage_queue_limit = 30\n").unwrap();
    let proxied = database.url(&url);
    let config_path = config.display().to_string();
    // The instances reach the database through the forwarder; the CLI directly, all along.
    let through: &[(&str, &str)] = &[
        ("CLAUDE_RELAY_DATABASE_URL", proxied.as_str()),
        ("CLAUDE_RELAY_CONFIG", config_path.as_str()),
    ];
    let pair = SharedPair::start_with(
        url.clone(),
        &relay_coord::testing::redis_url(),
        &[through, through],
    );
    let key = pair
        .account_and_key(
            &mock,
            "sk-ant-outage",
            "steady",
            &["--total-cost-usd", "100"],
        )
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    let client = reqwest::Client::new();
    for n in 0..6 {
        assert_eq!(message_status(&client, relays[n % 2], &key).await, 200);
    }
    usage_when_env(&pair.data_dir, &pair.env_pairs(), Some("steady"), 6).await;

    database.cut();
    let cut_at = std::time::Instant::now();
    // Each instance serves from memory while its records wait, up to its queue's bound.
    for relay in &relays {
        let mut served = 0;
        let refusal = loop {
            let response = client
                .post(format!("{}/v1/messages", relay.url))
                .header("x-api-key", &key)
                .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 10,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            if response.status() != 200 {
                break response;
            }
            response.text().await.unwrap();
            served += 1;
            assert!(served <= 30, "the queue's bound holds");
        };
        assert_eq!(served, 30, "served until the queue held its bound");
        assert_eq!(refusal.status(), 503);
        assert!(refusal.headers().contains_key("retry-after"));
        let body: serde_json::Value = refusal.json().await.unwrap();
        assert_eq!(body["type"], "error", "in the client's dialect: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot record usage"),
            "{body}"
        );
        let ready = client
            .get(format!("{}/ready", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            503,
            "a full queue makes the instance unready"
        );
        let health = crate::support::get_json(&format!("{}/health", relay.url), None).await;
        assert_eq!(health["store"], "unreachable");
        assert_eq!(health["redis"], "ok");
        assert_eq!(health["usage_queue_depth"], 30);
    }
    // A key created meanwhile (the CLI reaches the database) waits for the instances to see it.
    let later = pair
        .cli(&["key", "create", "--name", "later"])
        .trim()
        .to_owned();
    // Longer than the writer's whole series of retries: nothing may be given up.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut_at.elapsed())).await;
    for relay in &relays {
        let metrics = client
            .get(format!("{}/metrics", relay.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let gauge = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&format!("claude_relay_{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {metrics}"))
                .parse()
                .unwrap()
        };
        assert!(gauge("store_errors") > 0.0);
        assert_eq!(gauge("usage_queue_depth"), 30.0);
        assert_eq!(gauge("usage_records_lost"), 0.0);
    }

    database.restore();
    let usage = usage_when_env(&pair.data_dir, &pair.env_pairs(), Some("steady"), 66).await;
    assert_eq!(usage["requests"], 66, "every served request recorded once");
    until_known(&relays, &later).await;
    for relay in &relays {
        assert_eq!(message_status(&client, relay, &key).await, 200);
    }
    for relay in pair.relays {
        let (exit, log) = relay.stop();
        assert!(exit.success(), "{log}");
        assert!(!log.contains("records lost"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_from_one_address_are_counted_on_every_instance() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .account_and_key(&mock, "sk-ant-guess", "owner", &[])
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    let client = reqwest::Client::new();
    // Alternating between the instances, the address is blocked after the limit's number of
    // guesses in all (a few may have come from waiting for the key to be known): half of it on
    // each, which neither would block on its own.
    let mut guesses = 0;
    loop {
        let relay = relays[guesses as usize % 2];
        let status = message_status(&client, relay, &format!("cr_guess{guesses}")).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401, "guess {guesses}");
        guesses += 1;
        assert!(
            guesses <= relay_core::throttle::MAX_FAILURES,
            "still not blocked after {guesses} guesses, half of them on each instance"
        );
        // The failures are counted off the request path.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failures are sent off the request path; the block comes back on a channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for relay in &relays {
        assert_eq!(
            message_status(&client, relay, "cr_one-more-guess").await,
            429,
            "{} refuses the address the two together blocked",
            relay.url
        );
        assert_eq!(
            message_status(&client, relay, &key).await,
            200,
            "a valid key still gets through"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_daily_cost_on_one_instance_is_skipped_by_the_other() {
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let env = pair.env_pairs();
    add_account_env(
        &pair.data_dir,
        &env,
        "capped",
        "sk-ant-capped",
        &mock.url(),
        1,
    );
    add_account_env(
        &pair.data_dir,
        &env,
        "spare",
        "sk-ant-spare",
        &mock.url(),
        2,
    );
    // Less than one request costs.
    pair.cli(&[
        "account",
        "edit",
        "capped",
        "--account-daily-cost-usd",
        "0.000001",
    ]);
    let key = pair
        .cli(&["key", "create", "--name", "daily"])
        .trim()
        .to_owned();
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    until_known(&relays, &key).await;
    assert_eq!(
        served_by(relays[0], &key, "first", &mock).await,
        "sk-ant-capped"
    );
    // The cost is added off the request path; crossing the limit is announced.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..4 {
        assert_eq!(
            served_by(relays[n % 2], &key, &format!("then {n}"), &mock).await,
            "sk-ant-spare",
            "the capped account is out for the day on both"
        );
    }
    assert_eq!(mock.count_for("sk-ant-capped"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_rotation_refuses_while_a_server_on_any_machine_uses_the_database() {
    let Some(url) = relay_store::testing::postgres_url().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Two machines: two data directories, one database, one master key.
    let (here, elsewhere) = (dir.path().join("here"), dir.path().join("elsewhere"));
    let old_key = "5a".repeat(32);
    let env = [
        ("CLAUDE_RELAY_DATABASE_URL", url.as_str()),
        ("CLAUDE_RELAY_MASTER_KEY", old_key.as_str()),
    ];
    let relay = RunningRelay::start_with_env(&here, None, &env);
    add_account_env(&elsewhere, &env, "main", "sk-ant-rotated", &mock.url(), 1);
    let refused = cli_env_fails(&elsewhere, &env, &["admin", "rotate-master-key"]);
    assert!(
        refused.contains("running claude-relay servers"),
        "{refused}"
    );
    let (exit, _) = relay.stop();
    assert!(exit.success());

    let new_key = cli_env(&elsewhere, &env, &["admin", "rotate-master-key"])
        .trim()
        .to_owned();
    assert_eq!(new_key.len(), 64, "{new_key}");
    let env = [
        ("CLAUDE_RELAY_DATABASE_URL", url.as_str()),
        ("CLAUDE_RELAY_MASTER_KEY", new_key.as_str()),
    ];
    let relay = RunningRelay::start_with_env(&here, None, &env);
    let key = cli_env(&elsewhere, &env, &["key", "create", "--name", "after"])
        .trim()
        .to_owned();
    until_known(&[&relay], &key).await;
    assert_eq!(
        message_status(&reqwest::Client::new(), &relay, &key).await,
        200,
        "the account's secret opens under the new key"
    );
    assert_eq!(mock.count_for("sk-ant-rotated"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_works_through_either_instance_and_one_budget_counts_both() {
    let Some(claude_binary) = crate::support::client("npm/node_modules/.bin/claude") else {
        return;
    };
    let Some(pair) = SharedPair::start().await else {
        return;
    };
    let mock = MockUpstream::start().await;
    let key = pair
        .account_and_key(
            &mock,
            "sk-ant-cc",
            "claude-code",
            &["--total-cost-usd", "5"],
        )
        .await;
    let relays: Vec<&RunningRelay> = pair.relays.iter().collect();
    let home = pair._dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let model = "claude-sonnet-4-5-20250929";
    // A plain prompt through A, a tool round trip (two turns) through B.
    let plain = crate::clients::claude(
        &claude_binary,
        &home,
        &relays[0].url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "Say hello",
            "--output-format",
            "json",
            "--model",
            model,
        ],
    )
    .await;
    let plain = crate::clients::parse_result(&plain);
    assert_eq!(plain["is_error"], false, "{plain}");
    assert_eq!(plain["result"], format!("MOCK_OK from {model}."));
    let tool = crate::clients::claude(
        &claude_binary,
        &home,
        &relays[1].url,
        ("ANTHROPIC_AUTH_TOKEN", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-s9y",
            "--output-format",
            "json",
            "--model",
            model,
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let tool = crate::clients::parse_result(&tool);
    assert_eq!(tool["is_error"], false, "{tool}");
    assert_eq!(tool["result"], "TOOL_DONE: TOOLRESULT-s9y");
    // One table of records for both instances, equal to what Claude Code was told.
    let usage = usage_when_env(&pair.data_dir, &pair.env_pairs(), Some("claude-code"), 3).await;
    assert_eq!(usage["requests"], 3);
    for name in ["input_tokens", "output_tokens"] {
        assert_eq!(
            crate::clients::field(&usage, name),
            crate::clients::field(&plain["usage"], name)
                + crate::clients::field(&tool["usage"], name),
            "{name}"
        );
    }
    // And one budget: either instance reports the spend of all three requests.
    let recorded = usage["cost_usd_exact"].as_str().unwrap().to_owned();
    for relay in &relays {
        for attempt in 0.. {
            let used = spent(relay, &key).await;
            if relay_core::pricing::format_usd(used) == recorded {
                break;
            }
            assert!(attempt < 50, "{}: {used} against {recorded}", relay.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

//! Running the `claude-relay` binary: CLI calls and a server process whose stderr is kept.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub const BINARY: &str = env!("CARGO_BIN_EXE_claude-relay");

/// The mocks listen on loopback: every test allows it explicitly, as an operator would.
pub const EGRESS_ALLOWLIST: &str = "127.0.0.0/8,::1";

/// `claude-relay` with the tests' egress allowlist.
pub fn relay_command() -> Command {
    let mut command = Command::new(BINARY);
    command.env("CLAUDE_RELAY_EGRESS_ALLOWLIST", EGRESS_ALLOWLIST);
    command
}

/// Runs a CLI command against `data_dir`; returns stdout, panicking with stderr on failure.
pub fn cli(data_dir: &Path, args: &[&str]) -> String {
    cli_env(data_dir, &[], args)
}

/// [`cli`] with these environment variables set.
pub fn cli_env(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = run_cli(data_dir, env, args);
    assert!(
        output.status.success(),
        "claude-relay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a CLI command that must fail; returns its stderr.
pub fn cli_fails(data_dir: &Path, args: &[&str]) -> String {
    cli_env_fails(data_dir, &[], args)
}

/// [`cli_fails`] with these environment variables set.
pub fn cli_env_fails(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = run_cli(data_dir, env, args);
    assert!(
        !output.status.success(),
        "claude-relay {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

fn run_cli(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    relay_command()
        .args(args)
        .env("CLAUDE_RELAY_DATA_DIR", data_dir)
        .env_remove("CLAUDE_RELAY_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

pub fn cli_json(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cli(data_dir, args)).unwrap()
}

/// Signs in to the admin API; the bearer token.
pub async fn admin_login(relay: &RunningRelay, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/admin/v1/login", relay.url))
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// A running `claude-relay serve`; killed on drop if still running.
pub struct RunningRelay {
    pub url: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl RunningRelay {
    pub fn start(data_dir: &Path, admin_password: Option<&str>) -> Self {
        Self::start_with_env(data_dir, admin_password, &[])
    }

    /// [`RunningRelay::start`] with these environment variables set.
    pub fn start_with_env(
        data_dir: &Path,
        admin_password: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = relay_command();
        command.arg("serve");
        Self::spawn(command, data_dir, admin_password, env)
    }

    /// `serve` with no egress allowlist: loopback upstreams are refused at connect time.
    pub fn start_without_egress_allowlist(data_dir: &Path) -> Self {
        let mut command = relay_command();
        command
            .arg("serve")
            .env_remove("CLAUDE_RELAY_EGRESS_ALLOWLIST");
        Self::spawn(command, data_dir, None, &[])
    }

    /// `serve` under a limit on open files (soft and hard), as `ulimit -n` sets it.
    pub fn start_with_fd_limit(data_dir: &Path, open_files: u32) -> Self {
        Self::start_under_ulimit(data_dir, &format!("-n {open_files}"))
    }

    /// `serve` after `ulimit {flags}` (e.g. `-Sn 256`: only the soft limit).
    pub fn start_under_ulimit(data_dir: &Path, flags: &str) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit {flags} && exec \"$0\" serve"))
            .arg(BINARY)
            .env("CLAUDE_RELAY_EGRESS_ALLOWLIST", EGRESS_ALLOWLIST);
        Self::spawn(command, data_dir, None, &[])
    }

    /// The process's limit on open files: `(soft, hard)`.
    pub fn open_files_limit(&self) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap();
        let mut values = line.trim_start_matches("Max open files").split_whitespace();
        (
            values.next().unwrap().to_owned(),
            values.next().unwrap().to_owned(),
        )
    }

    fn spawn(
        mut command: Command,
        data_dir: &Path,
        admin_password: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        command
            .env("CLAUDE_RELAY_DATA_DIR", data_dir)
            .env("CLAUDE_RELAY_LISTEN", "127.0.0.1:0")
            .env("CLAUDE_RELAY_LOG", "debug")
            .env_remove("CLAUDE_RELAY_CONFIG")
            .env_remove("CLAUDE_RELAY_ADMIN_PASSWORD")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(password) = admin_password {
            command.env("CLAUDE_RELAY_ADMIN_PASSWORD", password);
        }
        let mut child = command.spawn().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (url_sender, url_receiver) = mpsc::channel();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("claude-relay listening on ") {
                    let _ = url_sender.send(url.to_owned());
                }
                let mut collected = collected.lock().unwrap();
                collected.push_str(&line);
                collected.push('\n');
            }
        });
        let url = url_receiver
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("relay did not start: {}", stderr.lock().unwrap()));
        Self { url, child, stderr }
    }

    /// Ends the process at once (SIGKILL): nothing is flushed, nothing is released.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The resident memory of the process, from `/proc`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for a clean exit, and returns the whole log with the status.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        let stderr = self.stderr.clone();
        let status = self.terminate();
        // The reader thread sees the end of the pipe right after the exit.
        std::thread::sleep(Duration::from_millis(200));
        let log = stderr.lock().unwrap().clone();
        (status, log)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay did not exit within 10 s of SIGTERM");
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status of a small message sent through `relay` with `key`.
pub async fn message_status(client: &reqwest::Client, relay: &RunningRelay, key: &str) -> u16 {
    client
        .post(format!("{}/v1/messages", relay.url))
        .header("x-api-key", key)
        .json(
            &serde_json::json!({"model": "claude-haiku-4-5", "max_tokens": 10,
                                  "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `usage --json` until it reports at least `requests` requests.
pub async fn usage_when(data_dir: &Path, key: Option<&str>, requests: i64) -> serde_json::Value {
    usage_when_env(data_dir, &[], key, requests).await
}

/// [`usage_when`] with these environment variables set.
pub async fn usage_when_env(
    data_dir: &Path,
    env: &[(&str, &str)],
    key: Option<&str>,
    requests: i64,
) -> serde_json::Value {
    let mut args = vec!["usage", "--json"];
    if let Some(key) = key {
        args.extend(["--key", key]);
    }
    for _ in 0..100 {
        let usage: serde_json::Value =
            serde_json::from_str(&cli_env(data_dir, env, &args)).unwrap();
        if usage["requests"].as_i64().unwrap_or(0) >= requests {
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("usage never reached {requests} requests");
}

/// Where the pinned clients were installed by `scripts/install-clients`.
pub fn clients_dir() -> PathBuf {
    std::env::var_os("CLAUDE_RELAY_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/claude-relay/clients")
        })
}

/// The client at `relative` under the clients folder, or `None` (after saying why) when it is not
/// installed and clients are not required. CI sets `CLAUDE_RELAY_REQUIRE_CLIENTS=1`.
pub fn client(relative: &str) -> Option<PathBuf> {
    let path = clients_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CLAUDE_RELAY_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{} is missing; run scripts/install-clients", path.display());
    }
    eprintln!(
        "skipping: {} is not installed (run scripts/install-clients)",
        path.display()
    );
    None
}

/// `account add` for an Anthropic account at `base_url`.
pub fn add_account(data_dir: &Path, name: &str, api_key: &str, base_url: &str, priority: i64) {
    add_account_env(data_dir, &[], name, api_key, base_url, priority);
}

/// [`add_account`] with these environment variables set.
pub fn add_account_env(
    data_dir: &Path,
    env: &[(&str, &str)],
    name: &str,
    api_key: &str,
    base_url: &str,
    priority: i64,
) {
    cli_env(
        data_dir,
        env,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            name,
            "--api-key",
            api_key,
            "--base-url",
            base_url,
            "--priority",
            &priority.to_string(),
        ],
    );
}

/// `key create`; returns the key, which is all the command prints on stdout.
pub fn create_key(data_dir: &Path, name: &str) -> String {
    cli(data_dir, &["key", "create", "--name", name])
        .trim()
        .to_owned()
}

/// The `state` of an authorization URL that `account oauth-start` printed.
pub fn authorize_state(url: &str) -> String {
    url.trim()
        .split('&')
        .find_map(|pair| pair.strip_prefix("state="))
        .unwrap()
        .to_owned()
}

/// Waits until every instance knows `key` (asking for the model list, which costs nothing).
pub async fn until_known(relays: &[&RunningRelay], key: &str) {
    let client = reqwest::Client::new();
    for relay in relays {
        for attempt in 0.. {
            let status = client
                .get(format!("{}/v1/models", relay.url))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                break;
            }
            assert!(
                attempt < 100,
                "{} does not know the key: {status}",
                relay.url
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `GET url` (with a bearer token, if any), read as JSON.
pub async fn get_json(url: &str, bearer: Option<&str>) -> serde_json::Value {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// A finished client's status and output, for an assertion's message.
pub fn described(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

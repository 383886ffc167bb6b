//! Claude Code's and Codex's interactive terminal UIs through the relay, driven in a private
//! tmux server: a tool-using turn and a plain turn in one session (Claude Code on an Anthropic
//! account and on an OpenAI-compatible one, Codex on a Responses account).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use relay_testkit::openai::MockOpenAi;
use relay_testkit::MockUpstream;

use crate::support::{add_account, client, create_key, usage_when, RunningRelay};

/// A tmux server of this test's own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

/// The folder `node` runs from (the clients' launchers need it on PATH).
pub(crate) fn node_bin() -> String {
    let output = Command::new("sh")
        .args(["-c", "dirname \"$(command -v node)\""])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Tmux {
    /// A tmux server on `socket` running `command` in a 160×50 session named `cc`.
    fn start(socket: &str, command: &str) -> Self {
        let tmux = Self {
            socket: socket.to_owned(),
        };
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "cc",
            "-x",
            "160",
            "-y",
            "50",
            command,
        ]);
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-t", "cc", "-S", "-300"])
                .stdout,
        )
        .into_owned()
    }

    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "cc", "-l", text]);
        std::thread::sleep(Duration::from_millis(300));
        self.run(&["send-keys", "-t", "cc", "Enter"]);
    }

    async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("'{needle}' never appeared; the screen:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Tmux {
    /// Once `ready` shows: a turn asking for a tool (`USE_TOOL:Bash NONCE-<nonce>`) until its
    /// result is answered, then "Say hello" until `hello` shows.
    async fn tool_then_plain(&self, ready: &str, nonce: &str, hello: &str) {
        let timeout = Duration::from_secs(40);
        self.wait_for(ready, timeout).await;
        self.type_line(&format!("USE_TOOL:Bash NONCE-{nonce}"));
        self.wait_for("TOOL_DONE:", timeout).await;
        self.type_line("Say hello");
        self.wait_for(hello, timeout).await;
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Marks onboarding, the folder-trust dialog and the key as already accepted, as a user who
/// set Claude Code up once would have it.
fn seed_claude_home(home: &Path, workdir: &Path, key: &str) {
    let tail: String = key
        .chars()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let config = serde_json::json!({
        "hasCompletedOnboarding": true,
        "theme": "dark",
        "bypassPermissionsModeAccepted": true,
        "customApiKeyResponses": { "approved": [tail], "rejected": [] },
        "projects": { workdir.display().to_string(): {
            "hasTrustDialogAccepted": true,
            "hasCompletedProjectOnboarding": true,
            "allowedTools": [],
        }},
    });
    std::fs::write(home.join(".claude.json"), config.to_string()).unwrap();
}

/// Whether the interactive test can run here (Claude Code and tmux installed).
fn claude_and_tmux() -> Option<std::path::PathBuf> {
    let claude_binary = client("npm/node_modules/.bin/claude")?;
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CLAUDE_RELAY_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "tmux is required for the interactive Claude Code test"
        );
        return None;
    }
    Some(claude_binary)
}

/// Runs Claude Code's terminal UI against a relay on `data_dir` (its accounts already added):
/// a tool-using turn, then a plain one answered `MOCK_OK from <reply_model>.`.
async fn interactive_session(
    claude_binary: &Path,
    dir: &Path,
    data_dir: &Path,
    key: &str,
    reply_model: &str,
) {
    let relay = RunningRelay::start(data_dir, Some("pw"));
    let home = dir.join("home");
    let workdir = dir.join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&workdir).unwrap();
    seed_claude_home(&home, &workdir, key);

    let node_bin = node_bin();
    let command = format!(
        "cd {workdir} && env -i PATH={node_bin}:/usr/bin:/bin HOME={home} TMPDIR={home} TERM=xterm-256color \
         ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY={key} DISABLE_TELEMETRY=1 \
         CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 DISABLE_ERROR_REPORTING=1 \
         CLAUDE_CODE_MAX_RETRIES=1 {claude} --model claude-sonnet-4-5-20250929 --allowedTools Bash",
        workdir = workdir.display(),
        home = home.display(),
        url = relay.url,
        claude = claude_binary.display(),
    );
    let tmux = Tmux::start(
        &format!("claude-relay-test-{}-{reply_model}", std::process::id()),
        &command,
    );

    tmux.wait_for("for shortcuts", Duration::from_secs(30))
        .await;
    tmux.type_line("USE_TOOL:Bash NONCE-i9");
    tmux.wait_for("TOOL_DONE: TOOLRESULT-i9", Duration::from_secs(30))
        .await;
    tmux.type_line("Say hello");
    tmux.wait_for(
        &format!("MOCK_OK from {reply_model}."),
        Duration::from_secs(30),
    )
    .await;
    drop(tmux);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_interactive_session_with_a_tool_completes() {
    let Some(claude_binary) = claude_and_tmux() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "main", "sk-ant-main", &mock.url(), 50);
    let key = create_key(&data_dir, "interactive");
    interactive_session(
        &claude_binary,
        dir.path(),
        &data_dir,
        &key,
        "claude-sonnet-4-5-20250929",
    )
    .await;

    // Both turns went through the relay with the account's key; every request is billed once.
    let upstream = mock.requests();
    assert!(
        upstream.len() >= 3,
        "expected a tool turn (2 requests) and a plain turn"
    );
    assert!(upstream
        .iter()
        .all(|request| request.api_key == "sk-ant-main"));
    let usage = usage_when(&data_dir, Some("interactive"), upstream.len() as i64).await;
    assert_eq!(usage["requests"], upstream.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_interactive_session_runs_on_an_openai_compatible_account() {
    let Some(claude_binary) = claude_and_tmux() else {
        return;
    };
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    crate::support::cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "openai",
            "--name",
            "deepseek",
            "--api-key",
            "sk-ds",
            "--base-url",
            &openai.base_url(),
            "--map-model",
            "claude-*=deepseek-chat",
        ],
    );
    let key = create_key(&data_dir, "interactive");
    interactive_session(&claude_binary, dir.path(), &data_dir, &key, "deepseek-chat").await;

    // Every request Claude Code made (the turns and its own side requests, such as a session
    // title) went to the OpenAI-compatible host as Chat Completions and was billed once.
    let upstream = openai.requests();
    assert!(upstream.len() >= 3, "{}", upstream.len());
    assert!(upstream.iter().all(|request| request.api_key == "sk-ds"
        && request.path == "/v1/chat/completions"
        && request.body["model"] == "deepseek-chat"));
    let usage = usage_when(&data_dir, Some("interactive"), upstream.len() as i64).await;
    assert_eq!(usage["requests"], upstream.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_interactive_session_with_a_tool_completes() {
    let Some(codex_binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CLAUDE_RELAY_REQUIRE_CLIENTS").as_deref() != Ok("1"));
        return;
    }
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    crate::support::cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "openai-responses",
            "--name",
            "codex",
            "--api-key",
            "sk-codex-tui",
            "--base-url",
            &openai.base_url(),
        ],
    );
    let key = create_key(&data_dir, "codex-tui");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    let workdir = dir.path().join("work");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    std::fs::create_dir_all(&workdir).unwrap();
    // The folder is trusted, as a user who opened it once would have it.
    let codex_home = crate::codex::codex_home(
        &home,
        &relay.url,
        &format!(
            "[projects.\"{}\"]\ntrust_level = \"trusted\"",
            workdir.display()
        ),
    );
    let node_bin = node_bin();
    let command = format!(
        "cd {workdir} && env -i PATH={node_bin}:/usr/bin:/bin HOME={home} CODEX_HOME={codex_home} \
         TMPDIR={home}/tmp TERM=xterm-256color RELAY_API_KEY={key} {codex}",
        workdir = workdir.display(),
        home = home.display(),
        codex_home = codex_home.display(),
        codex = codex_binary.display(),
    );
    let tmux = Tmux::start(
        &format!("claude-relay-test-{}-codex", std::process::id()),
        &command,
    );
    // A turn with a tool (Codex runs `exec_command` in its sandbox), then a plain one.
    tmux.tool_then_plain(
        "Ask Codex to do anything",
        "tui1",
        "MOCK_OK from gpt-5-codex.",
    )
    .await;
    drop(tmux);

    // Three requests, all to the account's `/responses`, each recorded once; the tool's
    // output went back to the model.
    let requests = openai.requests();
    let turns: Vec<_> = requests
        .iter()
        .filter(|request| request.path == "/v1/responses")
        .collect();
    assert!(turns.len() >= 3, "{} requests", turns.len());
    assert!(turns
        .iter()
        .all(|request| request.api_key == "sk-codex-tui"));
    assert!(turns.iter().any(|request| request.body["input"]
        .to_string()
        .contains("TOOLRESULT-tui1")));
    let usage = usage_when(&data_dir, Some("codex-tui"), turns.len() as i64).await;
    assert_eq!(usage["requests"], turns.len() as i64);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_interactive_session_reads_a_file_and_answers() {
    let Some(gemini_binary) = client("npm/node_modules/.bin/gemini") else {
        return;
    };
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CLAUDE_RELAY_REQUIRE_CLIENTS").as_deref() != Ok("1"));
        return;
    }
    let mock = relay_testkit::gemini::MockGemini::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    crate::support::cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "gemini",
            "--name",
            "gemini",
            "--api-key",
            "AIza-gemini-tui",
            "--base-url",
            &mock.url(),
        ],
    );
    let key = create_key(&data_dir, "gemini-tui");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    let workdir = dir.path().join("work");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(workdir.join("TOOLRESULT-gt1.txt"), "TOOLRESULT-gt1").unwrap();
    crate::gemini::gemini_settings(&home);
    let command = format!(
        "cd {workdir} && env -i PATH={node_bin}:/usr/bin:/bin HOME={home} TMPDIR={home}/tmp \
         TERM=xterm-256color GEMINI_API_KEY={key} GOOGLE_GEMINI_BASE_URL={url} {gemini} -m gemini-2.5-flash",
        workdir = workdir.display(),
        node_bin = node_bin(),
        home = home.display(),
        url = relay.url,
        gemini = gemini_binary.display(),
    );
    let tmux = Tmux::start(
        &format!("claude-relay-test-{}-gemini", std::process::id()),
        &command,
    );
    // A turn with a tool (the CLI reads the file itself), then a plain one.
    tmux.tool_then_plain("Type your message", "gt1", "MOCK_OK from gemini-2.5-flash.")
        .await;
    drop(tmux);

    let turns: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with("Content"))
        .collect();
    assert!(turns.len() >= 3, "{} requests", turns.len());
    assert!(turns.iter().all(|turn| turn.api_key == "AIza-gemini-tui"));
    assert!(turns
        .iter()
        .any(|turn| turn.body["contents"].to_string().contains("TOOLRESULT-gt1")));
    let usage = usage_when(&data_dir, Some("gemini-tui"), turns.len() as i64).await;
    assert_eq!(usage["requests"], turns.len() as i64);
    drop(relay);
}

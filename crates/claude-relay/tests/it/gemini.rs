//! Gemini CLI (pinned by `scripts/install-clients`) and the google-genai Python SDK through the
//! real binary, configured as `../shared/clients.md` §4.3 documents (`GOOGLE_GEMINI_BASE_URL`
//! at the relay, the relay key as `GEMINI_API_KEY`, `selectedType: gemini-api-key`), served by a
//! `gemini` account on the mock Gemini upstream.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use relay_testkit::gemini::{expected_gemini_usage, MockGemini};

use crate::support::{cli, client, create_key, described, usage_when, RunningRelay};

/// Gemini CLI's settings under `home` as `../shared/clients.md` §4.3 gives them: an API key
/// (with the relay's base URL), no folder trust dialog, no telemetry or update checks.
pub(crate) fn gemini_settings(home: &Path) {
    let settings = home.join(".gemini");
    std::fs::create_dir_all(&settings).unwrap();
    std::fs::write(
        settings.join("settings.json"),
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": false}},
  "privacy": {"usageStatisticsEnabled": false}, "telemetry": {"enabled": false},
  "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false}}"#,
    )
    .unwrap();
}

/// Runs `gemini -p prompt` (with `-m model` if given) in `home`, in a clean environment pointed
/// at `relay_url`.
async fn gemini(
    binary: &Path,
    home: &Path,
    relay_url: &str,
    key: &str,
    prompt: &str,
    model: Option<&str>,
) -> Output {
    gemini_settings(home);
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut command = tokio::process::Command::new(binary);
    command.arg("-p").arg(prompt);
    if let Some(model) = model {
        command.args(["-m", model]);
    }
    command
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                crate::interactive::node_bin()
            ),
        )
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .env("GEMINI_API_KEY", key)
        .env("GOOGLE_GEMINI_BASE_URL", relay_url)
        .current_dir(home)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("Gemini CLI finishes within a minute")
        .unwrap()
}

/// `account add --platform gemini` on `mock`, with `extra` flags.
fn add_gemini_account(data_dir: &Path, mock: &MockGemini, extra: &[&str]) {
    let base_url = mock.url();
    let mut args = vec![
        "account",
        "add",
        "--platform",
        "gemini",
        "--name",
        "gemini",
        "--api-key",
        "AIza-mock-upstream",
        "--base-url",
        &base_url,
    ];
    args.extend_from_slice(extra);
    cli(data_dir, &args);
}

/// A relay with one `gemini` account on `mock`: the directory (data in `data`), a key named
/// `gemini` and the running relay.
fn on_gemini(mock: &MockGemini) -> (tempfile::TempDir, String, RunningRelay) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_gemini_account(&data_dir, mock, &[]);
    let key = create_key(&data_dir, "gemini");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    (dir, key, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_answers_and_reads_a_file_through_the_relay_with_exact_usage() {
    let Some(binary) = client("npm/node_modules/.bin/gemini") else {
        return;
    };
    let mock = MockGemini::start().await;
    let (dir, key, relay) = on_gemini(&mock);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    // Without -m: the JSON-mode model router first, then the routed model's stream.
    let output = gemini(&binary, &home, &relay.url, &key, "Say hello", None).await;
    assert!(output.status.success(), "{}", described(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("MOCK_OK from gemini-"),
        "{}",
        described(&output)
    );

    // A tool round trip: the model asks for read_file, the CLI reads it and sends it back.
    std::fs::write(home.join("TOOLRESULT-gc1.txt"), "TOOLRESULT-gc1").unwrap();
    let output = gemini(
        &binary,
        &home,
        &relay.url,
        &key,
        "USE_TOOL:Bash NONCE-gc1",
        Some("gemini-2.5-flash"),
    )
    .await;
    for request in mock.requests() {
        eprintln!(
            "REQ {} {:?} {}",
            request.path,
            request.query,
            request
                .body
                .to_string()
                .chars()
                .take(400)
                .collect::<String>()
        );
    }
    assert!(output.status.success(), "{}", described(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("TOOL_DONE:") && stdout.contains("TOOLRESULT-gc1"),
        "{}",
        described(&output)
    );

    let requests = mock.requests();
    assert!(requests
        .iter()
        .all(|request| request.api_key == "AIza-mock-upstream"));
    let turns: Vec<_> = requests
        .iter()
        .filter(|request| request.path.ends_with("Content"))
        .collect();
    let (mut input, mut cached, mut output_tokens) = (0, 0, 0);
    for turn in &turns {
        let model = turn
            .path
            .trim_start_matches("/v1beta/models/")
            .split(':')
            .next()
            .unwrap();
        let expected = expected_gemini_usage(model, &turn.body);
        input += expected.prompt_tokens - expected.cached_tokens;
        cached += expected.cached_tokens;
        output_tokens += expected.candidates_tokens + expected.thoughts_tokens;
    }
    let usage = usage_when(&dir.path().join("data"), Some("gemini"), turns.len() as i64).await;
    assert_eq!(usage["requests"], turns.len());
    assert_eq!(usage["input_tokens"], input);
    assert_eq!(usage["cache_read_input_tokens"], cached);
    assert_eq!(usage["output_tokens"], output_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_with_a_bad_key_fails_at_once() {
    let Some(binary) = client("npm/node_modules/.bin/gemini") else {
        return;
    };
    let mock = MockGemini::start().await;
    let (dir, _key, relay) = on_gemini(&mock);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let started = Instant::now();
    let output = gemini(
        &binary,
        &home,
        &relay.url,
        "cr_not-a-key",
        "Say hello",
        Some("gemini-2.5-flash"),
    )
    .await;
    assert!(!output.status.success(), "{}", described(&output));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.contains("API_KEY_INVALID") || said.contains("API key not valid"),
        "{}",
        described(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(mock.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_google_genai_python_sdk_works_through_the_relay() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let mock = MockGemini::start().await;
    let (dir, key, relay) = on_gemini(&mock);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/google_genai.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("RELAY_URL", &relay.url)
        .env("RELAY_KEY", &key)
        .env("MODEL", "gemini-2.5-flash")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", described(&output));
    // A generation, a stream and a count on the SDK's `/v1/` paths, sent upstream to the
    // API's own; one record each, the generations with the mock's output.
    let requests = mock.requests();
    let paths: Vec<&str> = requests
        .iter()
        .map(|request| request.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "/v1beta/models/gemini-2.5-flash:countTokens",
        ]
    );
    let usage = usage_when(&dir.path().join("data"), Some("gemini"), 3).await;
    assert_eq!(usage["requests"], 3);
    let expected: u64 = requests
        .iter()
        .take(2)
        .map(|request| expected_gemini_usage("gemini-2.5-flash", &request.body).candidates_tokens)
        .sum();
    assert_eq!(usage["output_tokens"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_runs_on_an_anthropic_account_through_conversion() {
    let Some(binary) = client("npm/node_modules/.bin/gemini") else {
        return;
    };
    let anthropic = relay_testkit::MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The operator maps Gemini's models onto Claude: Gemini CLI on a Claude account.
    cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "anthropic",
            "--name",
            "claude",
            "--api-key",
            "sk-ant-gem",
            "--base-url",
            &anthropic.url(),
            "--map-model",
            "gemini-*=claude-sonnet-4-5",
        ],
    );
    let key = create_key(&data_dir, "gemini");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = gemini(
        &binary,
        &home,
        &relay.url,
        &key,
        "Say hello",
        Some("gemini-2.5-flash"),
    )
    .await;
    assert!(output.status.success(), "{}", described(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("MOCK_OK from claude-sonnet-4-5."),
        "{}",
        described(&output)
    );
    // A tool round trip on Claude: the CLI reads the file Claude asks for and sends it back.
    std::fs::write(home.join("TOOLRESULT-gc2.txt"), "TOOLRESULT-gc2").unwrap();
    let output = gemini(
        &binary,
        &home,
        &relay.url,
        &key,
        "USE_TOOL:Bash NONCE-gc2",
        Some("gemini-2.5-flash"),
    )
    .await;
    assert!(output.status.success(), "{}", described(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("TOOL_DONE:") && stdout.contains("TOOLRESULT-gc2"),
        "{}",
        described(&output)
    );
    let requests: Vec<_> = anthropic
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/messages")
        .collect();
    assert!(!requests.is_empty());
    assert!(requests
        .iter()
        .all(|request| request.api_key == "sk-ant-gem"
            && request.body["model"] == "claude-sonnet-4-5"
            && request.body["stream"] == true));
    // The mock's input-side figures, recorded as it reported them.
    let input: u64 = requests
        .iter()
        .map(|request| relay_testkit::expected_usage(&request.body).input_tokens)
        .sum();
    let usage = usage_when(&data_dir, Some("gemini"), requests.len() as i64).await;
    assert_eq!(usage["requests"], requests.len());
    assert_eq!(usage["input_tokens"], input);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_runs_a_tool_on_a_gemini_account_and_usage_matches() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
        return;
    };
    let mock = MockGemini::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_gemini_account(
        &data_dir,
        &mock,
        &["--map-model", "claude-*=gemini-2.5-flash"],
    );
    let key = create_key(&data_dir, "claude-code");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = crate::clients::claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-cg2",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let result = crate::clients::parse_result(&output);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "TOOL_DONE: TOOLRESULT-cg2", "{result}");
    let turns: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with("streamGenerateContent"))
        .collect();
    assert_eq!(turns.len(), 2, "one streamed request per turn");
    assert!(turns
        .iter()
        .all(|turn| turn.path.contains("gemini-2.5-flash")
            && turn.query.as_deref() == Some("alt=sse")));
    // The relay's bill equals what Claude Code itself was told, token for token.
    let usage = usage_when(&data_dir, Some("claude-code"), 2).await;
    for name in ["input_tokens", "output_tokens", "cache_read_input_tokens"] {
        assert_eq!(
            crate::clients::field(&usage, name),
            crate::clients::field(&result["usage"], name),
            "{name}: relay vs Claude Code"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_runs_on_a_google_account_imported_from_its_credentials() {
    let Some(binary) = client("npm/node_modules/.bin/gemini") else {
        return;
    };
    let code_assist = relay_testkit::code_assist::MockCodeAssist::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let creds = dir.path().join("oauth_creds.json");
    std::fs::write(&creds, code_assist.oauth_creds()).unwrap();
    let creds = creds.to_string_lossy().into_owned();
    let base_url = code_assist.url();
    // Gemini CLI's own "Login with Google", imported; the relay finds the account's project.
    cli(
        &data_dir,
        &[
            "account",
            "add",
            "--platform",
            "gemini-oauth",
            "--name",
            "google",
            "--oauth-creds",
            &creds,
            "--base-url",
            &base_url,
        ],
    );
    let listed = cli(&data_dir, &["account", "list", "--json"]);
    assert!(
        listed.contains("gemini-oauth") && !listed.contains("1//mock-refresh"),
        "{listed}"
    );
    let key = create_key(&data_dir, "gemini");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("TOOLRESULT-go1.txt"), "TOOLRESULT-go1").unwrap();
    let output = gemini(
        &binary,
        &home,
        &relay.url,
        &key,
        "USE_TOOL:Bash NONCE-go1",
        Some("gemini-2.5-flash"),
    )
    .await;
    assert!(output.status.success(), "{}", described(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("TOOL_DONE:") && stdout.contains("TOOLRESULT-go1"),
        "{}",
        described(&output)
    );
    let turns = code_assist.requests();
    assert!(turns.len() >= 2);
    assert!(turns
        .iter()
        .all(|turn| turn.body["project"] == relay_testkit::code_assist::PROJECT));
    let output_tokens: u64 = turns
        .iter()
        .map(|turn| {
            expected_gemini_usage("gemini-2.5-flash", &turn.body["request"]).candidates_tokens
        })
        .sum();
    let usage = usage_when(&data_dir, Some("gemini"), turns.len() as i64).await;
    assert_eq!(usage["requests"], turns.len());
    assert_eq!(usage["output_tokens"], output_tokens);
}

//! Real clients through the relay: the Claude Code CLI and the official anthropic and openai Python
//! SDKs, against Anthropic accounts and OpenAI-compatible ones.

use std::path::Path;
use std::process::Output;

use relay_testkit::openai::MockOpenAi;
use relay_testkit::{Behavior, MockUpstream};
use serde_json::Value;

use crate::support::{add_account, client, create_key, usage_when, RunningRelay};

/// Runs `claude -p` the way clients.md documents for offline use, with a fresh HOME.
pub(crate) async fn claude(
    binary: &Path,
    home: &Path,
    relay_url: &str,
    auth: (&str, &str),
    args: &[&str],
) -> Output {
    let node_bin = which_dir("node");
    tokio::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", format!("{node_bin}:/usr/local/bin:/usr/bin:/bin"))
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("TERM", "dumb")
        .env("ANTHROPIC_BASE_URL", relay_url)
        .env(auth.0, auth.1)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .current_dir(home)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn which_dir(program: &str) -> String {
    let output = std::process::Command::new("sh")
        .args(["-c", &format!("dirname \"$(command -v {program})\"")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub(crate) fn parse_result(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "claude printed no JSON result.\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub(crate) fn field(value: &Value, name: &str) -> i64 {
    value[name].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_completes_through_the_relay_and_usage_matches_to_the_token() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let relay = RunningRelay::start(&data_dir, Some("test-admin-password"));
    add_account(&data_dir, "main", "sk-ant-main", &mock.url(), 50);
    let key = create_key(&data_dir, "claude-code");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // The server reloads within 250 ms of a change.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // A plain prompt, with the key as ANTHROPIC_API_KEY (x-api-key).
    let plain = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "Say hello",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
        ],
    )
    .await;
    let plain = parse_result(&plain);
    assert_eq!(plain["is_error"], false, "{plain}");
    assert_eq!(plain["result"], "MOCK_OK from claude-sonnet-4-5-20250929.");

    // A tool round trip, with the key as ANTHROPIC_AUTH_TOKEN (Bearer): two turns, one per request.
    let tool = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_AUTH_TOKEN", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-r7x",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let tool = parse_result(&tool);
    assert_eq!(tool["is_error"], false, "{tool}");
    assert_eq!(tool["result"], "TOOL_DONE: TOOLRESULT-r7x");
    assert_eq!(tool["num_turns"], 2);

    // Every request Claude Code made reached the mock with the account's key, never the relay's.
    let upstream = mock.requests();
    assert_eq!(upstream.len(), 3, "one request per turn");
    for request in &upstream {
        assert_eq!(request.api_key, "sk-ant-main");
        assert_eq!(request.query.as_deref(), Some("beta=true"));
        assert!(request.headers.get("authorization").is_none());
        assert!(request.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("claude-cli/"));
    }

    // The relay's bill equals what Claude Code itself was told, token for token.
    let usage = usage_when(&data_dir, Some("claude-code"), 3).await;
    assert_eq!(usage["requests"], 3);
    for name in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        let reported = field(&plain["usage"], name) + field(&tool["usage"], name);
        assert_eq!(
            field(&usage, name),
            reported,
            "{name}: relay vs Claude Code"
        );
    }
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(usage["unpriced_requests"], 0);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_fails_over_when_one_of_two_accounts_fails() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.script("sk-ant-broken", (0..10).map(|_| Behavior::status(500)));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "broken", "sk-ant-broken", &mock.url(), 1);
    add_account(&data_dir, "healthy", "sk-ant-healthy", &mock.url(), 2);
    let key = create_key(&data_dir, "cc");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-f2",
            "--output-format",
            "json",
            "--model",
            "claude-haiku-4-5-20251001",
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let result = parse_result(&output);
    assert_eq!(result["result"], "TOOL_DONE: TOOLRESULT-f2", "{result}");
    assert_eq!(mock.count_for("sk-ant-healthy"), 2);
    assert!(mock.count_for("sk-ant-broken") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_works_through_the_relay() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "main", "sk-ant-main", &mock.url(), 50);
    let key = create_key(&data_dir, "sdk");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/anthropic_sdk.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("RELAY_URL", &relay.url)
        .env("RELAY_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "SDK script failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // create, stream, count_tokens reached the upstream; models is answered by the relay.
    let usage = usage_when(&data_dir, Some("sdk"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_shows_a_readable_refusal_when_its_key_is_over_budget() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "main", "sk-ant-main", &mock.url(), 50);
    let key = crate::support::cli(
        &data_dir,
        &[
            "key",
            "create",
            "--name",
            "broke",
            "--total-cost-usd",
            "0.000001",
        ],
    )
    .trim()
    .to_owned();
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "Say hello",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
        ],
    )
    .await;
    let result = parse_result(&output);
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["api_error_status"], 402, "{result}");
    let text = result["result"].as_str().unwrap_or_default();
    assert!(
        text.contains("total cost limit of $0.000001 is used up"),
        "{result}"
    );
    assert!(
        mock.requests().is_empty(),
        "a refused request must not reach the upstream"
    );
}

/// `account add --platform openai` at the mock's base URL, with extra settings.
fn add_openai_account(data_dir: &Path, name: &str, api_key: &str, base_url: &str, extra: &[&str]) {
    let mut args = vec![
        "account",
        "add",
        "--platform",
        "openai",
        "--name",
        name,
        "--api-key",
        api_key,
        "--base-url",
        base_url,
    ];
    args.extend_from_slice(extra);
    crate::support::cli(data_dir, &args);
}

async fn run_python(python: &Path, script: &str, env: &[(&str, &str)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python")
        .join(script);
    let output = tokio::process::Command::new(python)
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "SDK script failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_against_an_anthropic_and_an_openai_compatible_account() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let anthropic = MockUpstream::start().await;
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_account(&data_dir, "claude", "sk-ant-main", &anthropic.url(), 50);
    add_openai_account(
        &data_dir,
        "oai",
        "sk-oai",
        &openai.base_url(),
        &["--model", "gpt-4o-mini"],
    );
    let key = create_key(&data_dir, "sdk");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    run_python(
        &python,
        "openai_sdk.py",
        &[
            ("RELAY_URL", &relay.url),
            ("RELAY_KEY", &key),
            ("MODELS", "claude-sonnet-4-5-20250929,gpt-4o-mini"),
        ],
    )
    .await;
    // Five chat calls per model, each served by the account for its model: converted for the
    // Anthropic account, passed through to the OpenAI-compatible one.
    assert_eq!(anthropic.requests().len(), 5);
    assert!(anthropic
        .requests()
        .iter()
        .all(|request| request.path == "/v1/messages" && request.api_key == "sk-ant-main"));
    assert_eq!(openai.requests().len(), 5);
    assert!(openai
        .requests()
        .iter()
        .all(|request| request.path == "/v1/chat/completions" && request.api_key == "sk-oai"));
    let usage = usage_when(&data_dir, Some("sdk"), 10).await;
    assert_eq!(usage["requests"], 10);
    assert_eq!(
        usage["unpriced_requests"], 0,
        "claude and gpt-4o-mini are priced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_works_against_an_openai_compatible_account() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_openai_account(
        &data_dir,
        "ds",
        "sk-ds",
        &openai.base_url(),
        &["--map-model", "claude-*=deepseek-chat"],
    );
    let key = create_key(&data_dir, "sdk");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    run_python(
        &python,
        "anthropic_sdk.py",
        &[
            ("RELAY_URL", &relay.url),
            ("RELAY_KEY", &key),
            ("REPLY_MODEL", "deepseek-chat"),
        ],
    )
    .await;
    // create and stream went upstream as Chat Completions; count_tokens was estimated here.
    let upstream = openai.requests();
    assert_eq!(upstream.len(), 2);
    assert!(upstream
        .iter()
        .all(|request| request.body["model"] == "deepseek-chat" && request.api_key == "sk-ds"));
    let usage = usage_when(&data_dir, Some("sdk"), 2).await;
    assert_eq!(usage["requests"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_runs_on_an_openai_compatible_account_and_usage_matches() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
        return;
    };
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_openai_account(
        &data_dir,
        "deepseek",
        "sk-ds",
        &openai.base_url(),
        &["--map-model", "claude-*=deepseek-chat"],
    );
    let key = create_key(&data_dir, "claude-code");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-oc1",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let result = parse_result(&output);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "TOOL_DONE: TOOLRESULT-oc1", "{result}");
    assert_eq!(result["num_turns"], 2);

    // Both turns went to the OpenAI-compatible upstream as Chat Completions, with the account's
    // key and model, the tool result as a `tool` message.
    let upstream = openai.requests();
    assert_eq!(upstream.len(), 2, "one request per turn");
    for request in &upstream {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.api_key, "sk-ds");
        assert_eq!(request.body["model"], "deepseek-chat");
        assert_eq!(request.body["stream_options"]["include_usage"], true);
    }
    let second = upstream[1].body["messages"].as_array().unwrap();
    assert!(
        second.iter().any(|message| message["role"] == "tool"
            && message["content"].to_string().contains("TOOLRESULT-oc1")),
        "{second:?}"
    );

    // The relay's bill equals what Claude Code itself was told, token for token.
    let usage = usage_when(&data_dir, Some("claude-code"), 2).await;
    assert_eq!(usage["requests"], 2);
    for name in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert_eq!(
            field(&usage, name),
            field(&result["usage"], name),
            "{name}: relay vs Claude Code"
        );
    }
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_runs_on_a_responses_account_and_usage_matches() {
    let Some(claude_binary) = client("npm/node_modules/.bin/claude") else {
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
            "openai-responses",
            "--name",
            "gpt",
            "--api-key",
            "sk-resp",
            "--base-url",
            &openai.base_url(),
            "--map-model",
            "claude-*=gpt-5-mini",
        ],
    );
    let key = create_key(&data_dir, "claude-code");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = claude(
        &claude_binary,
        &home,
        &relay.url,
        ("ANTHROPIC_API_KEY", &key),
        &[
            "-p",
            "USE_TOOL:Bash NONCE-rc1",
            "--output-format",
            "json",
            "--model",
            "claude-sonnet-4-5-20250929",
            "--allowedTools",
            "Bash",
        ],
    )
    .await;
    let result = parse_result(&output);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "TOOL_DONE: TOOLRESULT-rc1", "{result}");
    assert_eq!(result["num_turns"], 2);

    // Both turns went to the Responses upstream, the tool result as a function_call_output.
    let upstream = openai.requests();
    assert_eq!(upstream.len(), 2, "one request per turn");
    for request in &upstream {
        assert_eq!(request.path, "/v1/responses");
        assert_eq!(request.api_key, "sk-resp");
        assert_eq!(request.body["model"], "gpt-5-mini");
        assert_eq!(request.body["store"], false);
    }
    let second = upstream[1].body["input"].as_array().unwrap();
    assert!(
        second
            .iter()
            .any(|item| item["type"] == "function_call_output"
                && item["output"].to_string().contains("TOOLRESULT-rc1")),
        "{second:?}"
    );

    // The relay's bill equals what Claude Code itself was told, token for token.
    let usage = usage_when(&data_dir, Some("claude-code"), 2).await;
    assert_eq!(usage["requests"], 2);
    for name in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert_eq!(
            field(&usage, name),
            field(&result["usage"], name),
            "{name}: relay vs Claude Code"
        );
    }
    drop(relay);
}

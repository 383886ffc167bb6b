//! Codex CLI (pinned by `scripts/install-clients`) through the real binary, configured as
//! `../shared/clients.md` §4.2 documents: a custom provider at the relay's `/v1` with
//! `wire_api = "responses"`, served by a Responses account on the mock OpenAI upstream.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use relay_testkit::chatgpt::{MockChatGpt, ACCOUNT_ID, AUTH_CODE};
use relay_testkit::openai::MockOpenAi;
use relay_testkit::responses::expected_responses_usage;
use relay_testkit::{expected_usage, MockUpstream};

use crate::support::{
    authorize_state, cli, cli_env, cli_fails, client, create_key, described, usage_when,
    RunningRelay,
};

/// A `CODEX_HOME` under `home` whose config points Codex at `relay_url` as a custom provider
/// (`../shared/clients.md` §4.2), with `extra` TOML appended; its path.
pub(crate) fn codex_home(home: &Path, relay_url: &str, extra: &str) -> std::path::PathBuf {
    let provider = format!(
        r#"model_provider = "relay"
{extra}
[model_providers.relay]
name = "Claude Relay"
base_url = "{relay_url}/v1"
env_key = "RELAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
supports_websockets = false
"#
    );
    codex_home_with(home, &provider)
}

/// A `CODEX_HOME` under `home` with Codex's quiet settings (no analytics, plugins or update
/// checks, never asking, a read-only sandbox) and `provider`'s TOML (top-level keys, then its
/// own tables); its path.
fn codex_home_with(home: &Path, provider: &str) -> std::path::PathBuf {
    let codex_home = home.join("codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            r#"model = "gpt-5-codex"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false
{provider}[analytics]
enabled = false
[features]
plugins = false
apps = false
"#
        ),
    )
    .unwrap();
    codex_home
}

/// Runs `codex exec` with a fresh `CODEX_HOME` pointing at `relay_url`; its output and the last
/// message it wrote.
async fn codex(
    binary: &Path,
    home: &Path,
    relay_url: &str,
    key: &str,
    prompt: &str,
) -> (Output, String) {
    let codex_home = codex_home(home, relay_url, "");
    codex_in(binary, home, &codex_home, &[("RELAY_API_KEY", key)], prompt).await
}

/// Runs `codex exec` with `codex_home` and `env` in a clean environment; its output and the last
/// message it wrote.
async fn codex_in(
    binary: &Path,
    home: &Path,
    codex_home: &Path,
    env: &[(&str, &str)],
    prompt: &str,
) -> (Output, String) {
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let last = home.join("last.txt");
    let _ = std::fs::remove_file(&last);
    let output = tokio::process::Command::new(binary)
        .args([
            "exec",
            "--ephemeral",
            "--skip-git-repo-check",
            "--color",
            "never",
            "-o",
        ])
        .arg(&last)
        .arg(prompt)
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                crate::interactive::node_bin()
            ),
        )
        .env("HOME", home)
        .env("CODEX_HOME", codex_home)
        .env("TMPDIR", &tmp)
        .envs(env.iter().copied())
        .current_dir(home)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let message = std::fs::read_to_string(&last).unwrap_or_default();
    (output, message)
}

/// `account add` of `platform` at `base_url`, with `extra` flags.
fn account_args<'a>(
    platform: &'a str,
    name: &'a str,
    api_key: &'a str,
    base_url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "account",
        "add",
        "--platform",
        platform,
        "--name",
        name,
        "--api-key",
        api_key,
        "--base-url",
        base_url,
    ];
    args.extend_from_slice(extra);
    args
}

fn add_responses_account(data_dir: &Path, name: &str, api_key: &str, base_url: &str) {
    cli(
        data_dir,
        &account_args("openai-responses", name, api_key, base_url, &[]),
    );
}

/// `codex exec` twice through `relay`: "Say hello" must answer `hello`; a prompt asking for a
/// tool must run `exec_command` (in Codex's sandbox) and answer with its output.
async fn hello_then_tool(
    binary: &Path,
    dir: &Path,
    relay: &RunningRelay,
    key: &str,
    hello: &str,
    nonce: &str,
) {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (output, message) = codex(binary, &home, &relay.url, key, "Say hello").await;
    assert!(output.status.success(), "{}", described(&output));
    assert_eq!(message.trim(), hello, "{}", described(&output));
    let prompt = format!("USE_TOOL:Bash NONCE-{nonce}");
    let (output, message) = codex(binary, &home, &relay.url, key, &prompt).await;
    assert!(output.status.success(), "{}", described(&output));
    assert!(
        message.contains("TOOL_DONE:") && message.contains(&format!("TOOLRESULT-{nonce}")),
        "{message}\n{}",
        described(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_completes_and_runs_a_tool_through_the_relay_with_exact_usage() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let (openai, dir, key, relay) = on_responses_account().await;
    let data_dir = dir.path().join("data");
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from gpt-5-codex.",
        "cx1",
    )
    .await;

    // Every request went to the account's `/responses`, and the relay recorded exactly what
    // the mock reported for each.
    let requests = openai.requests();
    let turns: Vec<_> = requests
        .iter()
        .filter(|request| request.path == "/v1/responses")
        .collect();
    assert_eq!(turns.len(), 3, "one turn, then a tool call and its result");
    assert!(turns.iter().all(|request| request.api_key == "sk-codex"));
    let (mut input, mut cached, mut output_tokens) = (0, 0, 0);
    for turn in &turns {
        let expected = expected_responses_usage(&turn.body);
        input += expected.input_tokens - expected.cached_tokens;
        cached += expected.cached_tokens;
        output_tokens += expected.output_tokens;
    }
    let usage = usage_when(&data_dir, Some("codex"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(usage["input_tokens"], input);
    assert_eq!(usage["cache_read_input_tokens"], cached);
    assert_eq!(usage["output_tokens"], output_tokens);
    assert_eq!(usage["unpriced_requests"], 0, "gpt-5-codex is priced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_runs_on_a_chatgpt_subscription_signed_in_with_the_cli() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let chatgpt = MockChatGpt::start().await;
    // Tokens that need refreshing at once: the running relay refreshes them itself.
    chatgpt.set_token_behavior(60, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token_url = chatgpt.token_url();
    let env = [("CLAUDE_RELAY_CHATGPT_OAUTH_TOKEN_URL", token_url.as_str())];
    // Signed in as `codex login` does: the URL to open, then the address the browser landed on.
    let authorize = cli_env(
        &data_dir,
        &env,
        &[
            "account",
            "oauth-start",
            "--platform",
            "codex",
            "--name",
            "plus",
        ],
    );
    assert!(
        authorize.starts_with("https://auth.openai.com/oauth/authorize?"),
        "{authorize}"
    );
    let callback = format!(
        "http://localhost:1455/auth/callback?code={AUTH_CODE}&scope=openid+profile+email+offline_access&state={}",
        authorize_state(&authorize)
    );
    let base_url = chatgpt.base_url();
    cli_env(
        &data_dir,
        &env,
        &[
            "account",
            "oauth-finish",
            "--name",
            "plus",
            "--code",
            &callback,
            "--base-url",
            &base_url,
        ],
    );
    // A second one imported from Codex's auth.json, tried after the first.
    import_chatgpt(dir.path(), &chatgpt, "laptop", &["--priority", "90"]);
    let listed = cli(&data_dir, &["account", "list", "--json"]);
    assert!(!listed.contains("chatgpt-refresh"), "{listed}");
    // What the refresh grants lasts.
    chatgpt.set_token_behavior(3600, Duration::ZERO);
    let key = create_key(&data_dir, "codex");
    let relay = RunningRelay::start_with_env(&data_dir, Some("pw"), &env);
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from gpt-5-codex.",
        "cx3",
    )
    .await;

    // Three backend requests, all from the first account's refreshed token, with its workspace;
    // one refresh for all of them; usage exactly what the backend reported.
    let turns = chatgpt.requests();
    assert_eq!(turns.len(), 3, "one turn, then a tool call and its result");
    assert_eq!(chatgpt.refresh_count(), 1);
    let first = &turns[0].api_key;
    assert!(turns
        .iter()
        .all(|turn| turn.path == "/backend-api/codex/responses"
            && turn.headers["chatgpt-account-id"] == ACCOUNT_ID
            && turn.api_key == *first
            && turn.body["store"] == false));
    let (mut input, mut cached, mut output_tokens) = (0, 0, 0);
    for turn in &turns {
        let expected = expected_responses_usage(&turn.body);
        input += expected.input_tokens - expected.cached_tokens;
        cached += expected.cached_tokens;
        output_tokens += expected.output_tokens;
    }
    let usage = usage_when(&data_dir, Some("codex"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(usage["input_tokens"], input);
    assert_eq!(usage["cache_read_input_tokens"], cached);
    assert_eq!(usage["output_tokens"], output_tokens);
}

/// Runs `codex exec` with Codex's own OpenAI provider pointed at `relay` (the variant that
/// compacts remotely, `remote_compaction_v2`), with a context limit the first turn exceeds, on a
/// prompt that makes a tool call: Codex compacts after the tool result, then finishes.
async fn codex_compacting(binary: &Path, home: &Path, relay: &RunningRelay, key: &str) -> Output {
    let codex_home = codex_home_with(
        home,
        &format!(
            "openai_base_url = \"{}/v1\"\nmodel_auto_compact_token_limit = 100\n",
            relay.url
        ),
    );
    let (output, _) = codex_in(
        binary,
        home,
        &codex_home,
        &[("CODEX_API_KEY", key)],
        "USE_TOOL:Bash NONCE-cmp",
    )
    .await;
    assert!(output.status.success(), "{}", described(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("context compacted"),
        "{}",
        described(&output)
    );
    output
}

/// A relay whose one account is a Responses account (`sk-codex`) on the mock OpenAI upstream: the
/// mock, the directory (data in `data`), a key named `codex` and the running relay.
async fn on_responses_account() -> (MockOpenAi, tempfile::TempDir, String, RunningRelay) {
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_responses_account(&data_dir, "codex", "sk-codex", &openai.base_url());
    let key = create_key(&data_dir, "codex");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    (openai, dir, key, relay)
}

/// A relay whose one account is Anthropic's (on the mock, with `api_key`), Codex's model mapped
/// onto Claude by the operator: one relay key, Codex on a Claude account. The mock, the
/// directory (data in `data`), the key and the running relay.
async fn on_claude(api_key: &str) -> (MockUpstream, tempfile::TempDir, String, RunningRelay) {
    let anthropic = MockUpstream::start().await;
    let (dir, key, relay) = on_mapped("anthropic", api_key, &anthropic.url(), "claude-sonnet-4-5");
    (anthropic, dir, key, relay)
}

/// A relay whose one account is of `platform` at `base_url`, Codex's model mapped onto
/// `model`: the directory (data in `data`), a key named `codex` and the running relay.
fn on_mapped(
    platform: &str,
    api_key: &str,
    base_url: &str,
    model: &str,
) -> (tempfile::TempDir, String, RunningRelay) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mapping = format!("gpt-5-codex={model}");
    cli(
        &data_dir,
        &account_args(
            platform,
            platform,
            api_key,
            base_url,
            &["--map-model", &mapping],
        ),
    );
    let key = create_key(&data_dir, "codex");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    (dir, key, relay)
}

fn last_item_type(body: &serde_json::Value) -> String {
    body["input"].as_array().unwrap().last().unwrap()["type"]
        .as_str()
        .unwrap_or("message")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_with_its_built_in_provider_compacts_remotely_through_the_relay() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let (openai, dir, key, relay) = on_responses_account().await;
    let data_dir = dir.path().join("data");
    codex_compacting(&binary, &dir.path().join("home"), &relay, &key).await;

    // A turn, the tool result with the trigger, then the turn after it on the compacted history
    // holding the upstream's own compaction item: all passed through, each recorded.
    let turns: Vec<_> = openai
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/responses")
        .collect();
    let kinds: Vec<String> = turns
        .iter()
        .map(|turn| last_item_type(&turn.body))
        .collect();
    assert_eq!(kinds[1], "compaction_trigger", "{kinds:?}");
    let after = &turns[2].body;
    assert!(
        after["input"]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item["type"] == "compaction" && item["id"] == "cmp_mock"),
        "{after}"
    );
    let usage = usage_when(&data_dir, Some("codex"), turns.len() as i64).await;
    assert_eq!(usage["requests"], turns.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_compacts_remotely_on_an_anthropic_account_through_the_accounts_model() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let (anthropic, dir, key, relay) = on_claude("sk-ant-cmp").await;
    let data_dir = dir.path().join("data");
    codex_compacting(&binary, &dir.path().join("home"), &relay, &key).await;

    // The trigger became a request for a summary (tools defined, not to be called); the turn
    // after it carries that summary in place of the history it replaced.
    let requests: Vec<_> = anthropic
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/messages")
        .collect();
    let text_of = |request: &relay_testkit::RecordedRequest| request.body["messages"].to_string();
    let position = requests
        .iter()
        .position(|request| text_of(request).contains("hand-off summary"))
        .unwrap_or_else(|| panic!("no summary request: {requests:?}"));
    assert_eq!(requests[position].body["tool_choice"]["type"], "none");
    let after = requests
        .get(position + 1)
        .expect("a turn after the compaction");
    assert!(
        text_of(after).contains("Summary of the conversation so far:")
            && text_of(after).contains("MOCK_OK from claude-sonnet-4-5."),
        "{}",
        text_of(after)
    );
    let usage = usage_when(&data_dir, Some("codex"), requests.len() as i64).await;
    assert_eq!(usage["requests"], requests.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_with_a_bad_key_fails_at_once_with_the_relays_message() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_responses_account(&data_dir, "codex", "sk-codex", &openai.base_url());
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let started = Instant::now();
    let (output, _) = codex(&binary, &home, &relay.url, "cr_not-a-key", "Say hello").await;
    assert!(!output.status.success(), "{}", described(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("invalid relay key"),
        "{}",
        described(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no minutes of retries: {:?}",
        started.elapsed()
    );
    assert!(openai.requests().is_empty(), "nothing reached the upstream");
}

/// Runs `tests/python/openai_responses.py` (the official SDK: plain, streamed, a function call
/// and its result, a bad key, on `/v1` and `/openai/v1`) against `relay`.
async fn responses_sdk(python: &Path, relay: &RunningRelay, key: &str, model: &str) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/openai_responses.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("RELAY_URL", &relay.url)
        .env("RELAY_KEY", key)
        .env("MODEL", model)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", described(&output));
}

/// The SDK script's eight requests were recorded once each, with the output the upstream
/// reported for them.
async fn sdk_usage_recorded(data_dir: &Path, requests: &[relay_testkit::RecordedRequest]) {
    assert_eq!(requests.len(), 8, "four calls on each path");
    let usage = usage_when(data_dir, Some("sdk"), 8).await;
    assert_eq!(usage["requests"], 8);
    let expected: u64 = requests
        .iter()
        .map(|request| expected_responses_usage(&request.body).output_tokens)
        .sum();
    assert_eq!(usage["output_tokens"], expected);
}

/// `account add --platform codex` from the `auth.json` Codex would write after signing in to
/// `chatgpt`, with `extra` flags.
fn import_chatgpt(dir: &Path, chatgpt: &MockChatGpt, name: &str, extra: &[&str]) {
    let auth_json = dir.join(format!("{name}-auth.json"));
    std::fs::write(&auth_json, chatgpt.auth_json()).unwrap();
    let auth_json = auth_json.to_string_lossy().into_owned();
    let base_url = chatgpt.base_url();
    let mut args = vec![
        "account",
        "add",
        "--platform",
        "codex",
        "--name",
        name,
        "--auth-json",
        &auth_json,
        "--base-url",
        &base_url,
    ];
    args.extend_from_slice(extra);
    cli(&dir.join("data"), &args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdks_responses_api_works_through_the_relay() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let openai = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    add_responses_account(&data_dir, "oai", "sk-oai", &openai.base_url());
    let key = create_key(&data_dir, "sdk");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    responses_sdk(&python, &relay, &key, "gpt-5-mini").await;
    let requests = openai.requests();
    assert!(requests
        .iter()
        .all(|request| request.path == "/v1/responses" && request.api_key == "sk-oai"));
    sdk_usage_recorded(&data_dir, &requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdks_responses_api_works_on_a_chatgpt_subscription() {
    let Some(python) = client("venv/bin/python") else {
        return;
    };
    let chatgpt = MockChatGpt::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    import_chatgpt(dir.path(), &chatgpt, "plus", &[]);
    let key = create_key(&data_dir, "sdk");
    let relay = RunningRelay::start(&data_dir, Some("pw"));
    // The SDK's whole responses and its `max_output_tokens` work although the backend only
    // streams and refuses that setting.
    responses_sdk(&python, &relay, &key, "gpt-5-codex").await;
    let requests = chatgpt.requests();
    assert!(requests
        .iter()
        .all(|request| request.body["stream"] == true
            && request.body.get("max_output_tokens").is_none()));
    sdk_usage_recorded(&data_dir, &requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_on_an_anthropic_account_through_conversion() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let (anthropic, dir, key, relay) = on_claude("sk-ant-cx").await;
    let data_dir = dir.path().join("data");
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from claude-sonnet-4-5.",
        "cx2",
    )
    .await;

    // Three Anthropic requests, each recorded with the mock's own input-side figures.
    let requests: Vec<_> = anthropic
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/messages")
        .collect();
    assert_eq!(requests.len(), 3);
    assert!(requests
        .iter()
        .all(|request| request.api_key == "sk-ant-cx"
            && request.body["model"] == "claude-sonnet-4-5"));
    let (mut input, mut cached) = (0, 0);
    for request in &requests {
        let expected = expected_usage(&request.body);
        input += expected.input_tokens;
        cached += expected.cache_read;
    }
    let usage = usage_when(&data_dir, Some("codex"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(usage["input_tokens"], input);
    assert_eq!(usage["cache_read_input_tokens"], cached);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_on_an_openai_compatible_chat_account_through_conversion() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let openai = MockOpenAi::start().await;
    // A DeepSeek-like host that speaks only Chat Completions, mapped under Codex's model.
    let (dir, key, relay) = on_mapped("openai", "sk-ds", &openai.base_url(), "deepseek-chat");
    let data_dir = dir.path().join("data");
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from deepseek-chat.",
        "ds2",
    )
    .await;
    let requests: Vec<_> = openai
        .requests()
        .into_iter()
        .filter(|request| request.path == "/v1/chat/completions")
        .collect();
    assert_eq!(requests.len(), 3);
    let expected: u64 = requests
        .iter()
        .map(|request| relay_testkit::openai::expected_chat_usage(&request.body).completion_tokens)
        .sum();
    let usage = usage_when(&data_dir, Some("codex"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(usage["output_tokens"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_and_chat_clients_are_served_by_an_azure_openai_deployment() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let azure = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let refused = cli_fails(
        &data_dir,
        &account_args("azure-openai", "az", "az-key", &azure.url(), &[]),
    );
    assert!(refused.contains("--deployment"), "{refused}");
    cli(
        &data_dir,
        &account_args(
            "azure-openai",
            "az",
            "az-key",
            &azure.url(),
            &[
                "--deployment",
                "gpt5-prod",
                "--api-version",
                "2025-04-01-preview",
            ],
        ),
    );
    let key = create_key(&data_dir, "azure");
    let relay = RunningRelay::start(&data_dir, Some("pw"));

    // Codex speaks Responses, which Azure serves natively: the deployment names the model.
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from gpt5-prod.",
        "az1",
    )
    .await;
    // A Chat client goes to the deployment's chat/completions.
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", relay.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "MOCK_OK from gpt5-prod.",
        "{answer}"
    );

    let requests = azure.requests();
    assert_eq!(requests.len(), 4, "three Codex turns and one chat");
    for request in &requests {
        assert_eq!(request.api_key, "az-key");
        assert_eq!(request.headers["api-key"], "az-key");
        assert!(request.headers.get("authorization").is_none());
        assert_eq!(
            request.query.as_deref(),
            Some("api-version=2025-04-01-preview")
        );
    }
    assert!(
        requests[..3]
            .iter()
            .all(|request| request.path == "/openai/responses"
                && request.body["model"] == "gpt5-prod")
    );
    assert_eq!(
        requests[3].path,
        "/openai/deployments/gpt5-prod/chat/completions"
    );
    let usage = usage_when(&data_dir, Some("azure"), 4).await;
    assert_eq!(usage["requests"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_on_a_gemini_account_through_conversion() {
    let Some(binary) = client("npm/node_modules/.bin/codex") else {
        return;
    };
    let gemini = relay_testkit::gemini::MockGemini::start().await;
    // Codex's model mapped onto Gemini: one relay key, Codex on a Gemini account.
    let (dir, key, relay) = on_mapped("gemini", "AIza-codex", &gemini.url(), "gemini-2.5-flash");
    let data_dir = dir.path().join("data");
    hello_then_tool(
        &binary,
        dir.path(),
        &relay,
        &key,
        "MOCK_OK from gemini-2.5-flash.",
        "gm3",
    )
    .await;
    let turns: Vec<_> = gemini
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with(":streamGenerateContent"))
        .collect();
    assert_eq!(turns.len(), 3, "one turn, then a tool call and its result");
    assert!(turns
        .iter()
        .all(|turn| turn.api_key == "AIza-codex" && turn.path.contains("gemini-2.5-flash")));
    let expected: u64 = turns
        .iter()
        .map(|turn| {
            relay_testkit::gemini::expected_gemini_usage("gemini-2.5-flash", &turn.body)
                .candidates_tokens
        })
        .sum();
    let usage = usage_when(&data_dir, Some("codex"), 3).await;
    assert_eq!(usage["requests"], 3);
    assert_eq!(usage["output_tokens"], expected);
}

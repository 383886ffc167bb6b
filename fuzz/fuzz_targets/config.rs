//! The configuration parser returns a configuration or a list of problems for any file text and
//! environment — never a panic, never an error without a problem — and secrets never show in
//! the configuration's `Debug` form.
//!
//! The input is the TOML file's text, then optionally a NUL byte and environment variables, one
//! per line: the line's first byte picks the variable (from the ones the relay reads), the rest
//! is its value.

#![no_main]

use std::collections::HashMap;

use claude_relay::config::Config;
use libfuzzer_sys::fuzz_target;

claude_relay_fuzz::sanitizer_defaults!();

const VARIABLES: &[&str] = &[
    "CLAUDE_RELAY_LISTEN",
    "CLAUDE_RELAY_DATA_DIR",
    "CLAUDE_RELAY_LOG_FORMAT",
    "CLAUDE_RELAY_LOG",
    "CLAUDE_RELAY_OAUTH_TOKEN_URL",
    "CLAUDE_RELAY_EGRESS_ALLOWLIST",
    "CLAUDE_RELAY_MASTER_KEY",
    "CLAUDE_RELAY_ADMIN_PASSWORD",
];
const SECRETS: &[&str] = &["CLAUDE_RELAY_MASTER_KEY", "CLAUDE_RELAY_ADMIN_PASSWORD"];

fn environment(bytes: &[u8]) -> HashMap<String, String> {
    bytes
        .split(|byte| *byte == b'\n')
        .filter_map(|line| {
            let (pick, value) = line.split_first()?;
            let name = VARIABLES[usize::from(*pick) % VARIABLES.len()];
            Some((name.to_owned(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

fn build(file: &str, env: &HashMap<String, String>) -> Result<String, Vec<String>> {
    let built = Config::build(Some(file), env).map(|config| format!("{config:?}"));
    if let Err(problems) = &built {
        assert!(!problems.is_empty(), "an error without a problem");
    }
    built
}

fuzz_target!(|input: &[u8]| {
    let (file, env) = match input.iter().position(|byte| *byte == 0) {
        Some(at) => (&input[..at], environment(&input[at + 1..])),
        None => (input, HashMap::new()),
    };
    let file = String::from_utf8_lossy(file);

    let with_secrets = build(&file, &env);
    // Other secrets in their place change nothing: the `Debug` form (and every problem
    // reported) is the same, so it cannot show them.
    let mut replaced = env.clone();
    for secret in SECRETS {
        if let Some(value) = replaced.get_mut(*secret).filter(|value| !value.is_empty()) {
            *value = "another secret".to_owned();
        }
    }
    let with_others = build(&file, &replaced);
    match (&with_secrets, &with_others) {
        (Ok(with), Ok(others)) => assert_eq!(with, others, "a secret shows in Debug"),
        (Err(with), Err(others)) => assert_eq!(with, others, "a secret shows in a problem"),
        _ => panic!("the secrets changed the verdict: {with_secrets:?} / {with_others:?}"),
    }
});

//! The test Redis: `CLAUDE_RELAY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), with a
//! fresh key prefix per test. Where it does not answer, Redis tests are skipped with a message
//! unless `CLAUDE_RELAY_REQUIRE_SERVICES=1` (set by `.ci/run`) makes them fail.

#![allow(clippy::panic)] // test support: a required Redis that does not answer ends the test

use std::time::{SystemTime, UNIX_EPOCH};

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn redis_url() -> String {
    std::env::var("CLAUDE_RELAY_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("cr-test-{nanos:x}-{:x}", std::process::id())
}

/// The test Redis under a fresh prefix (and the prefix), or `None` with a message when it does
/// not answer and services are not required.
pub async fn redis() -> Option<(crate::Redis, String)> {
    let url = redis_url();
    let prefix = unique_prefix();
    let redis = crate::Redis::connect(&url, &prefix).await;
    let error = match redis {
        Ok(redis) => match redis.ping().await {
            Ok(_) => return Some((redis, prefix)),
            Err(error) => error.to_string(),
        },
        Err(error) => error.to_string(),
    };
    if std::env::var("CLAUDE_RELAY_REQUIRE_SERVICES").is_ok_and(|value| value == "1") {
        panic!("Redis is required here but {url} does not answer: {error}");
    }
    #[allow(clippy::print_stderr)] // the skip notice a developer needs to see
    {
        eprintln!("skipping the Redis part of this test: {url} does not answer ({error})");
    }
    None
}

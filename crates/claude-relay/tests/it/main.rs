//! The real binary on a random port, configured through its CLI, driven by real clients (the
//! Claude Code CLI and the official anthropic Python SDK) against the mock upstream.

#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod binary;
mod canary;
mod clients;
pub(crate) mod codex;
mod db_copy;
pub(crate) mod gemini;
mod interactive;
mod many_keys;
mod scale_out;
mod secrets;
mod support;

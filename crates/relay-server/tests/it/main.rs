//! Router tests against a real server on a random port and the in-process mock upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod addresses;
mod admin_api;
mod availability;
mod chatgpt;
mod dialects;
mod gemini;
mod harness;
mod health;
mod hostile;
mod limits;
mod relay_path;
mod responses;
mod sticky;
mod subscription;

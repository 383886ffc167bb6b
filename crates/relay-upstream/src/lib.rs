//! The upstream side of the relay: one adapter per platform behind a closed enum, the HTTP
//! transport under them, and the facts of one attempt.
//!
//! - [`Platform`]: the platforms (their dialect, default base URL and served models);
//! - [`adapter`]: per platform, where a request goes, how it authenticates, which headers travel
//!   each way;
//! - [`attempt`]: send a prepared request, wait for the first body byte, say what failed;
//! - [`health`]: what an upstream's answer means for the account (pure);
//! - [`oauth`]: subscription accounts' sign-in and token refresh (Claude and ChatGPT);
//!   [`claude_oauth`], [`chatgpt`] and [`code_assist`] what is each provider's own;
//! - [`windows`]: a subscription's usage windows as its responses report them;
//! - [`transport`], [`proxy`], [`egress`], [`net`]: the pooled client, outbound proxies and the
//!   guard that keeps operator-configured URLs off internal networks;
//! - [`redact`]: what of an upstream's body may be kept or passed on.
//!
//! *Architecture Invariant*: this crate knows no keys, no store and no axum; the relay pipeline
//! (relay-core) decides which account a request goes to and what the client is told.

pub mod adapter;
pub mod attempt;
pub mod chatgpt;
pub mod claude_oauth;
pub mod code_assist;
pub mod egress;
pub mod health;
pub mod net;
pub mod oauth;
mod platform;
pub mod proxy;
pub mod redact;
pub mod transport;
pub mod windows;

pub use platform::Platform;

//! The relay's business: keys, accounts, scheduling, the relay pipeline, pricing, accounting.
//!
//! *API Boundary*: this crate knows no axum and no JSON API shapes. The server hands it a parsed
//! request ([`relay::RelayRequest`]) and renders whatever it returns; the CLI calls [`admin`].

pub mod access;
pub mod account_settings;
pub mod accounts;
pub mod admin;
pub mod admin_auth;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod coord;
pub mod crypto;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod pricing;
pub mod quantity;
pub mod relay;
pub mod report;
pub mod schedule;
pub mod snapshot;
pub mod sticky;
pub mod throttle;

pub use bootstrap::rotation;
pub use relay::{Relay, RelaySettings};

// The upstream side lives in relay-upstream; these paths stay for the rest of the core.
pub use relay_upstream::{chatgpt, claude_oauth, code_assist, oauth};
pub use relay_upstream::{egress, health, proxy, redact, transport};

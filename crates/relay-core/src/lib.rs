//! The relay's business: keys, accounts, scheduling, the relay pipeline, pricing, accounting.
//!
//! *API Boundary*: this crate knows no axum and no JSON API shapes. The server hands it a parsed
//! request ([`relay::ForwardRequest`]) and renders whatever it returns; the CLI calls [`admin`].

pub mod access;
pub mod account_settings;
pub mod accounts;
pub mod admin;
pub mod admin_auth;
pub mod app;
pub mod bootstrap;
pub mod clock;
pub mod crypto;
pub mod egress;
pub mod health;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod pricing;
pub mod proxy;
pub mod quantity;
pub mod redact;
pub mod relay;
pub mod report;
pub mod rotation;
pub mod schedule;
pub mod snapshot;
pub mod sticky;
pub mod throttle;
pub mod transport;

pub use relay::{Relay, RelaySettings};

//! HTTP ingress: the routers, the per-dialect error rendering and the connection loop.
//!
//! *API Boundary*: this crate speaks HTTP and JSON shapes and calls `relay-core`; it holds no
//! business rule and touches no SQL.

mod admin;
mod connections;
mod error;
mod ingress;
mod pace;
mod serve;
mod state;

pub use ingress::{router, UNAUTHENTICATED_ROUTES};
pub use serve::{serve, BodyPace, ClientAddr, ServerSettings};
pub use state::AppState;

//! Wire formats of the AI APIs the relay speaks: SSE framing, Anthropic Messages usage and errors.
//!
//! *Architecture Invariant*: this crate does no IO and knows nothing of keys, accounts or prices.
//! Everything here is a pure function of bytes, so it can be property-tested exhaustively.

pub mod anthropic;
pub mod sse;
pub mod usage;

pub use usage::Usage;

//! Wire formats of the AI APIs the relay speaks: dialects and their error shapes, SSE framing,
//! usage extraction, and conversions between dialects.
//!
//! *Architecture Invariant*: this crate does no IO and knows nothing of keys, accounts or prices.
//! Everything here is a pure function of bytes, so it can be property-tested exhaustively.

pub mod anthropic;
pub mod convert;
pub mod dialect;
pub mod gemini;
pub mod openai;
pub mod openai_responses;
pub mod sse;
pub mod usage;

pub use dialect::{Dialect, ErrorKind};
pub use usage::Usage;

/// Model names are at most this long; everything stored from a request or a response is bounded.
pub const MAX_MODEL_NAME: usize = 256;

/// Whether `model` is a name the relay carries and stores: 1–256 printable ASCII characters,
/// no spaces. The same rule for a request's model and a model an upstream reports.
pub fn is_model_name(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MAX_MODEL_NAME
        && model.bytes().all(|byte| byte.is_ascii_graphic())
}

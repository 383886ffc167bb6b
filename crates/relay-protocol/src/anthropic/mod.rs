//! The Anthropic Messages API: the usage it reports and the conversation a request belongs to.

mod session;
mod usage;

pub use crate::usage::{StreamEnding, UsageFault};
pub use session::{session_identity, SessionIdentity, SessionSource};
pub use usage::MessagesUsageTracker;

//! The Anthropic Messages API: its error shape and the usage it reports.

mod error;
mod session;
mod usage;

pub use error::{error_body, ErrorType};
pub use session::{session_identity, SessionIdentity, SessionSource};
pub use usage::{MessagesUsageTracker, StreamEnding, UsageFault};

//! The Anthropic Messages API: its error shape and the usage it reports.

mod error;
mod session;
mod usage;

pub use error::{error_body, ErrorType};
pub use session::{session_identity, SessionSource};
pub use usage::{MessagesUsageTracker, StreamEnding};

//! The Anthropic Messages API: its error shape and the usage it reports.

mod error;
mod usage;

pub use error::{error_body, ErrorType};
pub use usage::{MessagesUsageTracker, StreamEnding};

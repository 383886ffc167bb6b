//! Conversions whose output is in the Anthropic Messages dialect.

pub mod from_openai_chat;

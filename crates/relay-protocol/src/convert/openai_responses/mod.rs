//! Conversions whose output is in the OpenAI Responses dialect.

pub mod compaction;
pub mod from_anthropic;
pub mod from_openai_chat;

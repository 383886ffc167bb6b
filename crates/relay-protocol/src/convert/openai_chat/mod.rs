//! Conversions whose output is in the OpenAI Chat Completions dialect.

pub mod from_anthropic;
pub mod from_openai_responses;

//! Conversions whose output is in the OpenAI Chat Completions dialect.

pub mod from_anthropic;

//! Conversions whose output is in the OpenAI Responses dialect.

pub mod from_anthropic;

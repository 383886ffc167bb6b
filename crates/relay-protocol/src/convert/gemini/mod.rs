//! Conversions whose output is in the Gemini API's dialect.

pub mod from_anthropic;

//! Test kit: a scripted mock of the Anthropic Messages API, standing in for the upstream
//! providers we cannot reach. Real HTTP on a random loopback port, real SSE.
//!
//! Deterministic answers: `MOCK_OK from <model>.`; a prompt containing `USE_TOOL:Bash <NONCE>`
//! gets a Bash tool call running `echo TOOLRESULT-<NONCE>`, and a turn carrying its result gets
//! `TOOL_DONE: <result>`; a request asking for JSON output (`output_config.format`) gets
//! `{"title":"Mock title"}`. Usage is realistic (cache fields included) and a pure function of
//! the request, so tests can compute what must be billed.
//!
//! [`openai::MockOpenAi`] is the same for OpenAI-compatible upstreams (OpenAI, DeepSeek, Kimi,
//! GLM, vLLM …): `POST /v1/chat/completions` (streamed like OpenAI, DeepSeek-style reasoning for
//! `*reasoner*` models) and `GET /v1/models`. [`chatgpt::MockChatGpt`] stands in for a ChatGPT
//! subscription: OpenAI's OAuth token endpoint and the ChatGPT backend's Codex endpoint.
//!
//! Faults are scripted per upstream API key (so two accounts can behave differently): push
//! [`Behavior`]s with [`MockUpstream::script`] or [`openai::MockOpenAi::script`]; unscripted
//! requests are answered normally.

// Test servers run until their test ends; nothing to drain.
#![allow(clippy::disallowed_methods)]

pub mod anthropic;
mod behavior;
pub mod chatgpt;
pub mod code_assist;
pub mod gemini;
pub mod openai;
mod proxy;
pub mod responses;

pub use anthropic::{expected_usage, Behavior, MockUpstream, MockUsage, RecordedRequest};
pub use proxy::{ProxyProtocol, TestProxy};

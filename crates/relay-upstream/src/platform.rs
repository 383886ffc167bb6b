//! The upstream platforms: the closed set the relay can send to, each with its dialect, its
//! default base URL and the models it serves when an account lists none.

use relay_protocol::Dialect;

/// Where an account's requests go: the closed set of upstream platforms. Each platform speaks
/// one [`Dialect`]; the relay converts when a client speaks another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Anthropic's API with a Console key, or any Anthropic-compatible relay via a base URL.
    Anthropic,
    /// A Claude Pro/Max subscription through its OAuth tokens (or a setup token).
    ClaudeOauth,
    /// OpenAI or any OpenAI-compatible Chat Completions host (DeepSeek, Kimi, GLM, OpenRouter,
    /// vLLM, Ollama …); the base URL is the one its docs give the OpenAI SDKs (ending in `/v1`).
    OpenAi,
}

impl Platform {
    pub const ALL: [Self; 3] = [Self::Anthropic, Self::ClaudeOauth, Self::OpenAi];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::ClaudeOauth => "claude-oauth",
            Self::OpenAi => "openai",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|platform| platform.as_str() == text)
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Anthropic | Self::ClaudeOauth => "https://api.anthropic.com",
            Self::OpenAi => "https://api.openai.com/v1",
        }
    }

    /// The protocol the platform's upstream speaks.
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Anthropic | Self::ClaudeOauth => Dialect::AnthropicMessages,
            Self::OpenAi => Dialect::OpenAiChat,
        }
    }

    /// A cheap model to test an account with when it names none.
    pub fn probe_model(self) -> &'static str {
        match self {
            Self::Anthropic | Self::ClaudeOauth => "claude-haiku-4-5",
            Self::OpenAi => "gpt-4o-mini",
        }
    }

    /// The models an account serves when the operator lists none: Claude accounts serve Claude
    /// models; an OpenAI-compatible host's models are the operator's to name (`--model`).
    pub fn default_models(self) -> &'static [&'static str] {
        match self {
            Self::Anthropic | Self::ClaudeOauth => &["claude-*"],
            Self::OpenAi => &[],
        }
    }
}

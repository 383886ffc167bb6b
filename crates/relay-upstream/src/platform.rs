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
    /// OpenAI's Responses API (`/v1/responses`, what Codex CLI speaks) with an API key, or any
    /// Responses-compatible host; the base URL as for the OpenAI SDKs (ending in `/v1`).
    OpenAiResponses,
    /// Azure OpenAI: a resource's endpoint, one deployment and an `api-version`; Chat
    /// Completions and Responses both served natively.
    AzureOpenAi,
    /// A ChatGPT subscription (Plus/Pro/Team) through its OAuth tokens, served by the ChatGPT
    /// backend's Codex endpoint (the Responses API, as Codex CLI signed in with ChatGPT uses it).
    Codex,
    /// The Gemini API with an API key (`x-goog-api-key`); the base URL is the host, the relay
    /// appends `/v1beta/models/{model}:{method}`.
    Gemini,
    /// A Google account signed in as Gemini CLI's "Login with Google" does, served by Gemini
    /// Code Assist (`/v1internal:{method}`, the Gemini API in an envelope naming the project).
    GeminiOauth,
}

impl Platform {
    pub const ALL: [Self; 8] = [
        Self::Anthropic,
        Self::ClaudeOauth,
        Self::OpenAi,
        Self::OpenAiResponses,
        Self::AzureOpenAi,
        Self::Codex,
        Self::Gemini,
        Self::GeminiOauth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::ClaudeOauth => "claude-oauth",
            Self::OpenAi => "openai",
            Self::OpenAiResponses => "openai-responses",
            Self::AzureOpenAi => "azure-openai",
            Self::Codex => "codex",
            Self::Gemini => "gemini",
            Self::GeminiOauth => "gemini-oauth",
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
            Self::OpenAi | Self::OpenAiResponses => "https://api.openai.com/v1",
            // Every resource has its own; an account must name it (`--base-url`).
            Self::AzureOpenAi => "https://RESOURCE.openai.azure.com",
            // The relay appends `/responses`, as for a Responses account.
            Self::Codex => "https://chatgpt.com/backend-api/codex",
            Self::Gemini => "https://generativelanguage.googleapis.com",
            Self::GeminiOauth => "https://cloudcode-pa.googleapis.com",
        }
    }

    /// The protocol the platform's upstream speaks.
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Anthropic | Self::ClaudeOauth => Dialect::AnthropicMessages,
            Self::OpenAi => Dialect::OpenAiChat,
            Self::OpenAiResponses | Self::Codex => Dialect::OpenAiResponses,
            Self::AzureOpenAi => Dialect::OpenAiChat,
            Self::Gemini | Self::GeminiOauth => Dialect::Gemini,
        }
    }

    /// The protocol the upstream is spoken to for a client of `client`'s dialect: its own, or
    /// the client's where the platform speaks that too (Azure: Chat and Responses).
    pub fn dialect_for(self, client: Dialect) -> Dialect {
        match (self, client) {
            (Self::AzureOpenAi, Dialect::OpenAiResponses) => Dialect::OpenAiResponses,
            _ => self.dialect(),
        }
    }

    /// A cheap model to test an account with when it names none.
    pub fn probe_model(self) -> &'static str {
        match self {
            Self::Anthropic | Self::ClaudeOauth => "claude-haiku-4-5",
            Self::OpenAi => "gpt-4o-mini",
            Self::OpenAiResponses => "gpt-5-mini",
            Self::AzureOpenAi => "gpt-4o-mini",
            Self::Codex => "gpt-5-codex",
            Self::Gemini | Self::GeminiOauth => "gemini-2.5-flash",
        }
    }

    /// The models an account serves when the operator lists none: Claude accounts serve Claude
    /// models; an OpenAI-compatible host's models are the operator's to name (`--model`); a
    /// Responses account serves OpenAI's GPT, o-series and Codex models; a ChatGPT subscription
    /// the GPT and Codex models Codex offers it.
    pub fn default_models(self) -> &'static [&'static str] {
        match self {
            Self::Anthropic | Self::ClaudeOauth => &["claude-*"],
            Self::OpenAi => &[],
            Self::OpenAiResponses | Self::AzureOpenAi => &["gpt-*", "o1*", "o3*", "o4*", "codex-*"],
            Self::Codex => &["gpt-*", "codex-*"],
            Self::Gemini | Self::GeminiOauth => &["gemini-*"],
        }
    }
}

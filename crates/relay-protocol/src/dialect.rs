//! The API dialects the relay speaks and the error vocabulary every one of them renders: the core
//! says *what* went wrong ([`ErrorKind`]); the edge says it in the caller's words
//! ([`error_body`]).

use serde::Serialize;

/// A wire protocol, as a client speaks it to the relay or an upstream speaks it to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// OpenAI Chat Completions (`/v1/chat/completions`), spoken by most OpenAI-compatible hosts.
    OpenAiChat,
    /// OpenAI Responses (`/v1/responses`), Codex CLI's protocol.
    OpenAiResponses,
    /// The Gemini API (`/v1beta/models/{model}:generateContent`).
    Gemini,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AnthropicMessages => "anthropic",
            Self::OpenAiChat => "openai-chat",
            Self::OpenAiResponses => "openai-responses",
            Self::Gemini => "gemini",
        }
    }
}

/// What went wrong, independent of any dialect; each kind has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    /// A budget or quota of the caller is exhausted (clients do not retry a 402).
    Billing,
    Permission,
    NotFound,
    RequestTooLarge,
    /// The request itself arrived too slowly.
    RequestTimeout,
    RateLimit,
    Api,
    BadGateway,
    ServiceUnavailable,
    Timeout,
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::Billing => 402,
            Self::Permission => 403,
            Self::NotFound => 404,
            Self::RequestTimeout => 408,
            Self::RequestTooLarge => 413,
            Self::RateLimit => 429,
            Self::Api => 500,
            Self::BadGateway => 502,
            Self::ServiceUnavailable => 503,
            Self::Timeout => 504,
            Self::Overloaded => 529,
        }
    }

    /// The kind an upstream's status stands for (used when an upstream error is re-rendered in
    /// another dialect).
    pub fn from_status(status: u16) -> Self {
        match status {
            400 | 422 => Self::InvalidRequest,
            401 => Self::Authentication,
            402 => Self::Billing,
            403 => Self::Permission,
            404 => Self::NotFound,
            408 => Self::RequestTimeout,
            413 => Self::RequestTooLarge,
            429 => Self::RateLimit,
            502 => Self::BadGateway,
            503 => Self::ServiceUnavailable,
            504 => Self::Timeout,
            529 => Self::Overloaded,
            _ => Self::Api,
        }
    }

    /// Anthropic's `error.type`.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Billing => "billing_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Api | Self::BadGateway | Self::ServiceUnavailable => "api_error",
            Self::Timeout | Self::RequestTimeout => "timeout_error",
            Self::Overloaded => "overloaded_error",
        }
    }

    /// OpenAI's `error.type` and `error.code`, as its API sends them.
    pub fn openai_type_and_code(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidRequest | Self::RequestTooLarge | Self::RequestTimeout => {
                ("invalid_request_error", None)
            }
            Self::Authentication => ("invalid_request_error", Some("invalid_api_key")),
            Self::Permission => ("invalid_request_error", Some("permission_denied")),
            Self::NotFound => ("invalid_request_error", Some("not_found")),
            Self::Billing => ("insufficient_quota", Some("insufficient_quota")),
            Self::RateLimit => ("requests", Some("rate_limit_exceeded")),
            Self::Api | Self::BadGateway | Self::ServiceUnavailable | Self::Timeout => {
                ("server_error", None)
            }
            Self::Overloaded => ("server_error", Some("overloaded")),
        }
    }

    /// Google's canonical status name, as the Gemini API sends it.
    pub fn gemini_status(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::RequestTooLarge => "INVALID_ARGUMENT",
            Self::Authentication => "UNAUTHENTICATED",
            Self::Permission => "PERMISSION_DENIED",
            Self::NotFound => "NOT_FOUND",
            Self::Billing | Self::RateLimit | Self::Overloaded => "RESOURCE_EXHAUSTED",
            Self::RequestTimeout | Self::Timeout => "DEADLINE_EXCEEDED",
            Self::ServiceUnavailable | Self::BadGateway => "UNAVAILABLE",
            Self::Api => "INTERNAL",
        }
    }

    /// Whether waiting cannot change the answer (clients are told not to retry).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Authentication
                | Self::Permission
                | Self::InvalidRequest
                | Self::NotFound
                | Self::RequestTooLarge
        )
    }
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicDetail<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct AnthropicDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiDetail<'a>,
}

#[derive(Serialize)]
struct OpenAiDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct GeminiEnvelope<'a> {
    error: GeminiDetail<'a>,
}

#[derive(Serialize)]
struct GeminiDetail<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
}

/// An error body in `dialect`'s shape (Anthropic `{"type":"error","error":{type,message}}`,
/// OpenAI `{"error":{message,type,param,code}}`, Gemini `{"error":{code,message,status}}`).
pub fn error_body(dialect: Dialect, kind: ErrorKind, message: &str, request_id: &str) -> Vec<u8> {
    let body = match dialect {
        Dialect::AnthropicMessages => serde_json::to_vec(&AnthropicEnvelope {
            kind: "error",
            error: AnthropicDetail {
                kind: kind.anthropic_type(),
                message,
            },
            request_id,
        }),
        Dialect::OpenAiChat | Dialect::OpenAiResponses => {
            let (kind_name, code) = kind.openai_type_and_code();
            serde_json::to_vec(&OpenAiEnvelope {
                error: OpenAiDetail {
                    message,
                    kind: kind_name,
                    param: None,
                    code,
                },
            })
        }
        Dialect::Gemini => serde_json::to_vec(&GeminiEnvelope {
            error: GeminiDetail {
                code: kind.status(),
                message,
                status: kind.gemini_status(),
            },
        }),
    };
    // Serializing a struct of strings cannot fail; fall back to a fixed body rather than panic.
    body.unwrap_or_else(|_| br#"{"error":{"message":"internal error"}}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(dialect: Dialect, kind: ErrorKind) -> serde_json::Value {
        serde_json::from_slice(&error_body(dialect, kind, "bad \"key\"", "req_1")).unwrap()
    }

    #[test]
    fn each_dialect_has_its_own_shape_and_escapes_the_message() {
        let anthropic = rendered(Dialect::AnthropicMessages, ErrorKind::Authentication);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "authentication_error");
        assert_eq!(anthropic["error"]["message"], "bad \"key\"");
        assert_eq!(anthropic["request_id"], "req_1");

        let openai = rendered(Dialect::OpenAiChat, ErrorKind::Authentication);
        assert_eq!(openai["error"]["message"], "bad \"key\"");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["code"], "invalid_api_key");
        assert!(openai["error"]["param"].is_null());

        let gemini = rendered(Dialect::Gemini, ErrorKind::RateLimit);
        assert_eq!(gemini["error"]["code"], 429);
        assert_eq!(gemini["error"]["status"], "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn statuses_round_trip_through_kinds() {
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Authentication,
            ErrorKind::Billing,
            ErrorKind::Permission,
            ErrorKind::NotFound,
            ErrorKind::RequestTimeout,
            ErrorKind::RequestTooLarge,
            ErrorKind::RateLimit,
            ErrorKind::Api,
            ErrorKind::BadGateway,
            ErrorKind::ServiceUnavailable,
            ErrorKind::Timeout,
            ErrorKind::Overloaded,
        ] {
            assert_eq!(ErrorKind::from_status(kind.status()), kind);
        }
    }
}

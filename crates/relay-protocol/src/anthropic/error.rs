//! Anthropic's error envelope: `{"type":"error","error":{"type":…,"message":…},"request_id":…}`.

use serde::Serialize;

/// The error types Anthropic documents, each with the HTTP status it travels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
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

impl ErrorType {
    pub fn as_str(self) -> &'static str {
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
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Detail<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// Renders an error body in Anthropic's shape.
pub fn error_body(error_type: ErrorType, message: &str, request_id: &str) -> Vec<u8> {
    let envelope = Envelope {
        kind: "error",
        error: Detail {
            kind: error_type.as_str(),
            message,
        },
        request_id,
    };
    // Serializing a struct of strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_anthropic_shape_and_escapes_the_message() {
        let body = error_body(ErrorType::Authentication, "bad \"key\"", "req_1");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["error"]["type"], "authentication_error");
        assert_eq!(value["error"]["message"], "bad \"key\"");
        assert_eq!(value["request_id"], "req_1");
    }
}

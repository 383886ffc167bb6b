//! What the client is told when the relay answers itself: a key's refusal in words the holder
//! can act on, and the answer once every account failed. Dialect-neutral ([`RelayError`]); the
//! server renders it in the caller's shape.

use http::header::{self, HeaderValue};
use relay_protocol::{Dialect, ErrorKind};

use super::{RelayBody, RelayError, RelayResponse};
use crate::limits::Refusal;
use relay_upstream::attempt::AttemptFailure;

/// What the client gets once no account is left: a JSON 429/529 from the upstream passes
/// through (its message and `retry-after` help the client), said in the client's dialect;
/// anything else is said in our words, never with the upstream's body (which may be an HTML page
/// or name the account).
pub(super) fn failure(
    failure: AttemptFailure,
    client: Dialect,
    upstream: Dialect,
) -> Result<RelayResponse, RelayError> {
    match failure {
        AttemptFailure::Connect => Err(RelayError::new(
            ErrorKind::BadGateway,
            "the upstream could not be reached",
        )),
        AttemptFailure::Timeout => Err(RelayError::new(
            ErrorKind::Timeout,
            "the upstream did not answer in time",
        )),
        AttemptFailure::Interrupted => Err(RelayError::new(
            ErrorKind::BadGateway,
            "the upstream closed the connection before responding",
        )),
        AttemptFailure::Credentials => Err(RelayError::new(
            ErrorKind::BadGateway,
            "the upstream account's credentials could not be renewed",
        )),
        AttemptFailure::Status {
            status,
            headers,
            body,
        } => {
            let retry_after_s =
                crate::health::retry_after(&headers).map(|delay| delay.as_secs().max(1));
            let is_json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/json"));
            match status.as_u16() {
                429 | 529
                    if is_json && serde_json::from_slice::<serde_json::Value>(&body).is_ok() =>
                {
                    let passthrough = client == upstream;
                    let mut client_headers =
                        relay_upstream::adapter::client_response_headers(&headers, passthrough);
                    let body = if passthrough {
                        crate::redact::json_body(&body)
                    } else {
                        client_headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        super::convert::error_body(client, upstream, status.as_u16(), &body)
                    };
                    Ok(RelayResponse {
                        status,
                        headers: client_headers,
                        body: RelayBody::Buffered(body),
                    })
                }
                429 => Err(RelayError {
                    retry_after_s,
                    ..RelayError::new(
                        ErrorKind::RateLimit,
                        "the upstream is rate limiting requests",
                    )
                }),
                529 => Err(RelayError {
                    retry_after_s,
                    ..RelayError::new(ErrorKind::Overloaded, "the upstream is overloaded")
                }),
                401 | 403 => Err(RelayError::new(
                    ErrorKind::BadGateway,
                    "the upstream rejected the relay's account credentials",
                )),
                code => Err(RelayError::new(
                    ErrorKind::BadGateway,
                    format!("the upstream failed with status {code}"),
                )),
            }
        }
    }
}

/// `$12.50`, `$0.000001`: exact, with at least two decimals.
fn usd(nano_usd: i64) -> String {
    let exact = crate::pricing::format_usd(nano_usd);
    let trimmed = exact.trim_end_matches('0');
    let decimals = trimmed
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len());
    let padded = format!("{trimmed}{}", "0".repeat(2usize.saturating_sub(decimals)));
    format!("${padded}")
}

fn seconds_until(at_ms: i64, now_ms: i64) -> u64 {
    u64::try_from((at_ms - now_ms).max(0))
        .unwrap_or(0)
        .div_ceil(1000)
        .max(1)
}

/// A refusal in words the key holder can act on: which limit, and when it frees up.
pub(super) fn refusal(refusal: &Refusal, now_ms: i64) -> RelayError {
    let rate_limited = |message: String, retry_after_ms: i64| RelayError {
        retry_after_s: Some(seconds_until(now_ms + retry_after_ms, now_ms)),
        ..RelayError::new(ErrorKind::RateLimit, message)
    };
    match refusal {
        Refusal::Concurrency { limit } => RelayError {
            retry_after_s: Some(1),
            ..RelayError::new(
                ErrorKind::RateLimit,
                format!("this key allows {limit} requests at a time; wait for one to finish"),
            )
        },
        Refusal::RateRequests {
            limit,
            retry_after_ms,
        } => rate_limited(
            format!("this key's limit of {limit} requests per window is reached"),
            *retry_after_ms,
        ),
        Refusal::RateTokens {
            limit,
            retry_after_ms,
        } => rate_limited(
            format!("this key's limit of {limit} tokens per window is reached"),
            *retry_after_ms,
        ),
        Refusal::RateCost {
            limit,
            retry_after_ms,
        } => rate_limited(
            format!("this key's limit of {} per window is reached", usd(*limit)),
            *retry_after_ms,
        ),
        Refusal::Expired => {
            RelayError::new(ErrorKind::Authentication, "this relay key has expired")
        }
        Refusal::PeriodCost {
            period,
            limit,
            resets_at_ms,
        } => RelayError::new(
            ErrorKind::Billing,
            format!(
                "this key's {} cost limit of {} is reached; it resets in {} s (at Unix time {})",
                period.label(),
                usd(*limit),
                seconds_until(*resets_at_ms, now_ms),
                resets_at_ms / 1000
            ),
        ),
        Refusal::TotalCost { limit } => RelayError::new(
            ErrorKind::Billing,
            format!("this key's total cost limit of {} is used up", usd(*limit)),
        ),
        Refusal::TokenQuota { limit } => RelayError::new(
            ErrorKind::Billing,
            format!("this key's quota of {limit} tokens is used up"),
        ),
        Refusal::LimitsUnavailable => RelayError {
            retry_after_s: Some(1),
            ..RelayError::new(
                ErrorKind::ServiceUnavailable,
                "the relay cannot check this key's limits right now (its shared state does not answer); try again shortly",
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_in_refusals_are_exact() {
        assert_eq!(usd(12_500_000_000), "$12.50");
        assert_eq!(usd(1_000), "$0.000001");
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(3_000_000_000), "$3.00");
    }
}

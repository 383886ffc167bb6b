//! One classification of upstream outcomes into what happens to the account. Pure: the relay
//! applies the verdict to the account's runtime state and logs it with its evidence.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Rate-limit resets further away than this are taken as this (a wrong header must not take an
/// account out for months).
pub const MAX_COOLDOWN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Same-account retries of a 529 before trying another account.
pub const OVERLOAD_RETRIES: u32 = 2;
/// Server errors or connect failures in a row that eject an account.
pub const EJECT_AFTER_FAILURES: u32 = 3;
const EJECTION_BASE: Duration = Duration::from_secs(30);
const EJECTION_MAX: Duration = Duration::from_secs(600);
const UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(1800);
const FORBIDDEN_COOLDOWN: Duration = Duration::from_secs(600);

/// What an upstream outcome means for the account that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    Healthy,
    /// Rate limited until `until_ms`, for one model family or the whole account.
    RateLimited {
        until_ms: i64,
        family: Option<&'static str>,
        reason: &'static str,
    },
    /// Overloaded: retry the same account after a pause, no cooldown.
    Overloaded,
    /// Credentials refused: out for a while (an API key does not heal by itself, but an
    /// operator's fix should not wait for a restart).
    Unauthorized { until_ms: i64 },
    /// The organization is disabled or OAuth is not allowed: out until an operator resets it.
    Blocked,
    /// A server error or connect failure: counts toward ejection.
    Failing,
}

/// The `anthropic-ratelimit-unified-reset` time (Unix seconds) in ms.
fn unified_reset_ms(headers: &HeaderMap) -> Option<i64> {
    let seconds: i64 = headers
        .get("anthropic-ratelimit-unified-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    seconds.checked_mul(1000)
}

fn says_blocked(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("organization has been disabled")
        || text.contains("oauth authentication is currently not allowed")
}

fn says_quota_exhausted(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).contains("insufficient_quota")
}

fn clamp_until(until_ms: i64, now_ms: i64) -> i64 {
    let max = now_ms + i64::try_from(MAX_COOLDOWN.as_millis()).unwrap_or(i64::MAX / 2);
    until_ms.clamp(now_ms + 1000, max)
}

/// Classifies an upstream status (with its headers and body excerpt) for an account.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    family: Option<&'static str>,
    default_cooldown: Duration,
    now_ms: i64,
) -> Verdict {
    let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2);
    match status.as_u16() {
        // OpenAI's "you exceeded your current quota": billing, not pacing; waiting seconds
        // will not help, so the account sits out as long as for refused credentials.
        429 if says_quota_exhausted(body) => Verdict::RateLimited {
            until_ms: now_ms + millis(UNAUTHORIZED_COOLDOWN),
            family: None,
            reason: "quota exhausted",
        },
        429 => {
            // A ChatGPT subscription's window is used up; the body says until when.
            if let Some(reset_ms) = crate::chatgpt::usage_limit_reset_ms(body, now_ms) {
                return Verdict::RateLimited {
                    until_ms: clamp_until(reset_ms, now_ms),
                    family: None,
                    reason: "usage limit reached",
                };
            }
            if let Some(reset_ms) = unified_reset_ms(headers) {
                return Verdict::RateLimited {
                    until_ms: clamp_until(reset_ms, now_ms),
                    family,
                    reason: "unified limit",
                };
            }
            if let Some(delay) = retry_after(headers) {
                return Verdict::RateLimited {
                    until_ms: clamp_until(now_ms + millis(delay), now_ms),
                    family: None,
                    reason: "retry-after",
                };
            }
            // Google (Gemini, Code Assist): the delay is in the body's RetryInfo.
            if let Some(delay) = google_retry_delay(body) {
                return Verdict::RateLimited {
                    until_ms: clamp_until(now_ms + millis(delay), now_ms),
                    family: None,
                    reason: "retry info",
                };
            }
            match openai_reset(headers) {
                Some(delay) => Verdict::RateLimited {
                    until_ms: clamp_until(now_ms + millis(delay), now_ms),
                    family: None,
                    reason: "x-ratelimit-reset",
                },
                None => Verdict::RateLimited {
                    until_ms: clamp_until(now_ms + millis(default_cooldown), now_ms),
                    family: None,
                    reason: "no reset given",
                },
            }
        }
        529 => Verdict::Overloaded,
        400 | 403 if says_blocked(body) => Verdict::Blocked,
        401 => Verdict::Unauthorized {
            until_ms: now_ms + millis(UNAUTHORIZED_COOLDOWN),
        },
        403 => Verdict::RateLimited {
            until_ms: now_ms + millis(FORBIDDEN_COOLDOWN),
            family: None,
            reason: "forbidden",
        },
        500..=599 => Verdict::Failing,
        _ => Verdict::Healthy,
    }
}

/// How long an account is ejected for its `ejections`-th time in a row: 30 s, doubling, at most
/// ten minutes.
pub fn ejection_time(previous_ejections: u32) -> Duration {
    EJECTION_BASE
        .saturating_mul(
            1u32.checked_shl(previous_ejections.min(16))
                .unwrap_or(u32::MAX),
        )
        .min(EJECTION_MAX)
}

/// The pause before the `attempt`-th same-account retry of an overloaded account.
pub fn overload_backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * u64::from(attempt.max(1)))
}

/// The delay a Google error body names in its `RetryInfo` detail (`"retryDelay": "31s"`).
pub fn google_retry_delay(body: &[u8]) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["error"]["details"]
        .as_array()?
        .iter()
        .filter(|detail| {
            detail["@type"]
                .as_str()
                .is_some_and(|kind| kind.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|detail| {
            detail["retryDelay"]
                .as_str()?
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()
        })
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(|seconds| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER_S)))
}

/// The delay an upstream asked for with `retry-after` (seconds form).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        // A day at most: anything longer is an upstream fault, not advice.
        .map(|seconds| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER_S)))
}

const MAX_RETRY_AFTER_S: f64 = 86_400.0;

/// OpenAI's (and compatible hosts') `x-ratelimit-reset-requests` / `-tokens` (durations such as
/// `1s`, `6m0s`, `20ms`): the reset of the exhausted limit (`x-ratelimit-remaining-* = 0`), or
/// the later of the two when none says which.
pub fn openai_reset(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let limits = ["requests", "tokens"].map(|limit| {
        let reset = text(&format!("x-ratelimit-reset-{limit}")).and_then(parse_go_duration);
        let exhausted = text(&format!("x-ratelimit-remaining-{limit}"))
            .is_some_and(|remaining| remaining.trim() == "0");
        (reset, exhausted)
    });
    let exhausted = limits
        .iter()
        .filter(|(_, exhausted)| *exhausted)
        .filter_map(|(reset, _)| *reset)
        .max();
    exhausted
        .or_else(|| limits.iter().filter_map(|(reset, _)| *reset).max())
        .map(|delay| delay.min(Duration::from_secs_f64(MAX_RETRY_AFTER_S)))
}

/// `1h2m3.5s`, `6m0s`, `20ms`, `1.5s`: a sum of decimal numbers with units h, m, s, ms.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut seconds = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        seconds += number * scale;
        rest = &rest[unit_len..];
    }
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER_S)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NOW: i64 = 1_800_000_000_000;

    fn classify_with(
        status: u16,
        headers: &[(&'static str, &str)],
        body: &str,
        family: Option<&'static str>,
    ) -> Verdict {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        classify(
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
            family,
            Duration::from_secs(30),
            NOW,
        )
    }

    #[test]
    fn rate_limits_cool_until_the_reset_the_upstream_gave() {
        let reset = (NOW / 1000 + 3600).to_string();
        assert_eq!(
            classify_with(
                429,
                &[("anthropic-ratelimit-unified-reset", &reset)],
                "",
                Some("opus")
            ),
            Verdict::RateLimited {
                until_ms: NOW + 3_600_000,
                family: Some("opus"),
                reason: "unified limit"
            }
        );
        assert_eq!(
            classify_with(429, &[("retry-after", "7")], "", Some("opus")),
            Verdict::RateLimited {
                until_ms: NOW + 7_000,
                family: None,
                reason: "retry-after"
            }
        );
        assert_eq!(
            classify_with(429, &[], "", None),
            Verdict::RateLimited {
                until_ms: NOW + 30_000,
                family: None,
                reason: "no reset given"
            }
        );
        // A reset a year away is clamped to a week; one in the past to a second.
        let far = (NOW / 1000 + 365 * 86_400).to_string();
        assert!(matches!(
            classify_with(429, &[("anthropic-ratelimit-unified-reset", &far)], "", None),
            Verdict::RateLimited { until_ms, .. } if until_ms == NOW + 7 * 86_400_000
        ));
        let past = (NOW / 1000 - 10).to_string();
        assert!(matches!(
            classify_with(429, &[("anthropic-ratelimit-unified-reset", &past)], "", None),
            Verdict::RateLimited { until_ms, .. } if until_ms == NOW + 1000
        ));
    }

    #[test]
    fn bans_overloads_auth_and_server_errors_are_told_apart() {
        let banned = r#"{"type":"error","error":{"type":"permission_error","message":"This organization has been disabled."}}"#;
        assert_eq!(classify_with(403, &[], banned, None), Verdict::Blocked);
        assert_eq!(
            classify_with(
                400,
                &[],
                "OAuth authentication is currently not allowed for this organization",
                None
            ),
            Verdict::Blocked
        );
        assert!(matches!(
            classify_with(403, &[], "{}", None),
            Verdict::RateLimited {
                reason: "forbidden",
                ..
            }
        ));
        assert_eq!(classify_with(529, &[], "", None), Verdict::Overloaded);
        assert!(matches!(
            classify_with(401, &[], "", None),
            Verdict::Unauthorized { .. }
        ));
        assert_eq!(classify_with(502, &[], "", None), Verdict::Failing);
        assert_eq!(classify_with(400, &[], "{}", None), Verdict::Healthy);
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        assert_eq!(ejection_time(0), Duration::from_secs(30));
        assert_eq!(ejection_time(1), Duration::from_secs(60));
        assert_eq!(ejection_time(3), Duration::from_secs(240));
        assert_eq!(ejection_time(10), Duration::from_secs(600));
        assert_eq!(ejection_time(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn an_exhausted_openai_quota_is_not_a_30_second_pause() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("1"));
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                &headers,
                body,
                None,
                Duration::from_secs(30),
                NOW
            ),
            Verdict::RateLimited {
                until_ms: NOW + 1_800_000,
                family: None,
                reason: "quota exhausted"
            }
        );
    }

    #[test]
    fn openai_reset_headers_name_the_exhausted_limit() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("6m0s"),
        );
        headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1.5s"));
        assert_eq!(openai_reset(&headers), Some(Duration::from_secs(360)));
        headers.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("0"),
        );
        assert_eq!(openai_reset(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("later"), None);
        assert_eq!(parse_go_duration("5"), None);
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"{}",
            None,
            Duration::from_secs(30),
            NOW,
        );
        assert_eq!(
            verdict,
            Verdict::RateLimited {
                until_ms: NOW + 1500,
                family: None,
                reason: "x-ratelimit-reset"
            }
        );
    }

    #[test]
    fn a_google_retry_info_names_the_cooldown() {
        let body = br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31.5s"}]}}"#;
        assert_eq!(
            google_retry_delay(body),
            Some(Duration::from_millis(31_500))
        );
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            body,
            None,
            Duration::from_secs(30),
            1_000_000,
        );
        assert_eq!(
            verdict,
            Verdict::RateLimited {
                until_ms: 1_031_500,
                family: None,
                reason: "retry info"
            }
        );
        assert_eq!(google_retry_delay(b"{}"), None);
    }
}

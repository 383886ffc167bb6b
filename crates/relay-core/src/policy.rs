//! A relay key's limits, as the operator sets them. Stored as one JSON document per key so new
//! policy fields need no schema change; absent fields mean "no limit".

use serde::{Deserialize, Serialize};

/// Limits of one relay key. Money is in nano-USD, like every amount in the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyPolicy {
    /// Requests in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// The sliding window the three `rate_*` limits apply to, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_window_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_cost_nano_usd: Option<i64>,
    /// Cost per UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_cost_nano_usd: Option<i64>,
    /// Cost over the key's whole life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_cost_nano_usd: Option<i64>,
    /// Tokens of every kind over the key's whole life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_quota: Option<u64>,
}

impl KeyPolicy {
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| error.to_string())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Whether any rate limit is set (they need a window).
    pub fn has_rate_limits(&self) -> bool {
        self.rate_requests.is_some()
            || self.rate_tokens.is_some()
            || self.rate_cost_nano_usd.is_some()
    }

    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.has_rate_limits() && self.rate_window_secs.is_none() {
            return Err("rate limits need a window (--rate-window, e.g. 60s or 5h)".into());
        }
        if self.rate_window_secs == Some(0) {
            return Err("the rate window must be at least one second".into());
        }
        Ok(())
    }
}

/// Parses a dollar amount ("12", "0.5", "3.25") into nano-USD exactly.
pub fn parse_usd(text: &str) -> Result<i64, String> {
    let invalid = || format!("'{text}' is not a dollar amount such as 10 or 2.50");
    let text = text.trim().trim_start_matches('$');
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
    {
        return Err(invalid());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let fraction_nanos: i64 = format!("{fraction:0<9}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(1_000_000_000)
        .and_then(|nanos| nanos.checked_add(fraction_nanos))
        .ok_or_else(invalid)
}

/// Parses a duration such as `90s`, `15m`, `5h`, `7d` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let invalid = || format!("'{text}' is not a duration such as 60s, 15m, 5h or 7d");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(invalid()),
    };
    number.checked_mul(scale).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_exactly() {
        assert_eq!(parse_usd("12"), Ok(12_000_000_000));
        assert_eq!(parse_usd("0.5"), Ok(500_000_000));
        assert_eq!(parse_usd("$3.25"), Ok(3_250_000_000));
        assert_eq!(parse_usd(".000000001"), Ok(1));
        for bad in ["", "abc", "1.2.3", "-1", "1.0000000001"] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("60s"), Ok(60));
        assert_eq!(parse_duration_secs("5h"), Ok(18_000));
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        assert!(parse_duration_secs("5").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("3y").is_err());
    }

    #[test]
    fn policy_round_trips_and_validates() {
        let policy = KeyPolicy {
            concurrency: Some(2),
            rate_window_secs: Some(60),
            rate_requests: Some(10),
            ..KeyPolicy::default()
        };
        assert_eq!(KeyPolicy::from_json(&policy.to_json()), Ok(policy.clone()));
        assert_eq!(KeyPolicy::from_json("{}"), Ok(KeyPolicy::default()));
        assert!(policy.validate().is_ok());
        let windowless = KeyPolicy {
            rate_requests: Some(1),
            ..KeyPolicy::default()
        };
        assert!(windowless.validate().is_err());
    }
}

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
    /// Cost per week; the week starts Monday 00:00 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly_cost_nano_usd: Option<i64>,
    /// Cost per calendar month (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_cost_nano_usd: Option<i64>,
    /// Cost per week of one model family (e.g. Opus), with its own reset moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_weekly: Option<FamilyWeeklyLimit>,
    /// The APIs the key may use; absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<Service>>,
    /// Models the key may use (exact ids, or a prefix ending in `*`); absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Models the key may not use (same patterns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_models: Option<Vec<String>>,
    /// Clients the key may be used from: `claude-code`, `codex-cli`, `gemini-cli`, or a
    /// User-Agent pattern `ua:<glob>` (`*` matches anything); absent means any client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_clients: Option<Vec<String>>,
    /// Client addresses (CIDR or single address) the key may be used from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
    /// The only upstream account this key's requests go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedicated_account: Option<String>,
    /// The group of accounts this key's requests go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_group: Option<String>,
    /// The key stops working at this moment (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// The key stops working this long after its first use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_after_first_use_secs: Option<u64>,
}

/// A weekly cost limit on one model family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyWeeklyLimit {
    /// `opus`, `sonnet` or `haiku`.
    pub family: String,
    pub cost_nano_usd: i64,
    /// 0 = Monday … 6 = Sunday (UTC).
    #[serde(default)]
    pub reset_weekday: u8,
    #[serde(default)]
    pub reset_hour: u8,
}

/// The client-facing APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Claude,
    Openai,
    Gemini,
}

impl Service {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "claude" => Ok(Self::Claude),
            "openai" => Ok(Self::Openai),
            "gemini" => Ok(Self::Gemini),
            other => Err(format!(
                "unknown service '{other}'; use claude, openai or gemini"
            )),
        }
    }
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
        let money = [
            ("the rate cost limit", self.rate_cost_nano_usd),
            ("the daily cost limit", self.daily_cost_nano_usd),
            ("the total cost limit", self.total_cost_nano_usd),
            ("the weekly cost limit", self.weekly_cost_nano_usd),
            ("the monthly cost limit", self.monthly_cost_nano_usd),
            (
                "the family weekly cost limit",
                self.family_weekly.as_ref().map(|limit| limit.cost_nano_usd),
            ),
        ];
        for (name, limit) in money {
            if limit.is_some_and(|limit| limit < 0) {
                return Err(format!("{name} cannot be negative"));
            }
        }
        if self
            .dedicated_account
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err("the dedicated account needs a name".into());
        }
        if self
            .account_group
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err("the account group needs a name".into());
        }
        if self.has_rate_limits() && self.rate_window_secs.is_none() {
            return Err("rate limits need a window (--rate-window, e.g. 60s or 5h)".into());
        }
        if self.rate_window_secs == Some(0) {
            return Err("the rate window must be at least one second".into());
        }
        for cidr in self.allowed_ips.iter().flatten() {
            relay_upstream::net::Cidr::parse(cidr)?;
        }
        for client in self.allowed_clients.iter().flatten() {
            ClientRule::parse(client)?;
        }
        if let Some(family) = &self.family_weekly {
            if !crate::model::FAMILIES.contains(&family.family.as_str()) {
                return Err(format!(
                    "unknown model family '{}'; use opus, sonnet or haiku",
                    family.family
                ));
            }
            if family.reset_weekday > 6 || family.reset_hour > 23 {
                return Err(
                    "the family reset is a weekday 0-6 (Monday = 0) and an hour 0-23".into(),
                );
            }
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

/// Parses `2026-12-31` (midnight UTC) or `2026-12-31T18:30:00Z` into Unix milliseconds; the
/// year is 1 to 9999.
pub fn parse_date_ms(text: &str) -> Result<i64, String> {
    let invalid = || format!("'{text}' is not a date such as 2026-12-31 or 2026-12-31T18:30:00Z");
    let text = text.trim();
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(invalid)?)),
        None => (text, None),
    };
    let numbers = |part: &str, separator: char, count: usize| -> Result<Vec<i64>, String> {
        let values: Vec<i64> = part
            .split(separator)
            .map(|value| value.parse::<i64>().map_err(|_| invalid()))
            .collect::<Result<_, _>>()?;
        if values.len() == count {
            Ok(values)
        } else {
            Err(invalid())
        }
    };
    let ymd = numbers(date, '-', 3)?;
    let (year, month, day) = (ymd[0], ymd[1], ymd[2]);
    // Four-digit years: the day and millisecond arithmetic below cannot overflow.
    if !(1..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(invalid());
    }
    let days = crate::clock::days_from_civil(year, month, day);
    // Reject dates like 2026-02-30 that normalise to another day.
    let (y, m, d) = crate::clock::civil_from_days(days);
    if (y, m, d) != (year, month, day) {
        return Err(invalid());
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let hms = numbers(time, ':', 3)?;
            if hms[0] > 23 || hms[1] > 59 || hms[2] > 59 || hms.iter().any(|v| *v < 0) {
                return Err(invalid());
            }
            hms[0] * 3600 + hms[1] * 60 + hms[2]
        }
    };
    Ok(days * 86_400_000 + seconds * 1000)
}

/// Parses a duration such as `90s`, `15m`, `5h`, `7d` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let invalid = || format!("'{text}' is not a duration such as 60s, 15m, 5h or 7d");
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
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

/// One entry of `allowed_clients`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRule {
    ClaudeCode,
    CodexCli,
    GeminiCli,
    UserAgent(String),
}

impl ClientRule {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "claude-code" => Ok(Self::ClaudeCode),
            "codex-cli" => Ok(Self::CodexCli),
            "gemini-cli" => Ok(Self::GeminiCli),
            other => match other.strip_prefix("ua:") {
                Some(pattern) if !pattern.is_empty() => Ok(Self::UserAgent(pattern.to_owned())),
                _ => Err(format!(
                    "unknown client '{other}'; use claude-code, codex-cli, gemini-cli or ua:<pattern>"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_limits_and_empty_names_are_refused() {
        for policy in [
            KeyPolicy {
                total_cost_nano_usd: Some(-1),
                ..KeyPolicy::default()
            },
            KeyPolicy {
                daily_cost_nano_usd: Some(i64::MIN),
                ..KeyPolicy::default()
            },
            KeyPolicy {
                dedicated_account: Some("  ".into()),
                ..KeyPolicy::default()
            },
            KeyPolicy {
                account_group: Some(String::new()),
                ..KeyPolicy::default()
            },
        ] {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
        assert!(KeyPolicy {
            total_cost_nano_usd: Some(0),
            ..KeyPolicy::default()
        }
        .validate()
        .is_ok());
    }

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
    fn dates_parse_in_utc() {
        assert_eq!(parse_date_ms("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_date_ms("2026-11-22T12:00:00Z"), Ok(1_795_348_800_000));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "tomorrow",
            "2026-11-22T12:00:00",
            "2026-11-22T25:00:00Z",
            // Found by the `key_policy` fuzz target: the milliseconds overflowed an i64 (a panic
            // in debug builds, a wrapped expiry in release ones).
            "5555555561-1-5",
            "10000-01-01",
            "0-01-01",
        ] {
            assert!(parse_date_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_date_ms("9999-12-31"), Ok(253_402_214_400_000));
        assert_eq!(parse_date_ms("0001-01-01"), Ok(-62_135_596_800_000));
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

//! A subscription's usage windows as its upstream reports them on every response: Claude's
//! `anthropic-ratelimit-unified-5h-*`/`-7d-*` statuses, Codex's `x-codex-primary-*` (the short
//! window, five hours today) and `x-codex-secondary-*` (the weekly one) percentages. The relay
//! keeps the last report per account, prefers other accounts while a window is near its limit,
//! and rests an account whose window is used up until it resets.

use http::HeaderMap;

/// A Codex window used this much is near its limit (Claude says so itself: `allowed_warning`).
const WARNING_PERCENT: f64 = 90.0;

/// What the last response said about a subscription's windows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UsageWindows {
    pub five_hour_status: Option<String>,
    pub five_hour_reset_ms: Option<i64>,
    pub seven_day_status: Option<String>,
    pub seven_day_reset_ms: Option<i64>,
    /// A ChatGPT subscription's short window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<UsageWindow>,
    /// A ChatGPT subscription's long window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary: Option<UsageWindow>,
}

/// One of Codex's windows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageWindow {
    pub used_percent: f64,
    pub window_minutes: Option<i64>,
    pub reset_ms: Option<i64>,
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

fn number(headers: &HeaderMap, name: &str) -> Option<f64> {
    text(headers, name)?
        .parse::<f64>()
        .ok()
        .filter(|value| value.is_finite())
}

/// Whole ms from seconds, within a year of `base_ms` (a wrong header must not overflow or rest an
/// account for ever; `health::MAX_COOLDOWN` bounds what a reset can do).
fn seconds_ms(seconds: f64, base_ms: i64) -> i64 {
    base_ms.saturating_add((seconds.clamp(0.0, 365.0 * 86_400.0) * 1000.0) as i64)
}

/// One Codex window's headers: used percent, reset time, reset delay, length.
struct WindowHeaders {
    used_percent: &'static str,
    reset_at: &'static str,
    reset_after_seconds: &'static str,
    window_minutes: &'static str,
}

const PRIMARY: WindowHeaders = WindowHeaders {
    used_percent: "x-codex-primary-used-percent",
    reset_at: "x-codex-primary-reset-at",
    reset_after_seconds: "x-codex-primary-reset-after-seconds",
    window_minutes: "x-codex-primary-window-minutes",
};

const SECONDARY: WindowHeaders = WindowHeaders {
    used_percent: "x-codex-secondary-used-percent",
    reset_at: "x-codex-secondary-reset-at",
    reset_after_seconds: "x-codex-secondary-reset-after-seconds",
    window_minutes: "x-codex-secondary-window-minutes",
};

fn codex_window(headers: &HeaderMap, names: &WindowHeaders, now_ms: i64) -> Option<UsageWindow> {
    let used_percent = number(headers, names.used_percent)?;
    let reset_ms = number(headers, names.reset_at)
        .map(|at| seconds_ms(at, 0))
        .or_else(|| {
            number(headers, names.reset_after_seconds).map(|after| seconds_ms(after, now_ms))
        });
    Some(UsageWindow {
        used_percent: used_percent.clamp(0.0, 100.0),
        window_minutes: number(headers, names.window_minutes).map(|minutes| minutes as i64),
        reset_ms,
    })
}

impl UsageWindows {
    /// Reads the window headers; `None` when the response carries none.
    pub fn from_headers(headers: &HeaderMap, now_ms: i64) -> Option<Self> {
        let owned = |name: &str| text(headers, name).map(str::to_owned);
        let reset = |name: &str| {
            text(headers, name)
                .and_then(|value| value.parse::<i64>().ok())
                .and_then(|seconds| seconds.checked_mul(1000))
        };
        let windows = Self {
            five_hour_status: owned("anthropic-ratelimit-unified-5h-status"),
            five_hour_reset_ms: reset("anthropic-ratelimit-unified-5h-reset"),
            seven_day_status: owned("anthropic-ratelimit-unified-7d-status"),
            seven_day_reset_ms: reset("anthropic-ratelimit-unified-7d-reset"),
            primary: codex_window(headers, &PRIMARY, now_ms),
            secondary: codex_window(headers, &SECONDARY, now_ms),
        };
        (windows != Self::default()).then_some(windows)
    }

    fn codex(&self) -> impl Iterator<Item = &UsageWindow> {
        self.primary.iter().chain(&self.secondary)
    }

    /// Whether a window is near its limit: other accounts are preferred meanwhile.
    pub fn warning(&self) -> bool {
        [&self.five_hour_status, &self.seven_day_status]
            .iter()
            .any(|status| status.as_deref().is_some_and(|status| status != "allowed"))
            || self
                .codex()
                .any(|window| window.used_percent >= WARNING_PERCENT)
    }

    /// Until when a used-up window keeps the subscription from serving (the latest reset of the
    /// windows at 100 %), if one is; a used-up window that names no reset says nothing here
    /// (the upstream's 429 will).
    pub fn exhausted_until_ms(&self) -> Option<i64> {
        self.codex()
            .filter(|window| window.used_percent >= 100.0)
            .filter_map(|window| window.reset_ms)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn claude_and_codex_windows_are_read_and_judged() {
        let now = 1_000_000;
        assert_eq!(UsageWindows::from_headers(&HeaderMap::new(), now), None);
        let claude = UsageWindows::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-5h-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-5h-reset", "1800"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(claude.five_hour_reset_ms, Some(1_800_000));
        assert!(claude.warning());
        assert_eq!(claude.exhausted_until_ms(), None);

        let codex = UsageWindows::from_headers(
            &headers(&[
                ("x-codex-primary-used-percent", "42.5"),
                ("x-codex-primary-window-minutes", "300"),
                ("x-codex-primary-reset-after-seconds", "600"),
                ("x-codex-secondary-used-percent", "12"),
                ("x-codex-secondary-window-minutes", "10080"),
                ("x-codex-secondary-reset-at", "2000"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            codex.primary,
            Some(UsageWindow {
                used_percent: 42.5,
                window_minutes: Some(300),
                reset_ms: Some(now + 600_000)
            })
        );
        assert_eq!(codex.secondary.as_ref().unwrap().reset_ms, Some(2_000_000));
        assert!(!codex.warning());

        let near =
            UsageWindows::from_headers(&headers(&[("x-codex-secondary-used-percent", "93")]), now)
                .unwrap();
        assert!(near.warning());
        assert_eq!(near.exhausted_until_ms(), None);

        let used_up = UsageWindows::from_headers(
            &headers(&[
                ("x-codex-primary-used-percent", "100"),
                ("x-codex-primary-reset-after-seconds", "90"),
                ("x-codex-secondary-used-percent", "170"),
                ("x-codex-secondary-reset-after-seconds", "1e99"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(used_up.secondary.as_ref().unwrap().used_percent, 100.0);
        assert_eq!(
            used_up.exhausted_until_ms(),
            Some(now + 365 * 86_400_000),
            "the later reset, bounded"
        );
    }
}

//! Throttling of failed key attempts per client address, so keys cannot be guessed at speed.
//!
//! Only failures count. Once an address has failed `MAX_FAILURES` times within a minute it is
//! refused — every key, valid or not, or the refusal would itself tell a guesser which keys are
//! valid — until the block ends. Thresholds are generous so that a team behind one NAT address
//! is not blocked by one misconfigured client for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;
const MAX_FAILURES: u32 = 30;
const BLOCK_MS: i64 = 60_000;
/// Addresses remembered at most; the oldest quiet ones are forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Attempts {
    window_start_ms: i64,
    failures: u32,
    blocked_until_ms: i64,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    addresses: Mutex<HashMap<IpAddr, Attempts>>,
}

impl AuthThrottle {
    /// `Err(retry_after_ms)` while the address is blocked.
    pub fn check(&self, address: Option<IpAddr>, now_ms: i64) -> Result<(), i64> {
        let Some(address) = address else {
            return Ok(());
        };
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match addresses.get(&address) {
            Some(attempts) if attempts.blocked_until_ms > now_ms => {
                Err(attempts.blocked_until_ms - now_ms)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt from `address`.
    pub fn failed(&self, address: Option<IpAddr>, now_ms: i64) {
        let Some(address) = address else {
            return;
        };
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if addresses.len() >= MAX_TRACKED && !addresses.contains_key(&address) {
            addresses.retain(|_, attempts| {
                attempts.blocked_until_ms > now_ms || now_ms - attempts.window_start_ms < WINDOW_MS
            });
            if addresses.len() >= MAX_TRACKED {
                return;
            }
        }
        let attempts = addresses.entry(address).or_insert(Attempts {
            window_start_ms: now_ms,
            failures: 0,
            blocked_until_ms: 0,
        });
        if now_ms - attempts.window_start_ms >= WINDOW_MS {
            attempts.window_start_ms = now_ms;
            attempts.failures = 0;
        }
        attempts.failures += 1;
        if attempts.failures >= MAX_FAILURES {
            attempts.blocked_until_ms = now_ms + BLOCK_MS;
            attempts.failures = 0;
            attempts.window_start_ms = now_ms;
            tracing::warn!(%address, block_s = BLOCK_MS / 1000, "too many failed key attempts; address blocked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_repeated_failures_and_freed_after_the_block() {
        let throttle = AuthThrottle::default();
        let address: Option<IpAddr> = "192.0.2.7".parse().ok();
        let other: Option<IpAddr> = "192.0.2.8".parse().ok();
        for n in 0..MAX_FAILURES - 1 {
            throttle.failed(address, i64::from(n));
            assert!(throttle.check(address, i64::from(n)).is_ok());
        }
        throttle.failed(address, 1_000);
        assert_eq!(throttle.check(address, 1_000), Err(BLOCK_MS));
        assert!(
            throttle.check(other, 1_000).is_ok(),
            "other addresses are not affected"
        );
        assert!(throttle.check(address, 1_000 + BLOCK_MS).is_ok());
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let throttle = AuthThrottle::default();
        let address: Option<IpAddr> = "192.0.2.9".parse().ok();
        for n in 0..(MAX_FAILURES * 3) {
            let at = i64::from(n) * (WINDOW_MS / i64::from(MAX_FAILURES) + 100);
            throttle.failed(address, at);
            assert!(
                throttle.check(address, at).is_ok(),
                "blocked at failure {n}"
            );
        }
    }
}

//! Throttling of failed credentials per client address, so keys and passwords cannot be
//! guessed at speed, without locking out the people who share an address.
//!
//! - Relay keys: only *failures* count, and a valid key always gets through. Relay keys are 256
//!   random bits, so letting a valid key pass a blocked address reveals nothing a guesser could
//!   use, while a team behind one NAT or reverse proxy is never locked out by one misconfigured
//!   client. Unknown keys from a blocked address are refused with 429 until the block ends.
//! - Passwords: every attempt is counted *before* the expensive check ([`AuthThrottle::attempt`])
//!   and refunded when it succeeds, so however many arrive at once, at most [`MAX_FAILURES`]
//!   passwords per address per minute are ever evaluated.
//!
//! IPv6 addresses are counted per /64 (one subscriber's usual allocation). At most
//! [`MAX_TRACKED`] addresses are remembered; when full, the address unseen the longest is
//! forgotten in O(1). An address that keeps trying stays the most recently seen, so it is never
//! the one forgotten: the table never fails open for an active guesser.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;

use crate::coord::Coordinator;

const WINDOW_MS: i64 = 60_000;
pub const MAX_FAILURES: u32 = 30;
const BLOCK_MS: i64 = 60_000;
/// Addresses remembered at most.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Attempts {
    window_start_ms: i64,
    failures: u32,
    blocked_until_ms: i64,
}

#[derive(Debug)]
pub struct AuthThrottle {
    addresses: Mutex<LruCache<IpAddr, Attempts>>,
    /// Where failures are also counted for every instance, under `kind:` (`key`, `login`).
    shared: std::sync::OnceLock<(Arc<Coordinator>, &'static str)>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
}

/// The unit an address is counted in: itself for IPv4, its /64 for IPv6.
fn counted_as(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

impl AuthThrottle {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            addresses: Mutex::new(LruCache::new(capacity.max(1))),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Counts failures on every instance too (several instances on one Redis): an address that
    /// reaches the limit across them is blocked on all. `kind` keeps key guesses and password
    /// guesses apart.
    pub fn share(&self, coord: Arc<Coordinator>, kind: &'static str) {
        let _ = self.shared.set((coord, kind));
    }

    /// The name this throttle's failures go by on Redis, if it shares them.
    pub fn shared_kind(&self) -> Option<&'static str> {
        self.shared.get().map(|(_, kind)| *kind)
    }

    /// Tells the other instances of a failure from `address` (never waits).
    pub fn share_failure(&self, address: Option<IpAddr>, now_ms: i64) {
        if let (Some((coord, kind)), Some(address)) = (self.shared.get(), address) {
            coord.send(relay_coord::Write::Failure {
                address: format!("{kind}:{}", counted_as(address)),
                now_ms,
                window_ms: WINDOW_MS,
                max: MAX_FAILURES,
                block_ms: BLOCK_MS,
            });
        }
    }

    /// Blocks an address (as counted) until `until_ms`: another instance saw it fail too often.
    pub fn block_until(&self, counted: IpAddr, until_ms: i64) {
        let mut addresses = self.addresses();
        match addresses.get_mut(&counted) {
            Some(attempts) => attempts.blocked_until_ms = attempts.blocked_until_ms.max(until_ms),
            None => {
                addresses.insert(
                    counted,
                    Attempts {
                        window_start_ms: until_ms,
                        failures: 0,
                        blocked_until_ms: until_ms,
                    },
                );
            }
        }
    }

    fn addresses(&self) -> MutexGuard<'_, LruCache<IpAddr, Attempts>> {
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(retry_after_ms)` while the address is blocked.
    pub fn check(&self, address: Option<IpAddr>, now_ms: i64) -> Result<(), i64> {
        let Some(address) = address else {
            return Ok(());
        };
        match self.addresses().get(&counted_as(address)) {
            Some(attempts) if attempts.blocked_until_ms > now_ms => {
                Err(attempts.blocked_until_ms - now_ms)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt from `address` (here and, when shared, on every instance);
    /// `Err(retry_after_ms)` if the address is (now) blocked.
    pub fn failed(&self, address: Option<IpAddr>, now_ms: i64) -> Result<(), i64> {
        let counted = self.count(address, now_ms);
        if counted.is_ok() {
            self.share_failure(address, now_ms);
        }
        counted
    }

    fn count(&self, address: Option<IpAddr>, now_ms: i64) -> Result<(), i64> {
        let Some(address) = address else {
            return Ok(());
        };
        let mut addresses = self.addresses();
        let key = counted_as(address);
        if addresses.get_mut(&key).is_none() {
            // When full, this forgets the address unseen the longest.
            addresses.insert(
                key,
                Attempts {
                    window_start_ms: now_ms,
                    failures: 0,
                    blocked_until_ms: 0,
                },
            );
        }
        let Some(attempts) = addresses.get_mut(&key) else {
            return Ok(());
        };
        if attempts.blocked_until_ms > now_ms {
            return Err(attempts.blocked_until_ms - now_ms);
        }
        if now_ms - attempts.window_start_ms >= WINDOW_MS {
            attempts.window_start_ms = now_ms;
            attempts.failures = 0;
        }
        attempts.failures += 1;
        if attempts.failures >= MAX_FAILURES {
            attempts.blocked_until_ms = now_ms + BLOCK_MS;
            attempts.failures = 0;
            attempts.window_start_ms = now_ms;
            tracing::warn!(%address, block_s = BLOCK_MS / 1000, "too many failed attempts; address blocked");
        }
        Ok(())
    }

    /// Counts an attempt before an expensive check (a password): `Err(retry_after_ms)` if the
    /// address is blocked, in which case nothing may be checked. Refund it with
    /// [`Self::succeeded`] when the check passes.
    pub fn attempt(&self, address: Option<IpAddr>, now_ms: i64) -> Result<(), i64> {
        // `count` refuses a blocked address before counting anything. Only real failures are
        // shared ([`Self::share_failure`]).
        self.count(address, now_ms)
    }

    /// Takes back the attempt counted for a check that succeeded.
    pub fn succeeded(&self, address: Option<IpAddr>) {
        let Some(address) = address else {
            return;
        };
        if let Some(attempts) = self.addresses().get_mut(&counted_as(address)) {
            attempts.failures = attempts.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn an_address_is_blocked_after_repeated_failures_and_freed_after_the_block() {
        let throttle = AuthThrottle::default();
        let address = ip("192.0.2.7");
        for n in 0..MAX_FAILURES - 1 {
            assert!(throttle.failed(address, i64::from(n)).is_ok());
            assert!(throttle.check(address, i64::from(n)).is_ok());
        }
        assert!(throttle.failed(address, 1_000).is_ok());
        assert_eq!(throttle.check(address, 1_000), Err(BLOCK_MS));
        assert_eq!(throttle.failed(address, 2_000), Err(BLOCK_MS - 1_000));
        assert!(
            throttle.check(ip("192.0.2.8"), 1_000).is_ok(),
            "other addresses are not affected"
        );
        assert!(throttle.check(address, 1_000 + BLOCK_MS).is_ok());
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let throttle = AuthThrottle::default();
        let address = ip("192.0.2.9");
        for n in 0..(MAX_FAILURES * 3) {
            let at = i64::from(n) * (WINDOW_MS / i64::from(MAX_FAILURES) + 100);
            assert!(
                throttle.failed(address, at).is_ok(),
                "blocked at failure {n}"
            );
        }
    }

    #[test]
    fn attempts_count_before_the_check_and_successes_are_refunded() {
        let throttle = AuthThrottle::default();
        let address = ip("192.0.2.10");
        for _ in 0..100 {
            throttle.attempt(address, 0).unwrap();
            throttle.succeeded(address);
        }
        let admitted = (0..100)
            .filter(|_| throttle.attempt(address, 0).is_ok())
            .count();
        assert_eq!(admitted, MAX_FAILURES as usize);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let throttle = AuthThrottle::default();
        for n in 0..MAX_FAILURES {
            let _ = throttle.failed(ip(&format!("2001:db8:1:2::{n:x}")), 0);
        }
        assert!(throttle.check(ip("2001:db8:1:2:ffff::1"), 0).is_err());
        assert!(throttle.check(ip("2001:db8:1:3::1"), 0).is_ok());
        for _ in 0..MAX_FAILURES {
            let _ = throttle.failed(ip("::ffff:198.51.100.4"), 0);
        }
        assert!(throttle.check(ip("198.51.100.4"), 0).is_err());
    }

    #[test]
    fn a_full_table_forgets_the_quietest_address_never_an_active_one() {
        let throttle = AuthThrottle::with_capacity(100);
        let guesser = ip("203.0.113.1");
        for n in 0..MAX_FAILURES {
            let _ = throttle.failed(guesser, i64::from(n));
        }
        assert!(throttle.check(guesser, 100).is_err());
        // A flood of other addresses, while the guesser keeps trying.
        for n in 0..10_000u32 {
            let _ = throttle.failed(Some(IpAddr::V4(n.into())), 100);
            if n % 50 == 0 {
                assert!(throttle.failed(guesser, 100).is_err());
            }
        }
        assert!(throttle.check(guesser, 100).is_err(), "still blocked");
        assert!(throttle.addresses().len() <= 100);
    }
}

//! Sticky sessions: a conversation stays on the account that served it, because prompt caches
//! live per upstream account. A binding is a preference, never a pin: an account that cannot
//! serve is skipped; a short spill to another account leaves the binding as it was; only an
//! account that is gone, disabled or out for a while loses its conversations.
//!
//! Bindings are namespaced by relay key, so two tenants with identical prompts never share one.

use std::collections::HashMap;
use std::sync::Mutex;

use relay_protocol::anthropic::SessionIdentity;
use sha2::{Digest, Sha256};

/// How long an unused binding lives; every use renews it.
pub const STICKY_TTL_MS: i64 = 3_600_000;
/// Cooling longer than this moves a conversation for good; shorter is a temporary spill.
pub const SPILL_MS: i64 = 60_000;
/// Bindings kept at most (expired ones are dropped first).
const MAX_BINDINGS: usize = 500_000;

/// A conversation, scoped to one relay key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    pub fn new(key_id: &str, identity: &SessionIdentity<'_>) -> Self {
        let (kind, first, second) = identity.parts();
        let mut hasher = Sha256::new();
        for part in [key_id, kind, first, second] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

#[derive(Debug)]
struct Binding {
    account_id: String,
    expires_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct StickySessions {
    bindings: Mutex<HashMap<SessionId, Binding>>,
}

impl StickySessions {
    /// The account a live binding points at, renewing it.
    pub fn get(&self, session: SessionId, now_ms: i64) -> Option<String> {
        let mut bindings = self
            .bindings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let binding = bindings.get_mut(&session)?;
        if binding.expires_at_ms <= now_ms {
            bindings.remove(&session);
            return None;
        }
        binding.expires_at_ms = now_ms + STICKY_TTL_MS;
        Some(binding.account_id.clone())
    }

    pub fn bind(&self, session: SessionId, account_id: &str, now_ms: i64) {
        let mut bindings = self
            .bindings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if bindings.len() >= MAX_BINDINGS && !bindings.contains_key(&session) {
            bindings.retain(|_, binding| binding.expires_at_ms > now_ms);
            if bindings.len() >= MAX_BINDINGS {
                return;
            }
        }
        bindings.insert(
            session,
            Binding {
                account_id: account_id.to_owned(),
                expires_at_ms: now_ms + STICKY_TTL_MS,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_per_key_renewed_on_use_and_expire() {
        let sticky = StickySessions::default();
        let alice = SessionId::new("key-a", &SessionIdentity::Session("1"));
        let bob = SessionId::new("key-b", &SessionIdentity::Session("1"));
        assert_ne!(
            SessionId::new("key-a", &SessionIdentity::System("1")),
            alice,
            "different rungs never collide"
        );
        assert_ne!(alice, bob, "two keys never share a binding");
        sticky.bind(alice, "acct-1", 0);
        assert_eq!(sticky.get(bob, 0), None);
        assert_eq!(
            sticky.get(alice, STICKY_TTL_MS - 1).as_deref(),
            Some("acct-1")
        );
        // Renewed at TTL - 1: still alive almost two TTLs after binding.
        assert_eq!(
            sticky.get(alice, 2 * STICKY_TTL_MS - 2).as_deref(),
            Some("acct-1")
        );
        assert_eq!(sticky.get(alice, 4 * STICKY_TTL_MS), None);
    }
}

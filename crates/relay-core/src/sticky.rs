//! Sticky sessions: a conversation stays on the account that served it, because prompt caches
//! live per upstream account. A binding is a preference, never a pin: an account that cannot
//! serve is skipped; a short spill to another account leaves the binding as it was; only an
//! account that is gone, disabled or out for a while loses its conversations.
//!
//! Bindings are namespaced by relay key, so two tenants with identical prompts never share one.
//! At most [`MAX_BINDINGS`] are kept; when full, the binding unused the longest is forgotten in
//! O(1) (the conversation is bound afresh on its next turn).

use std::sync::{Mutex, MutexGuard};

use hashlink::LruCache;
use relay_protocol::anthropic::SessionIdentity;
use sha2::{Digest, Sha256};

/// How long an unused binding lives; every use renews it.
pub const STICKY_TTL_MS: i64 = 3_600_000;
/// Cooling longer than this moves a conversation for good; shorter is a temporary spill.
pub const SPILL_MS: i64 = 60_000;
/// Bindings kept at most.
pub const MAX_BINDINGS: usize = 500_000;

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

    /// As text, for a shared store's key.
    pub fn to_hex(self) -> String {
        use std::fmt::Write as _;
        self.0
            .iter()
            .fold(String::with_capacity(32), |mut text, byte| {
                let _ = write!(text, "{byte:02x}");
                text
            })
    }
}

#[derive(Debug)]
struct Binding {
    account_id: String,
    expires_at_ms: i64,
}

#[derive(Debug)]
pub struct StickySessions {
    bindings: Mutex<LruCache<SessionId, Binding>>,
}

impl Default for StickySessions {
    fn default() -> Self {
        Self::with_capacity(MAX_BINDINGS)
    }
}

impl StickySessions {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bindings: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    fn bindings(&self) -> MutexGuard<'_, LruCache<SessionId, Binding>> {
        self.bindings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The account a live binding points at, renewing it.
    pub fn get(&self, session: SessionId, now_ms: i64) -> Option<String> {
        let mut bindings = self.bindings();
        let binding = bindings.get_mut(&session)?;
        if binding.expires_at_ms <= now_ms {
            bindings.remove(&session);
            return None;
        }
        binding.expires_at_ms = now_ms + STICKY_TTL_MS;
        Some(binding.account_id.clone())
    }

    /// Binds (or rebinds) a conversation; when full, the binding unused the longest goes.
    pub fn bind(&self, session: SessionId, account_id: &str, now_ms: i64) {
        self.bindings().insert(
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

    #[test]
    fn a_full_table_keeps_binding_new_conversations_and_forgets_the_quietest() {
        let sticky = StickySessions::with_capacity(10);
        let kept = SessionId::new("k", &SessionIdentity::Session("kept"));
        sticky.bind(kept, "acct-kept", 0);
        for n in 0..1_000 {
            let text = n.to_string();
            sticky.bind(
                SessionId::new("k", &SessionIdentity::Session(&text)),
                "acct",
                0,
            );
            if n % 5 == 0 {
                assert!(sticky.get(kept, 0).is_some());
            }
        }
        let newest = SessionId::new("k", &SessionIdentity::Session("999"));
        assert_eq!(
            sticky.get(newest, 0).as_deref(),
            Some("acct"),
            "never fails open"
        );
        assert_eq!(sticky.get(kept, 0).as_deref(), Some("acct-kept"));
        let oldest = SessionId::new("k", &SessionIdentity::Session("0"));
        assert_eq!(sticky.get(oldest, 0), None);
        assert!(sticky.bindings().len() <= 10);
    }
}

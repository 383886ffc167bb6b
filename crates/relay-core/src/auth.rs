//! Who is calling: a presented relay key resolved against the current snapshot (one HMAC, one
//! hash-map lookup), with failed attempts counted per client address ([`crate::throttle`]). The
//! ingress asks this before anything reaches the relay pipeline.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::crypto::KeyHasher;
use crate::keys::{KeyEntry, KeyRejection};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::throttle::AuthThrottle;

/// Resolves relay keys; shared by every request.
#[derive(Debug)]
pub struct KeyAuthenticator {
    snapshots: Arc<SnapshotStore>,
    hasher: KeyHasher,
    throttle: Arc<AuthThrottle>,
}

impl KeyAuthenticator {
    pub fn new(snapshots: Arc<SnapshotStore>, hasher: KeyHasher) -> Self {
        Self {
            snapshots,
            hasher,
            throttle: Arc::new(AuthThrottle::default()),
        }
    }

    /// Failed keys per client address.
    pub fn throttle(&self) -> &Arc<AuthThrottle> {
        &self.throttle
    }

    /// Resolves the presented relay key. A valid key always gets through; an unknown one counts
    /// against the client's address, which is refused for a while after too many.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> Result<Arc<KeyEntry>, KeyRejection> {
        let resolved = resolve(&self.snapshots.current(), &self.hasher, presented);
        if resolved == Err(KeyRejection::Unknown) {
            self.throttle
                .failed(client_ip, now_ms())
                .map_err(|retry_after_ms| KeyRejection::Throttled { retry_after_ms })?;
        }
        resolved
    }

    /// The key a presented secret belongs to, active or not (for a key's view of itself).
    pub fn find(&self, presented: Option<&str>) -> Option<Arc<KeyEntry>> {
        let presented = presented.filter(|key| !key.is_empty())?;
        self.snapshots
            .current()
            .keys
            .get(&self.hasher.digest(presented))
            .cloned()
    }
}

/// A presented key against one snapshot.
fn resolve(
    snapshot: &Snapshot,
    hasher: &KeyHasher,
    presented: Option<&str>,
) -> Result<Arc<KeyEntry>, KeyRejection> {
    let presented = presented
        .filter(|key| !key.is_empty())
        .ok_or(KeyRejection::Missing)?;
    let entry = snapshot
        .keys
        .get(&hasher.digest(presented))
        .ok_or(KeyRejection::Unknown)?;
    if entry.active {
        Ok(entry.clone())
    } else {
        Err(KeyRejection::Disabled)
    }
}

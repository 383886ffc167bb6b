//! Admin sign-in for the admin API: password login (argon2id), bearer session tokens stored
//! only as hashes, and throttled attempts per client address.
//!
//! A password check costs ~19 MiB and tens of milliseconds, so it is guarded twice: the
//! throttle counts each attempt before it is checked (at most 30 per address per minute are
//! evaluated however many arrive at once), and checks run on [`PASSWORD_CHECKERS`] dedicated
//! threads, so a burst from many addresses queues instead of raising memory.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use rand::RngCore;
use relay_store::{Store, StoreError};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::throttle::AuthThrottle;

const SESSION_MS: i64 = 12 * 3_600_000;
pub const SESSION_PREFIX: &str = "cra_";

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong username or password")]
    Invalid,
    #[error("too many failed sign-ins from this address; try again later")]
    Throttled { retry_after_ms: i64 },
    #[error("too many sign-ins are being checked; try again in a moment")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct AdminAuth {
    store: Store,
    throttle: Arc<AuthThrottle>,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A hash to verify against when the user does not exist, so that a wrong username takes as
/// long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| crate::bootstrap::hash_password("not-a-real-password").unwrap_or_default())
}

/// Threads that check passwords; more checks wait their turn.
pub const PASSWORD_CHECKERS: usize = 2;
/// Password checks waiting at most; beyond, a sign-in is refused as busy (503) instead of
/// waiting behind a flood from many addresses.
pub const PASSWORD_QUEUE: usize = 64;

type PasswordCheck = (String, String, tokio::sync::oneshot::Sender<bool>);

/// The queue of the password-checking threads, started on first use.
fn password_checkers() -> &'static std::sync::mpsc::SyncSender<PasswordCheck> {
    static QUEUE: OnceLock<std::sync::mpsc::SyncSender<PasswordCheck>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<PasswordCheck>(PASSWORD_QUEUE);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for n in 0..PASSWORD_CHECKERS {
            let receiver = receiver.clone();
            let started = std::thread::Builder::new()
                .name(format!("password-check-{n}"))
                .spawn(move || {
                    // The algorithm's memory, allocated once per thread and reused.
                    let mut memory = Vec::new();
                    loop {
                        let next = receiver
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok((password, stored, reply)) = next else {
                            return;
                        };
                        let _ = reply.send(verify_with_memory(
                            password.as_bytes(),
                            &stored,
                            &mut memory,
                        ));
                    }
                });
            if let Err(error) = started {
                tracing::error!(%error, "cannot start a password-checking thread");
            }
        }
        sender
    })
}

/// Checks `password` against an argon2 PHC string, computing in `memory` (grown to the size the
/// hash's parameters need and kept), so repeated checks do not each allocate and abandon tens
/// of megabytes. The comparison is constant-time.
fn verify_with_memory(password: &[u8], stored: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
        return false;
    };
    memory.resize(params.block_count(), Block::default());
    let mut computed = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut computed, &mut memory[..])
        .is_ok()
        && Output::new(&computed).is_ok_and(|computed| computed == expected)
}

/// Whether `password` matches the argon2id `stored` hash, checked off the async workers on the
/// bounded pool; `None` when [`PASSWORD_QUEUE`] checks already wait (or the pool is gone).
async fn verify_password(password: String, stored: String) -> Option<bool> {
    let (reply, verified) = tokio::sync::oneshot::channel();
    password_checkers()
        .try_send((password, stored, reply))
        .ok()?;
    Some(verified.await.unwrap_or(false))
}

impl AdminAuth {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            throttle: Arc::new(AuthThrottle::default()),
        }
    }

    /// Failed sign-ins per client address.
    pub fn throttle(&self) -> &Arc<AuthThrottle> {
        &self.throttle
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Session, LoginError> {
        let now = now_ms();
        self.throttle
            .attempt(client_ip, now)
            .map_err(|retry_after_ms| LoginError::Throttled { retry_after_ms })?;
        let admin = self.store.admin_by_name(username).await?;
        let stored = admin.as_ref().map_or_else(
            || dummy_hash().to_owned(),
            |admin| admin.password_hash.clone(),
        );
        let Some(verified) = verify_password(password.to_owned(), stored).await else {
            // Not checked: the attempt does not count against the address.
            self.throttle.succeeded(client_ip);
            return Err(LoginError::Busy);
        };
        let Some(admin) = admin.filter(|_| verified) else {
            self.throttle.share_failure(client_ip, now);
            return Err(LoginError::Invalid);
        };
        self.throttle.succeeded(client_ip);
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = format!(
            "{SESSION_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let expires_at_ms = now + SESSION_MS;
        self.store
            .insert_admin_session(&token_hash(&token), &admin.id, now, expires_at_ms)
            .await?;
        Ok(Session {
            token,
            expires_at_ms,
        })
    }

    /// The admin a bearer token belongs to, if it is a live session.
    pub async fn authenticate(&self, token: &str) -> Result<Option<String>, StoreError> {
        if !token.starts_with(SESSION_PREFIX) {
            return Ok(None);
        }
        self.store
            .admin_for_session(&token_hash(token), now_ms())
            .await
    }

    pub async fn logout(&self, token: &str) -> Result<(), StoreError> {
        self.store.delete_admin_session(&token_hash(token)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_verified_against_its_hash_with_reused_memory() {
        let stored = crate::bootstrap::hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_with_memory(b"correct horse", &stored, &mut memory));
        assert!(!verify_with_memory(b"correct horsf", &stored, &mut memory));
        assert!(!verify_with_memory(
            b"correct horse",
            "$argon2id$junk",
            &mut memory
        ));
        assert!(verify_with_memory(b"correct horse", &stored, &mut memory));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_sign_ins_is_refused_beyond_the_queue_and_the_rest_checked() {
        let stored = crate::bootstrap::hash_password("correct horse").unwrap();
        let flood = PASSWORD_QUEUE * 4;
        let checks = (0..flood).map(|n| {
            let password = if n % 2 == 0 { "correct horse" } else { "wrong" };
            verify_password(password.to_owned(), stored.clone())
        });
        let results = futures_util::future::join_all(checks).await;
        let checked = results.iter().filter(|result| result.is_some()).count();
        assert!(
            (PASSWORD_QUEUE..flood).contains(&checked),
            "{checked} of {flood} checked: the queue holds {PASSWORD_QUEUE}, the rest are refused"
        );
        for (n, result) in results.iter().enumerate() {
            if let Some(verified) = result {
                assert_eq!(*verified, n % 2 == 0, "check {n}");
            }
        }
        // Once drained, sign-ins are checked again.
        assert_eq!(
            verify_password("correct horse".to_owned(), stored).await,
            Some(true)
        );
    }
}

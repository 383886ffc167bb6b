//! Admin sign-in for the admin API: password login (argon2id), bearer session tokens stored
//! only as hashes, and throttled failures per client address.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
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

impl AdminAuth {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            throttle: Arc::new(AuthThrottle::default()),
        }
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Session, LoginError> {
        let now = now_ms();
        self.throttle
            .check(client_ip, now)
            .map_err(|retry_after_ms| LoginError::Throttled { retry_after_ms })?;
        let admin = self.store.admin_by_name(username).await?;
        let stored = admin.as_ref().map_or_else(
            || dummy_hash().to_owned(),
            |admin| admin.password_hash.clone(),
        );
        let password = password.to_owned();
        // argon2id is deliberately slow: keep it off the async workers.
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let Some(admin) = admin.filter(|_| verified) else {
            self.throttle.failed(client_ip, now);
            return Err(LoginError::Invalid);
        };
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

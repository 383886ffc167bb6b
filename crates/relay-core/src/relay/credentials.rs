//! An account's credential at send time: a Claude subscription's access token, refreshed ahead of
//! expiry with exactly one refresh in flight per account, and written back sealed.

use super::Relay;
use crate::accounts::AccountEntry;
use crate::clock::now_ms;
use crate::oauth::{self, OAuthSession};
use relay_upstream::attempt::AttemptFailure;

impl Relay {
    /// A subscription account's access token, refreshed ahead of expiry (or now, if `force`).
    /// Only one refresh per account is ever in flight: a rotating refresh token used twice is
    /// burnt, so whoever waits for the lock finds the new token and uses it.
    pub(super) async fn access_token(
        &self,
        account: &AccountEntry,
        session: &OAuthSession,
        force: bool,
    ) -> Result<String, AttemptFailure> {
        let seen = session.tokens();
        if !force && !seen.needs_refresh(now_ms()) {
            return Ok(seen.access_token);
        }
        let _refreshing = session.refresh_lock().await;
        let now = now_ms();
        let current = session.tokens();
        if current.access_token != seen.access_token && !current.needs_refresh(now) {
            return Ok(current.access_token);
        }
        let Some(refresh_token) = current.refresh_token.clone() else {
            // A setup token: nothing to refresh with.
            return Ok(current.access_token);
        };
        match oauth::refresh(
            &self.client_for(account),
            &self.settings.oauth,
            &refresh_token,
            now,
        )
        .await
        {
            Ok(tokens) => {
                session.set(tokens.clone());
                tracing::info!(account_id = %account.id, "refreshed subscription tokens");
                if let Err(error) = self
                    .snapshots
                    .save_account_secret(&account.id, &tokens.to_json())
                    .await
                {
                    // The tokens work in this process; a restart would need a new sign-in.
                    tracing::error!(account_id = %account.id, %error, "cannot store refreshed tokens");
                }
                Ok(tokens.access_token)
            }
            Err(error) => {
                tracing::error!(account_id = %account.id, %error, "subscription token refresh failed");
                Err(AttemptFailure::Credentials)
            }
        }
    }
}

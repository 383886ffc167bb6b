//! An account's credential at send time: a subscription's access token (Claude or ChatGPT),
//! refreshed ahead of expiry with exactly one refresh in flight per account — across every
//! instance that shares a Redis — and written back sealed.

use std::time::Duration;

use super::Relay;
use crate::accounts::AccountEntry;
use crate::clock::now_ms;
use crate::oauth::{self, OAuthSession};
use relay_upstream::attempt::AttemptFailure;

/// How long a request waits for another instance's refresh of the same account.
const OTHER_REFRESH_WAIT: Duration = Duration::from_secs(15);

impl Relay {
    /// A subscription account's access token, refreshed ahead of expiry (or now, if `force`).
    /// Only one refresh per account is ever in flight: a rotating refresh token used twice is
    /// burnt, so whoever waits for the lock finds the new token and uses it.
    pub(super) async fn access_token(
        &self,
        account: &AccountEntry,
        session: &OAuthSession,
        force: bool,
    ) -> Result<oauth::OAuthTokens, AttemptFailure> {
        let seen = session.tokens();
        if !force && !seen.needs_refresh(now_ms()) {
            return Ok(seen);
        }
        let _refreshing = session.refresh_lock().await;
        let now = now_ms();
        let current = session.tokens();
        if current.access_token != seen.access_token && !current.needs_refresh(now) {
            return Ok(current);
        }
        if current.refresh_token.is_none() {
            // A setup token: nothing to refresh with.
            return Ok(current);
        }
        let Some(coord) = self.coord() else {
            return self.refresh(account, session, now).await;
        };
        // One refresh on all instances: whoever holds the lock refreshes and stores the
        // tokens; the others wait and take them from the store.
        let started = tokio::time::Instant::now();
        loop {
            let locked = coord.lock_refresh(&account.id).await;
            if let Some(fresh) = self.stored_if_fresh(account, session, &seen, force).await {
                if locked == Ok(true) {
                    coord.unlock_refresh(&account.id).await;
                }
                return Ok(fresh);
            }
            match locked {
                Ok(true) => {
                    let refreshed = self.refresh(account, session, now_ms()).await;
                    coord.unlock_refresh(&account.id).await;
                    return refreshed;
                }
                Err(()) => return self.refresh(account, session, now_ms()).await,
                Ok(false) if started.elapsed() < OTHER_REFRESH_WAIT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(false) => {
                    tracing::error!(account_id = %account.id, "another instance's token refresh did not finish in time");
                    return Err(AttemptFailure::Credentials);
                }
            }
        }
    }

    /// The stored tokens, adopted, if another instance refreshed them since `seen` and they
    /// are good for a while.
    async fn stored_if_fresh(
        &self,
        account: &AccountEntry,
        session: &OAuthSession,
        seen: &oauth::OAuthTokens,
        force: bool,
    ) -> Option<oauth::OAuthTokens> {
        let stored = match self.snapshots.stored_tokens(&account.id).await {
            Ok(stored) => stored?,
            Err(error) => {
                tracing::warn!(account_id = %account.id, %error, "cannot read an account's stored tokens");
                return None;
            }
        };
        let renewed = stored.access_token != seen.access_token;
        if !renewed || (!force && stored.needs_refresh(now_ms())) {
            return None;
        }
        session.adopt_if_newer(&stored);
        Some(session.tokens())
    }

    /// Refreshes the tokens now and stores them sealed.
    async fn refresh(
        &self,
        account: &AccountEntry,
        session: &OAuthSession,
        now: i64,
    ) -> Result<oauth::OAuthTokens, AttemptFailure> {
        let current = session.tokens();
        let Some(provider) = oauth::Provider::for_platform(account.platform) else {
            return Ok(current);
        };
        match oauth::refresh(
            &self.client_for(account),
            self.settings.oauth.get(provider),
            &current,
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
                Ok(tokens)
            }
            Err(error) => {
                tracing::error!(account_id = %account.id, %error, "subscription token refresh failed");
                Err(AttemptFailure::Credentials)
            }
        }
    }
}

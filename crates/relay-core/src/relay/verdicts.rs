//! What a failed attempt does to its account: the verdict of `health::classify` applied to the
//! account's runtime state (cooldowns, blocks, ejection), each change logged and stored with its
//! evidence off the request path.

use relay_upstream::attempt::AttemptFailure;

use super::{millis, Relay, RelayRequest};
use crate::accounts::AccountEntry;
use crate::clock::now_ms;
use crate::health::{self, Verdict};
use crate::schedule::{is_routable, Candidates};

impl Relay {
    /// Records a change of an account's health, with its evidence, off the request path, and
    /// tells the other instances (a cooldown of `family` only, if one is named; `until_ms`
    /// `None` is a block).
    fn record_event(
        &self,
        account: &AccountEntry,
        kind: &'static str,
        until_ms: Option<i64>,
        family: Option<&'static str>,
        evidence: &str,
    ) {
        account.runtime.set_reason(kind, evidence);
        let event = relay_store::AccountEvent {
            account_id: account.id.clone(),
            at_ms: now_ms(),
            kind: kind.to_owned(),
            until_ms,
            evidence: evidence.to_owned(),
        };
        let snapshots = self.snapshots.clone();
        let shared = self
            .coord()
            .map(|coord| (coord.clone(), account.runtime.reset_seen_ms()));
        self.background.spawn(async move {
            if let Some((coord, reset_seen_ms)) = shared {
                let reason = format!("{}: {}", event.kind, event.evidence);
                let mark = relay_coord::Mark {
                    at_ms: event.at_ms,
                    reset_seen_ms,
                    reason: &reason,
                    cool_until_ms: until_ms.filter(|_| family.is_none()),
                    family_cool_until_ms: family.zip(until_ms),
                    blocked: until_ms.is_none(),
                };
                coord.mark(&event.account_id, &mark).await;
            }
            if let Err(error) = snapshots.store().insert_account_event(&event).await {
                tracing::warn!(%error, "cannot record an account event");
            }
        });
    }

    /// Keeps the subscription windows a response reported; a window used up rests the account
    /// until it resets (its next request would only be refused).
    pub(super) fn observe_windows(&self, account: &AccountEntry, headers: &http::HeaderMap) {
        let now = now_ms();
        let Some(windows) = crate::accounts::UsageWindows::from_headers(headers, now) else {
            return;
        };
        let exhausted = windows.exhausted_until_ms();
        account.runtime.observe_windows(windows);
        if let Some(until_ms) =
            exhausted.filter(|until| *until > account.runtime.cooling_until_ms())
        {
            let until_ms = until_ms.min(now + millis(health::MAX_COOLDOWN));
            account.runtime.cool_until(until_ms);
            self.record_event(
                account,
                "rate_limited",
                Some(until_ms),
                None,
                "a usage window is used up (100 %)",
            );
            tracing::warn!(account_id = %account.id, cooling_s = (until_ms - now) / 1000, "subscription window used up; account resting until it resets");
        }
    }

    /// Applies what a failed attempt says about its account, and logs it with the evidence.
    pub(super) fn apply_verdict(
        &self,
        account: &AccountEntry,
        failure: &AttemptFailure,
        family: Option<&'static str>,
        snapshot: &crate::snapshot::Snapshot,
        request: &RelayRequest,
    ) {
        let now = now_ms();
        let verdict = match failure {
            AttemptFailure::Status {
                status,
                headers,
                body,
            } => health::classify(
                *status,
                headers,
                body,
                family,
                self.settings.default_rate_limit_cooldown,
                now,
            ),
            AttemptFailure::Connect | AttemptFailure::Timeout | AttemptFailure::Interrupted => {
                Verdict::Failing
            }
            AttemptFailure::Credentials => Verdict::Unauthorized {
                until_ms: now + 1_800_000,
            },
        };
        let evidence = failure.evidence();
        let event = match &verdict {
            Verdict::Healthy | Verdict::Overloaded | Verdict::Failing => None,
            Verdict::RateLimited {
                until_ms, family, ..
            } => Some(("rate_limited", Some(*until_ms), *family)),
            Verdict::Unauthorized { until_ms } => Some((
                if matches!(failure, AttemptFailure::Credentials) {
                    "refresh_failed"
                } else {
                    "unauthorized"
                },
                Some(*until_ms),
                None,
            )),
            Verdict::Blocked => Some(("blocked", None, None)),
        };
        if let Some((kind, until_ms, family)) = event {
            self.record_event(account, kind, until_ms, family, &evidence);
        }
        match verdict {
            Verdict::Healthy | Verdict::Overloaded => {}
            Verdict::RateLimited {
                until_ms,
                family,
                reason,
            } => {
                match family {
                    Some(family) => account.runtime.cool_family_until(family, until_ms),
                    None => account.runtime.cool_until(until_ms),
                }
                tracing::warn!(account_id = %account.id, family = family.unwrap_or("all"), reason, cooling_s = (until_ms - now) / 1000, %evidence, "account rate limited");
            }
            Verdict::Unauthorized { until_ms } => {
                account.runtime.cool_until(until_ms);
                tracing::error!(account_id = %account.id, cooling_s = (until_ms - now) / 1000, %evidence, "upstream refused the account's credentials");
            }
            Verdict::Blocked => {
                account.runtime.block();
                tracing::error!(account_id = %account.id, %evidence, "account blocked by the upstream; out of rotation until reset");
            }
            Verdict::Failing => {
                let failures = account.runtime.record_failure();
                // Never eject the last account that could serve: a struggling pool is better
                // than none.
                let others_serve = || {
                    let candidates = Candidates {
                        dialect: request.endpoint.dialect(),
                        model: &request.model,
                        family,
                        group: request.key.policy.account_group.as_deref(),
                        dedicated: request.key.policy.dedicated_account.as_deref(),
                        excluded: &[],
                    };
                    snapshot
                        .accounts
                        .iter()
                        .any(|other| other.id != account.id && is_routable(other, &candidates, now))
                };
                if failures >= health::EJECT_AFTER_FAILURES && others_serve() {
                    let ejected_for = health::ejection_time(account.runtime.record_ejection());
                    account.runtime.cool_until(now + millis(ejected_for));
                    self.record_event(
                        account,
                        "ejected",
                        Some(now + millis(ejected_for)),
                        None,
                        &evidence,
                    );
                    tracing::warn!(account_id = %account.id, failures, ejected_s = ejected_for.as_secs(), %evidence, "account ejected after repeated failures");
                }
            }
        }
    }
}

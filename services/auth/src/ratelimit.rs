//! Rate limits of `/api/auth/*`, as Better Auth's defaults, counted in Better Auth's own
//! `rateLimit` table (`{id, key, count, lastRequest}`, its `storage: "database"` shape) so
//! every auth replica shares them.
//!
//! Better Auth 1.7 (`api/rate-limiter`, `getDefaultSpecialRules`): per client address and path
//! (`"<ip>|<path>"`, the path below `/api/auth`), at most `max` requests within `window` of
//! the last counted one: `/sign-in*`, `/sign-up*`, `/change-password*`, `/change-email*` allow
//! 3 per 10 s; `/request-password-reset`, `/send-verification-email`, `/forget-password*` 3 per
//! 60 s; every other path 100 per 10 s ([`rule_for`]). Refused requests get 429 with
//! `X-Retry-After` (seconds until the window ends). Sign-in and sign-up are counted by their
//! own operations; the gateway asks for every other route (`ConsumeRateLimit`) before it runs
//! it. Beside that, convex-edge counts failed sign-ins per account (whatever the address), so
//! a botnet cannot guess one password from many addresses, without letting anyone who knows an
//! email lock its owner out: a sign-in whose password is right is given back
//! ([`refund`]), and an address the account already has a session from (its `session` rows'
//! `ipAddress`) is not held to the account rule at all (the address rule still applies).

use std::time::Duration;

use crate::config::RateLimit;
use crate::error::AuthError;
use crate::store::{Store, StoreError};

/// At most `max` requests within `window` of the last counted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub max: u32,
    pub window: Duration,
}

/// What is being limited: the rate-limit row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A client address (as the gateway determined it) on one route path, as Better Auth keys
    /// it: `"<ip>|<path>"`; an unknown address is Better Auth's `no-trusted-ip`.
    Address { ip: &'a str, path: &'a str },
    /// One account (normalised email) on one route path: `"account:<email>|<path>"`.
    Account { email: &'a str, path: &'a str },
}

impl Subject<'_> {
    /// The `rateLimit` row's key.
    pub fn key(&self) -> String {
        match self {
            Subject::Address { ip, path } => {
                let ip = if ip.is_empty() { "no-trusted-ip" } else { ip };
                format!("{ip}|{path}")
            }
            Subject::Account { email, path } => format!("account:{email}|{path}"),
        }
    }
}

/// Better Auth's rule for a path below `/api/auth` (`"/change-password"`), with the limits of
/// `config`.
pub fn rule_for(config: &RateLimit, path: &str) -> Rule {
    let strict = ["/sign-in", "/sign-up", "/change-password", "/change-email"];
    if strict.iter().any(|p| path.starts_with(p)) {
        return config.address_rule();
    }
    if path == "/request-password-reset"
        || path == "/send-verification-email"
        || path.starts_with("/forget-password")
    {
        return Rule {
            max: config.mail_per_address,
            window: config.mail_window,
        };
    }
    Rule {
        max: config.default_max,
        window: config.default_window,
    }
}

/// Counts one request of `subject` under `rule`; [`AuthError::RateLimited`] once the window is
/// full.
pub async fn consume(store: &Store, subject: Subject<'_>, rule: Rule) -> Result<(), AuthError> {
    let now = chrono::Utc::now().timestamp_millis();
    let window_ms = i64::try_from(rule.window.as_millis()).unwrap_or(i64::MAX);
    let max = i32::try_from(rule.max).unwrap_or(i32::MAX - 1);
    let refused = store
        .consume_rate_limit(&subject.key(), now, window_ms, max)
        .await?;
    match refused {
        None => Ok(()),
        Some(last_request) => {
            let left_ms = (last_request + window_ms - now).max(1);
            let kind = match subject {
                Subject::Address { .. } => "address",
                Subject::Account { .. } => "account",
            };
            tracing::warn!(kind, "rate limited");
            Err(AuthError::RateLimited {
                retry_after_secs: (left_ms as u64).div_ceil(1000),
            })
        }
    }
}

/// Takes back one request of `subject` that [`consume`] counted (a sign-in that succeeded).
pub async fn refund(store: &Store, subject: Subject<'_>) -> Result<(), AuthError> {
    store.refund_rate_limit(&subject.key()).await?;
    Ok(())
}

/// Deletes rows no rule can still count (older than the longest window).
pub async fn prune(store: &Store, longest_window: Duration) -> Result<u64, StoreError> {
    let before = chrono::Utc::now().timestamp_millis()
        - i64::try_from(longest_window.as_millis()).unwrap_or(i64::MAX / 2);
    store.prune_rate_limits(before).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_better_auths_defaults() {
        let c = RateLimit::default();
        let rule = |max, secs| Rule {
            max,
            window: Duration::from_secs(secs),
        };
        for path in [
            "/sign-in/email",
            "/sign-up/email",
            "/change-password",
            "/change-email",
        ] {
            assert_eq!(rule_for(&c, path), rule(3, 10), "{path}");
        }
        for path in [
            "/request-password-reset",
            "/send-verification-email",
            "/forget-password",
        ] {
            assert_eq!(rule_for(&c, path), rule(3, 60), "{path}");
        }
        for path in [
            "/sign-out",
            "/update-user",
            "/reset-password",
            "/reset-password/abc",
            "/request-password-reset/x",
            "/verify-email",
        ] {
            assert_eq!(rule_for(&c, path), rule(100, 10), "{path}");
        }
    }
}

//! The session log from auth (`WatchRevocations`) applied to live data: a token whose session
//! ended, or whose user changed or was deleted after it was issued, is refused from then on,
//! and every upstream authenticated with such a token tells its listeners `AuthFailed` (client
//! sockets get `AuthError`, as Convex sends for a token it will not accept; page watches end
//! with `UNAUTHENTICATED`).
//!
//! Entries are remembered for the log's retention (sent with the end-of-backlog mark): a token
//! outlives no longer than that. The stream resumes from the last position after a break, with
//! the service's one backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::hub::Hub;

/// What a token is checked against: ended sessions and changed users, by when (unix ms).
#[derive(Debug, Default)]
pub struct Revoked {
    inner: Mutex<Entries>,
}

#[derive(Debug)]
struct Entries {
    sessions: HashMap<String, i64>,
    /// Users whose tokens issued before this time carry stale claims or a deleted user.
    users: HashMap<String, i64>,
    /// How long an entry matters.
    retention: Duration,
}

impl Default for Entries {
    fn default() -> Self {
        Entries {
            sessions: HashMap::new(),
            users: HashMap::new(),
            // Until auth says: a day covers any token lifetime.
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// One entry of the log, as it applies to tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every token of this session (`sessionId` claim).
    Session { session_id: String },
    /// Every token of this user (`sub`) issued before `before_ms`.
    User { user_id: String, before_ms: i64 },
}

impl Revocation {
    /// The entry's meaning; `None` for one that names nothing (the end-of-backlog mark).
    pub fn from_entry(entry: &pb::Revocation) -> Option<Revocation> {
        if !entry.session_id.is_empty() {
            return Some(Revocation::Session {
                session_id: entry.session_id.clone(),
            });
        }
        if !entry.user_id.is_empty() {
            return Some(Revocation::User {
                user_id: entry.user_id.clone(),
                before_ms: entry.revoked_at_ms,
            });
        }
        None
    }

    /// Whether it revokes a token of `session_id` for `subject` issued at `issued_at` (unix
    /// seconds).
    pub fn covers(&self, session_id: Option<&str>, subject: Option<&str>, issued_at: i64) -> bool {
        match self {
            Revocation::Session { session_id: s } => session_id == Some(s.as_str()),
            Revocation::User { user_id, before_ms } => {
                subject == Some(user_id.as_str()) && issued_before(issued_at, *before_ms)
            }
        }
    }
}

impl Revoked {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, revocation: &Revocation, now_ms: i64) {
        let mut entries = self.entries();
        match revocation {
            Revocation::Session { session_id } => {
                entries.sessions.insert(session_id.clone(), now_ms);
            }
            Revocation::User { user_id, before_ms } => {
                let at = entries.users.entry(user_id.clone()).or_insert(*before_ms);
                *at = (*at).max(*before_ms);
            }
        }
    }

    /// Forgets entries older than the retention auth announced.
    pub fn prune(&self, retention: Duration, now_ms: i64) {
        let mut entries = self.entries();
        entries.retention = retention;
        let oldest = now_ms - retention.as_millis() as i64;
        entries.sessions.retain(|_, at| *at >= oldest);
        entries.users.retain(|_, at| *at >= oldest);
    }

    /// Why a token of this session and user, issued at `issued_at` (unix seconds), is no longer
    /// accepted; `None` when it is.
    pub fn refuses(
        &self,
        session_id: Option<&str>,
        subject: Option<&str>,
        issued_at: i64,
    ) -> Option<&'static str> {
        let entries = self.entries();
        if session_id.is_some_and(|s| entries.sessions.contains_key(s)) {
            return Some("the session of this token has ended");
        }
        let stale = subject
            .and_then(|s| entries.users.get(s))
            .is_some_and(|before_ms| issued_before(issued_at, *before_ms));
        stale.then_some("the user of this token changed after it was issued")
    }
}

/// Follows auth's session log until `shutdown` flips, applying each entry to `revoked` and to
/// the hub's upstreams.
pub async fn follow(
    mut auth: AuthServiceClient<Channel>,
    hub: Arc<Hub>,
    revoked: Arc<Revoked>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut after = 0u64;
    let mut backoff = edge_telemetry::backoff::reconnect();
    loop {
        let request = pb::WatchRevocationsRequest {
            after_sequence: after,
        };
        let stream = tokio::select! {
            stream = auth.watch_revocations(request) => stream,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let next = tokio::select! {
                        next = stream.message() => next,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let Ok(Some(entry)) = next else { break };
                    backoff = edge_telemetry::backoff::reconnect();
                    after = after.max(entry.sequence);
                    let now = now_ms();
                    if entry.end_of_backlog {
                        revoked.prune(Duration::from_secs(entry.retention_seconds), now);
                        continue;
                    }
                    if let Some(revocation) = Revocation::from_entry(&entry) {
                        revoked.record(&revocation, now);
                        hub.revoke(&revocation, &entry.reason);
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "session log unavailable; retrying")
            }
        }
        tracing::warn!(after, "session log stream broken; resuming");
        let delay = backoff.next().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Whether a token issued at `iat` (whole unix seconds, as JWTs carry it) predates an entry
/// at `before_ms`. A token issued in the entry's own second counts as after it: the client
/// that saw its socket end fetches a fresh token within milliseconds, and refusing that one
/// would lock it out; the gateway, which fences by log position, refuses a stale one exactly.
pub fn issued_before(iat: i64, before_ms: i64) -> bool {
    iat < before_ms.div_euclid(1000)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session: &str, user: &str, at: i64) -> pb::Revocation {
        pb::Revocation {
            session_id: session.into(),
            user_id: user.into(),
            revoked_at_ms: at,
            ..Default::default()
        }
    }

    #[test]
    fn a_session_entry_refuses_every_token_of_that_session() {
        let revoked = Revoked::default();
        let r = Revocation::from_entry(&entry("s1", "u1", 5_000)).unwrap();
        revoked.record(&r, 5_000);
        assert!(revoked.refuses(Some("s1"), Some("u1"), 9).is_some());
        assert!(revoked.refuses(Some("s2"), Some("u1"), 9).is_none());
        assert!(r.covers(Some("s1"), None, 0));
    }

    #[test]
    fn a_user_entry_refuses_only_tokens_issued_before_it() {
        let revoked = Revoked::default();
        let r = Revocation::from_entry(&entry("", "u1", 10_000)).unwrap();
        revoked.record(&r, 10_000);
        assert!(revoked.refuses(Some("s"), Some("u1"), 9).is_some());
        assert!(revoked.refuses(Some("s"), Some("u1"), 10).is_none());
        // Issued in the entry's own second: after it (iat has whole seconds).
        assert!(!issued_before(10, 10_999));
        assert!(issued_before(9, 10_000));
        assert!(revoked.refuses(Some("s"), Some("u2"), 9).is_none());
        assert!(!r.covers(Some("s"), Some("u1"), 11));
    }

    #[test]
    fn the_end_of_backlog_mark_names_nothing_and_entries_expire_with_the_retention() {
        assert_eq!(Revocation::from_entry(&entry("", "", 1)), None);
        let revoked = Revoked::default();
        revoked.record(
            &Revocation::Session {
                session_id: "old".into(),
            },
            1_000,
        );
        revoked.prune(Duration::from_secs(60), 100_000);
        assert!(revoked.refuses(Some("old"), None, 0).is_none());
    }
}

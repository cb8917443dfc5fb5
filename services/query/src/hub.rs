//! The upstream connections, one per identity, created on first use and retired when idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

use crate::identity::{IdentityKey, VerifiedUser};
use crate::listener::{Attachment, Inbox};
use crate::metrics::Stats;
use crate::revocations::{Revocation, Revoked};
use crate::upstream::{self, Command, Upstream};

#[derive(Debug)]
pub struct Hub {
    upstreams: Mutex<HashMap<IdentityKey, Upstream>>,
    ws_url: String,
    tls: edge_tls::Trust,
    idle: Duration,
    /// [`crate::Config::upstream_inactivity`].
    inactivity: Duration,
    /// Largest `ModifyQuerySet` sent upstream, in bytes.
    max_message_bytes: usize,
    pub stats: Arc<Stats>,
    /// What auth's session log revoked: checked again once a listener is attached.
    revoked: Arc<Revoked>,
}

impl Hub {
    pub fn new(
        convex_url: &str,
        tls: edge_tls::Trust,
        idle: Duration,
        inactivity: Duration,
        max_message_bytes: usize,
        stats: Arc<Stats>,
        revoked: Arc<Revoked>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            upstreams: Mutex::new(HashMap::new()),
            ws_url: upstream::ws_url(convex_url),
            tls,
            idle,
            inactivity,
            max_message_bytes,
            stats,
            revoked,
        })
    }

    fn spawn(self: &Arc<Self>, identity: &IdentityKey) -> Upstream {
        let weak: Weak<Hub> = Arc::downgrade(self);
        let key = identity.clone();
        let retire: upstream::Retire = Arc::new(move |id, still_idle| {
            let Some(hub) = weak.upgrade() else {
                return true;
            };
            let mut map = hub.upstreams.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(current) if current.id == id => {
                    // Under the lock no new command can reach this upstream.
                    let idle = still_idle();
                    if idle {
                        map.remove(&key);
                    }
                    idle
                }
                _ => true,
            }
        });
        upstream::spawn(upstream::Settings {
            ws_url: self.ws_url.clone(),
            tls: self.tls.clone(),
            idle: self.idle,
            inactivity: self.inactivity,
            max_message_bytes: self.max_message_bytes,
            stats: self.stats.clone(),
            retire,
        })
    }

    /// Delivers `command` to the upstream of `identity`, starting one if needed; returns it.
    async fn send(self: &Arc<Self>, identity: &IdentityKey, mut command: Command) -> Upstream {
        loop {
            let (upstream, result) = {
                let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
                let upstream = match map.get(identity) {
                    Some(u) if !u.tx.is_closed() => u.clone(),
                    _ => {
                        let u = self.spawn(identity);
                        map.insert(identity.clone(), u.clone());
                        u
                    }
                };
                let result = upstream.tx.try_send(command);
                (upstream, result)
            };
            match result {
                Ok(()) => return upstream,
                Err(TrySendError::Full(c)) => match upstream.tx.send(c).await {
                    Ok(()) => return upstream,
                    Err(e) => command = e.0,
                },
                Err(TrySendError::Closed(c)) => command = c,
            }
        }
    }

    /// Attaches the listener of `inbox` to the upstream of `identity`. A signed-in
    /// listener's token goes first, so the upstream authenticates before the listener
    /// subscribes. The attachment detaches when dropped.
    pub async fn attach(
        self: &Arc<Self>,
        identity: &IdentityKey,
        user: Option<&VerifiedUser>,
        inbox: &Inbox,
    ) -> Attachment {
        let upstream = match (identity, user) {
            (IdentityKey::User(_), Some(u)) => {
                let token = Command::Token {
                    token: u.token.clone(),
                    expires_at: u.expires_at,
                    issued_at: u.issued_at,
                };
                let upstream = self.send(identity, token).await;
                let _ = upstream.tx.send(inbox.attach_command()).await;
                // A revocation recorded between the caller's check and this attach found no
                // upstream to tell: the log is recorded before upstreams are told, so checking
                // again now (the upstream is in the map) closes that gap.
                let refused = self.revoked.refuses(
                    u.session_id.as_deref(),
                    u.subject.as_deref(),
                    u.issued_at,
                );
                if let Some(reason) = refused {
                    let revocation = Revocation::Session {
                        session_id: u.session_id.clone().unwrap_or_default(),
                    };
                    let command = Command::Revoke {
                        revocation,
                        reason: reason.to_owned(),
                    };
                    let _ = upstream.tx.send(command).await;
                }
                upstream
            }
            _ => self.send(identity, inbox.attach_command()).await,
        };
        Attachment::new(inbox.listener(), upstream)
    }

    /// Tells every upstream whose identity the revocation covers (by its `sessionId` claim,
    /// or its `sub` for a user entry; the upstream spares a token issued after a user entry).
    pub fn revoke(&self, revocation: &Revocation, reason: &str) {
        let upstreams: Vec<Upstream> = {
            let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(identity, _)| covers(identity, revocation))
                .map(|(_, u)| u.clone())
                .collect()
        };
        for upstream in upstreams {
            let command = Command::Revoke {
                revocation: revocation.clone(),
                reason: reason.to_owned(),
            };
            let tx = upstream.tx.clone();
            // Never blocks the log; a busy upstream gets it from a task.
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(command)) = tx.try_send(command)
            {
                tokio::spawn(async move {
                    let _ = tx.send(command).await;
                });
            }
        }
    }

    /// The upstream of `identity` if one is running.
    pub fn get(&self, identity: &IdentityKey) -> Option<Upstream> {
        self.upstreams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(identity)
            .cloned()
    }
}

/// Whether `revocation` names the session or user of `identity` (the identity key is the
/// token's claims; a user entry's time is checked by the upstream against its token).
fn covers(identity: &IdentityKey, revocation: &Revocation) -> bool {
    let IdentityKey::User(claims) = identity else {
        return false;
    };
    let Ok(claims) = serde_json::from_str::<serde_json::Value>(claims) else {
        return false;
    };
    let text = |name: &str| claims.get(name).and_then(serde_json::Value::as_str);
    match revocation {
        Revocation::Session { session_id } => text("sessionId") == Some(session_id.as_str()),
        Revocation::User { user_id, .. } => text("sub") == Some(user_id.as_str()),
    }
}

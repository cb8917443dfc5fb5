//! The upstream connections, one per identity, created on first use and retired when idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

use crate::identity::{IdentityKey, VerifiedUser};
use crate::listener::{Attachment, Inbox};
use crate::metrics::Stats;
use crate::upstream::{self, Command, Upstream};

#[derive(Debug)]
pub struct Hub {
    upstreams: Mutex<HashMap<IdentityKey, Upstream>>,
    ws_url: String,
    tls: edge_tls::Trust,
    idle: Duration,
    pub stats: Arc<Stats>,
}

impl Hub {
    pub fn new(
        convex_url: &str,
        tls: edge_tls::Trust,
        idle: Duration,
        stats: Arc<Stats>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            upstreams: Mutex::new(HashMap::new()),
            ws_url: upstream::ws_url(convex_url),
            tls,
            idle,
            stats,
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
                };
                let upstream = self.send(identity, token).await;
                let _ = upstream.tx.send(inbox.attach_command()).await;
                upstream
            }
            _ => self.send(identity, inbox.attach_command()).await,
        };
        Attachment::new(inbox.listener(), upstream)
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

//! Spreads "the revocation log moved" to every open WatchRevocations stream: locally through a
//! watch channel, across replicas through Postgres `LISTEN/NOTIFY`, with a poll as the backstop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::keys::KeyManager;
use crate::store::{JWKS_CHANNEL, REVOCATION_CHANNEL, Store};

/// The newest revocation sequence this replica knows of.
#[derive(Debug, Clone)]
pub struct RevocationHub {
    latest: watch::Sender<i64>,
}

impl RevocationHub {
    pub fn new(latest: i64) -> Self {
        RevocationHub {
            latest: watch::Sender::new(latest),
        }
    }

    /// Records that the log reached `sequence`.
    pub fn publish(&self, sequence: i64) {
        self.latest.send_if_modified(|current| {
            let moved = sequence > *current;
            if moved {
                *current = sequence;
            }
            moved
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }
}

/// Every `every` until the process ends: drops session log entries older than `retention`
/// (the longest token lifetime plus a margin), and rate-limit rows older than
/// `rate_limit_window` (the longest rule's window).
pub async fn prune(
    store: Store,
    retention: Duration,
    rate_limit_window: Duration,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::zero());
        match store.prune_revocations(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned the session log"),
            Err(error) => tracing::warn!(%error, "session log pruning failed"),
        }
        if let Err(error) = crate::ratelimit::prune(&store, rate_limit_window).await {
            tracing::warn!(%error, "rate limit pruning failed");
        }
    }
}

/// Listens for revocations and key rotations from other replicas until the process ends.
/// On SQLite (one process) only the poll runs, for keys rotated by the CLI.
/// `listener` is already listening (see [`Store::listener`]); `None` polls only.
pub async fn watch_database(
    store: Store,
    mut listener: Option<PgListener>,
    hub: RevocationHub,
    keys: Arc<KeyManager>,
    poll: Duration,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let channel = match listener.as_mut() {
            Some(l) => tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => Some(n.channel().to_owned()),
                    Err(error) => {
                        tracing::warn!(%error, "notification listener failed; it reconnects");
                        None
                    }
                },
                _ = ticker.tick() => None,
            },
            None => {
                ticker.tick().await;
                None
            }
        };
        if channel.as_deref() != Some(REVOCATION_CHANNEL) {
            // A reload, then a key of our algorithm if the new set has none that can sign.
            if let Err(error) = keys.refresh_if_changed().await {
                tracing::warn!(%error, "key set refresh failed");
            } else if let Err(error) = keys.ensure_signing_key().await {
                tracing::warn!(%error, "no signing key could be made");
            }
        }
        if channel.as_deref() != Some(JWKS_CHANNEL) {
            match store.latest_revocation().await {
                Ok(seq) => hub.publish(seq),
                Err(error) => tracing::warn!(%error, "revocation poll failed"),
            }
        }
    }
}

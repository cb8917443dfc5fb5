//! The signing keys held in memory: static from `JWKS`, or dynamic from the `jwks` table and
//! reloaded only when the key-set version changes. No token operation reads the database.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use edge_keys::keyset::DEFAULT_GRACE;
use edge_keys::{Alg, KeyRow, KeySet, Secret};

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("JWKS: {0}")]
    Static(edge_keys::KeyError),
    #[error("jwks table: {0}")]
    Dynamic(edge_keys::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// From the `JWKS` variable; the database is never read for keys.
    Static,
    /// From the `jwks` table.
    Dynamic,
}

#[derive(Debug)]
pub struct KeyManager {
    mode: KeyMode,
    alg: Alg,
    secret: Secret,
    store: Store,
    publish_lead: chrono::Duration,
    current: RwLock<(Arc<KeySet>, i64)>,
    /// One key creation at a time in this process.
    creating: tokio::sync::Mutex<()>,
}

impl KeyManager {
    /// Loads the key set. In dynamic mode a key of `alg` is created when none can sign.
    /// A key signs once published for `publish_lead` (see [`KeySet::with_publish_lead`]).
    pub async fn start(
        static_jwks: Option<&str>,
        alg: Alg,
        secret: Secret,
        store: Store,
        publish_lead: Duration,
    ) -> Result<KeyManager, KeysError> {
        let publish_lead =
            chrono::Duration::from_std(publish_lead).unwrap_or(chrono::Duration::zero());
        if let Some(json) = static_jwks {
            let rows = KeyRow::parse_static(json).map_err(KeysError::Static)?;
            let set = KeySet::load(&rows, &secret, Utc::now(), DEFAULT_GRACE)
                .map_err(KeysError::Static)?
                .with_publish_lead(publish_lead);
            if !set.can_sign(alg, Utc::now()) {
                return Err(KeysError::Static(edge_keys::KeyError::NoSigningKey(alg)));
            }
            let current = RwLock::new((Arc::new(set), 0));
            return Ok(KeyManager {
                mode: KeyMode::Static,
                alg,
                secret,
                store,
                publish_lead,
                current,
                creating: tokio::sync::Mutex::new(()),
            });
        }
        let version = store.jwks_version().await?;
        let set = load(&store, &secret, publish_lead).await?;
        let manager = KeyManager {
            mode: KeyMode::Dynamic,
            alg,
            secret,
            store,
            publish_lead,
            current: RwLock::new((Arc::new(set), version)),
            creating: tokio::sync::Mutex::new(()),
        };
        manager.ensure_signing_key().await?;
        Ok(manager)
    }

    /// Dynamic mode: makes sure a key of `alg` can sign now, whoever wrote the `jwks` table
    /// (the Better Auth app may have rotated to another algorithm, or let keys expire):
    /// reloads, and creates a key when none can. Returns whether the set changed.
    pub async fn ensure_signing_key(&self) -> Result<bool, KeysError> {
        if self.mode == KeyMode::Static || self.current().can_sign(self.alg, Utc::now()) {
            return Ok(false);
        }
        let _one = self.creating.lock().await;
        let mut changed = self.refresh_if_changed().await?;
        if !self.current().can_sign(self.alg, Utc::now()) {
            let row = edge_keys::jwk::generate_row(self.alg, &self.secret, crate::store::now_ms())
                .map_err(KeysError::Dynamic)?;
            self.store.insert_jwk(&row, None).await?;
            tracing::info!(kid = %row.id, alg = %self.alg, "created a signing key");
            self.reload().await?;
            changed = true;
        }
        Ok(changed)
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key set in force; a cheap clone.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// A version number that changes with the key set.
    pub fn version(&self) -> u64 {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1 as u64
    }

    /// Reloads from the table if the key-set version moved (dynamic mode only).
    pub async fn refresh_if_changed(&self) -> Result<bool, KeysError> {
        if self.mode == KeyMode::Static {
            return Ok(false);
        }
        let version = self.store.jwks_version().await?;
        if version == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    async fn reload(&self) -> Result<(), KeysError> {
        // The version first: a change committed after this read bumps it again.
        let version = self.store.jwks_version().await?;
        let mut set = load(&self.store, &self.secret, self.publish_lead).await?;
        // A key this process publishes only now has been visible here only since now,
        // whatever its `createdAt` says.
        let now = Utc::now();
        let previous = self.current();
        let new: Vec<String> = set
            .kids()
            .filter(|kid| !previous.kids().any(|k| k == *kid))
            .map(str::to_owned)
            .collect();
        for kid in &new {
            set.published_since(kid, now);
        }
        tracing::info!(version, keys = set.len(), "reloaded the key set");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(set), version);
        Ok(())
    }
}

async fn load(
    store: &Store,
    secret: &Secret,
    publish_lead: chrono::Duration,
) -> Result<KeySet, KeysError> {
    let rows = store.jwks_rows().await?;
    Ok(KeySet::load(&rows, secret, Utc::now(), DEFAULT_GRACE)
        .map_err(KeysError::Dynamic)?
        .with_publish_lead(publish_lead))
}

/// Creates a new key, published at once; the current keys go on signing for `publish_lead`
/// (one JWKS cache lifetime, so every verifier has the new key before a token names it) and a
/// margin, then expire and stay published for the grace period. Used by `convex-edge jwks rotate`.
pub async fn rotate(
    store: &Store,
    secret: &Secret,
    alg: Alg,
    publish_lead: Duration,
) -> Result<KeyRow, KeysError> {
    let mut row = edge_keys::jwk::generate_row(alg, secret, crate::store::now_ms())
        .map_err(KeysError::Dynamic)?;
    // Published from when it is written (key generation can take a while), not before.
    let now = crate::store::now_ms();
    row.created_at = now;
    // The old keys may sign a little longer, for replicas that load the new key late (each
    // counts its lead from when it publishes the key); the new key signs wherever it is ready.
    let retire_at = now
        + chrono::Duration::from_std(publish_lead).unwrap_or_default()
        + chrono::Duration::seconds(30);
    store.insert_jwk(&row, Some(retire_at)).await?;
    Ok(row)
}

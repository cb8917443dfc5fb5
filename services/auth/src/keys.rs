//! The signing keys held in memory: static from `JWKS`, or dynamic from the `jwks` table and
//! reloaded only when the key-set version changes. No token operation reads the database.

use std::sync::{Arc, RwLock};

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
    current: RwLock<(Arc<KeySet>, i64)>,
}

impl KeyManager {
    /// Loads the key set. In dynamic mode a key of `alg` is created when none can sign.
    pub async fn start(
        static_jwks: Option<&str>,
        alg: Alg,
        secret: Secret,
        store: Store,
    ) -> Result<KeyManager, KeysError> {
        if let Some(json) = static_jwks {
            let rows = KeyRow::parse_static(json).map_err(KeysError::Static)?;
            let set = KeySet::load(&rows, &secret, Utc::now(), DEFAULT_GRACE)
                .map_err(KeysError::Static)?;
            if !set.can_sign(alg, Utc::now()) {
                return Err(KeysError::Static(edge_keys::KeyError::NoSigningKey(alg)));
            }
            let current = RwLock::new((Arc::new(set), 0));
            return Ok(KeyManager {
                mode: KeyMode::Static,
                alg,
                secret,
                store,
                current,
            });
        }
        let version = store.jwks_version().await?;
        let mut set = load(&store, &secret).await?;
        if !set.can_sign(alg, Utc::now()) {
            let row = edge_keys::jwk::generate_row(alg, &secret, crate::store::now_ms())
                .map_err(KeysError::Dynamic)?;
            store.insert_jwk(&row, None).await?;
            tracing::info!(kid = %row.id, %alg, "created a signing key");
            set = load(&store, &secret).await?;
        }
        let version = store.jwks_version().await.unwrap_or(version);
        let current = RwLock::new((Arc::new(set), version));
        Ok(KeyManager {
            mode: KeyMode::Dynamic,
            alg,
            secret,
            store,
            current,
        })
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
        let set = load(&self.store, &self.secret).await?;
        tracing::info!(version, keys = set.len(), "reloaded the key set");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(set), version);
        Ok(true)
    }
}

async fn load(store: &Store, secret: &Secret) -> Result<KeySet, KeysError> {
    let rows = store.jwks_rows().await?;
    KeySet::load(&rows, secret, Utc::now(), DEFAULT_GRACE).map_err(KeysError::Dynamic)
}

/// Creates a new signing key and expires the current ones now; they stay published for the
/// grace period. Used by `convex-edge jwks rotate`.
pub async fn rotate(store: &Store, secret: &Secret, alg: Alg) -> Result<KeyRow, KeysError> {
    let now = crate::store::now_ms();
    let row = edge_keys::jwk::generate_row(alg, secret, now).map_err(KeysError::Dynamic)?;
    store.insert_jwk(&row, Some(now)).await?;
    Ok(row)
}

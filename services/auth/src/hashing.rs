//! Password hashing under a memory budget: every scrypt run (sign-up's hash, sign-in's verify,
//! and the dummy hash for unknown emails) holds [`password::MEMORY_BYTES`] (32 MiB) while it
//! runs, so the number of runs at once is what bounds auth's memory. A run waits up to
//! `wait` for room in the budget, then fails with [`AuthError::Busy`] (503 with `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use edge_keys::password;
use tokio::sync::Semaphore;

use crate::error::AuthError;
use crate::metrics;

/// `AUTH_PASSWORD_HASH_MEMORY_MB` and `AUTH_PASSWORD_HASH_WAIT_MS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashBudget {
    /// Memory all concurrent scrypt runs may hold together, in bytes (at least one run's).
    pub memory_bytes: u64,
    /// How long a run waits for room before the request is refused.
    pub wait: Duration,
}

impl Default for HashBudget {
    /// 128 MiB (four runs at once) and 2 s: with auth's ~20 MiB baseline this stays far under
    /// the shipped Kubernetes limit (README, "Limits"), and four runs keep two cores busy.
    fn default() -> Self {
        HashBudget {
            memory_bytes: 128 * 1024 * 1024,
            wait: Duration::from_secs(2),
        }
    }
}

impl HashBudget {
    /// How many scrypt runs fit in the budget at once (at least one).
    pub fn concurrent_runs(&self) -> usize {
        (self.memory_bytes / password::MEMORY_BYTES).max(1) as usize
    }
}

/// Runs password hashing on the blocking pool, at most [`HashBudget::concurrent_runs`] at once.
#[derive(Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl Hasher {
    pub fn new(budget: &HashBudget) -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(budget.concurrent_runs())),
            wait: budget.wait,
        }
    }

    /// Runs `f` (one scrypt run) once the budget has room; [`AuthError::Busy`] after `wait`.
    /// The permit travels with the blocking task, so a request that gives up while its hash
    /// runs still holds the memory until the hash ends.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit =
            match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // Timed out, or the semaphore was closed (never: it lives as long as `self`).
                Ok(Err(_)) | Err(_) => {
                    metrics::PASSWORD_HASH_REFUSED.inc();
                    tracing::warn!(
                        wait_ms = self.wait.as_millis() as u64,
                        "password hashing budget exhausted; refusing"
                    );
                    return Err(AuthError::Busy {
                        retry_after_secs: 1,
                    });
                }
            };
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        });
        Ok(task.await.expect("password hashing does not panic"))
    }
}

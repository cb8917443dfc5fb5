//! The auth store: Better Auth's tables on Postgres or SQLite, behind one API.
//!
//! Both backends run the same SQL (`$n` placeholders work in both); [`on_pool!`] expands each
//! query once per backend so the types line up without a dynamic driver.

mod schema;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_keys::KeyRow;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use schema::{JWKS_CHANNEL, REVOCATION_CHANNEL};

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a user with this email already exists")]
    UserExists,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("invalid database url: {0}")]
    Url(String),
}

/// A `user` row.
#[derive(Debug, Clone, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    pub image: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A `session` row. `token` is a secret: the type is never logged whole.
#[derive(Clone, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub token: String,
    pub user_id: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// An `account` row for the email/password credential.
#[derive(Debug, Clone)]
pub struct CredentialAccount {
    pub id: String,
    pub user_id: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// One entry of the session log: a session that ended (`session_id` set) or a user whose
/// tokens no longer hold (`session_id` empty: `user-changed`, `user-deleted`).
#[derive(Debug, Clone, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct RevocationRow {
    /// Commit order: a reader never sees a smaller position commit after a larger one.
    pub position: i64,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    /// Known only when our own route ended the session.
    pub cache_key: Option<String>,
    pub reason: String,
    pub revoked_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct JwkRow {
    id: String,
    public_key: String,
    private_key: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    alg: Option<String>,
    crv: Option<String>,
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Reads of this store, beside the process-wide metrics (tests run many stores per process).
#[derive(Debug, Default)]
pub struct ReadCounters {
    pub jwks: AtomicU64,
    pub session: AtomicU64,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    reads: Arc<ReadCounters>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.pool {
            Pool::Postgres(_) => "Store::Postgres",
            Pool::Sqlite(_) => "Store::Sqlite",
        })
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => $crate::store::bounded(async { $body }).await,
            // One local file: waits are SQLite's busy timeout, not a network's silence.
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// How long one Postgres call (waiting for a connection included) may take: a database that
/// stops answering (a partition swallows the traffic, no reset) fails requests within this,
/// as 503, instead of holding them; the pool's connections are made again once it answers.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a call waits for a pooled connection (connecting included).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long start-up waits for a Postgres that takes longer than [`ACQUIRE_TIMEOUT`] to give
/// the first connection (a server starting, or a machine under load).
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// The pool, with its first connection open. A first connection that does not open within
/// [`ACQUIRE_TIMEOUT`] is tried again, with the service's backoff, for [`STARTUP_WAIT`];
/// another error (a refused password, a certificate) is returned at once.
async fn connect_postgres(
    options: sqlx::postgres::PgConnectOptions,
) -> Result<PgPool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    let mut backoff = edge_telemetry::backoff::reconnect();
    loop {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await;
        match pool {
            Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("the database gave no connection in time; retrying");
                tokio::time::sleep(backoff.next().unwrap_or_default()).await;
            }
            other => return other,
        }
    }
}

/// Runs one store call within [`CALL_TIMEOUT`]; a call cut off reads as the pool timing out.
pub(crate) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Inserts a session row through any executor of either backend.
macro_rules! insert_session {
    ($executor:expr, $session:expr) => {{
        let session = $session;
        sqlx::query(r#"INSERT INTO "session" ("id", "expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#)
            .bind(&session.id)
            .bind(session.expires_at)
            .bind(&session.token)
            .bind(session.created_at)
            .bind(session.updated_at)
            .bind(&session.ip_address)
            .bind(&session.user_agent)
            .bind(&session.user_id)
            .execute($executor)
            .await
            .map(|_| ())
    }};
}

mod account;
pub use account::{AccountRow, EndScope};
mod social;
pub use social::{ProviderTokens, SocialAccount};

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Dates with millisecond precision, as Better Auth (JavaScript `Date`) stores them.
pub fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

impl Store {
    fn new(pool: Pool) -> Self {
        Store {
            pool,
            reads: Arc::default(),
        }
    }

    /// This store's own read counts.
    pub fn reads(&self) -> &ReadCounters {
        &self.reads
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Connects to `postgres://…` or `sqlite://…` (the SQLite file and its folder are created).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with_trust(url, None).await
    }

    /// [`Store::connect`], verifying a Postgres server (`sslmode=verify-ca|verify-full`) against
    /// `trust` (the OS roots plus `SSL_CERT_FILE`) unless the URL names its own `sslrootcert`.
    /// `sslmode` means what it means to libpq: `disable`, `prefer` (the default: TLS when the
    /// server offers it, unverified), `require` (TLS, unverified; with a root certificate
    /// named, verified as `verify-ca`), `verify-ca`, `verify-full`. The root certificate is the
    /// URL's `sslrootcert`, else `PGSSLROOTCERT`, as libpq reads them; `system` (libpq 16) is
    /// the system's roots (`trust`) and makes `verify-full` the default and the only mode
    /// allowed.
    ///
    /// Errors: [`StoreError::Url`] for a URL libpq would refuse (a weak `sslmode` with
    /// `sslrootcert=system`), [`StoreError::Database`] when no connection opens.
    pub async fn connect_with_trust(
        url: &str,
        trust: Option<&edge_tls::Trust>,
    ) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            use sqlx::postgres::PgSslMode;
            let mut options = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(e.to_string()))?;
            let root = url_param(url, "sslrootcert").or_else(|| {
                std::env::var("PGSSLROOTCERT")
                    .ok()
                    .filter(|v| !v.is_empty())
            });
            match root.as_deref() {
                Some("system") => {
                    // libpq 16: the system's roots, and no weaker check than `verify-full`.
                    let mode = url_param(url, "sslmode")
                        .or_else(|| std::env::var("PGSSLMODE").ok().filter(|v| !v.is_empty()));
                    match mode.as_deref() {
                        None => options = options.ssl_mode(PgSslMode::VerifyFull),
                        Some("verify-full") => {}
                        Some(weak) => {
                            return Err(StoreError::Url(format!(
                                "weak sslmode \"{weak}\" may not be used with \
                                 sslrootcert=system (use \"verify-full\")"
                            )));
                        }
                    }
                    let system = match trust {
                        Some(trust) => trust.pem_bundle(),
                        None => edge_tls::Trust::load(None)
                            .map_err(|e| StoreError::Url(e.to_string()))?
                            .pem_bundle(),
                    };
                    options = options.ssl_root_cert_from_pem(system);
                }
                Some(_) => {
                    // libpq: with a root certificate named, `require` verifies the chain as
                    // `verify-ca` does.
                    if matches!(options.get_ssl_mode(), PgSslMode::Require) {
                        options = options.ssl_mode(PgSslMode::VerifyCa);
                    }
                }
                None => {
                    if let Some(trust) = trust {
                        options = options.ssl_root_cert_from_pem(trust.pem_bundle());
                    }
                }
            }
            Ok(Store::new(Pool::Postgres(connect_postgres(options).await?)))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Url(e.to_string()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            Ok(Store::new(Pool::Sqlite(pool)))
        } else {
            Err(StoreError::Url(
                "expected postgres://… or sqlite://…".into(),
            ))
        }
    }

    /// Connects and applies the schema.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with_trust(url, None).await
    }

    /// [`Store::open`] with [`Store::connect_with_trust`]'s TLS roots.
    pub async fn open_with_trust(
        url: &str,
        trust: Option<&edge_tls::Trust>,
    ) -> Result<Store, StoreError> {
        let store = Store::connect_with_trust(url, trust).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the schema; safe to run again and on an existing Better Auth database.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Serialise concurrent migrations from several replicas.
                sqlx::query("SELECT pg_advisory_xact_lock(724109)")
                    .execute(&mut *tx)
                    .await?;
                for statement in schema::POSTGRES {
                    sqlx::query(*statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for statement in schema::SQLITE {
                    sqlx::query(*statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Inserts a user, its credential account and its first session (none while the address
    /// awaits verification) in one transaction.
    pub async fn create_user(
        &self,
        user: &User,
        account: &CredentialAccount,
        session: Option<&Session>,
    ) -> Result<(), StoreError> {
        let result: Result<(), sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(r#"INSERT INTO "user" ("id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt") VALUES ($1, $2, $3, $4, $5, $6, $7)"#)
                .bind(&user.id).bind(&user.name).bind(&user.email).bind(user.email_verified)
                .bind(&user.image).bind(user.created_at).bind(user.updated_at)
                .execute(&mut *tx).await?;
            sqlx::query(r#"INSERT INTO "account" ("id", "accountId", "providerId", "userId", "password", "createdAt", "updatedAt") VALUES ($1, $2, 'credential', $3, $4, $5, $6)"#)
                .bind(&account.id).bind(&account.user_id).bind(&account.user_id)
                .bind(&account.password_hash).bind(account.created_at).bind(account.created_at)
                .execute(&mut *tx).await?;
            if let Some(session) = session {
                insert_session!(&mut *tx, session)?;
            }
            tx.commit().await
        }.await);
        result.map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::UserExists
            } else {
                e.into()
            }
        })
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        const SQL: &str = r#"SELECT "id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt" FROM "user" WHERE "email" = $1"#;
        Ok(
            on_pool!(self, pool => sqlx::query_as::<_, User>(SQL).bind(email).fetch_optional(pool).await)?,
        )
    }

    /// The password hash of the user's `credential` account.
    pub async fn credential_password(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = r#"SELECT "password" FROM "account" WHERE "userId" = $1 AND "providerId" = 'credential'"#;
        let row: Option<(Option<String>,)> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(user_id).fetch_optional(pool).await)?;
        Ok(row.and_then(|(p,)| p))
    }

    pub async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        on_pool!(self, pool => insert_session!(pool, session))?;
        Ok(())
    }

    /// The session with this token and its user: one database read.
    pub async fn session_with_user(
        &self,
        token: &str,
    ) -> Result<Option<(Session, User)>, StoreError> {
        const SQL: &str = r#"SELECT s."id", s."token", s."userId", s."expiresAt", s."createdAt", s."updatedAt", s."ipAddress", s."userAgent", u."name", u."email", u."emailVerified", u."image", u."createdAt" AS "userCreatedAt", u."updatedAt" AS "userUpdatedAt" FROM "session" s JOIN "user" u ON u."id" = s."userId" WHERE s."token" = $1"#;
        metrics::SESSION_DB_READS.inc();
        self.reads.session.fetch_add(1, Ordering::Relaxed);
        let row: Option<SessionUserRow> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(token).fetch_optional(pool).await)?;
        Ok(row.map(SessionUserRow::split))
    }

    /// Moves a session's expiry (Better Auth's sliding refresh).
    pub async fn extend_session(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            r#"UPDATE "session" SET "expiresAt" = $1, "updatedAt" = $2 WHERE "id" = $3"#;
        on_pool!(self, pool => sqlx::query(SQL).bind(expires_at).bind(updated_at).bind(id).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Deletes the session with `token`; the trigger records the end in the same transaction,
    /// and this names its reason and cache key there. Returns the log entry (committed, with
    /// its position), or `None` when no such session existed.
    pub async fn end_session(
        &self,
        token: &str,
        cache_key: &str,
        reason: &str,
    ) -> Result<Option<RevocationRow>, StoreError> {
        const DELETE: &str = r#"DELETE FROM "session" WHERE "token" = $1 RETURNING "id""#;
        const NAME: &str = r#"UPDATE "edge_session_log" SET "reason" = $2, "cacheKey" = $3 WHERE "id" = (SELECT MAX("id") FROM "edge_session_log" WHERE "sessionId" = $1)"#;
        const READ: &str = r#"SELECT "position", "sessionId", "userId", "cacheKey", "reason", "revokedAt" FROM "edge_session_log" WHERE "sessionId" = $1 AND "position" IS NOT NULL ORDER BY "position" DESC LIMIT 1"#;
        let row = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let deleted: Option<(String,)> = sqlx::query_as(DELETE).bind(token).fetch_optional(&mut *tx).await?;
            let Some((session_id,)) = deleted else {
                return Ok::<_, sqlx::Error>(None);
            };
            sqlx::query(NAME).bind(&session_id).bind(reason).bind(cache_key).execute(&mut *tx).await?;
            tx.commit().await?;
            // Positions are assigned at commit: read it back.
            let row: Option<RevocationRow> = sqlx::query_as(READ).bind(&session_id).fetch_optional(pool).await?;
            Ok(row)
        }.await)?;
        Ok(row)
    }

    /// Log entries after `position`, in position order.
    pub async fn revocations_after(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<RevocationRow>, StoreError> {
        const SQL: &str = r#"SELECT "position", "sessionId", "userId", "cacheKey", "reason", "revokedAt" FROM "edge_session_log" WHERE "position" > $1 ORDER BY "position" LIMIT $2"#;
        Ok(
            on_pool!(self, pool => sqlx::query_as(SQL).bind(position).bind(limit).fetch_all(pool).await)?,
        )
    }

    /// The position just before the first entry committed at or after `since`: where a reader
    /// that needs nothing older starts.
    pub async fn window_start(&self, since: DateTime<Utc>) -> Result<i64, StoreError> {
        const SQL: &str =
            r#"SELECT MIN("position") FROM "edge_session_log" WHERE "committedAt" >= $1"#;
        let (first,): (Option<i64>,) =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(since).fetch_one(pool).await)?;
        match first {
            Some(p) => Ok(p - 1),
            None => self.latest_revocation().await,
        }
    }

    /// The newest position in the log (0 when empty).
    pub async fn latest_revocation(&self) -> Result<i64, StoreError> {
        const SQL: &str = r#"SELECT COALESCE(MAX("position"), 0) FROM "edge_session_log""#;
        let (seq,): (i64,) = on_pool!(self, pool => sqlx::query_as(SQL).fetch_one(pool).await)?;
        Ok(seq)
    }

    /// Drops log entries committed before `before`; returns how many.
    /// One request against the rate-limit row `key`, in one atomic statement (Better Auth's
    /// rule: a window of `window_ms` since the last counted request; at most `max` counted).
    /// Returns `None` when counted, or the `lastRequest` (ms) of the full window that refused
    /// it. A refused request does not move `lastRequest`; its count is pinned at `max + 1`.
    pub async fn consume_rate_limit(
        &self,
        key: &str,
        now_ms: i64,
        window_ms: i64,
        max: i32,
    ) -> Result<Option<i64>, StoreError> {
        const SQL: &str = r#"INSERT INTO "rateLimit" ("id", "key", "count", "lastRequest") VALUES ($1, $2, 1, $3)
ON CONFLICT ("key") DO UPDATE SET
  "count" = CASE WHEN $3 - "rateLimit"."lastRequest" >= $4 THEN 1
                 WHEN "rateLimit"."count" >= $5 THEN $5 + 1
                 ELSE "rateLimit"."count" + 1 END,
  "lastRequest" = CASE WHEN $3 - "rateLimit"."lastRequest" >= $4 THEN $3
                       WHEN "rateLimit"."count" >= $5 THEN "rateLimit"."lastRequest"
                       ELSE $3 END
RETURNING "count", "lastRequest""#;
        let id = edge_keys::generate_id();
        let (count, last): (i32, i64) = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(&id).bind(key).bind(now_ms).bind(window_ms).bind(max)
            .fetch_one(pool).await)?;
        Ok((count > max).then_some(last))
    }

    /// Takes back one request counted under `key` (a sign-in whose password was right: only
    /// failed checks count against the account).
    pub async fn refund_rate_limit(&self, key: &str) -> Result<(), StoreError> {
        const SQL: &str =
            r#"UPDATE "rateLimit" SET "count" = "count" - 1 WHERE "key" = $1 AND "count" > 0"#;
        on_pool!(self, pool => sqlx::query(SQL).bind(key).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Whether the user with `email` has a session row (current or expired, not yet deleted)
    /// opened from `ip_address`, in the form sessions store it (Better Auth's, IPv6 as its
    /// /64). One query whether or not the email exists, so its cost tells nothing.
    pub async fn signed_in_from(&self, email: &str, ip_address: &str) -> Result<bool, StoreError> {
        const SQL: &str = r#"SELECT 1 FROM "session" s JOIN "user" u ON u."id" = s."userId" WHERE u."email" = $1 AND s."ipAddress" = $2 LIMIT 1"#;
        if ip_address.is_empty() {
            return Ok(false);
        }
        let row: Option<(i32,)> = on_pool!(self, pool => sqlx::query_as(SQL).bind(email).bind(ip_address).fetch_optional(pool).await)?;
        Ok(row.is_some())
    }

    /// Deletes rate-limit rows whose last request is older than `before_ms`.
    pub async fn prune_rate_limits(&self, before_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = r#"DELETE FROM "rateLimit" WHERE "lastRequest" < $1"#;
        let done = on_pool!(self, pool => sqlx::query(SQL).bind(before_ms).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(done)
    }

    pub async fn prune_revocations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        const SQL: &str = r#"DELETE FROM "edge_session_log" WHERE "committedAt" < $1"#;
        let done = on_pool!(self, pool => sqlx::query(SQL).bind(before).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// Every row of the `jwks` table (counted in `edge_auth_jwks_db_reads_total`).
    pub async fn jwks_rows(&self) -> Result<Vec<KeyRow>, StoreError> {
        const SQL: &str = r#"SELECT "id", "publicKey", "privateKey", "createdAt", "expiresAt", "alg", "crv" FROM "jwks" ORDER BY "createdAt" DESC"#;
        metrics::JWKS_DB_READS.inc();
        self.reads.jwks.fetch_add(1, Ordering::Relaxed);
        let rows: Vec<JwkRow> = on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|r| KeyRow {
                id: r.id,
                public_key: r.public_key,
                private_key: r.private_key,
                created_at: r.created_at,
                expires_at: r.expires_at,
                alg: r.alg,
                crv: r.crv,
            })
            .collect())
    }

    /// Adds a key, optionally expiring the current ones at `expire_others_at`. The `jwks`
    /// triggers bump the key-set version (and notify), as for any other writer.
    pub async fn insert_jwk(
        &self,
        row: &KeyRow,
        expire_others_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        const EXPIRE: &str =
            r#"UPDATE "jwks" SET "expiresAt" = $1 WHERE "expiresAt" IS NULL OR "expiresAt" > $1"#;
        const INSERT: &str = r#"INSERT INTO "jwks" ("id", "publicKey", "privateKey", "createdAt", "expiresAt", "alg", "crv") VALUES ($1, $2, $3, $4, $5, $6, $7)"#;
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            if let Some(at) = expire_others_at {
                sqlx::query(EXPIRE).bind(at).execute(&mut *tx).await?;
            }
            sqlx::query(INSERT)
                .bind(&row.id).bind(&row.public_key).bind(&row.private_key).bind(row.created_at)
                .bind(row.expires_at).bind(&row.alg).bind(&row.crv)
                .execute(&mut *tx).await?;
            tx.commit().await
        }.await)?;
        Ok(())
    }

    /// The key-set version (a cheap read of `edge_meta`, not of `jwks`).
    pub async fn jwks_version(&self) -> Result<i64, StoreError> {
        const SQL: &str = r#"SELECT "value" FROM "edge_meta" WHERE "key" = 'jwks_version'"#;
        let row: Option<(i64,)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_optional(pool).await)?;
        Ok(row.map(|(v,)| v).unwrap_or(0))
    }

    /// A listener on the revocation and key channels (Postgres only).
    pub async fn listener(&self) -> Result<Option<PgListener>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([REVOCATION_CHANNEL, JWKS_CHANNEL])
            .await?;
        Ok(Some(listener))
    }
}

#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct SessionUserRow {
    id: String,
    token: String,
    user_id: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    name: String,
    email: String,
    email_verified: bool,
    image: Option<String>,
    user_created_at: DateTime<Utc>,
    user_updated_at: DateTime<Utc>,
}

impl SessionUserRow {
    fn split(self) -> (Session, User) {
        let user = User {
            id: self.user_id.clone(),
            name: self.name,
            email: self.email,
            email_verified: self.email_verified,
            image: self.image,
            created_at: self.user_created_at,
            updated_at: self.user_updated_at,
        };
        let session = Session {
            id: self.id,
            token: self.token,
            user_id: self.user_id,
            expires_at: self.expires_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            ip_address: self.ip_address,
            user_agent: self.user_agent,
        };
        (session, user)
    }
}

/// The value of the query parameter `name` in a Postgres URL (as written, not decoded: the
/// values looked at here, `sslmode` and `sslrootcert=system`, need no decoding).
fn url_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

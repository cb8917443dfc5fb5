//! The store's side of Better Auth's account routes: sessions of a user, profile and password
//! changes, account rows, and `verification` rows as Better Auth writes them.
//!
//! Every change that ends a session or alters a user is logged by the triggers in the same
//! transaction; the functions here return those log entries (read back once committed, when
//! their positions exist) so the caller can hand them to the gateway.

use chrono::{DateTime, Utc};

use super::{Pool, RevocationRow, Session, Store, StoreError, User};

/// Which of a user's sessions to end.
#[derive(Debug, Clone, Copy)]
pub enum EndScope<'a> {
    /// The one with this token (when it is the user's).
    Token(&'a str),
    /// Every session.
    All,
    /// Every session but the one with this token.
    AllBut(&'a str),
}

/// An `account` row, without its secrets.
#[derive(Debug, Clone, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct AccountRow {
    pub id: String,
    pub provider_id: String,
    pub account_id: String,
    pub user_id: String,
    pub scope: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The newest log id before a change: entries above it for the user are the change's.
const LOG_FLOOR: &str = r#"SELECT COALESCE(MAX("id"), 0) FROM "edge_session_log""#;
const LOG_SINCE: &str = r#"SELECT "position", "sessionId", "userId", "cacheKey", "reason", "revokedAt" FROM "edge_session_log" WHERE "userId" = $1 AND "id" > $2 AND "position" IS NOT NULL ORDER BY "position""#;
const USER: &str = r#"SELECT "id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt" FROM "user" WHERE "id" = $1"#;
const SESSIONS: &str = r#"SELECT "id", "token", "userId", "expiresAt", "createdAt", "updatedAt", "ipAddress", "userAgent" FROM "session" WHERE "userId" = $1 ORDER BY "createdAt""#;
const DELETE_ALL: &str = r#"DELETE FROM "session" WHERE "userId" = $1"#;
const DELETE_ONE: &str = r#"DELETE FROM "session" WHERE "userId" = $1 AND "token" = $2"#;
const DELETE_OTHERS: &str = r#"DELETE FROM "session" WHERE "userId" = $1 AND "token" <> $2"#;
const SET_PASSWORD: &str = r#"UPDATE "account" SET "password" = $2, "updatedAt" = $3 WHERE "userId" = $1 AND "providerId" = 'credential'"#;
const ADD_CREDENTIAL: &str = r#"INSERT INTO "account" ("id", "accountId", "providerId", "userId", "password", "createdAt", "updatedAt") VALUES ($1, $2, 'credential', $2, $3, $4, $4)"#;

impl Store {
    /// Runs after a committed change: the log entries for `user_id` written since `floor`.
    async fn log_since(&self, user_id: &str, floor: i64) -> Result<Vec<RevocationRow>, StoreError> {
        Ok(
            on_pool!(self, pool => sqlx::query_as(LOG_SINCE).bind(user_id).bind(floor).fetch_all(pool).await)?,
        )
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(
            on_pool!(self, pool => sqlx::query_as::<_, User>(USER).bind(id).fetch_optional(pool).await)?,
        )
    }

    /// Every session row of the user, oldest first.
    pub async fn sessions_of_user(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        Ok(
            on_pool!(self, pool => sqlx::query_as::<_, Session>(SESSIONS).bind(user_id).fetch_all(pool).await)?,
        )
    }

    /// Ends the user's sessions in `scope`; returns the log entries.
    pub async fn end_sessions(
        &self,
        user_id: &str,
        scope: EndScope<'_>,
    ) -> Result<Vec<RevocationRow>, StoreError> {
        let floor = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            match scope {
                EndScope::Token(t) => sqlx::query(DELETE_ONE).bind(user_id).bind(t).execute(&mut *tx).await?,
                EndScope::All => sqlx::query(DELETE_ALL).bind(user_id).execute(&mut *tx).await?,
                EndScope::AllBut(t) => sqlx::query(DELETE_OTHERS).bind(user_id).bind(t).execute(&mut *tx).await?,
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(floor)
        }.await)?;
        self.log_since(user_id, floor).await
    }

    /// Sets name and/or image (`Some(None)` clears the image); returns the user and the log
    /// entries (one `user-changed` when a claim changed).
    pub async fn update_profile(
        &self,
        user_id: &str,
        name: Option<&str>,
        image: Option<Option<&str>>,
        now: DateTime<Utc>,
    ) -> Result<(Option<User>, Vec<RevocationRow>), StoreError> {
        const SQL: &str = r#"UPDATE "user" SET "name" = COALESCE($2, "name"), "image" = CASE WHEN $3 THEN $4 ELSE "image" END, "updatedAt" = $5 WHERE "id" = $1"#;
        let floor = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            sqlx::query(SQL).bind(user_id).bind(name).bind(image.is_some()).bind(image.flatten()).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(floor)
        }.await)?;
        let user = self.user_by_id(user_id).await?;
        Ok((user, self.log_since(user_id, floor).await?))
    }

    /// Sets `email` (when given) and `emailVerified`; returns the user and the log entries.
    /// Fails with [`StoreError::UserExists`] when another user has the address.
    pub async fn set_email(
        &self,
        user_id: &str,
        email: Option<&str>,
        verified: bool,
        now: DateTime<Utc>,
    ) -> Result<(Option<User>, Vec<RevocationRow>), StoreError> {
        const SQL: &str = r#"UPDATE "user" SET "email" = COALESCE($2, "email"), "emailVerified" = $3, "updatedAt" = $4 WHERE "id" = $1"#;
        let result = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            sqlx::query(SQL).bind(user_id).bind(email).bind(verified).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(floor)
        }.await);
        let floor = result.map_err(|e| {
            if super::is_unique_violation(&e) {
                StoreError::UserExists
            } else {
                e.into()
            }
        })?;
        let user = self.user_by_id(user_id).await?;
        Ok((user, self.log_since(user_id, floor).await?))
    }

    /// Replaces the credential password (adding the credential account when the user has
    /// none); with `new_session`, every session of the user ends first and that one opens,
    /// all in one transaction.
    pub async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        revoke_sessions: bool,
        new_session: Option<&Session>,
        now: DateTime<Utc>,
    ) -> Result<Vec<RevocationRow>, StoreError> {
        let floor = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            if revoke_sessions {
                sqlx::query(DELETE_ALL).bind(user_id).execute(&mut *tx).await?;
            }
            let updated = sqlx::query(SET_PASSWORD).bind(user_id).bind(hash).bind(now).execute(&mut *tx).await?;
            if updated.rows_affected() == 0 {
                sqlx::query(ADD_CREDENTIAL).bind(edge_keys::generate_id()).bind(user_id).bind(hash).bind(now).execute(&mut *tx).await?;
            }
            if let Some(session) = new_session {
                insert_session!(&mut *tx, session)?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(floor)
        }.await)?;
        self.log_since(user_id, floor).await
    }

    /// Deletes the user (sessions and accounts go with it); returns the log entries.
    pub async fn delete_user(&self, user_id: &str) -> Result<Vec<RevocationRow>, StoreError> {
        let floor = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            // Sessions first, so each is logged as ended on every backend.
            sqlx::query(DELETE_ALL).bind(user_id).execute(&mut *tx).await?;
            sqlx::query(r#"DELETE FROM "account" WHERE "userId" = $1"#).bind(user_id).execute(&mut *tx).await?;
            sqlx::query(r#"DELETE FROM "user" WHERE "id" = $1"#).bind(user_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(floor)
        }.await)?;
        self.log_since(user_id, floor).await
    }

    pub async fn accounts_of_user(&self, user_id: &str) -> Result<Vec<AccountRow>, StoreError> {
        const SQL: &str = r#"SELECT "id", "providerId", "accountId", "userId", "scope", "createdAt", "updatedAt" FROM "account" WHERE "userId" = $1 ORDER BY "createdAt""#;
        Ok(
            on_pool!(self, pool => sqlx::query_as::<_, AccountRow>(SQL).bind(user_id).fetch_all(pool).await)?,
        )
    }

    /// Adds a `verification` row as Better Auth's `createVerificationValue` does.
    pub async fn create_verification(
        &self,
        identifier: &str,
        value: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const SQL: &str = r#"INSERT INTO "verification" ("id", "identifier", "value", "expiresAt", "createdAt", "updatedAt") VALUES ($1, $2, $3, $4, $5, $5)"#;
        on_pool!(self, pool => sqlx::query(SQL).bind(edge_keys::generate_id()).bind(identifier).bind(value).bind(expires_at).bind(now).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The newest `verification` row for `identifier`: its value and expiry.
    pub async fn find_verification(
        &self,
        identifier: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        const SQL: &str = r#"SELECT "value", "expiresAt" FROM "verification" WHERE "identifier" = $1 ORDER BY "createdAt" DESC LIMIT 1"#;
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).bind(identifier).fetch_optional(pool).await)?)
    }

    /// The identifier of the newest `verification` row starting with `prefix` (tests and
    /// tooling; the routes look rows up by their exact identifier).
    pub async fn find_verification_like(&self, prefix: &str) -> Option<String> {
        const SQL: &str = r#"SELECT "identifier" FROM "verification" WHERE substr("identifier", 1, length($1)) = $1 ORDER BY "createdAt" DESC LIMIT 1"#;
        let row: Option<(String,)> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(prefix).fetch_optional(pool).await)
                .ok()?;
        row.map(|(i,)| i)
    }

    /// Consumes a reset token (every row of `identifier` goes, so it cannot be replayed) and,
    /// when the newest row was live at `now`, sets that user's password, ending the user's
    /// sessions when asked, in the same transaction. Returns the user and the log entries,
    /// or `None` for a missing or expired token.
    pub async fn reset_password(
        &self,
        identifier: &str,
        hash: &str,
        revoke_sessions: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Vec<RevocationRow>)>, StoreError> {
        const CONSUME: &str = r#"DELETE FROM "verification" WHERE "identifier" = $1 RETURNING "value", "expiresAt", "createdAt""#;
        let done = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (floor,): (i64,) = sqlx::query_as(LOG_FLOOR).fetch_one(&mut *tx).await?;
            let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(CONSUME).bind(identifier).fetch_all(&mut *tx).await?;
            let newest = rows.into_iter().max_by_key(|(_, _, created)| *created);
            let Some((user_id, expires_at, _)) = newest.filter(|(_, exp, _)| *exp > now) else {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(None);
            };
            let exists: Option<(String,)> = sqlx::query_as(r#"SELECT "id" FROM "user" WHERE "id" = $1"#).bind(&user_id).fetch_optional(&mut *tx).await?;
            if exists.is_none() {
                tx.commit().await?;
                return Ok(None);
            }
            let _ = expires_at;
            if revoke_sessions {
                sqlx::query(DELETE_ALL).bind(&user_id).execute(&mut *tx).await?;
            }
            let updated = sqlx::query(SET_PASSWORD).bind(&user_id).bind(hash).bind(now).execute(&mut *tx).await?;
            if updated.rows_affected() == 0 {
                sqlx::query(ADD_CREDENTIAL).bind(edge_keys::generate_id()).bind(&user_id).bind(hash).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Some((user_id, floor)))
        }.await)?;
        match done {
            Some((user_id, floor)) => {
                let log = self.log_since(&user_id, floor).await?;
                Ok(Some((user_id, log)))
            }
            None => Ok(None),
        }
    }
}

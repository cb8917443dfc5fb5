//! The store's side of social sign-in: OAuth state in `verification` rows, and users and
//! `account` rows with provider tokens, as Better Auth writes them.

use chrono::{DateTime, Utc};

use super::{Pool, Session, Store, StoreError, User};

/// Provider tokens of an `account` row (`None` columns stay as they are on update).
#[derive(Clone, Default)]
pub struct ProviderTokens {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderTokens(<redacted>)")
    }
}

/// A new social `account` row.
#[derive(Debug, Clone)]
pub struct SocialAccount {
    pub id: String,
    pub provider_id: String,
    pub account_id: String,
    pub user_id: String,
    pub tokens: ProviderTokens,
    /// Comma-joined, as Better Auth joins the token answer's scopes.
    pub scope: Option<String>,
    pub created_at: DateTime<Utc>,
}

const INSERT_ACCOUNT: &str = r#"INSERT INTO "account" ("id", "accountId", "providerId", "userId", "accessToken", "refreshToken", "idToken", "accessTokenExpiresAt", "refreshTokenExpiresAt", "scope", "createdAt", "updatedAt") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)"#;

macro_rules! insert_account {
    ($executor:expr, $a:expr) => {{
        let a = $a;
        sqlx::query(INSERT_ACCOUNT)
            .bind(&a.id)
            .bind(&a.account_id)
            .bind(&a.provider_id)
            .bind(&a.user_id)
            .bind(&a.tokens.access_token)
            .bind(&a.tokens.refresh_token)
            .bind(&a.tokens.id_token)
            .bind(a.tokens.access_token_expires_at)
            .bind(a.tokens.refresh_token_expires_at)
            .bind(&a.scope)
            .bind(a.created_at)
            .execute($executor)
            .await
            .map(|_| ())
    }};
}

impl Store {
    /// Removes the `verification` row `identifier` and answers its value, when it was there
    /// (exactly one caller gets it: an OAuth state is consumed once).
    pub async fn take_verification(&self, identifier: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = r#"DELETE FROM "verification" WHERE "identifier" = $1 RETURNING "value""#;
        let rows: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(identifier).fetch_all(pool).await)?;
        Ok(rows.into_iter().next().map(|(v,)| v))
    }

    /// The owner of the account (`providerId`, `accountId`): the account id and the user,
    /// `None` for the user when the account row names a missing one.
    pub async fn account_owner(
        &self,
        provider_id: &str,
        account_id: &str,
    ) -> Result<Option<(String, Option<User>)>, StoreError> {
        const SQL: &str = r#"SELECT "id", "userId" FROM "account" WHERE "providerId" = $1 AND "accountId" = $2 LIMIT 1"#;
        let row: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as(SQL).bind(provider_id).bind(account_id).fetch_optional(pool).await)?;
        let Some((id, user_id)) = row else {
            return Ok(None);
        };
        Ok(Some((id, self.user_by_id(&user_id).await?)))
    }

    /// Better Auth's update on sign-in: the tokens the provider gave (the ones it did not
    /// give stay); `scope` is left alone.
    pub async fn update_account_tokens(
        &self,
        account_row_id: &str,
        tokens: &ProviderTokens,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const SQL: &str = r#"UPDATE "account" SET "accessToken" = COALESCE($2, "accessToken"), "refreshToken" = COALESCE($3, "refreshToken"), "idToken" = COALESCE($4, "idToken"), "accessTokenExpiresAt" = COALESCE($5, "accessTokenExpiresAt"), "refreshTokenExpiresAt" = COALESCE($6, "refreshTokenExpiresAt"), "updatedAt" = $7 WHERE "id" = $1"#;
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(account_row_id)
            .bind(&tokens.access_token)
            .bind(&tokens.refresh_token)
            .bind(&tokens.id_token)
            .bind(tokens.access_token_expires_at)
            .bind(tokens.refresh_token_expires_at)
            .bind(now)
            .execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Adds an account to an existing user (implicit linking by verified email).
    pub async fn link_account(&self, account: &SocialAccount) -> Result<(), StoreError> {
        on_pool!(self, pool => insert_account!(pool, account))?;
        Ok(())
    }

    /// A user made by a provider, its account and its first session, in one transaction.
    pub async fn create_social_user(
        &self,
        user: &User,
        account: &SocialAccount,
        session: &Session,
    ) -> Result<(), StoreError> {
        let result: Result<(), sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(r#"INSERT INTO "user" ("id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt") VALUES ($1, $2, $3, $4, $5, $6, $7)"#)
                .bind(&user.id).bind(&user.name).bind(&user.email).bind(user.email_verified)
                .bind(&user.image).bind(user.created_at).bind(user.updated_at)
                .execute(&mut *tx).await?;
            insert_account!(&mut *tx, account)?;
            insert_session!(&mut *tx, session)?;
            tx.commit().await
        }.await);
        result.map_err(|e| {
            if super::is_unique_violation(&e) {
                StoreError::UserExists
            } else {
                e.into()
            }
        })
    }

    /// Deletes the user's account row `id`.
    pub async fn delete_account(&self, id: &str, user_id: &str) -> Result<(), StoreError> {
        const SQL: &str = r#"DELETE FROM "account" WHERE "id" = $1 AND "userId" = $2"#;
        on_pool!(self, pool => sqlx::query(SQL).bind(id).bind(user_id).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The account row (`providerId`, `accountId`): its id, user and scope.
    pub async fn account_by_key(
        &self,
        provider_id: &str,
        account_id: &str,
    ) -> Result<Option<(String, String, Option<String>)>, StoreError> {
        const SQL: &str = r#"SELECT "id", "userId", "scope" FROM "account" WHERE "providerId" = $1 AND "accountId" = $2 LIMIT 1"#;
        Ok(
            on_pool!(self, pool => sqlx::query_as(SQL).bind(provider_id).bind(account_id).fetch_optional(pool).await)?,
        )
    }

    /// A re-link of an account the user already has: new tokens (those given) and the
    /// merged scope.
    pub async fn relink_account(
        &self,
        account_row_id: &str,
        tokens: &ProviderTokens,
        scope: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.update_account_tokens(account_row_id, tokens, now)
            .await?;
        if let Some(scope) = scope {
            const SQL: &str = r#"UPDATE "account" SET "scope" = $2 WHERE "id" = $1"#;
            on_pool!(self, pool => sqlx::query(SQL).bind(account_row_id).bind(scope).execute(pool).await.map(|_| ()))?;
        }
        Ok(())
    }

    /// Marks the user's address verified (a provider vouched for it).
    pub async fn mark_email_verified(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            r#"UPDATE "user" SET "emailVerified" = $2, "updatedAt" = $3 WHERE "id" = $1"#;
        on_pool!(self, pool => sqlx::query(SQL).bind(user_id).bind(true).bind(now).execute(pool).await.map(|_| ()))?;
        Ok(())
    }
}

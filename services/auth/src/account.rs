//! Better Auth's session and account operations beyond sign-in: listing and revoking
//! sessions, profile, password and email changes, account deletion, password reset and email
//! verification (`better-auth/dist/api/routes/{session,update-user,password,
//! email-verification,account}.mjs`, 1.7).
//!
//! Every session these end and every user they change goes through the database, where the
//! triggers log it: the returned log entries are what the gateway applies before it answers,
//! and what every other gateway and the query service's sockets learn from the stream.

use chrono::{Duration, Utc};
use edge_keys::SessionToken;
use edge_keys::email_token::{self, EmailClaims, EmailTokenError};
use edge_proto::error::ErrorCode;
use serde_json::json;

use crate::error::AuthError;
use crate::mail::MailKind;
use crate::service::{
    AuthCore, Client, Cookies, MAX_NAME_LEN, SessionInfo, body_email, check_password, new_session,
    parse_email,
};
use crate::store::{AccountRow, EndScope, RevocationRow, Session, User, now_ms};
use edge_keys::password;

pub use edge_keys::cookie::encode_uri_component;

/// Which sessions `RevokeSessions` ends.
#[derive(Debug, Clone)]
pub enum Revoke {
    Token(String),
    All,
    Others,
}

/// What a change did: the log entries it wrote, whether the caller's own session ended, and
/// the user as it is now when the change touched one.
#[derive(Debug, Default)]
pub struct Changed {
    pub revocations: Vec<RevocationRow>,
    pub current_ended: bool,
    pub user: Option<User>,
    /// Whether the caller's session cookie is written again, as Better Auth's
    /// `setSessionCookie` does after a change to the user.
    pub cookie: CookieRenewal,
}

/// How the caller's own session cookie is answered after a call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CookieRenewal {
    /// Left as it is.
    #[default]
    Unchanged,
    /// Set again with Max-Age (a remembered session).
    Remembered,
    /// Set again without Max-Age, beside the `dont_remember` cookie (`rememberMe: false`).
    BrowserSession,
}

impl CookieRenewal {
    /// The renewal `setSessionCookie` makes for a browser that sent `cookies`.
    fn for_browser(secret: &edge_keys::Secret, cookies: Cookies<'_>) -> Self {
        if edge_keys::cookie::verify_dont_remember(secret, cookies.dont_remember) {
            CookieRenewal::BrowserSession
        } else {
            CookieRenewal::Remembered
        }
    }
}

/// A password change's outcome.
#[derive(Debug)]
pub struct PasswordChanged {
    pub user: User,
    pub new_session: Option<SessionInfo>,
    pub revocations: Vec<RevocationRow>,
}

/// `reset-password:<token>`, the `verification` identifier of a reset token.
fn reset_identifier(token: &str) -> String {
    format!("reset-password:{token}")
}

impl AuthCore {
    /// Tells open revocation streams the log moved (Postgres also notifies every replica).
    fn announce(&self, rows: &[RevocationRow]) {
        if let Some(last) = rows.iter().map(|r| r.position).max() {
            self.revocations.publish(last);
        }
    }

    /// Better Auth's `freshSessionMiddleware` / delete-user check: the session was created
    /// less than `freshAge` ago (0 turns the check off).
    fn is_fresh(&self, session: &Session) -> bool {
        let fresh_age = self.config.account.fresh_age;
        fresh_age.is_zero()
            || Utc::now() - session.created_at
                < Duration::from_std(fresh_age).unwrap_or(Duration::MAX)
    }

    /// `unlink-account`: removes the user's account row `account_id` unless it is the last
    /// (Better Auth's `allowUnlinkingAll` is off); the session must be fresh.
    pub async fn unlink_account(
        &self,
        cookies: Cookies<'_>,
        account_id: &str,
    ) -> Result<(), AuthError> {
        let info = self.session_of(cookies).await?;
        if !self.is_fresh(&info.session) {
            return Err(AuthError::invalid(
                ErrorCode::SESSION_NOT_FRESH,
                "Session is not fresh",
            ));
        }
        let accounts = self.store.accounts_of_user(&info.user.id).await?;
        if accounts.len() == 1 {
            return Err(AuthError::invalid(
                ErrorCode::FAILED_TO_UNLINK_LAST_ACCOUNT,
                "You can't unlink your last account",
            ));
        }
        if !accounts.iter().any(|a| a.id == account_id) {
            return Err(AuthError::invalid(
                ErrorCode::ACCOUNT_NOT_FOUND,
                "Account not found",
            ));
        }
        self.store.delete_account(account_id, &info.user.id).await?;
        tracing::info!(user_id = %info.user.id, "account unlinked");
        Ok(())
    }

    /// The user's live sessions; refused past `freshAge` as Better Auth 1.7 does.
    pub async fn list_sessions(&self, cookies: Cookies<'_>) -> Result<Vec<Session>, AuthError> {
        let info = self.session_of(cookies).await?;
        if !self.is_fresh(&info.session) {
            return Err(AuthError::invalid(
                ErrorCode::SESSION_NOT_FRESH,
                "Session is not fresh",
            ));
        }
        let now = now_ms();
        let mut sessions = self.store.sessions_of_user(&info.user.id).await?;
        sessions.retain(|s| s.expires_at > now);
        Ok(sessions)
    }

    pub async fn revoke_sessions(
        &self,
        cookies: Cookies<'_>,
        scope: Revoke,
    ) -> Result<Changed, AuthError> {
        let info = self.session_of(cookies).await?;
        let own = info.session.token.as_str();
        let (scope, current_ended) = match &scope {
            Revoke::Token(t) => (EndScope::Token(t), t == own),
            Revoke::All => (EndScope::All, true),
            Revoke::Others => (EndScope::AllBut(own), false),
        };
        let revocations = self.store.end_sessions(&info.user.id, scope).await?;
        self.announce(&revocations);
        tracing::info!(
            user_id = %info.user.id,
            ended = revocations.iter().filter(|r| r.session_id.is_some()).count(),
            "sessions revoked"
        );
        Ok(Changed {
            revocations,
            current_ended,
            user: None,
            cookie: CookieRenewal::Unchanged,
        })
    }

    /// `update-user`: name and image; `image: Some(None)` clears it.
    pub async fn update_user(
        &self,
        cookies: Cookies<'_>,
        name: Option<String>,
        image: Option<Option<String>>,
    ) -> Result<Changed, AuthError> {
        let info = self.session_of(cookies).await?;
        if name.is_none() && image.is_none() {
            return Err(AuthError::invalid(
                ErrorCode::BAD_REQUEST,
                "No fields to update",
            ));
        }
        if name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
        {
            return Err(AuthError::invalid(
                ErrorCode::VALIDATION_ERROR,
                "[body.name] Name is too long",
            ));
        }
        let (user, revocations) = self
            .store
            .update_profile(
                &info.user.id,
                name.as_deref(),
                image.as_ref().map(|i| i.as_deref()),
                now_ms(),
            )
            .await?;
        self.announce(&revocations);
        Ok(Changed {
            revocations,
            current_ended: false,
            user: Some(user.ok_or(AuthError::Unauthorized)?),
            cookie: CookieRenewal::for_browser(&self.config.secret, cookies),
        })
    }

    /// The credential password of `user_id` checked against `candidate`.
    async fn password_matches(&self, user_id: &str, candidate: &str) -> Result<bool, AuthError> {
        if candidate.chars().count() > password::MAX_LEN {
            return Err(AuthError::invalid(
                ErrorCode::PASSWORD_TOO_LONG,
                "Password too long",
            ));
        }
        let Some(stored) = self.store.credential_password(user_id).await? else {
            return Err(AuthError::invalid(
                ErrorCode::CREDENTIAL_ACCOUNT_NOT_FOUND,
                "Credential account not found",
            ));
        };
        let candidate = candidate.to_owned();
        self.hasher
            .run(move || password::verify(&stored, &candidate))
            .await
    }

    /// `change-password`; with `revoke_other_sessions` every session of the user ends (the
    /// caller's too) and a new one opens, in one transaction.
    pub async fn change_password(
        &self,
        cookies: Cookies<'_>,
        current: &str,
        new: &str,
        revoke_other_sessions: bool,
        client: &Client,
    ) -> Result<PasswordChanged, AuthError> {
        let info = self.session_of(cookies).await?;
        check_password(new)?;
        if !self.password_matches(&info.user.id, current).await? {
            return Err(AuthError::invalid(
                ErrorCode::INVALID_PASSWORD,
                "Invalid password",
            ));
        }
        let new = new.to_owned();
        let hash = self.hasher.run(move || password::hash(&new)).await?;
        let now = now_ms();
        let fresh = revoke_other_sessions.then(|| {
            let token = SessionToken::generate();
            (new_session(&info.user.id, &token, client, now), token)
        });
        let revocations = self
            .store
            .change_password(
                &info.user.id,
                &hash,
                revoke_other_sessions,
                fresh.as_ref().map(|(s, _)| s),
                now,
            )
            .await?;
        self.announce(&revocations);
        tracing::info!(user_id = %info.user.id, revoke_other_sessions, "password changed");
        let user = info.user;
        // Better Auth's `setSessionCookie` keeps a `rememberMe: false` browser's cookies as
        // they were: the new session's cookie ends with the browser session too.
        let dont_remember =
            edge_keys::cookie::verify_dont_remember(&self.config.secret, cookies.dont_remember);
        Ok(PasswordChanged {
            new_session: fresh.map(|(s, token)| SessionInfo {
                dont_remember,
                ..self.opened(s, user.clone(), &token)
            }),
            user,
            revocations,
        })
    }

    /// `delete-user` with the password, or with a session younger than `freshAge`.
    pub async fn delete_user(
        &self,
        cookies: Cookies<'_>,
        password: Option<&str>,
    ) -> Result<Changed, AuthError> {
        if !self.config.account.delete_user_enabled {
            return Err(AuthError::invalid(ErrorCode::NOT_FOUND, "Not Found"));
        }
        let info = self.session_of(cookies).await?;
        match password {
            Some(p) if !self.password_matches(&info.user.id, p).await? => {
                return Err(AuthError::invalid(
                    ErrorCode::INVALID_PASSWORD,
                    "Invalid password",
                ));
            }
            Some(_) => {}
            None if !self.is_fresh(&info.session) => {
                return Err(AuthError::invalid(
                    ErrorCode::SESSION_EXPIRED,
                    "Session expired. Re-authenticate to perform this action.",
                ));
            }
            None => {}
        }
        let revocations = self.store.delete_user(&info.user.id).await?;
        self.announce(&revocations);
        tracing::info!(user_id = %info.user.id, "user deleted");
        Ok(Changed {
            revocations,
            current_ended: true,
            user: None,
            cookie: CookieRenewal::Unchanged,
        })
    }

    pub async fn list_accounts(&self, cookies: Cookies<'_>) -> Result<Vec<AccountRow>, AuthError> {
        let info = self.session_of(cookies).await?;
        Ok(self.store.accounts_of_user(&info.user.id).await?)
    }

    /// `request-password-reset`: the same answer whether or not the address has a user.
    pub async fn request_password_reset(
        &self,
        email: &str,
        redirect_to: &str,
    ) -> Result<(), AuthError> {
        if !self.mailer.enabled() {
            return Err(AuthError::invalid(
                ErrorCode::RESET_PASSWORD_DISABLED,
                "Reset password isn't enabled",
            ));
        }
        let email = body_email("email", email)?;
        let Some(user) = self.store.user_by_email(&email).await? else {
            // As Better Auth: the same lookup cost, the same answer.
            let _ = self
                .store
                .find_verification("dummy-verification-token")
                .await?;
            return Ok(());
        };
        let token = edge_keys::generate_id_of(24);
        let now = now_ms();
        let ttl = self.config.account.reset_token_ttl;
        let expires_at = now + Duration::from_std(ttl).unwrap_or(Duration::hours(1));
        self.store
            .create_verification(&reset_identifier(&token), &user.id, expires_at, now)
            .await?;
        let url = format!(
            "{}/reset-password/{token}?callbackURL={}",
            self.config.account.auth_base(),
            encode_uri_component(redirect_to)
        );
        self.mailer
            .send(
                MailKind::ResetPassword,
                &user.email,
                json!({"url": url, "user": {"name": user.name, "email": user.email}, "email": user.email, "expires_minutes": ttl.as_secs() / 60}),
            )
            .await?;
        tracing::info!(user_id = %user.id, "password reset requested");
        Ok(())
    }

    /// Whether a reset token is live (the link's redirect).
    pub async fn check_reset_token(&self, token: &str) -> Result<bool, AuthError> {
        Ok(self
            .store
            .find_verification(&reset_identifier(token))
            .await?
            .is_some_and(|(_, expires_at)| expires_at > now_ms()))
    }

    /// `reset-password`: consumes the token and sets the password.
    pub async fn reset_password(&self, token: &str, new: &str) -> Result<Changed, AuthError> {
        let invalid = || AuthError::invalid(ErrorCode::INVALID_TOKEN, "Invalid token");
        if token.is_empty() {
            return Err(invalid());
        }
        check_password(new)?;
        let identifier = reset_identifier(token);
        // Cheap refusal before hashing; the consume below is what decides.
        if !self.check_reset_token(token).await? {
            return Err(invalid());
        }
        let new = new.to_owned();
        let hash = self.hasher.run(move || password::hash(&new)).await?;
        let revoke = self.config.account.revoke_sessions_on_password_reset;
        let (user_id, revocations) = self
            .store
            .reset_password(&identifier, &hash, revoke, now_ms())
            .await?
            .ok_or_else(invalid)?;
        self.announce(&revocations);
        tracing::info!(user_id = %user_id, revoked = revoke, "password reset");
        Ok(Changed {
            revocations,
            current_ended: revoke,
            user: None,
            cookie: CookieRenewal::Unchanged,
        })
    }

    /// Mails `user` a verification link for `to` (the user's address, or the new one of a
    /// change-email request, then `claims` carry `updateTo`).
    async fn mail_verification(
        &self,
        user: &User,
        to: &str,
        claims: EmailClaims,
        callback_url: &str,
    ) -> Result<(), AuthError> {
        let token = email_token::sign(&self.config.secret, &claims);
        let callback = if callback_url.is_empty() {
            "/"
        } else {
            callback_url
        };
        let url = format!(
            "{}/verify-email?token={token}&callbackURL={}",
            self.config.account.auth_base(),
            encode_uri_component(callback)
        );
        let ttl = self.config.account.verification_token_ttl;
        self.mailer
            .send(
                MailKind::VerifyEmail,
                to,
                json!({"url": url, "user": {"name": user.name, "email": user.email}, "email": to, "expires_minutes": ttl.as_secs() / 60}),
            )
            .await?;
        tracing::info!(user_id = %user.id, "verification mail sent");
        Ok(())
    }

    /// Claims for a token that verifies `email` (Better Auth's `createEmailVerificationToken`).
    fn email_claims(
        &self,
        email: &str,
        update_to: Option<&str>,
        user_id: &str,
        request_type: Option<&str>,
    ) -> EmailClaims {
        let iat = Utc::now().timestamp();
        EmailClaims {
            email: email.to_lowercase(),
            update_to: update_to.map(str::to_lowercase),
            user_id: Some(user_id.to_owned()),
            request_type: request_type.map(str::to_owned),
            iat,
            exp: iat + self.config.account.verification_token_ttl.as_secs() as i64,
        }
    }

    /// Sends the verification mail of sign-up and of a refused sign-in.
    pub(crate) async fn send_verification_for(
        &self,
        user: &User,
        callback_url: &str,
    ) -> Result<(), AuthError> {
        let claims = self.email_claims(&user.email, None, &user.id, None);
        self.mail_verification(user, &user.email, claims, callback_url)
            .await
    }

    /// Whether verification mail can be sent.
    pub(crate) fn can_mail(&self) -> bool {
        self.mailer.enabled()
    }

    /// `send-verification-email`. Without a session the answer does not reveal whether the
    /// address has an unverified user (the mail goes out in the background).
    pub async fn send_verification_email(
        self: &std::sync::Arc<Self>,
        cookies: Option<Cookies<'_>>,
        email: &str,
        callback_url: &str,
    ) -> Result<(), AuthError> {
        if !self.mailer.enabled() {
            return Err(AuthError::invalid(
                ErrorCode::VERIFICATION_EMAIL_NOT_ENABLED,
                "Verification email isn't enabled",
            ));
        }
        let email = body_email("email", email)?;
        let session = match cookies {
            Some(c) => match self.session_of(c).await {
                Ok(info) => Some(info),
                Err(AuthError::Unauthorized) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let Some(info) = session else {
            if let Some(user) = self.store.user_by_email(&email).await?
                && !user.email_verified
            {
                let core = self.clone();
                let callback_url = callback_url.to_owned();
                tokio::spawn(async move {
                    if let Err(error) = core.send_verification_for(&user, &callback_url).await {
                        tracing::warn!(%error, "verification mail failed");
                    }
                });
            }
            return Ok(());
        };
        if info.user.email.to_lowercase() != email {
            return Err(AuthError::invalid(
                ErrorCode::EMAIL_MISMATCH,
                "Email mismatch",
            ));
        }
        if info.user.email_verified {
            return Err(AuthError::invalid(
                ErrorCode::EMAIL_ALREADY_VERIFIED,
                "Email is already verified",
            ));
        }
        self.send_verification_for(&info.user, callback_url).await
    }

    /// `change-email`.
    pub async fn change_email(
        &self,
        cookies: Cookies<'_>,
        new_email: &str,
        callback_url: &str,
    ) -> Result<Changed, AuthError> {
        let options = &self.config.account;
        if !options.change_email_enabled {
            return Err(AuthError::invalid(
                ErrorCode::CHANGE_EMAIL_DISABLED,
                "Change email is disabled",
            ));
        }
        let info = self.session_of(cookies).await?;
        let new_email = body_email("newEmail", new_email)?;
        if new_email == info.user.email {
            return Err(AuthError::invalid(
                ErrorCode::BAD_REQUEST,
                "Email is the same",
            ));
        }
        let without_verification =
            !info.user.email_verified && options.change_email_without_verification;
        if !without_verification && !self.mailer.enabled() {
            return Err(AuthError::invalid(
                ErrorCode::BAD_REQUEST,
                "Verification email isn't enabled",
            ));
        }
        if self.store.user_by_email(&new_email).await?.is_some() {
            // As Better Auth: no sign that the address is taken.
            return Ok(Changed::default());
        }
        if without_verification {
            let (user, revocations) = self
                .store
                .set_email(&info.user.id, Some(&new_email), false, now_ms())
                .await?;
            self.announce(&revocations);
            let user = user.ok_or(AuthError::Unauthorized)?;
            if self.mailer.enabled() {
                let claims = self.email_claims(&new_email, None, &user.id, None);
                self.mail_verification(&user, &new_email, claims, callback_url)
                    .await?;
            }
            return Ok(Changed {
                revocations,
                current_ended: false,
                user: Some(user),
                cookie: CookieRenewal::for_browser(&self.config.secret, cookies),
            });
        }
        let claims = self.email_claims(
            &info.user.email,
            Some(&new_email),
            &info.user.id,
            Some("change-email-verification"),
        );
        self.mail_verification(&info.user, &new_email, claims, callback_url)
            .await?;
        Ok(Changed::default())
    }

    /// `verify-email`: a plain verification, or a change-email link.
    pub async fn verify_email(
        &self,
        token: &str,
        cookies: Option<Cookies<'_>>,
        callback_url: &str,
    ) -> Result<Changed, AuthError> {
        let claims = email_token::verify(&self.config.secret, token, Utc::now().timestamp())
            .map_err(|e| match e {
                EmailTokenError::Expired => {
                    AuthError::invalid(ErrorCode::TOKEN_EXPIRED, "Token expired")
                }
                EmailTokenError::Invalid => {
                    AuthError::invalid(ErrorCode::INVALID_TOKEN, "Invalid token")
                }
            })?;
        let invalid = || AuthError::invalid(ErrorCode::INVALID_TOKEN, "Invalid token");
        let not_found = || AuthError::invalid(ErrorCode::USER_NOT_FOUND, "User not found");
        if claims.email.is_empty() || parse_email(&claims.email).is_err() {
            return Err(invalid());
        }
        if let Some(update_to) = claims.update_to.as_deref() {
            let user_id = claims.user_id.as_deref().ok_or_else(invalid)?;
            let user = self
                .store
                .user_by_id(user_id)
                .await?
                .ok_or_else(not_found)?;
            if user.email.to_lowercase() != claims.email {
                return Err(invalid());
            }
            if let Some(c) = cookies
                && let Ok(info) = self.session_of(c).await
                && info.user.id != user.id
            {
                return Err(AuthError::invalid(ErrorCode::INVALID_USER, "Invalid user"));
            }
            let update_to = parse_email(update_to).map_err(|_| invalid())?;
            return match claims.request_type.as_deref() {
                Some("change-email-confirmation") => {
                    let next = self.email_claims(
                        &claims.email,
                        Some(&update_to),
                        &user.id,
                        Some("change-email-verification"),
                    );
                    self.mail_verification(&user, &update_to, next, callback_url)
                        .await?;
                    Ok(Changed::default())
                }
                Some("change-email-verification") => {
                    let (user, revocations) = self
                        .store
                        .set_email(&user.id, Some(&update_to), user.email_verified, now_ms())
                        .await?;
                    self.announce(&revocations);
                    Ok(Changed {
                        revocations,
                        current_ended: false,
                        user,
                        cookie: CookieRenewal::Unchanged,
                    })
                }
                _ => {
                    let (updated, revocations) = self
                        .store
                        .set_email(&user.id, Some(&update_to), false, now_ms())
                        .await?;
                    self.announce(&revocations);
                    if let Some(u) = &updated
                        && self.mailer.enabled()
                    {
                        let next = self.email_claims(&update_to, None, &u.id, None);
                        self.mail_verification(u, &update_to, next, callback_url)
                            .await?;
                    }
                    Ok(Changed {
                        revocations,
                        current_ended: false,
                        user: updated,
                        cookie: CookieRenewal::Unchanged,
                    })
                }
            };
        }
        let user = self
            .store
            .user_by_email(&claims.email)
            .await?
            .ok_or_else(not_found)?;
        if claims.user_id.as_deref().is_some_and(|id| id != user.id) {
            return Err(invalid());
        }
        if user.email_verified {
            return Ok(Changed::default());
        }
        let (_, revocations) = self.store.set_email(&user.id, None, true, now_ms()).await?;
        self.announce(&revocations);
        tracing::info!(user_id = %user.id, "email verified");
        Ok(Changed {
            revocations,
            current_ended: false,
            user: None,
            cookie: CookieRenewal::Unchanged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_components_encode_as_javascript_does() {
        assert_eq!(
            encode_uri_component("/reset?x=1&y=a b!~*'()é"),
            "%2Freset%3Fx%3D1%26y%3Da%20b!~*'()%C3%A9"
        );
    }
}

//! The auth service's operations, independent of transport: sign-up, sign-in, sign-out,
//! sessions and tokens.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use edge_keys::cookie::{self, SESSION_MAX_AGE_SECONDS, SESSION_UPDATE_AGE_SECONDS};
use edge_keys::{CacheKey, Claims, SessionToken, SignedToken, password};
use edge_proto::error::ErrorCode;

use crate::config::Config;
use crate::error::AuthError;
use crate::hashing::Hasher;
use crate::keys::KeyManager;
use crate::metrics;
use crate::ratelimit::{self, Subject};
use crate::revocations::RevocationHub;
use crate::store::{CredentialAccount, RevocationRow, Session, Store, User, now_ms};

/// Who is asking (for rate limits and the session row), and whether a session it opens is to
/// be remembered.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip_address: String,
    pub user_agent: String,
    /// Better Auth's `rememberMe: false` on sign-in or sign-up: the session lasts a day
    /// ([`cookie::DONT_REMEMBER_SESSION_SECONDS`]) and its cookie ends with the browser session.
    pub dont_remember: bool,
}

/// What a browser sent of Better Auth's cookies: the session cookie's value, and the
/// `dont_remember` cookie's as sent (empty when absent; only auth can check its signature).
/// A route that reads the session through these never refreshes a session opened with
/// `rememberMe: false`, as Better Auth's `getSession` (behind every session route) does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cookies<'a> {
    pub session: &'a str,
    pub dont_remember: &'a str,
}

impl<'a> Cookies<'a> {
    /// The session cookie alone (a client that sent no `dont_remember` cookie).
    pub fn session(session: &'a str) -> Self {
        Cookies {
            session,
            dont_remember: "",
        }
    }
}

/// A session just opened or looked up, with its user.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session: Session,
    pub user: User,
    /// The signed cookie value for the session's token.
    pub cookie_value: String,
    /// Whether the expiry moved and the cookie should be written again.
    pub refreshed: bool,
    /// Whether the session was just opened with `rememberMe: false`: its cookie is set without
    /// Max-Age, beside the signed `dont_remember` cookie.
    pub dont_remember: bool,
}

/// A sign-up: a session, or none while the address awaits verification
/// (`AUTH_REQUIRE_EMAIL_VERIFICATION`; Better Auth answers `{"token": null, "user": …}`).
#[derive(Debug)]
pub enum SignedUp {
    Session(SessionInfo),
    Pending(User),
}

impl SignedUp {
    /// The session opened, if any.
    pub fn session(self) -> Option<SessionInfo> {
        match self {
            SignedUp::Session(info) => Some(info),
            SignedUp::Pending(_) => None,
        }
    }
}

pub struct IssuedToken {
    pub token: SignedToken,
    pub session_id: String,
    pub user_id: String,
    pub cache_key: CacheKey,
}

#[derive(Debug)]
pub struct AuthCore {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) keys: Arc<KeyManager>,
    pub(crate) revocations: RevocationHub,
    /// Every scrypt run goes through it (sign-up, sign-in, unknown emails alike).
    pub(crate) hasher: Hasher,
    /// Set once shutdown begins: long-lived streams end with `UNAVAILABLE` so their clients
    /// go to another replica instead of holding this one open.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    pub(crate) mailer: crate::mail::Mailer,
    /// The social providers of `AUTH_SOCIAL_PROVIDERS`, with their cached discovery and keys.
    pub(crate) social: crate::social::Providers,
}

pub(crate) const MAX_NAME_LEN: usize = 256;
const MAX_EMAIL_LEN: usize = 254;

/// The address lowercased, if it passes the check Better Auth runs on every address it takes
/// (`z.email()`, zod 4.6's default pattern, on the string as sent: no trimming):
/// `^(?:[A-Za-z0-9_'+\-]+\.)*[A-Za-z0-9_'+\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$`.
/// ASCII only; dot-separated parts of the local part are non-empty and it does not end in
/// `'`; the domain has at least two labels, each starting with a letter or digit, and a
/// top-level label of two or more letters. Anything else is `INVALID_EMAIL`.
pub(crate) fn parse_email(email: &str) -> Result<String, AuthError> {
    let bad = || AuthError::invalid(ErrorCode::INVALID_EMAIL, "Invalid email");
    if email.len() > MAX_EMAIL_LEN {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let local_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '+' | '-');
    let local_ok = local
        .split('.')
        .all(|part| !part.is_empty() && part.chars().all(local_char))
        && !local.ends_with('\'');
    let labels: Vec<&str> = domain.split('.').collect();
    let (tld, rest) = labels.split_last().ok_or_else(bad)?;
    let domain_ok = !rest.is_empty()
        && rest.iter().all(|label| {
            label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && tld.len() >= 2
        && tld.chars().all(|c| c.is_ascii_alphabetic());
    if !local_ok || !domain_ok {
        return Err(bad());
    }
    Ok(email.to_ascii_lowercase())
}

/// An address in a request body that Better Auth's schema reads with zod's `z.email()`
/// (`sign-up/email`, `request-password-reset`, `send-verification-email`, `change-email`): a
/// malformed one is `VALIDATION_ERROR`, `[body.FIELD] Invalid email address`. (Sign-in's
/// schema takes any string and the route answers `INVALID_EMAIL`, as [`parse_email`] does.)
pub(crate) fn body_email(field: &str, email: &str) -> Result<String, AuthError> {
    parse_email(email).map_err(|_| {
        AuthError::invalid(
            ErrorCode::VALIDATION_ERROR,
            format!("[body.{field}] Invalid email address"),
        )
    })
}

/// A password's length as Better Auth (JavaScript's `String.length`) counts it: UTF-16 units.
fn password_len(password: &str) -> usize {
    password.encode_utf16().count()
}

pub(crate) fn check_password(password: &str) -> Result<(), AuthError> {
    let len = password_len(password);
    if len < password::MIN_LEN {
        return Err(AuthError::invalid(
            ErrorCode::PASSWORD_TOO_SHORT,
            "Password too short",
        ));
    }
    if len > password::MAX_LEN {
        return Err(AuthError::invalid(
            ErrorCode::PASSWORD_TOO_LONG,
            "Password too long",
        ));
    }
    Ok(())
}

pub(crate) fn new_session(
    user_id: &str,
    token: &SessionToken,
    client: &Client,
    now: DateTime<Utc>,
) -> Session {
    Session {
        id: edge_keys::generate_id(),
        token: token.as_str().to_owned(),
        user_id: user_id.to_owned(),
        expires_at: now
            + Duration::seconds(if client.dont_remember {
                cookie::DONT_REMEMBER_SESSION_SECONDS
            } else {
                SESSION_MAX_AGE_SECONDS
            }),
        created_at: now,
        updated_at: now,
        ip_address: Some(client.ip_address.clone()),
        user_agent: Some(client.user_agent.clone()),
    }
}

impl AuthCore {
    /// The store (tests inspect its read counters).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn new(
        config: Config,
        store: Store,
        keys: Arc<KeyManager>,
        revocations: RevocationHub,
    ) -> Self {
        AuthCore {
            hasher: Hasher::new(&config.password_hash_budget),
            stopping: tokio::sync::watch::Sender::new(false),
            config,
            store,
            keys,
            revocations,
            mailer: crate::mail::Mailer::new(
                &crate::mail::MailConfig::default(),
                &edge_tls::Trust::empty(),
            )
            .expect("the default mail settings are valid"),
            social: crate::social::Providers::default(),
        }
        .with_trust(&edge_tls::Trust::empty())
    }

    /// The same core reaching social providers through `trust` (the OS roots plus
    /// `SSL_CERT_FILE`).
    pub fn with_trust(mut self, trust: &edge_tls::Trust) -> Self {
        let http = trust
            .http_client()
            // Better Auth refuses redirects from token endpoints; discovery and keys are
            // fetched from the URLs the provider names.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an http client with the service's trust store");
        self.social = crate::social::Providers::new(
            &self.config.social_providers,
            &self.config.trusted_providers,
            http,
        );
        self
    }

    /// The same core sending mail through `mailer`.
    pub fn with_mailer(mut self, mailer: crate::mail::Mailer) -> Self {
        self.mailer = mailer;
        self
    }

    pub async fn sign_up(
        &self,
        name: &str,
        email: &str,
        password: &str,
        image: Option<String>,
        callback_url: &str,
        client: &Client,
    ) -> Result<SignedUp, AuthError> {
        let address = Subject::Address {
            ip: &client.ip_address,
            path: "/sign-up/email",
        };
        ratelimit::consume(
            &self.store,
            address,
            self.config.sign_in_limit.address_rule(),
        )
        .await?;
        // Sign-up's body schema has `email: z.email()`: zod's answer, not the route's.
        let email = body_email("email", email)?;
        if name.chars().count() > MAX_NAME_LEN {
            return Err(AuthError::invalid(
                ErrorCode::VALIDATION_ERROR,
                "[body.name] Name is too long",
            ));
        }
        check_password(password)?;
        // Postgres text cannot hold NUL: Better Auth's insert fails there, and it answers 422.
        if name.contains('\0') || image.as_deref().is_some_and(|i| i.contains('\0')) {
            return Err(AuthError::invalid(
                ErrorCode::FAILED_TO_CREATE_USER,
                "Failed to create user",
            ));
        }
        let require = self.config.account.require_email_verification;
        let now = now_ms();
        let user = User {
            id: edge_keys::generate_id(),
            name: name.to_owned(),
            email,
            email_verified: false,
            image,
            created_at: now,
            updated_at: now,
        };
        if self.store.user_by_email(&user.email).await?.is_some() {
            // Better Auth's generic answer when sign-up opens no session: nothing tells
            // whether the address was taken.
            if require {
                return Ok(SignedUp::Pending(user));
            }
            return Err(AuthError::UserExists);
        }
        let password = password.to_owned();
        let hash = self.hasher.run(move || password::hash(&password)).await?;
        let account = CredentialAccount {
            id: edge_keys::generate_id(),
            user_id: user.id.clone(),
            password_hash: hash,
            created_at: now,
        };
        let token = SessionToken::generate();
        let session = (!require).then(|| new_session(&user.id, &token, client, now));
        self.store
            .create_user(&user, &account, session.as_ref())
            .await?;
        tracing::info!(user_id = %user.id, "signed up");
        if self.config.account.send_verification_on_sign_up && self.can_mail() {
            self.send_verification_for(&user, callback_url).await?;
        }
        Ok(match session {
            Some(session) => SignedUp::Session(self.opened_for(client, session, user, &token)),
            None => SignedUp::Pending(user),
        })
    }

    /// A session just created: its cookie is to be set.
    pub(crate) fn opened(&self, session: Session, user: User, token: &SessionToken) -> SessionInfo {
        let cookie_value = cookie::sign(&self.config.secret, token);
        SessionInfo {
            session,
            user,
            cookie_value,
            refreshed: true,
            dont_remember: false,
        }
    }

    /// [`Self::opened`] for `client`, with the `dont_remember` cookie when it asked for it.
    fn opened_for(
        &self,
        client: &Client,
        session: Session,
        user: User,
        token: &SessionToken,
    ) -> SessionInfo {
        let mut info = self.opened(session, user, token);
        info.dont_remember = client.dont_remember;
        info
    }

    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        callback_url: &str,
        client: &Client,
    ) -> Result<SessionInfo, AuthError> {
        // Counted before anything else, as Better Auth's limiter runs before the route.
        let limit = &self.config.sign_in_limit;
        let path = "/sign-in/email";
        let address = Subject::Address {
            ip: &client.ip_address,
            path,
        };
        ratelimit::consume(&self.store, address, limit.address_rule()).await?;
        let email = parse_email(email)?;
        // As Better Auth: too long is refused as such; empty goes through the hash like any
        // wrong password (same cost, same answer).
        if password_len(password) > password::MAX_LEN {
            return Err(AuthError::invalid(
                ErrorCode::PASSWORD_TOO_LONG,
                "Password too long",
            ));
        }
        // Per account, only failed password checks count (a right one is given back below),
        // and not from an address the account already signed in from: a guesser spread over
        // many addresses is stopped, and cannot lock the owner out of the places it uses.
        let account = Subject::Account {
            email: &email,
            path,
        };
        let known_address = self
            .store
            .signed_in_from(&email, &client.ip_address)
            .await?;
        if !known_address {
            ratelimit::consume(&self.store, account.clone(), limit.account_rule()).await?;
        }
        let user = self.store.user_by_email(&email).await?;
        let stored = match &user {
            Some(u) => self.store.credential_password(&u.id).await?,
            None => None,
        };
        let password = password.to_owned();
        // Hash even when there is no such user so timing does not reveal which emails exist.
        let ok = self
            .hasher
            .run(move || match stored {
                Some(hash) => password::verify(&hash, &password),
                None => {
                    password::hash(&password);
                    false
                }
            })
            .await?;
        let (true, Some(user)) = (ok, user) else {
            return Err(AuthError::InvalidCredentials);
        };
        if !known_address {
            ratelimit::refund(&self.store, account).await?;
        }
        if self.config.account.require_email_verification && !user.email_verified {
            if self.config.account.send_verification_on_sign_in && self.can_mail() {
                self.send_verification_for(&user, callback_url).await?;
            }
            return Err(AuthError::invalid(
                ErrorCode::EMAIL_NOT_VERIFIED,
                "Email not verified",
            ));
        }
        let token = SessionToken::generate();
        let session = new_session(&user.id, &token, client, now_ms());
        self.store.create_session(&session).await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "signed in");
        Ok(self.opened_for(client, session, user, &token))
    }

    /// Counts one request of `client` on an `/api/auth/*` route (`path` below `/api/auth`, as
    /// Better Auth keys it) under Better Auth's rule for it ([`ratelimit::rule_for`]);
    /// [`AuthError::RateLimited`] once its window is full. Sign-in and sign-up count
    /// themselves: the gateway asks for every other route.
    pub async fn consume_rate_limit(&self, client: &Client, path: &str) -> Result<(), AuthError> {
        if !path.starts_with('/') || path.len() > 512 || path.chars().any(char::is_control) {
            return Err(AuthError::invalid(
                ErrorCode::VALIDATION_ERROR,
                "rate limit path must be an /api/auth route below /api/auth",
            ));
        }
        let rule = ratelimit::rule_for(&self.config.sign_in_limit, path);
        let address = Subject::Address {
            ip: &client.ip_address,
            path,
        };
        ratelimit::consume(&self.store, address, rule).await
    }

    /// Ends the cookie's session; the revocation is in the log (and announced) on return.
    pub async fn sign_out(&self, cookie_value: &str) -> Result<RevocationRow, AuthError> {
        let token =
            cookie::verify(&self.config.secret, cookie_value).ok_or(AuthError::NoSession)?;
        let row = self
            .end_session(&token, "sign-out")
            .await?
            .ok_or(AuthError::NoSession)?;
        tracing::info!(
            session_id = row.session_id.as_deref().unwrap_or_default(),
            position = row.position,
            "signed out"
        );
        Ok(row)
    }

    async fn end_session(
        &self,
        token: &SessionToken,
        reason: &str,
    ) -> Result<Option<RevocationRow>, AuthError> {
        let cookie_value = cookie::sign(&self.config.secret, token);
        let cache_key =
            CacheKey::for_cookie(&cookie_value).expect("a signed cookie is well-formed");
        let row = self
            .store
            .end_session(token.as_str(), cache_key.as_str(), reason)
            .await?;
        if let Some(row) = &row {
            self.revocations.publish(row.position);
        }
        Ok(row)
    }

    /// The session behind a cookie, refreshed when older than a day since its last refresh.
    pub async fn session(&self, cookie_value: &str) -> Result<SessionInfo, AuthError> {
        self.session_for(cookie_value, "").await
    }

    /// [`Self::session_for`] with the cookies a browser sent.
    pub async fn session_of(&self, cookies: Cookies<'_>) -> Result<SessionInfo, AuthError> {
        self.session_for(cookies.session, cookies.dont_remember)
            .await
    }

    /// [`Self::session`] for a browser that also sent Better Auth's `dont_remember` cookie
    /// (its value as sent, or empty): when that cookie's signature holds, the session is never
    /// refreshed, as Better Auth's `getSession` does for `rememberMe: false`.
    pub async fn session_for(
        &self,
        cookie_value: &str,
        dont_remember_cookie: &str,
    ) -> Result<SessionInfo, AuthError> {
        let token =
            cookie::verify(&self.config.secret, cookie_value).ok_or(AuthError::Unauthorized)?;
        let (mut session, user) = self
            .store
            .session_with_user(token.as_str())
            .await?
            .ok_or(AuthError::Unauthorized)?;
        let now = now_ms();
        if session.expires_at <= now {
            self.end_session(&token, "expired").await?;
            return Err(AuthError::Unauthorized);
        }
        let max_age = Duration::seconds(SESSION_MAX_AGE_SECONDS);
        let due = session.expires_at - max_age + Duration::seconds(SESSION_UPDATE_AGE_SECONDS)
            <= now
            && !cookie::verify_dont_remember(&self.config.secret, dont_remember_cookie);
        if due {
            session.expires_at = now + max_age;
            session.updated_at = now;
            self.store
                .extend_session(&session.id, session.expires_at, now)
                .await?;
        }
        let cookie_value = cookie::sign(&self.config.secret, &token);
        Ok(SessionInfo {
            session,
            user,
            cookie_value,
            refreshed: due,
            dont_remember: false,
        })
    }

    /// A Convex JWT for the cookie's session: one session read, no key read.
    pub async fn issue_token(&self, cookie_value: &str) -> Result<IssuedToken, AuthError> {
        self.issue_token_for(cookie_value, "").await
    }

    /// [`Self::issue_token`] with the browser's `dont_remember` cookie (see
    /// [`Self::session_for`]).
    pub async fn issue_token_for(
        &self,
        cookie_value: &str,
        dont_remember_cookie: &str,
    ) -> Result<IssuedToken, AuthError> {
        let info = self.session_for(cookie_value, dont_remember_cookie).await?;
        let now = Utc::now();
        let iat = now.timestamp();
        let claims = Claims {
            iat,
            name: info.user.name,
            email: info.user.email,
            email_verified: info.user.email_verified,
            session_id: info.session.id.clone(),
            sub: info.user.id.clone(),
            // A token never outlives its session: a session that simply reaches its expiry
            // writes no log entry, so its tokens (and the caches holding them) end with it.
            exp: (iat + self.config.token_ttl.as_secs() as i64)
                .min(info.session.expires_at.timestamp()),
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            // 128 random bits: every token is a new string, even two in one second.
            jti: Some(edge_keys::random_hex(16)),
        };
        let token = match self.keys.current().sign(self.keys.alg(), &claims, now) {
            Ok(token) => token,
            // The key set changed under us (another writer of the `jwks` table, or the last
            // key expired): auth always finds or makes a signing key.
            Err(edge_keys::KeyError::NoSigningKey(_)) => {
                self.keys.ensure_signing_key().await?;
                self.keys.current().sign(self.keys.alg(), &claims, now)?
            }
            Err(e) => return Err(e.into()),
        };
        metrics::TOKENS_ISSUED.inc();
        let cache_key =
            CacheKey::for_cookie(&info.cookie_value).expect("a signed cookie is well-formed");
        Ok(IssuedToken {
            token,
            session_id: info.session.id,
            user_id: info.user.id,
            cache_key,
        })
    }
}

/// RFC 3339 with milliseconds and `Z`, as JavaScript's `Date.toJSON`.
pub fn js_date(d: &DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(parse_email("Ada@Example.COM").unwrap(), "ada@example.com");
        for good in [
            "o'neil+x@mail-1.example.co",
            "a_b-c@x.io",
            "1@2.example.com",
            "a-@b-.cd",
        ] {
            assert!(parse_email(good).is_ok(), "{good}");
        }
        // Each refused by zod 4.6's `z.email()`, which Better Auth 1.7 runs.
        for bad in [
            "",
            "a",
            "a@b",
            "@b.c",
            "a@.c",
            "a@b.",
            "a b@c.d",
            "a@b..c",
            " a@example.com",
            "a@example.com ",
            "ü@example.com",
            "a@b.c",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a'@example.com",
            "a@[127.0.0.1]",
            "a@exa_mple.com",
            "a@-example.com",
            "a@example.c0m",
            "a@b@example.com",
            "\"a\"@example.com",
        ] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_bounds() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
        // UTF-16 units: four astral characters are eight units, as in JavaScript.
        assert!(check_password("😀😀😀😀").is_ok());
        assert!(check_password("😀😀😀").is_err());
        assert!(check_password(&"😀".repeat(65)).is_err());
    }
}

//! Social sign-in as Better Auth 1.7 does it for OpenID providers (its genericOAuth plugin,
//! through `sign-in/social` and `callback/:id`): the OAuth state stored in a `verification`
//! row `auth-state:<state>` beside the signed `better-auth.state` cookie, PKCE S256, the
//! nonce, the code exchange, ID token checks, then the user and `account` rows and a session
//! exactly as Better Auth's `handleOAuthUserInfo` writes them.

pub mod builtin;
pub mod config;
pub mod provider;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use edge_keys::SessionToken;
use edge_keys::cookie;
use edge_proto::error::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::service::{AuthCore, Client, Cookies, SessionInfo, new_session};
use crate::store::{ProviderTokens, SocialAccount, User, now_ms};

pub use config::ProviderConfig;
pub use provider::Provider;

/// The longest one call to auth waits on its provider in all (discovery, code exchange, JWKS,
/// userinfo together): 10 s. Past it the callback redirects to `errorCallbackURL` with the
/// step's `?error=` and an ID-token call is refused; a caller's deadline must exceed it.
pub const PROVIDER_BUDGET: std::time::Duration = edge_proto::SOCIAL_PROVIDER_BUDGET;

/// How long a state lives in its `verification` row and its JSON (`expiresAt`): 10 minutes.
const STATE_TTL_MS: i64 = 600_000;
/// `Max-Age` of the signed `state` cookie (Better Auth: 300 s).
pub const STATE_COOKIE_MAX_AGE: i64 = 300;

/// The configured providers, by id.
#[derive(Debug, Default)]
pub struct Providers {
    by_id: HashMap<String, Arc<Provider>>,
    /// `accountLinking.trustedProviders` (`AUTH_TRUSTED_PROVIDERS`).
    trusted: Vec<String>,
}

impl Providers {
    pub fn new(configs: &[ProviderConfig], trusted: &[String], http: reqwest::Client) -> Self {
        Providers {
            by_id: configs
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        Arc::new(Provider::new(c.clone(), http.clone())),
                    )
                })
                .collect(),
            trusted: trusted.to_vec(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Provider>> {
        self.by_id.get(id).cloned()
    }

    fn is_trusted(&self, id: &str) -> bool {
        self.trusted.iter().any(|t| t == id)
    }
}

/// The state's JSON as Better Auth's `generateState` writes it (members in its order,
/// `undefined` ones left out) and its `stateDataSchema` reads it (unknown members ignored).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateData {
    #[serde(rename = "callbackURL")]
    callback_url: String,
    code_verifier: String,
    #[serde(rename = "errorURL", default, skip_serializing_if = "Option::is_none")]
    error_url: Option<String>,
    #[serde(
        rename = "newUserURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    new_user_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<LinkData>,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_sign_up: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token_nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth_state: Option<String>,
}

/// The state's `link` (link-social): the user the account goes to, and the token of the
/// session that asked, encrypted as Better Auth encrypts it (`symmetricEncrypt` under
/// `derivePurposeKey(secret, "oauth-link-session-token")`): the callback links only while
/// that session lives (Better Auth's `isLinkSessionLive`; a state without it is not checked).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinkData {
    #[serde(deserialize_with = "coerce_string")]
    user_id: String,
    email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encrypted_session_token: Option<String>,
}

/// The purpose Better Auth derives the link state's session-token key for.
const LINK_SESSION_TOKEN_PURPOSE: &str = "oauth-link-session-token";

/// zod's `z.coerce.string()`.
fn coerce_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

fn state_identifier(state: &str) -> String {
    format!("auth-state:{state}")
}

/// What `sign-in/social` asks for.
#[derive(Debug, Clone, Default)]
pub struct SocialStart {
    pub provider_id: String,
    /// Checked by the gateway (a relative path or a trusted origin); empty: the site's URL.
    pub callback_url: String,
    pub error_callback_url: String,
    pub new_user_callback_url: String,
    pub scopes: Vec<String>,
    pub login_hint: String,
    pub request_sign_up: bool,
    /// Started through Better Auth 1.6's `sign-in/oauth2` (callback `oauth2/callback/:id`).
    pub oauth2_path: bool,
    /// `link-social`: the cookie of the session whose user gets the account.
    pub link_cookie_value: String,
    /// `link-social`: the `dont_remember` cookie beside it, as sent (or empty).
    pub link_dont_remember_cookie: String,
}

/// Where to send the browser, and the signed `state` cookie to set.
#[derive(Debug, Clone)]
pub struct SocialStarted {
    pub url: String,
    pub state_cookie: String,
}

/// A provider's redirect back to `callback/:id`.
#[derive(Debug, Clone, Default)]
pub struct SocialCallback {
    pub provider_id: String,
    pub code: String,
    pub state: String,
    pub error: String,
    pub error_description: String,
    pub iss: String,
    /// The browser's `state` cookie as sent.
    pub state_cookie: String,
    /// Reached through `oauth2/callback/:id`.
    pub oauth2_path: bool,
    /// Apple's `user` JSON from its form post.
    pub user: String,
}

/// `sign-in/social` with `idToken`.
#[derive(Debug, Clone, Default)]
pub struct IdTokenSignIn {
    pub provider_id: String,
    pub token: String,
    pub nonce: String,
    pub access_token: String,
    /// Apple's `user` JSON.
    pub user: String,
}

/// The end of a callback: always a redirect; a session when one opened.
#[derive(Debug)]
pub struct SocialFinished {
    pub location: String,
    pub session: Option<SessionInfo>,
    /// Whether the state cookie is to be expired (Better Auth does once it has read the state).
    pub clear_state_cookie: bool,
}

/// Better Auth's `appendQueryParams`: `url` (absolute or root-relative) with `params` added to
/// its query.
pub fn append_query(url: &str, params: &[(&str, &str)]) -> String {
    let relative = url.starts_with('/');
    let base = url::Url::parse("https://better-auth.invalid").expect("valid");
    let parsed = if relative {
        base.join(url)
    } else {
        url::Url::parse(url)
    };
    let Ok(mut parsed) = parsed else {
        return url.to_owned();
    };
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let joined = match parsed.query() {
        Some(q) if !q.is_empty() => {
            let sep = if q.ends_with('&') { "" } else { "&" };
            format!("{q}{sep}{query}")
        }
        _ => query,
    };
    parsed.set_query(Some(&joined));
    if relative {
        parsed[url::Position::BeforePath..].to_owned()
    } else {
        parsed.to_string()
    }
}

/// An error of the callback: a redirect to the error URL with `?error=` (and
/// `error_description`), as Better Auth's `redirectOnError`.
fn error_redirect(
    error_url: &str,
    error: &str,
    description: Option<&str>,
    clear: bool,
) -> SocialFinished {
    let mut params = vec![("error", error)];
    if let Some(d) = description.filter(|d| !d.is_empty()) {
        params.push(("error_description", d));
    }
    SocialFinished {
        location: append_query(error_url, &params),
        session: None,
        clear_state_cookie: clear,
    }
}

impl AuthCore {
    /// The callback URL Better Auth registers with a provider: `<baseURL>/callback/<id>`
    /// (`<baseURL>/oauth2/callback/<id>` for flows started by Better Auth 1.6's genericOAuth
    /// route).
    pub fn social_redirect_uri(&self, provider_id: &str, oauth2_path: bool) -> String {
        let base = self.config.account.auth_base();
        if oauth2_path {
            format!("{base}/oauth2/callback/{provider_id}")
        } else {
            format!("{base}/callback/{provider_id}")
        }
    }

    /// Better Auth's default error page (`<baseURL>/error`).
    fn default_error_url(&self) -> String {
        format!("{}/error", self.config.account.auth_base())
    }

    /// The provider a sign-in names. `sign-in/social` takes every configured one (Better Auth
    /// 1.7's genericOAuth serves its providers there beside the built-in ones): else 404
    /// `PROVIDER_NOT_FOUND`. Better Auth 1.6's `sign-in/oauth2` (and its
    /// `oauth2/callback/:providerId`) knows only genericOAuth's own providers: a built-in or
    /// unknown id is its 400 `{"message": "PROVIDER_CONFIG_NOT_FOUND <id>"}` (its error code
    /// object interpolated into the message).
    fn start_provider(&self, id: &str, oauth2_path: bool) -> Result<Arc<Provider>, AuthError> {
        let provider = self.social.get(id);
        if oauth2_path {
            return provider
                .filter(|p| p.config.kind == config::Kind::Generic)
                .ok_or_else(|| {
                    AuthError::invalid(
                        ErrorCode::BAD_REQUEST,
                        format!("PROVIDER_CONFIG_NOT_FOUND {id}"),
                    )
                });
        }
        provider
            .ok_or_else(|| AuthError::invalid(ErrorCode::PROVIDER_NOT_FOUND, "Provider not found"))
    }

    /// `sign-in/social` without an ID token: stores the state and answers the provider's
    /// authorization URL. `NOT_FOUND` (`PROVIDER_NOT_FOUND`) for an unknown provider.
    pub async fn social_start(
        &self,
        start: &SocialStart,
        client: &Client,
    ) -> Result<SocialStarted, AuthError> {
        let path = if start.oauth2_path {
            "/sign-in/oauth2"
        } else {
            "/sign-in/social"
        };
        let address = crate::ratelimit::Subject::Address {
            ip: &client.ip_address,
            path,
        };
        crate::ratelimit::consume(
            &self.store,
            address,
            self.config.sign_in_limit.address_rule(),
        )
        .await?;
        let link = if start.link_cookie_value.is_empty() {
            None
        } else {
            let info = self
                .session_of(Cookies {
                    session: &start.link_cookie_value,
                    dont_remember: &start.link_dont_remember_cookie,
                })
                .await?;
            let key = self.config.secret.purpose_key(LINK_SESSION_TOKEN_PURPOSE);
            Some(LinkData {
                user_id: info.user.id,
                email: info.user.email,
                encrypted_session_token: Some(edge_keys::encryption::encrypt(
                    &key,
                    &info.session.token,
                )),
            })
        };
        let provider = self.start_provider(&start.provider_id, start.oauth2_path)?;
        let discovered = provider.discovered().await.map_err(|e| {
            tracing::error!(provider = %start.provider_id, error = %e, "provider discovery failed");
            AuthError::invalid(ErrorCode::SERVICE_UNAVAILABLE, "Provider is unavailable")
        })?;
        let state = edge_keys::generate_id_of(32);
        let code_verifier = edge_keys::generate_id_of(128);
        let nonce = provider
            .requires_nonce(&discovered)
            .then(|| edge_keys::generate_id_of(32));
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let now = now_ms();
        let data = StateData {
            callback_url: non_empty(&start.callback_url)
                .unwrap_or_else(|| self.config.account.base_url.clone()),
            code_verifier: code_verifier.clone(),
            error_url: non_empty(&start.error_callback_url),
            new_user_url: non_empty(&start.new_user_callback_url),
            link,
            expires_at: now.timestamp_millis() + STATE_TTL_MS,
            request_sign_up: start.request_sign_up.then_some(true),
            id_token_nonce: nonce.clone(),
            oauth_state: Some(state.clone()),
        };
        let value = serde_json::to_string(&data).expect("state serialises");
        self.store
            .create_verification(
                &state_identifier(&state),
                &value,
                now + Duration::milliseconds(STATE_TTL_MS),
                now,
            )
            .await?;
        let redirect_uri = self.social_redirect_uri(&provider.config.id, start.oauth2_path);
        let login_hint = non_empty(&start.login_hint);
        let request = provider::AuthorizationRequest {
            state: &state,
            code_verifier: &code_verifier,
            nonce: nonce.as_deref(),
            redirect_uri: &redirect_uri,
            scopes: &start.scopes,
            login_hint: login_hint.as_deref(),
        };
        let url = provider
            .authorization_url(&discovered, &request)
            .map_err(|e| {
                tracing::error!(provider = %start.provider_id, error = %e, "bad authorization endpoint");
                AuthError::invalid(ErrorCode::INTERNAL_SERVER_ERROR, "Invalid provider configuration")
            })?;
        let token = SessionToken::parse(&state).expect("a generated state is a valid cookie value");
        Ok(SocialStarted {
            url,
            state_cookie: cookie::sign(&self.config.secret, &token),
        })
    }

    /// Better Auth's `parseGenericState` on the database strategy: the row must exist, name
    /// this state, and the signed cookie must hold it; then the row is consumed (once, whoever
    /// races) and its expiry checked. `Err` is the error redirect.
    async fn take_state(&self, cb: &SocialCallback) -> Result<StateData, SocialFinished> {
        let default = self.default_error_url();
        let mismatch = |url: &str| error_redirect(url, "state_mismatch", None, false);
        let internal = || error_redirect(&default, "internal_server_error", None, false);
        let identifier = state_identifier(&cb.state);
        let row = match self.store.find_verification(&identifier).await {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(error = %e, "state lookup failed");
                return Err(internal());
            }
        };
        let Some((value, _)) = row else {
            tracing::warn!(provider = %cb.provider_id, "oauth state not found");
            return Err(mismatch(&default));
        };
        let Ok(data) = serde_json::from_str::<StateData>(&value) else {
            return Err(internal());
        };
        let error_url = data.error_url.clone().unwrap_or_else(|| default.clone());
        if data.oauth_state.as_deref().is_some_and(|s| s != cb.state) {
            return Err(mismatch(&error_url));
        }
        let cookie_state = cookie::verify(&self.config.secret, &cb.state_cookie);
        if cookie_state.as_ref().map(SessionToken::as_str) != Some(cb.state.as_str()) {
            tracing::warn!(provider = %cb.provider_id, "oauth state cookie does not match");
            return Err(mismatch(&error_url));
        }
        match self.store.take_verification(&identifier).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(mismatch(&error_url)),
            Err(e) => {
                tracing::error!(error = %e, "state consume failed");
                return Err(internal());
            }
        }
        if data.expires_at < Utc::now().timestamp_millis() {
            return Err(error_redirect(&error_url, "state_mismatch", None, true));
        }
        Ok(data)
    }

    /// `callback/:id`: the whole callback of Better Auth's `callbackOAuth`. Always a redirect;
    /// nothing but the consumed state is written unless the provider vouched for the user.
    pub async fn social_callback(
        &self,
        cb: &SocialCallback,
        client: &Client,
    ) -> Result<SocialFinished, AuthError> {
        // Better Auth 1.6's `oauth2/callback/:providerId` sends a provider's error or a missing
        // code to the error page first, then refuses a provider it does not know.
        if cb.oauth2_path && cb.error.is_empty() && !cb.code.is_empty() {
            self.start_provider(&cb.provider_id, true)?;
        }
        if cb.state.is_empty() {
            return Ok(error_redirect(
                &self.default_error_url(),
                "state_not_found",
                None,
                false,
            ));
        }
        let data = match self.take_state(cb).await {
            Ok(data) => data,
            Err(redirect) => return Ok(redirect),
        };
        let error_url = data
            .error_url
            .clone()
            .unwrap_or_else(|| self.default_error_url());
        let fail = |code: &str| Ok(error_redirect(&error_url, code, None, true));
        if !cb.error.is_empty() {
            return Ok(error_redirect(
                &error_url,
                &cb.error,
                Some(&cb.error_description),
                true,
            ));
        }
        if cb.code.is_empty() {
            return fail("no_code");
        }
        let Some(provider) = self.social.get(&cb.provider_id) else {
            return fail("oauth_provider_not_found");
        };
        // One budget for every provider step, so the callback always answers its redirect.
        let deadline = tokio::time::Instant::now() + PROVIDER_BUDGET;
        let Ok(Ok(discovered)) = tokio::time::timeout_at(deadline, provider.discovered()).await
        else {
            return fail("invalid_code");
        };
        if !cb.iss.is_empty()
            && discovered
                .issuer
                .as_deref()
                .is_some_and(|issuer| issuer != cb.iss)
        {
            tracing::warn!(provider = %cb.provider_id, "oauth issuer mismatch");
            return fail("issuer_mismatch");
        }
        if provider.requires_nonce(&discovered) && data.id_token_nonce.is_none() {
            return fail("nonce_binding_missing");
        }
        let redirect_uri = self.social_redirect_uri(&provider.config.id, cb.oauth2_path);
        let exchange = provider.exchange(&discovered, &cb.code, &data.code_verifier, &redirect_uri);
        let tokens = match tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or_else(|_| Err(provider::bad("token endpoint timed out")))
        {
            Ok(mut tokens) => {
                // Apple posts the user's name once, beside the code (Better Auth's
                // `safeJSONParse(user)`).
                tokens.user = serde_json::from_str(&cb.user).ok();
                tokens
            }
            Err(e) => {
                tracing::warn!(provider = %cb.provider_id, error = %e, "code exchange failed");
                return fail("invalid_code");
            }
        };
        let user_info = provider.user_info(&discovered, &tokens, data.id_token_nonce.as_deref());
        let user_info = match tokio::time::timeout_at(deadline, user_info)
            .await
            .unwrap_or_else(|_| Err(provider::bad("provider timed out")))
        {
            Ok(Some(info)) => info,
            Ok(None) => return fail("unable_to_get_user_info"),
            Err(e) => {
                tracing::warn!(provider = %cb.provider_id, error = %e, "provider user refused");
                return fail("unable_to_get_user_info");
            }
        };
        let account = OAuthAccount::new(
            &provider,
            &user_info,
            ProviderTokens {
                access_token: tokens.access_token.clone(),
                refresh_token: tokens.refresh_token.clone(),
                id_token: tokens.id_token.clone(),
                access_token_expires_at: tokens.access_token_expires_at,
                refresh_token_expires_at: tokens.refresh_token_expires_at,
            },
            Some(tokens.scopes.join(",")),
        );
        if let Some(link) = &data.link {
            return match self
                .link_account(link, &account, &user_info, &tokens.scopes)
                .await?
            {
                Ok(()) => Ok(SocialFinished {
                    location: data.callback_url,
                    session: None,
                    clear_state_cookie: true,
                }),
                Err(code) => fail(code),
            };
        }
        let Some(profile) = Profile::of(&user_info) else {
            tracing::warn!(provider = %cb.provider_id, "provider did not return an email");
            return fail("email_not_found");
        };
        let (info, is_register) = match self.oauth_user(&account, &profile, client).await? {
            Ok(done) => done,
            Err(code) => return fail(&code),
        };
        let location = if is_register {
            data.new_user_url.clone().unwrap_or(data.callback_url)
        } else {
            data.callback_url
        };
        Ok(SocialFinished {
            location,
            session: Some(info),
            clear_state_cookie: true,
        })
    }

    /// Better Auth's `verifyProviderIdToken` and the provider's mapping of the token's user
    /// (`sign-in/social` and `link-social` with `idToken`).
    async fn id_token_user(
        &self,
        r: &IdTokenSignIn,
    ) -> Result<(Arc<Provider>, provider::ProviderUser), AuthError> {
        let provider = self.social.get(&r.provider_id).ok_or_else(|| {
            AuthError::invalid(ErrorCode::PROVIDER_NOT_FOUND, "Provider not found")
        })?;
        let deadline = tokio::time::Instant::now() + PROVIDER_BUDGET;
        let discovered = tokio::time::timeout_at(deadline, provider.discovered());
        let discovered = discovered
            .await
            .unwrap_or_else(|_| Err(provider::bad("timed out")));
        let discovered = discovered.map_err(|e| {
            tracing::error!(provider = %r.provider_id, error = %e, "provider discovery failed");
            AuthError::invalid(ErrorCode::SERVICE_UNAVAILABLE, "Provider is unavailable")
        })?;
        if !builtin::supports_id_token(&provider.config, &discovered) {
            return Err(AuthError::invalid(
                ErrorCode::ID_TOKEN_NOT_SUPPORTED,
                "id_token not supported",
            ));
        }
        let nonce = (!r.nonce.is_empty()).then_some(r.nonce.as_str());
        let claims = provider.verify_id_token(&discovered, &r.token, nonce);
        let claims = tokio::time::timeout_at(deadline, claims)
            .await
            .unwrap_or_else(|_| Err(provider::bad("provider timed out")));
        let claims = match claims {
            Ok(claims) => claims,
            Err(e) => {
                tracing::warn!(provider = %r.provider_id, error = %e, "id token refused");
                return Err(AuthError::invalid(
                    ErrorCode::INVALID_ID_TOKEN,
                    "Invalid token",
                ));
            }
        };
        let no_info = || {
            AuthError::invalid(
                ErrorCode::FAILED_TO_GET_USER_INFO,
                "Failed to get user info",
            )
        };
        let user_info = if provider.config.kind == config::Kind::Generic {
            // genericOAuth's `getUserInfoFromIdToken`: the claims must name the user and the
            // address (there is no access token for userinfo).
            let email = provider::string(claims.get("email"));
            let sub = provider::string(claims.get("sub"));
            match (sub, email) {
                (Some(account_id), Some(_)) => provider::ProviderUser {
                    account_id,
                    email: provider::string(claims.get("email")),
                    email_verified: provider::string_bool(claims.get("email_verified"))
                        .unwrap_or(false),
                    name: provider::string(claims.get("name")).unwrap_or_default(),
                    image: provider::string(claims.get("picture")),
                },
                _ => return Err(no_info()),
            }
        } else {
            let tokens = provider::Tokens {
                id_token: Some(r.token.clone()),
                access_token: (!r.access_token.is_empty()).then(|| r.access_token.clone()),
                user: serde_json::from_str(&r.user).ok(),
                ..provider::Tokens::default()
            };
            let info = builtin::user_info(&provider, &discovered, &tokens, None);
            match tokio::time::timeout_at(deadline, info).await {
                Ok(Ok(Some(info))) => info,
                _ => return Err(no_info()),
            }
        };
        Ok((provider, user_info))
    }

    /// `sign-in/social` with an ID token: verified as Better Auth's `verifyProviderIdToken`,
    /// the user mapped as the provider maps it, then [`Self::oauth_user`]; the account keeps
    /// the ID token and the access token the app sent (no refresh token, scope or expiry, as
    /// Better Auth stores them).
    pub async fn id_token_sign_in(
        &self,
        r: &IdTokenSignIn,
        client: &Client,
    ) -> Result<SessionInfo, AuthError> {
        let (provider, user_info) = self.id_token_user(r).await?;
        let profile = Profile::of(&user_info).ok_or_else(email_not_found)?;
        let account = OAuthAccount::new(&provider, &user_info, r.tokens(), None);
        match self.oauth_user(&account, &profile, client).await? {
            Ok((info, _)) => Ok(info),
            // Better Auth's message is its internal error with spaces (`account not linked`).
            Err(code) => Err(AuthError::invalid(
                ErrorCode::OAUTH_LINK_ERROR,
                code.replace('_', " "),
            )),
        }
    }

    /// `link-social` with an ID token (Better Auth's branch of `linkSocialAccount`): the
    /// account is added to the cookie's user, or refreshed when it is already theirs.
    pub async fn link_id_token(
        &self,
        cookies: Cookies<'_>,
        r: &IdTokenSignIn,
    ) -> Result<(), AuthError> {
        let info = self.session_of(cookies).await?;
        let (provider, user_info) = self.id_token_user(r).await?;
        let profile = Profile::of(&user_info).ok_or_else(email_not_found)?;
        let account = OAuthAccount::new(&provider, &user_info, r.tokens(), None);
        let now = now_ms();
        let existing = self
            .store
            .account_by_key(&provider.config.id, &user_info.account_id)
            .await?;
        match existing {
            Some((row_id, owner, _)) if owner == info.user.id => {
                self.store
                    .update_account_tokens(&row_id, &account.tokens, now)
                    .await?;
                return Ok(());
            }
            Some(_) => {
                return Err(AuthError::invalid(
                    ErrorCode::SOCIAL_ACCOUNT_ALREADY_LINKED,
                    "Social account already linked",
                ));
            }
            None => {}
        }
        if !self.social.is_trusted(&provider.config.id) && !user_info.email_verified {
            return Err(AuthError::invalid(
                ErrorCode::LINKING_NOT_ALLOWED,
                "Account not linked - linking not allowed",
            ));
        }
        if profile.email != info.user.email.to_lowercase() {
            return Err(AuthError::invalid(
                ErrorCode::LINKING_DIFFERENT_EMAILS_NOT_ALLOWED,
                "Account not linked - different emails not allowed",
            ));
        }
        self.store
            .link_account(&account.row(&info.user.id, now))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "linking failed");
                AuthError::invalid(
                    ErrorCode::LINKING_FAILED,
                    "Account not linked - unable to create account",
                )
            })?;
        tracing::info!(user_id = %info.user.id, provider = %provider.config.id, "account linked with an id token");
        Ok(())
    }

    /// Better Auth's `linkOAuthAccount`: the provider must be trusted or vouch for the address,
    /// which must be the user's; an account of another user is refused, the user's own is
    /// refreshed (scopes merged), else it is added. `Ok(Err(code))` is a refusal.
    async fn link_account(
        &self,
        link: &LinkData,
        account: &OAuthAccount,
        user_info: &provider::ProviderUser,
        scopes: &[String],
    ) -> Result<Result<(), &'static str>, AuthError> {
        if !self.link_session_live(link).await? {
            tracing::warn!(user_id = %link.user_id, "unable to link account: the session that asked has ended");
            return Ok(Err("unable_to_link_account"));
        }
        if self.store.user_by_id(&link.user_id).await?.is_none() {
            return Ok(Err("unable_to_link_account"));
        }
        if !self.social.is_trusted(&account.provider_id) && !user_info.email_verified {
            tracing::warn!(provider = %account.provider_id, "unable to link account: untrusted provider");
            return Ok(Err("unable_to_link_account"));
        }
        let same_email = user_info
            .email
            .as_deref()
            .is_some_and(|e| e.to_lowercase() == link.email.to_lowercase());
        if !same_email {
            return Ok(Err("email_does_not_match"));
        }
        let now = now_ms();
        match self
            .store
            .account_by_key(&account.provider_id, &account.account_id)
            .await?
        {
            Some((_, owner, _)) if owner != link.user_id => {
                Ok(Err("account_already_linked_to_different_user"))
            }
            Some((row_id, _, stored)) => {
                // Better Auth's `mergeScopes`: the stored ones, then the new, without repeats.
                let mut merged: Vec<String> = Vec::new();
                for s in stored
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .chain(scopes.iter().map(String::as_str))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    if !merged.iter().any(|m| m == s) {
                        merged.push(s.to_owned());
                    }
                }
                let merged = merged.join(",");
                self.store
                    .relink_account(
                        &row_id,
                        &account.tokens,
                        (!merged.is_empty()).then_some(merged.as_str()),
                        now,
                    )
                    .await?;
                Ok(Ok(()))
            }
            None => {
                self.store
                    .link_account(&account.row(&link.user_id, now))
                    .await?;
                tracing::info!(user_id = %link.user_id, provider = %account.provider_id, "account linked");
                Ok(Ok(()))
            }
        }
    }

    /// Better Auth's `isLinkSessionLive`: the session whose token the link state carries still
    /// exists, is the linking user's and has not expired. A state without the token (written
    /// before Better Auth recorded it) is not checked; one that does not decrypt is refused.
    async fn link_session_live(&self, link: &LinkData) -> Result<bool, AuthError> {
        let Some(encrypted) = &link.encrypted_session_token else {
            return Ok(true);
        };
        let key = self.config.secret.purpose_key(LINK_SESSION_TOKEN_PURPOSE);
        let Ok(token) = edge_keys::encryption::decrypt(&key, encrypted) else {
            return Ok(false);
        };
        Ok(match self.store.session_with_user(&token).await? {
            Some((session, _)) => session.user_id == link.user_id && session.expires_at > now_ms(),
            None => false,
        })
    }

    /// Better Auth's `handleOAuthUserInfo`: the account's owner, else the user with this
    /// address (linked only when the provider is trusted or vouches for the address, and the
    /// local address is verified), else a new user; then a session. `Ok(Err(code))` is a
    /// refusal with Better Auth's error code (`account_not_linked`, …).
    async fn oauth_user(
        &self,
        account: &OAuthAccount,
        profile: &Profile,
        client: &Client,
    ) -> Result<Result<(SessionInfo, bool), String>, AuthError> {
        let now = now_ms();
        let owner = self
            .store
            .account_owner(&account.provider_id, &account.account_id)
            .await?;
        let (user, is_register) = match owner {
            Some((_, None)) => {
                tracing::error!(provider = %account.provider_id, "oauth account references a missing user");
                return Ok(Err("unable_to_link_account".into()));
            }
            Some((row_id, Some(user))) => {
                // `scope` is left alone on sign-in (Better Auth updates it only on link).
                self.store
                    .update_account_tokens(&row_id, &account.tokens, now)
                    .await?;
                let user = self.vouch_for_email(user, profile, now).await?;
                (user, false)
            }
            None => match self.store.user_by_email(&profile.email).await? {
                Some(user) => {
                    let trusted = self.social.is_trusted(&account.provider_id);
                    if (!trusted && !profile.email_verified) || !user.email_verified {
                        tracing::info!(provider = %account.provider_id, user_id = %user.id, "account not linked");
                        return Ok(Err("account_not_linked".into()));
                    }
                    self.store.link_account(&account.row(&user.id, now)).await?;
                    let user = self.vouch_for_email(user, profile, now).await?;
                    (user, false)
                }
                None => {
                    let user = User {
                        id: edge_keys::generate_id(),
                        name: profile.name.clone(),
                        email: profile.email.clone(),
                        email_verified: profile.email_verified,
                        image: profile.image.clone(),
                        created_at: now,
                        updated_at: now,
                    };
                    let token = SessionToken::generate();
                    let session = new_session(&user.id, &token, client, now);
                    match self
                        .store
                        .create_social_user(&user, &account.row(&user.id, now), &session)
                        .await
                    {
                        Ok(()) => {}
                        Err(crate::store::StoreError::UserExists) => {
                            return Ok(Err("unable_to_create_user".into()));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    tracing::info!(user_id = %user.id, provider = %account.provider_id, "signed up with a provider");
                    return Ok(Ok((self.opened(session, user, &token), true)));
                }
            },
        };
        let token = SessionToken::generate();
        let session = new_session(&user.id, &token, client, now);
        self.store.create_session(&session).await?;
        tracing::info!(user_id = %user.id, provider = %account.provider_id, "signed in with a provider");
        Ok(Ok((self.opened(session, user, &token), is_register)))
    }

    /// Better Auth marks a local address verified when the provider vouches for that same
    /// address.
    async fn vouch_for_email(
        &self,
        mut user: User,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Result<User, AuthError> {
        if profile.email_verified && !user.email_verified && profile.email == user.email {
            self.store.mark_email_verified(&user.id, now).await?;
            user.email_verified = true;
            user.updated_at = now;
        }
        Ok(user)
    }
}

/// The account a provider names, with its tokens.
#[derive(Debug, Clone)]
struct OAuthAccount {
    provider_id: String,
    account_id: String,
    tokens: ProviderTokens,
    scope: Option<String>,
}

impl OAuthAccount {
    fn new(
        provider: &Provider,
        user_info: &provider::ProviderUser,
        tokens: ProviderTokens,
        scope: Option<String>,
    ) -> Self {
        OAuthAccount {
            provider_id: provider.config.id.clone(),
            account_id: user_info.account_id.clone(),
            tokens,
            scope,
        }
    }

    fn row(&self, user_id: &str, now: DateTime<Utc>) -> SocialAccount {
        SocialAccount {
            id: edge_keys::generate_id(),
            provider_id: self.provider_id.clone(),
            account_id: self.account_id.clone(),
            user_id: user_id.to_owned(),
            tokens: self.tokens.clone(),
            scope: self.scope.clone(),
            created_at: now,
        }
    }
}

/// The user as the provider describes them (address lower-cased, as Better Auth stores it).
#[derive(Debug, Clone)]
struct Profile {
    email: String,
    email_verified: bool,
    name: String,
    image: Option<String>,
}

impl Profile {
    /// `None` when the provider names no address.
    fn of(user_info: &provider::ProviderUser) -> Option<Profile> {
        let email = user_info.email.as_deref().filter(|e| !e.is_empty())?;
        Some(Profile {
            email: email.to_lowercase(),
            email_verified: user_info.email_verified,
            name: user_info.name.clone(),
            image: user_info.image.clone(),
        })
    }
}

/// Better Auth's 401 `USER_EMAIL_NOT_FOUND` of the ID-token routes.
fn email_not_found() -> AuthError {
    AuthError::invalid(ErrorCode::USER_EMAIL_NOT_FOUND, "User email not found")
}

impl IdTokenSignIn {
    /// What the account keeps of an ID-token sign-in or link: the token and the access token
    /// the app sent (no refresh token, scope or expiry, as Better Auth stores them).
    fn tokens(&self) -> ProviderTokens {
        ProviderTokens {
            access_token: (!self.access_token.is_empty()).then(|| self.access_token.clone()),
            id_token: Some(self.token.clone()),
            ..ProviderTokens::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_redirects_append_to_the_query_as_better_auth_does() {
        assert_eq!(
            append_query("/login", &[("error", "state_mismatch")]),
            "/login?error=state_mismatch"
        );
        assert_eq!(
            append_query(
                "http://localhost:8080/api/auth/error?x=1",
                &[("error", "a b")]
            ),
            "http://localhost:8080/api/auth/error?x=1&error=a+b"
        );
    }

    #[test]
    fn state_json_is_better_auths() {
        let data = StateData {
            callback_url: "/".into(),
            code_verifier: "v".into(),
            error_url: None,
            new_user_url: Some("/new".into()),
            link: None,
            expires_at: 1,
            request_sign_up: None,
            id_token_nonce: Some("n".into()),
            oauth_state: Some("s".into()),
        };
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"callbackURL":"/","codeVerifier":"v","newUserURL":"/new","expiresAt":1,"idTokenNonce":"n","oauthState":"s"}"#
        );
        // link-social's `link`, in Better Auth's order; its user id may come as a number.
        let link = LinkData {
            user_id: "u".into(),
            email: "a@example.com".into(),
            encrypted_session_token: Some("e".into()),
        };
        assert_eq!(
            serde_json::to_string(&link).unwrap(),
            r#"{"userId":"u","email":"a@example.com","encryptedSessionToken":"e"}"#
        );
        let read: LinkData =
            serde_json::from_str(r#"{"userId":7,"email":"a@example.com"}"#).unwrap();
        assert_eq!(read.user_id, "7");
        assert!(read.encrypted_session_token.is_none());
    }
}

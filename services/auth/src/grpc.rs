//! The `edge.auth.v1.AuthService` gRPC server over [`AuthCore`].

use std::pin::Pin;
use std::sync::Arc;

use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_server::AuthService;
use edge_proto::error::ErrorCode;
use futures_util::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::account::{CookieRenewal, Revoke};
use crate::service::{AuthCore, Client, Cookies, SessionInfo, SignedUp, js_date};
use crate::social::{SocialCallback, SocialStart};
use crate::store::{AccountRow, RevocationRow, Session, User};

const MAX_FIELD_LEN: usize = 4096;

#[derive(Debug, Clone)]
pub struct GrpcApi {
    core: Arc<AuthCore>,
}

impl GrpcApi {
    pub fn new(core: Arc<AuthCore>) -> Self {
        GrpcApi { core }
    }
}

fn user_pb(u: &User) -> pb::User {
    pb::User {
        id: u.id.clone(),
        name: u.name.clone(),
        email: u.email.clone(),
        email_verified: u.email_verified,
        image: u.image.clone(),
        created_at: js_date(&u.created_at),
        updated_at: js_date(&u.updated_at),
    }
}

fn session_pb(s: &Session) -> pb::Session {
    pb::Session {
        id: s.id.clone(),
        token: s.token.clone(),
        user_id: s.user_id.clone(),
        expires_at: js_date(&s.expires_at),
        created_at: js_date(&s.created_at),
        updated_at: js_date(&s.updated_at),
        ip_address: s.ip_address.clone().unwrap_or_default(),
        user_agent: s.user_agent.clone().unwrap_or_default(),
    }
}

/// The browser's cookies as a request carries them.
fn cookies<'a>(session: &'a str, dont_remember: &'a str) -> Cookies<'a> {
    Cookies {
        session,
        dont_remember,
    }
}

/// A session opened for the browser; `secret` signs the `dont_remember` cookie of a session
/// opened with `rememberMe: false`.
fn session_response(info: SessionInfo, secret: &edge_keys::Secret) -> pb::SessionResponse {
    pb::SessionResponse {
        dont_remember_cookie_value: if info.dont_remember {
            edge_keys::cookie::sign_dont_remember(secret)
        } else {
            String::new()
        },
        user: Some(user_pb(&info.user)),
        session: Some(session_pb(&info.session)),
        cookie_value: info.cookie_value,
        cookie_max_age_seconds: edge_keys::cookie::SESSION_MAX_AGE_SECONDS,
    }
}

fn revocation_pb(r: &RevocationRow) -> pb::Revocation {
    pb::Revocation {
        sequence: r.position as u64,
        session_id: r.session_id.clone().unwrap_or_default(),
        cache_key: r.cache_key.clone().unwrap_or_default(),
        reason: r.reason.clone(),
        revoked_at_ms: r.revoked_at.timestamp_millis(),
        user_id: r.user_id.clone().unwrap_or_default(),
        end_of_backlog: false,
        retention_seconds: 0,
    }
}

fn revocations_response(changed: crate::account::Changed) -> pb::RevocationsResponse {
    pb::RevocationsResponse {
        revocations: changed.revocations.iter().map(revocation_pb).collect(),
        current_ended: changed.current_ended,
        user: changed.user.as_ref().map(user_pb),
        set_cookie_again: changed.cookie != CookieRenewal::Unchanged,
        dont_remember: changed.cookie == CookieRenewal::BrowserSession,
    }
}

fn account_pb(a: &AccountRow) -> pb::Account {
    pb::Account {
        id: a.id.clone(),
        provider_id: a.provider_id.clone(),
        account_id: a.account_id.clone(),
        user_id: a.user_id.clone(),
        // Better Auth stores scopes comma-separated.
        scopes: a
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: js_date(&a.created_at),
        updated_at: js_date(&a.updated_at),
    }
}

fn client(c: Option<pb::ClientInfo>) -> Client {
    let c = c.unwrap_or_default();
    Client {
        ip_address: c.ip_address,
        user_agent: c.user_agent.chars().take(512).collect(),
        dont_remember: false,
    }
}

/// Refuses oversized strings before any work is done.
fn bounded<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    if value.len() > MAX_FIELD_LEN {
        return Err(ErrorCode::VALIDATION_ERROR.to_status(format!("[body.{field}] is too long")));
    }
    Ok(value)
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(ErrorCode::VALIDATION_ERROR.to_status(format!("[body.{field}] is required")));
    }
    bounded(field, value)
}

type RevocationStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl AuthService for GrpcApi {
    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SessionResponse>, Status> {
        let r = request.into_inner();
        let name = bounded("name", &r.name)?;
        let email = required("email", &r.email)?;
        let password = required("password", &r.password)?;
        let image = r.image.filter(|i| !i.is_empty());
        if let Some(i) = &image {
            bounded("image", i)?;
        }
        let callback = bounded("callbackURL", &r.callback_url)?;
        let signed_up = self
            .core
            .sign_up(
                name,
                email,
                password,
                image,
                callback,
                &Client {
                    dont_remember: r.dont_remember,
                    ..client(r.client)
                },
            )
            .await?;
        Ok(Response::new(match signed_up {
            SignedUp::Session(info) => session_response(info, &self.core.config.secret),
            SignedUp::Pending(user) => pb::SessionResponse {
                user: Some(user_pb(&user)),
                ..Default::default()
            },
        }))
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SessionResponse>, Status> {
        let r = request.into_inner();
        let email = required("email", &r.email)?;
        // An empty password is a wrong one (Better Auth's sign-in schema allows it).
        let password = bounded("password", &r.password)?;
        let callback = bounded("callbackURL", &r.callback_url)?;
        let info = self
            .core
            .sign_in(
                email,
                password,
                callback,
                &Client {
                    dont_remember: r.dont_remember,
                    ..client(r.client)
                },
            )
            .await?;
        Ok(Response::new(session_response(
            info,
            &self.core.config.secret,
        )))
    }

    async fn sign_out(
        &self,
        request: Request<pb::SignOutRequest>,
    ) -> Result<Response<pb::SignOutResponse>, Status> {
        let r = request.into_inner();
        let row = self.core.sign_out(&r.cookie_value).await?;
        Ok(Response::new(pb::SignOutResponse {
            sequence: row.position as u64,
            cache_key: row.cache_key.unwrap_or_default(),
            session_id: row.session_id.unwrap_or_default(),
            user_id: row.user_id.unwrap_or_default(),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let r = request.into_inner();
        let info = self
            .core
            .session_for(&r.cookie_value, &r.dont_remember_cookie)
            .await?;
        Ok(Response::new(pb::GetSessionResponse {
            user: Some(user_pb(&info.user)),
            session: Some(session_pb(&info.session)),
            refreshed_cookie_value: info.refreshed.then(|| info.cookie_value.clone()),
            cookie_max_age_seconds: edge_keys::cookie::SESSION_MAX_AGE_SECONDS,
        }))
    }

    async fn consume_rate_limit(
        &self,
        request: Request<pb::ConsumeRateLimitRequest>,
    ) -> Result<Response<pb::ConsumeRateLimitResponse>, Status> {
        let r = request.into_inner();
        self.core
            .consume_rate_limit(&client(r.client), &r.path)
            .await?;
        Ok(Response::new(pb::ConsumeRateLimitResponse {}))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let r = request.into_inner();
        let issued = self
            .core
            .issue_token_for(&r.cookie_value, &r.dont_remember_cookie)
            .await?;
        Ok(Response::new(pb::IssueTokenResponse {
            jwt: issued.token.jwt,
            expires_at: issued.token.expires_at,
            session_id: issued.session_id,
            cache_key: issued.cache_key.as_str().to_owned(),
            user_id: issued.user_id,
        }))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.core.keys.current().jwks_json().to_owned(),
            version: self.core.keys.version(),
            max_age_seconds: self.core.config.jwks_max_age.as_secs(),
            issuer: self.core.config.issuer.clone(),
            audience: self.core.config.audience.clone(),
            alg: self.core.config.alg.as_str().to_owned(),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::CookieRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = request.into_inner();
        let sessions = self
            .core
            .list_sessions(cookies(&r.cookie_value, &r.dont_remember_cookie))
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(session_pb).collect(),
        }))
    }

    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevocationsResponse>, Status> {
        use pb::revoke_sessions_request::Scope;
        let r = request.into_inner();
        let scope = match r.scope {
            Some(Scope::Token(t)) => Revoke::Token(required("token", &t)?.to_owned()),
            Some(Scope::All(true)) => Revoke::All,
            Some(Scope::Others(true)) => Revoke::Others,
            _ => return Err(ErrorCode::VALIDATION_ERROR.to_status("a scope is required")),
        };
        let changed = self
            .core
            .revoke_sessions(cookies(&r.cookie_value, &r.dont_remember_cookie), scope)
            .await?;
        Ok(Response::new(revocations_response(changed)))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::RevocationsResponse>, Status> {
        let r = request.into_inner();
        if let Some(n) = &r.name {
            bounded("name", n)?;
        }
        if let Some(i) = &r.image {
            bounded("image", i)?;
        }
        let image = if r.clear_image {
            Some(None)
        } else {
            r.image.map(Some)
        };
        let changed = self
            .core
            .update_user(
                cookies(&r.cookie_value, &r.dont_remember_cookie),
                r.name,
                image,
            )
            .await?;
        Ok(Response::new(revocations_response(changed)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let r = request.into_inner();
        let current = required("currentPassword", &r.current_password)?;
        let new = required("newPassword", &r.new_password)?;
        let changed = self
            .core
            .change_password(
                cookies(&r.cookie_value, &r.dont_remember_cookie),
                current,
                new,
                r.revoke_other_sessions,
                &client(r.client),
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            user: Some(user_pb(&changed.user)),
            new_session: changed
                .new_session
                .map(|info| session_response(info, &self.core.config.secret)),
            revocations: changed.revocations.iter().map(revocation_pb).collect(),
        }))
    }

    async fn change_email(
        &self,
        request: Request<pb::ChangeEmailRequest>,
    ) -> Result<Response<pb::RevocationsResponse>, Status> {
        let r = request.into_inner();
        let email = required("newEmail", &r.new_email)?;
        let callback = bounded("callbackURL", &r.callback_url)?;
        let changed = self
            .core
            .change_email(
                cookies(&r.cookie_value, &r.dont_remember_cookie),
                email,
                callback,
            )
            .await?;
        Ok(Response::new(revocations_response(changed)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::RevocationsResponse>, Status> {
        let r = request.into_inner();
        let password = r.password.as_deref().filter(|p| !p.is_empty());
        let changed = self
            .core
            .delete_user(cookies(&r.cookie_value, &r.dont_remember_cookie), password)
            .await?;
        Ok(Response::new(revocations_response(changed)))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::CookieRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let r = request.into_inner();
        let accounts = self
            .core
            .list_accounts(cookies(&r.cookie_value, &r.dont_remember_cookie))
            .await?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(account_pb).collect(),
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let r = request.into_inner();
        let email = required("email", &r.email)?;
        let redirect = bounded("redirectTo", &r.redirect_to)?;
        self.core.request_password_reset(email, redirect).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn check_reset_token(
        &self,
        request: Request<pb::CheckResetTokenRequest>,
    ) -> Result<Response<pb::CheckResetTokenResponse>, Status> {
        let r = request.into_inner();
        let valid = !r.token.is_empty()
            && r.token.len() <= MAX_FIELD_LEN
            && self.core.check_reset_token(&r.token).await?;
        Ok(Response::new(pb::CheckResetTokenResponse { valid }))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::RevocationsResponse>, Status> {
        let r = request.into_inner();
        let token = bounded("token", &r.token)?;
        let new = required("newPassword", &r.new_password)?;
        let changed = self.core.reset_password(token, new).await?;
        Ok(Response::new(revocations_response(changed)))
    }

    async fn send_verification_email(
        &self,
        request: Request<pb::SendVerificationEmailRequest>,
    ) -> Result<Response<pb::SendVerificationEmailResponse>, Status> {
        let r = request.into_inner();
        let email = required("email", &r.email)?;
        let callback = bounded("callbackURL", &r.callback_url)?;
        let cookie = Some(cookies(&r.cookie_value, &r.dont_remember_cookie))
            .filter(|c| !c.session.is_empty());
        self.core
            .send_verification_email(cookie, email, callback)
            .await?;
        Ok(Response::new(pb::SendVerificationEmailResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let r = request.into_inner();
        let token = required("token", &r.token)?;
        let callback = bounded("callbackURL", &r.callback_url)?;
        let cookie = Some(cookies(&r.cookie_value, &r.dont_remember_cookie))
            .filter(|c| !c.session.is_empty());
        let changed = self.core.verify_email(token, cookie, callback).await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: changed.user.as_ref().map(user_pb),
            revocations: changed.revocations.iter().map(revocation_pb).collect(),
        }))
    }

    async fn start_social_sign_in(
        &self,
        request: Request<pb::StartSocialSignInRequest>,
    ) -> Result<Response<pb::StartSocialSignInResponse>, Status> {
        let r = request.into_inner();
        if r.scopes.len() > 64 {
            return Err(ErrorCode::VALIDATION_ERROR.to_status("[body.scopes] too many scopes"));
        }
        for scope in &r.scopes {
            bounded("scopes", scope)?;
        }
        let start = SocialStart {
            provider_id: required("provider", &r.provider_id)?.to_owned(),
            callback_url: bounded("callbackURL", &r.callback_url)?.to_owned(),
            error_callback_url: bounded("errorCallbackURL", &r.error_callback_url)?.to_owned(),
            new_user_callback_url: bounded("newUserCallbackURL", &r.new_user_callback_url)?
                .to_owned(),
            scopes: r.scopes,
            login_hint: bounded("loginHint", &r.login_hint)?.to_owned(),
            request_sign_up: r.request_sign_up,
            oauth2_path: r.oauth2_path,
            link_cookie_value: r.link_cookie_value,
            link_dont_remember_cookie: r.link_dont_remember_cookie,
        };
        let started = self.core.social_start(&start, &client(r.client)).await?;
        Ok(Response::new(pb::StartSocialSignInResponse {
            url: started.url,
            state_cookie_value: started.state_cookie,
            state_cookie_max_age_seconds: crate::social::STATE_COOKIE_MAX_AGE,
        }))
    }

    async fn finish_social_sign_in(
        &self,
        request: Request<pb::FinishSocialSignInRequest>,
    ) -> Result<Response<pb::FinishSocialSignInResponse>, Status> {
        let r = request.into_inner();
        let callback = SocialCallback {
            provider_id: bounded("id", &r.provider_id)?.to_owned(),
            code: bounded("code", &r.code)?.to_owned(),
            state: bounded("state", &r.state)?.to_owned(),
            error: bounded("error", &r.error)?.to_owned(),
            error_description: bounded("error_description", &r.error_description)?.to_owned(),
            iss: bounded("iss", &r.iss)?.to_owned(),
            state_cookie: bounded("state", &r.state_cookie)?.to_owned(),
            oauth2_path: r.oauth2_path,
            user: bounded("user", &r.user)?.to_owned(),
        };
        let finished = self
            .core
            .social_callback(&callback, &client(r.client))
            .await?;
        Ok(Response::new(pb::FinishSocialSignInResponse {
            location: finished.location,
            session: finished
                .session
                .map(|info| session_response(info, &self.core.config.secret)),
            clear_state_cookie: finished.clear_state_cookie,
        }))
    }

    async fn id_token_sign_in(
        &self,
        request: Request<pb::IdTokenSignInRequest>,
    ) -> Result<Response<pb::SessionResponse>, Status> {
        let r = request.into_inner();
        let sign_in = crate::social::IdTokenSignIn {
            provider_id: required("provider", &r.provider_id)?.to_owned(),
            token: required("idToken.token", &r.token)?.to_owned(),
            nonce: bounded("idToken.nonce", &r.nonce)?.to_owned(),
            access_token: bounded("idToken.accessToken", &r.access_token)?.to_owned(),
            user: bounded("idToken.user", &r.user)?.to_owned(),
        };
        let info = self
            .core
            .id_token_sign_in(&sign_in, &client(r.client))
            .await?;
        Ok(Response::new(session_response(
            info,
            &self.core.config.secret,
        )))
    }

    async fn link_id_token(
        &self,
        request: Request<pb::LinkIdTokenRequest>,
    ) -> Result<Response<pb::LinkIdTokenResponse>, Status> {
        let r = request.into_inner();
        let t = r.id_token.unwrap_or_default();
        let link = crate::social::IdTokenSignIn {
            provider_id: required("provider", &t.provider_id)?.to_owned(),
            token: required("idToken.token", &t.token)?.to_owned(),
            nonce: bounded("idToken.nonce", &t.nonce)?.to_owned(),
            access_token: bounded("idToken.accessToken", &t.access_token)?.to_owned(),
            user: bounded("idToken.user", &t.user)?.to_owned(),
        };
        self.core
            .link_id_token(cookies(&r.cookie_value, &r.dont_remember_cookie), &link)
            .await?;
        Ok(Response::new(pb::LinkIdTokenResponse {}))
    }

    async fn unlink_account(
        &self,
        request: Request<pb::UnlinkAccountRequest>,
    ) -> Result<Response<pb::UnlinkAccountResponse>, Status> {
        let r = request.into_inner();
        let account_id = bounded("accountId", &r.account_id)?;
        self.core
            .unlink_account(
                cookies(&r.cookie_value, &r.dont_remember_cookie),
                account_id,
            )
            .await?;
        Ok(Response::new(pb::UnlinkAccountResponse {}))
    }

    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let after = i64::try_from(request.into_inner().after_sequence)
            .map_err(|_| ErrorCode::VALIDATION_ERROR.to_status("after_sequence is out of range"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let core = self.core.clone();
        tokio::spawn(stream_revocations(core, after, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends log entries after `after` (from the retention window when 0), the end-of-backlog
/// mark once they are all out, then live entries as the hub says the log moved. Ends when the
/// client goes away, or with `UNAVAILABLE` when auth shuts down.
async fn stream_revocations(
    core: Arc<AuthCore>,
    after: i64,
    tx: tokio::sync::mpsc::Sender<Result<pb::Revocation, Status>>,
) {
    const PAGE: i64 = 5000;
    let retention = core.config.revocation_retention();
    let fail = |error: crate::store::StoreError| {
        tracing::warn!(%error, "revocation read failed");
        ErrorCode::SERVICE_UNAVAILABLE.to_status("revocation log unavailable")
    };
    let mut latest = core.revocations.subscribe();
    let mut stopping = core.stopping.subscribe();
    let mut after = if after == 0 {
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::zero());
        match core.store.window_start(since).await {
            Ok(start) => start,
            Err(error) => {
                let _ = tx.send(Err(fail(error))).await;
                return;
            }
        }
    } else {
        after
    };
    let mut backlog = true;
    loop {
        // Mark the current value seen before reading, so a publish during the read wakes us.
        latest.borrow_and_update();
        match core.store.revocations_after(after, PAGE).await {
            Ok(rows) => {
                let full_page = rows.len() as i64 == PAGE;
                for row in &rows {
                    if tx.send(Ok(revocation_pb(row))).await.is_err() {
                        return;
                    }
                    after = row.position;
                }
                if full_page {
                    continue;
                }
            }
            Err(error) => {
                let _ = tx.send(Err(fail(error))).await;
                return;
            }
        }
        if backlog {
            backlog = false;
            let mark = pb::Revocation {
                sequence: after.max(0) as u64,
                end_of_backlog: true,
                retention_seconds: retention.as_secs(),
                ..Default::default()
            };
            if tx.send(Ok(mark)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
            // Shutting down: the client resumes from its last position on another replica.
            () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                let _ = tx.send(Err(Status::unavailable("auth is shutting down"))).await;
                return;
            }
            // A backstop for notifications lost between replicas, at the database poll's pace.
            _ = tokio::time::sleep(core.config.database_poll()) => {}
        }
    }
}

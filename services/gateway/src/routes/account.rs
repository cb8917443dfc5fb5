//! Better Auth's session, account, password-reset and email-verification routes
//! (`list-sessions`, `revoke-*`, `update-user`, `change-password`, `change-email`,
//! `delete-user`, `list-accounts`, `request-password-reset`, `reset-password`,
//! `send-verification-email`, `verify-email`), each one call to auth.
//!
//! Calls that end sessions or change a user return the session log entries they wrote; they
//! are applied to this gateway's token cache before the answer leaves, exactly as the
//! revocation stream applies them on every other gateway.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use edge_proto::auth::v1 as pb;
use edge_proto::error::ErrorCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::State;
use crate::error::ApiError;
use crate::routes::auth::{
    client_info, invalid_type, opened_session, session_json, string_field, user_json,
};
use crate::routes::request::{self, Csrf, check_origin};
use crate::routes::{
    clear_cookies, dont_remember_cookie, session_cookie, set_browser_session_cookies, set_cookie,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/list-sessions", web::get().to(list_sessions))
        .route("/api/auth/revoke-session", web::post().to(revoke_session))
        .route("/api/auth/revoke-sessions", web::post().to(revoke_sessions))
        .route(
            "/api/auth/revoke-other-sessions",
            web::post().to(revoke_other_sessions),
        )
        .route("/api/auth/update-user", web::post().to(update_user))
        .route("/api/auth/change-password", web::post().to(change_password))
        .route("/api/auth/change-email", web::post().to(change_email))
        .route("/api/auth/delete-user", web::post().to(delete_user))
        .route("/api/auth/list-accounts", web::get().to(list_accounts))
        .route(
            "/api/auth/request-password-reset",
            web::post().to(request_password_reset),
        )
        // The path before Better Auth 1.4 renamed it.
        .route(
            "/api/auth/forget-password",
            web::post().to(request_password_reset),
        )
        .route(
            "/api/auth/reset-password/{token}",
            web::get().to(reset_password_link),
        )
        .route("/api/auth/reset-password", web::post().to(reset_password))
        .route(
            "/api/auth/send-verification-email",
            web::post().to(send_verification_email),
        )
        .route("/api/auth/verify-email", web::get().to(verify_email));
}

/// A callback or redirect URL as Better Auth's origin check takes it: a path on this site
/// (`/…`, not `//…`), or an absolute URL on this origin or a trusted one. Empty is none.
pub(crate) fn check_callback(
    req: &HttpRequest,
    state: &State,
    url: &str,
    code: ErrorCode,
) -> Result<(), ApiError> {
    if url.is_empty() {
        return Ok(());
    }
    let refuse = || ApiError::new(code, code_message(code));
    if url.starts_with('/') {
        if url.starts_with("//") || url.starts_with("/\\") || url.contains(['\r', '\n']) {
            return Err(refuse());
        }
        return Ok(());
    }
    let parsed = url::Url::parse(url).map_err(|_| refuse())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse());
    }
    let origin = parsed.origin().ascii_serialization();
    let info = req.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    if origin == own || state.config.trusted_origins.contains(&origin) {
        return Ok(());
    }
    Err(refuse())
}

fn code_message(code: ErrorCode) -> &'static str {
    match code.code {
        "INVALID_REDIRECT_URL" => "Invalid redirectURL",
        _ => "Invalid callbackURL",
    }
}

fn required_cookie(req: &HttpRequest) -> Result<String, ApiError> {
    session_cookie(req).ok_or_else(|| ApiError::new(ErrorCode::UNAUTHORIZED, "Unauthorized"))
}

/// Applies the log entries a call wrote to this gateway's cache before the answer leaves.
async fn apply(state: &State, revocations: &[pb::Revocation]) {
    if let Some(cache) = state.cache() {
        for entry in revocations {
            crate::revocations::apply(cache, entry).await;
        }
        if let Some(last) = revocations.iter().map(|e| e.sequence).max() {
            cache.committed(last);
        }
    }
}

/// `{"status": true}`; when the caller's own session ended, its cookies are cleared as
/// Better Auth's `deleteSessionCookie` does.
fn status_ok(req: &HttpRequest, current_ended: bool) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if current_ended {
        for cookie in clear_cookies(req) {
            response.append_header((header::SET_COOKIE, cookie));
        }
    }
    response.json(json!({"status": true}))
}

/// `{"status": true}`, with the caller's session cookie written again when auth says so: Better
/// Auth's `setSessionCookie` after a change to the user (Max-Age of a whole session, or a
/// browser-session cookie beside the `dont_remember` one the browser holds).
fn status_with_cookie(req: &HttpRequest, r: &pb::RevocationsResponse) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(value) = session_cookie(req).filter(|_| r.set_cookie_again) {
        if r.dont_remember {
            for cookie in set_browser_session_cookies(req, &value, &dont_remember_cookie(req)) {
                response.append_header((header::SET_COOKIE, cookie));
            }
        } else {
            let max_age = edge_keys::cookie::SESSION_MAX_AGE_SECONDS;
            response.append_header((header::SET_COOKIE, set_cookie(req, &value, max_age)));
        }
    }
    response.json(json!({"status": true}))
}

async fn list_sessions(
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let cookie_value = required_cookie(&req)?;
    let r = state
        .auth()
        .list_sessions(pb::CookieRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
        })
        .await?
        .into_inner();
    let sessions: Vec<Value> = r.sessions.iter().map(session_json).collect();
    Ok(HttpResponse::Ok().json(sessions))
}

async fn revoke(
    req: &HttpRequest,
    state: &State,
    scope: pb::revoke_sessions_request::Scope,
) -> Result<HttpResponse, ApiError> {
    check_origin(req, state, Csrf::CookieBearing)?;
    let cookie_value = required_cookie(req)?;
    let r = state
        .auth()
        .revoke_sessions(pb::RevokeSessionsRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(req),
            scope: Some(scope),
        })
        .await?
        .into_inner();
    apply(state, &r.revocations).await;
    Ok(status_ok(req, r.current_ended))
}

async fn revoke_session(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let token = string_field(&body, "token", true)?.unwrap_or_default();
    revoke(
        &req,
        &state,
        pb::revoke_sessions_request::Scope::Token(token),
    )
    .await
}

async fn revoke_sessions(
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    revoke(&req, &state, pb::revoke_sessions_request::Scope::All(true)).await
}

async fn revoke_other_sessions(
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    revoke(
        &req,
        &state,
        pb::revoke_sessions_request::Scope::Others(true),
    )
    .await
}

async fn update_user(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::body_as(
        &req,
        payload,
        state.config.max_body_bytes,
        request::Accepts::Json,
        request::Schema::Record,
    )
    .await?;
    let cookie_value = required_cookie(&req)?;
    if body.get("email").is_some_and(|e| !e.is_null()) {
        return Err(ApiError::new(
            ErrorCode::EMAIL_CAN_NOT_BE_UPDATED,
            "Email can not be updated",
        ));
    }
    let name = string_field(&body, "name", false)?;
    let (image, clear_image) = match body.get("image") {
        Some(Value::Null) => (None, true),
        _ => (string_field(&body, "image", false)?, false),
    };
    let r = state
        .auth()
        .update_user(pb::UpdateUserRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
            name,
            image,
            clear_image,
        })
        .await?
        .into_inner();
    apply(&state, &r.revocations).await;
    Ok(status_with_cookie(&req, &r))
}

/// An optional boolean field as zod's `z.boolean().optional()` reads it (absent: false;
/// `null` or another type: zod's message).
fn bool_field(body: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match body.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        other => Err(invalid_type(name, "boolean", other)),
    }
}

async fn change_password(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let cookie_value = required_cookie(&req)?;
    let request = pb::ChangePasswordRequest {
        cookie_value,
        dont_remember_cookie: dont_remember_cookie(&req),
        new_password: string_field(&body, "newPassword", true)?.unwrap_or_default(),
        current_password: string_field(&body, "currentPassword", true)?.unwrap_or_default(),
        revoke_other_sessions: bool_field(&body, "revokeOtherSessions")?,
        client: Some(client_info(&req)),
    };
    let r = state.auth().change_password(request).await?.into_inner();
    apply(&state, &r.revocations).await;
    match r.new_session {
        Some(opened) => Ok(opened_session(&req, opened, json!({}))),
        None => Ok(HttpResponse::Ok().json(json!({
            "token": null,
            "user": user_json(&r.user.unwrap_or_default()),
        }))),
    }
}

async fn change_email(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let cookie_value = required_cookie(&req)?;
    let callback_url = string_field(&body, "callbackURL", false)?.unwrap_or_default();
    check_callback(&req, &state, &callback_url, ErrorCode::INVALID_CALLBACK_URL)?;
    let r = state
        .auth()
        .change_email(pb::ChangeEmailRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
            new_email: string_field(&body, "newEmail", true)?.unwrap_or_default(),
            callback_url,
        })
        .await?
        .into_inner();
    apply(&state, &r.revocations).await;
    Ok(status_with_cookie(&req, &r))
}

async fn delete_user(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let cookie_value = required_cookie(&req)?;
    if string_field(&body, "token", false)?.is_some() {
        // Deletion by mailed link (`sendDeleteAccountVerification`) is not served.
        return Err(ApiError::new(ErrorCode::INVALID_TOKEN, "Invalid token"));
    }
    let r = state
        .auth()
        .delete_user(pb::DeleteUserRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
            password: string_field(&body, "password", false)?,
        })
        .await?
        .into_inner();
    apply(&state, &r.revocations).await;
    let mut response = HttpResponse::Ok();
    for cookie in clear_cookies(&req) {
        response.append_header((header::SET_COOKIE, cookie));
    }
    Ok(response.json(json!({"success": true, "message": "User deleted"})))
}

async fn list_accounts(
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let cookie_value = required_cookie(&req)?;
    let r = state
        .auth()
        .list_accounts(pb::CookieRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
        })
        .await?
        .into_inner();
    let accounts: Vec<Value> = r
        .accounts
        .iter()
        .map(|a| {
            json!({
                "id": a.id, "providerId": a.provider_id, "accountId": a.account_id,
                "userId": a.user_id, "scopes": a.scopes,
                "createdAt": a.created_at, "updatedAt": a.updated_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(accounts))
}

async fn request_password_reset(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let redirect_to = string_field(&body, "redirectTo", false)?.unwrap_or_default();
    check_callback(&req, &state, &redirect_to, ErrorCode::INVALID_REDIRECT_URL)?;
    state
        .auth()
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: string_field(&body, "email", true)?.unwrap_or_default(),
            redirect_to,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": true,
        "message": "If this email exists in our system, check your email for the reset link",
    })))
}

/// `url` with `key=value` added to its query (after any fragment is set aside).
fn with_query(url: &str, key: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let value = encode_component(value);
    match fragment {
        Some(f) => format!("{base}{sep}{key}={value}#{f}"),
        None => format!("{base}{sep}{key}={value}"),
    }
}

fn encode_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn redirect(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .finish()
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(rename = "callbackURL")]
    callback_url: Option<String>,
}

/// The mailed link: to `callbackURL?token=…` while the token is live, else
/// `callbackURL?error=INVALID_TOKEN`.
async fn reset_password_link(
    req: HttpRequest,
    token: web::Path<String>,
    query: web::Query<CallbackQuery>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let callback = query.callback_url.clone().unwrap_or_default();
    check_callback(&req, &state, &callback, ErrorCode::INVALID_CALLBACK_URL)?;
    if callback.is_empty() {
        return Ok(redirect("/api/auth/error?error=INVALID_TOKEN"));
    }
    let r = state
        .auth()
        .check_reset_token(pb::CheckResetTokenRequest {
            token: token.into_inner(),
        })
        .await?
        .into_inner();
    let token = req.match_info().get("token").unwrap_or_default().to_owned();
    Ok(redirect(&if r.valid {
        with_query(&callback, "token", &token)
    } else {
        with_query(&callback, "error", "INVALID_TOKEN")
    }))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn reset_password(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<TokenQuery>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let token = string_field(&body, "token", false)?
        .filter(|t| !t.is_empty())
        .or_else(|| query.token.clone())
        .ok_or_else(|| ApiError::new(ErrorCode::INVALID_TOKEN, "Invalid token"))?;
    let r = state
        .auth()
        .reset_password(pb::ResetPasswordRequest {
            token,
            new_password: string_field(&body, "newPassword", true)?.unwrap_or_default(),
        })
        .await?
        .into_inner();
    apply(&state, &r.revocations).await;
    Ok(HttpResponse::Ok().json(json!({"status": true})))
}

async fn send_verification_email(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let callback_url = string_field(&body, "callbackURL", false)?.unwrap_or_default();
    check_callback(&req, &state, &callback_url, ErrorCode::INVALID_CALLBACK_URL)?;
    state
        .auth()
        .send_verification_email(pb::SendVerificationEmailRequest {
            cookie_value: session_cookie(&req).unwrap_or_default(),
            dont_remember_cookie: dont_remember_cookie(&req),
            email: string_field(&body, "email", true)?.unwrap_or_default(),
            callback_url,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"status": true})))
}

#[derive(Deserialize)]
struct VerifyQuery {
    token: Option<String>,
    #[serde(rename = "callbackURL")]
    callback_url: Option<String>,
}

/// The mailed verification link: JSON without `callbackURL`, else a redirect there (with
/// `?error=CODE` when the token is refused).
async fn verify_email(
    req: HttpRequest,
    query: web::Query<VerifyQuery>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let callback = query.callback_url.clone().unwrap_or_default();
    check_callback(&req, &state, &callback, ErrorCode::INVALID_CALLBACK_URL)?;
    // zod's `z.string()`: absent is refused, empty goes on (and is an invalid token).
    let Some(token) = query.token.clone() else {
        return Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            "[query.token] Invalid input: expected string, received undefined",
        ));
    };
    let result = state
        .auth()
        .verify_email(pb::VerifyEmailRequest {
            token,
            cookie_value: session_cookie(&req).unwrap_or_default(),
            dont_remember_cookie: dont_remember_cookie(&req),
            callback_url: callback.clone(),
        })
        .await;
    match result {
        Ok(r) => {
            let r = r.into_inner();
            apply(&state, &r.revocations).await;
            if !callback.is_empty() {
                return Ok(redirect(&callback));
            }
            Ok(HttpResponse::Ok().json(json!({
                "status": true,
                "user": r.user.as_ref().map(user_json),
            })))
        }
        Err(status) => {
            let error = ApiError::from(status);
            let refused = [
                ErrorCode::INVALID_TOKEN,
                ErrorCode::TOKEN_EXPIRED,
                ErrorCode::USER_NOT_FOUND,
                ErrorCode::INVALID_USER,
            ];
            if !refused.contains(&error.code) {
                return Err(error);
            }
            if !callback.is_empty() {
                return Ok(redirect(&with_query(&callback, "error", error.code.code)));
            }
            // Better Auth answers a refused link with 401 whatever the code.
            Ok(HttpResponse::Unauthorized()
                .json(json!({"code": error.code.code, "message": error.message})))
        }
    }
}

//! Better Auth-compatible `/api/auth/*` routes, answered through auth's gRPC API with Better
//! Auth's JSON bodies, cookies and error codes.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use edge_proto::auth::v1 as pb;
use edge_proto::error::ErrorCode;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::routes::request::{self, Csrf, check_origin};
use crate::routes::{
    clear_cookies, client_view, dont_remember_cookie, expire_dont_remember, holds_convex_jwt,
    is_https, session_cookie, set_browser_session_cookies, set_convex_jwt, set_cookie,
};
use crate::{Freshness, State};
use edge_keys::CacheKey;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/sign-up/email", web::post().to(sign_up))
        .route("/api/auth/sign-in/email", web::post().to(sign_in))
        .route("/api/auth/sign-out", web::post().to(sign_out))
        .route("/api/auth/get-session", web::get().to(get_session))
        .route("/api/auth/convex/token", web::get().to(token))
        .route("/api/auth/token", web::get().to(token))
        .route("/api/auth/convex/jwks", web::get().to(jwks))
        .route("/api/auth/jwks", web::get().to(jwks));
}

/// A string field as Better Auth's zod schema reads it: required ones must be present, and a
/// present one (even `null`) must be a string; the message is zod's.
pub(crate) fn string_field(
    body: &Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None if !required => Ok(None),
        other => Err(invalid_type(name, "string", other)),
    }
}

/// zod's error for a body field of the wrong type: `[body.NAME] Invalid input: expected
/// EXPECTED, received TYPE` (`undefined` when absent).
pub(crate) fn invalid_type(name: &str, expected: &str, got: Option<&Value>) -> ApiError {
    let received = match got {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    };
    ApiError::new(
        ErrorCode::VALIDATION_ERROR,
        format!("[body.{name}] Invalid input: expected {expected}, received {received}"),
    )
}

/// Better Auth's `rememberMe` (`z.boolean().optional()`): `Some(false)` only when the body says
/// `false`; any other type is zod's error.
fn remember_me(body: &Map<String, Value>) -> Result<bool, ApiError> {
    let received = match body.get("rememberMe") {
        None => return Ok(true),
        Some(Value::Bool(b)) => return Ok(*b),
        Some(Value::Null) => "null",
        Some(Value::String(_)) => "string",
        Some(Value::Number(_)) => "number",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    };
    Err(ApiError::new(
        ErrorCode::VALIDATION_ERROR,
        format!("[body.rememberMe] Invalid input: expected boolean, received {received}"),
    ))
}

/// The client's address (through trusted proxies only) and user agent, for auth's rate limits
/// and the session row.
pub(crate) fn client_info(req: &HttpRequest) -> pb::ClientInfo {
    pb::ClientInfo {
        // Better Auth's form: an IPv6 client is its /64 (rate limits, the session row).
        ip_address: client_view(req)
            .ip
            .map(edge_forwarded::better_auth_ip)
            .unwrap_or_default(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Better Auth's user object; `image` is `null` when the user has none.
pub(crate) fn user_json(u: &pb::User) -> Value {
    json!({
        "id": u.id, "name": u.name, "email": u.email, "emailVerified": u.email_verified,
        "image": u.image, "createdAt": u.created_at, "updatedAt": u.updated_at,
    })
}

pub(crate) fn session_json(s: &pb::Session) -> Value {
    json!({
        "id": s.id, "token": s.token, "userId": s.user_id, "expiresAt": s.expires_at,
        "createdAt": s.created_at, "updatedAt": s.updated_at,
        "ipAddress": s.ip_address, "userAgent": s.user_agent,
    })
}

async fn sign_up(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::FirstLogin)?;
    let body = request::body_as(
        &req,
        payload,
        state.config.max_body_bytes,
        request::Accepts::JsonOrForm,
        request::Schema::ObjectAndRecord,
    )
    .await?;
    let callback = request::callback_url(&req, &state, &body)?;
    // Better Auth's schema (`z.string().nonempty()`) refuses it before any other check.
    if body.get("password").and_then(Value::as_str) == Some("") {
        return Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            "[body.password] Too small: expected string to have >=1 characters",
        ));
    }
    let request = pb::SignUpRequest {
        name: string_field(&body, "name", true)?.unwrap_or_default(),
        email: string_field(&body, "email", true)?.unwrap_or_default(),
        password: string_field(&body, "password", true)?.unwrap_or_default(),
        image: string_field(&body, "image", false)?,
        client: Some(client_info(&req)),
        callback_url: callback.clone().unwrap_or_default(),
        dont_remember: !remember_me(&body)?,
    };
    let r = state.auth().sign_up(request).await?.into_inner();
    Ok(opened_session(&req, r, json!({})))
}

/// The response to a sign-up or sign-in: the cookie, and Better Auth's `{token, user, …}`;
/// `{"token": null}` and no cookie when sign-up opened no session.
pub(crate) fn opened_session(
    req: &HttpRequest,
    r: pb::SessionResponse,
    mut body: Value,
) -> HttpResponse {
    let user = r.user.unwrap_or_default();
    let Some(session) = r.session else {
        body["token"] = Value::Null;
        body["user"] = user_json(&user);
        return HttpResponse::Ok().json(body);
    };
    body["token"] = Value::String(session.token);
    body["user"] = user_json(&user);
    // Better Auth's JSON drops `undefined` members (`url` without a callback).
    if let Value::Object(map) = &mut body {
        map.retain(|k, v| k != "url" || !v.is_null());
    }
    let mut response = HttpResponse::Ok();
    if r.dont_remember_cookie_value.is_empty() {
        response.append_header((
            header::SET_COOKIE,
            set_cookie(req, &r.cookie_value, r.cookie_max_age_seconds),
        ));
        // Better Auth's `setSessionCookie`: a remembered session replaces a browser-session one.
        if !dont_remember_cookie(req).is_empty() {
            response.append_header((header::SET_COOKIE, expire_dont_remember(req)));
        }
    } else {
        for cookie in
            set_browser_session_cookies(req, &r.cookie_value, &r.dont_remember_cookie_value)
        {
            response.append_header((header::SET_COOKIE, cookie));
        }
    }
    response.json(body)
}

async fn sign_in(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::FirstLogin)?;
    let body = request::body(
        &req,
        payload,
        state.config.max_body_bytes,
        request::Accepts::JsonOrForm,
    )
    .await?;
    let callback = request::callback_url(&req, &state, &body)?;
    let request = pb::SignInRequest {
        email: string_field(&body, "email", true)?.unwrap_or_default(),
        password: string_field(&body, "password", true)?.unwrap_or_default(),
        client: Some(client_info(&req)),
        callback_url: callback.clone().unwrap_or_default(),
        dont_remember: !remember_me(&body)?,
    };
    let r = state.auth().sign_in(request).await?.into_inner();
    // Better Auth: `{redirect, token, url, user}`, and `Location` when there is a callback.
    let body = json!({"redirect": callback.is_some(), "url": callback});
    let mut response = opened_session(&req, r, body);
    if let Some(url) = callback.as_deref().and_then(|u| u.parse().ok()) {
        response.headers_mut().insert(header::LOCATION, url);
    }
    Ok(response)
}

/// Better Auth 1.7's sign-out: the session (if the cookie names one) ends, the cookies are
/// cleared, and the answer is `{"success": true}` with or without a valid cookie.
async fn sign_out(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let done = || {
        let mut response = HttpResponse::Ok();
        for cookie in clear_cookies(&req) {
            response.append_header((header::SET_COOKIE, cookie));
        }
        response.json(json!({"success": true}))
    };
    let Some(cookie_value) = session_cookie(&req) else {
        return Ok(done());
    };
    let own_key = CacheKey::for_cookie(&cookie_value);
    let r = match state
        .auth()
        .sign_out(pb::SignOutRequest { cookie_value })
        .await
    {
        Ok(r) => r.into_inner(),
        // A forged, garbage or already ended session: nothing to end.
        Err(status) if ErrorCode::from_status(&status) == ErrorCode::FAILED_TO_GET_SESSION => {
            return Ok(done());
        }
        Err(status) => return Err(status.into()),
    };
    // Applied here before answering; other gateways learn it from the revocation stream.
    if let Some(cache) = state.cache() {
        if !r.session_id.is_empty() {
            cache.revoke_session(&r.session_id, r.sequence);
        }
        for key in [CacheKey::parse(&r.cache_key), own_key]
            .into_iter()
            .flatten()
        {
            cache.invalidate(&key).await;
        }
    }
    Ok(done())
}

async fn get_session(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let Some(cookie_value) = session_cookie(&req) else {
        return Ok(HttpResponse::Ok().json(Value::Null));
    };
    match state
        .auth()
        .get_session(pb::GetSessionRequest {
            cookie_value,
            dont_remember_cookie: dont_remember_cookie(&req),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let body = json!({
                "session": session_json(&r.session.unwrap_or_default()),
                "user": user_json(&r.user.unwrap_or_default()),
            });
            let mut response = HttpResponse::Ok();
            if let Some(value) = &r.refreshed_cookie_value {
                response.insert_header((
                    header::SET_COOKIE,
                    set_cookie(&req, value, r.cookie_max_age_seconds),
                ));
            }
            Ok(response.json(body))
        }
        // A missing, garbage or ended session is `null`, as in Better Auth.
        Err(status) if ErrorCode::from_status(&status) == ErrorCode::UNAUTHORIZED => {
            Ok(HttpResponse::Ok().json(Value::Null))
        }
        Err(status) => Err(status.into()),
    }
}

/// Whether the request's `Cache-Control` holds the `no-cache` directive (or `Pragma: no-cache`,
/// its HTTP/1.0 form).
fn request_no_cache(req: &HttpRequest) -> bool {
    let has = |name: header::HeaderName| {
        req.headers().get_all(name).any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
        })
    };
    has(header::CACHE_CONTROL) || has(header::PRAGMA)
}

async fn token(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let cookie_value = session_cookie(&req)
        .ok_or_else(|| ApiError::new(ErrorCode::UNAUTHORIZED, "Unauthorized"))?;
    let convex_route = req.path().ends_with("/convex/token");
    // A client holding a token asks for another only when it wants a new one (the Convex
    // client's `forceRefreshToken`, right after the server confirms a token and before each
    // expiry), and if it got the very string it holds it would stop refreshing
    // (convex-js `refetchToken`: `isNewAuth` false → `notRefetching`, then `AuthError` at
    // `exp`). Two signs say it holds one: `Cache-Control: no-cache` (RFC 9111: do not answer
    // from a store without the origin), which a `fetchToken` may send for
    // `forceRefreshToken`, and the Convex JWT cookie this route sets, which every client that
    // keeps cookies (a browser) sends back whatever its `fetchToken` does. Either gets a newly
    // issued token; callers that keep no cookies (server-side renders, scripts) share the
    // cached one.
    let secure = convex_route && is_https(&req);
    let freshness = if request_no_cache(&req) || (convex_route && holds_convex_jwt(&req, secure)) {
        Freshness::Fresh
    } else {
        Freshness::Cached
    };
    let token = state
        .token_with(cookie_value, dont_remember_cookie(&req), freshness)
        .await?;
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    if convex_route {
        let left = token.expires_at - crate::pages::unix_now();
        response.insert_header((
            header::SET_COOKIE,
            set_convex_jwt(secure, &token.jwt, left.max(0)),
        ));
    }
    Ok(response.json(json!({"token": &*token.jwt})))
}

async fn jwks(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let r = state
        .auth()
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner();
    // Auth's own cache lifetime: its rotations are timed by it.
    let max_age = r.max_age_seconds;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((
            header::CACHE_CONTROL,
            format!(
                "public, max-age={max_age}, stale-while-revalidate={}",
                max_age / 5
            ),
        ))
        .body(r.jwks_json))
}

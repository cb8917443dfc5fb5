//! Better Auth-compatible `/api/auth/*` routes, answered through auth's gRPC API with Better
//! Auth's JSON bodies, cookies and error codes.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use edge_proto::auth::v1 as pb;
use edge_proto::error::ErrorCode;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::State;
use crate::error::ApiError;
use crate::routes::{clear_cookie, session_cookie, set_cookie};
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

/// Reads a JSON object body of at most `limit` bytes.
pub(crate) async fn json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::new(ErrorCode::VALIDATION_ERROR, "Invalid request body"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PAYLOAD_TOO_LARGE,
                format!("Request body exceeds {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            "Request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            format!("Malformed JSON: {e}"),
        )),
    }
}

/// A string field: required ones must be present, every one must be a string.
pub(crate) fn string_field(
    body: &Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            format!("[body.{name}] is required"),
        )),
        Some(_) => Err(ApiError::new(
            ErrorCode::VALIDATION_ERROR,
            format!("[body.{name}] must be a string"),
        )),
    }
}

/// Refuses cross-site POSTs, as Better Auth's origin check does.
pub(crate) fn check_origin(req: &HttpRequest, state: &State) -> Result<(), ApiError> {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let origin = origin.trim_end_matches('/');
    let info = req.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    if origin == own || state.config.trusted_origins.iter().any(|o| o == origin) {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::INVALID_ORIGIN, "Invalid origin"))
}

pub(crate) fn client_info(req: &HttpRequest) -> pb::ClientInfo {
    pb::ClientInfo {
        ip_address: req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

pub(crate) fn user_json(u: &pb::User) -> Value {
    let mut v = json!({
        "id": u.id, "name": u.name, "email": u.email, "emailVerified": u.email_verified,
        "createdAt": u.created_at, "updatedAt": u.updated_at,
    });
    if let Some(image) = &u.image {
        v["image"] = Value::String(image.clone());
    }
    v
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
    check_origin(&req, &state)?;
    let body = json_body(&req, payload, state.config.max_body_bytes).await?;
    let request = pb::SignUpRequest {
        name: string_field(&body, "name", true)?.unwrap_or_default(),
        email: string_field(&body, "email", true)?.unwrap_or_default(),
        password: string_field(&body, "password", true)?.unwrap_or_default(),
        image: string_field(&body, "image", false)?,
        client: Some(client_info(&req)),
        callback_url: callback_field(&req, &state, &body)?,
    };
    let r = state.auth().sign_up(request).await?.into_inner();
    Ok(opened_session(&req, r, json!({})))
}

/// `callbackURL` of a body, checked as Better Auth's origin check does.
fn callback_field(
    req: &HttpRequest,
    state: &State,
    body: &Map<String, Value>,
) -> Result<String, ApiError> {
    let url = string_field(body, "callbackURL", false)?.unwrap_or_default();
    crate::routes::account::check_callback(req, state, &url, ErrorCode::INVALID_CALLBACK_URL)?;
    Ok(url)
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
    HttpResponse::Ok()
        .insert_header((
            header::SET_COOKIE,
            set_cookie(req, &r.cookie_value, r.cookie_max_age_seconds),
        ))
        .json(body)
}

async fn sign_in(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let body = json_body(&req, payload, state.config.max_body_bytes).await?;
    let request = pb::SignInRequest {
        email: string_field(&body, "email", true)?.unwrap_or_default(),
        password: string_field(&body, "password", true)?.unwrap_or_default(),
        client: Some(client_info(&req)),
        callback_url: callback_field(&req, &state, &body)?,
    };
    let r = state.auth().sign_in(request).await?.into_inner();
    Ok(opened_session(&req, r, json!({"redirect": false})))
}

async fn sign_out(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let clear = clear_cookie(&req);
    let Some(cookie_value) = session_cookie(&req) else {
        let e = ApiError::new(ErrorCode::FAILED_TO_GET_SESSION, "Failed to get session");
        let mut response = actix_web::ResponseError::error_response(&e);
        response
            .headers_mut()
            .insert(header::SET_COOKIE, clear.parse().expect("valid header"));
        return Ok(response);
    };
    let own_key = CacheKey::for_cookie(&cookie_value);
    let r = state
        .auth()
        .sign_out(pb::SignOutRequest { cookie_value })
        .await?
        .into_inner();
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
    Ok(HttpResponse::Ok()
        .insert_header((header::SET_COOKIE, clear))
        .json(json!({"success": true})))
}

async fn get_session(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let Some(cookie_value) = session_cookie(&req) else {
        return Ok(HttpResponse::Ok().json(Value::Null));
    };
    match state
        .auth()
        .get_session(pb::GetSessionRequest { cookie_value })
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

async fn token(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let cookie_value = session_cookie(&req)
        .ok_or_else(|| ApiError::new(ErrorCode::UNAUTHORIZED, "Unauthorized"))?;
    let token = state.token_for(cookie_value).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"token": &*token.jwt})))
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

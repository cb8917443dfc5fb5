//! Better Auth's social sign-in routes: `POST /api/auth/sign-in/social` (and Better Auth
//! 1.6's genericOAuth `POST /api/auth/sign-in/oauth2`) answer `{url, redirect}` with the
//! signed `state` cookie; `GET /api/auth/callback/:id` (and `/oauth2/callback/:providerId`)
//! hand the provider's redirect to auth and answer its redirect with the session cookie.
//! Each is one gRPC call to auth.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use edge_proto::auth::v1 as pb;
use edge_proto::error::ErrorCode;
use serde_json::{Map, Value, json};

use crate::State;
use crate::error::ApiError;
use crate::routes::auth::{client_info, invalid_type, string_field};
use crate::routes::request::{self, Csrf, check_origin};
use crate::routes::{
    client_view, cookie_named, dont_remember_cookie, expire_dont_remember, is_https,
    session_cookie, set_cookie,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/sign-in/social", web::post().to(sign_in_social))
        .route("/api/auth/sign-in/oauth2", web::post().to(sign_in_oauth2))
        .route("/api/auth/callback/{id}", web::get().to(callback))
        .route("/api/auth/callback/{id}", web::post().to(callback_post))
        .route(
            "/api/auth/oauth2/callback/{id}",
            web::get().to(callback_oauth2),
        )
        .route("/api/auth/link-social", web::post().to(link_social))
        .route("/api/auth/unlink-account", web::post().to(unlink_account))
        .route("/api/auth/error", web::get().to(error_page));
}

/// Better Auth's `sanitize` of text put in its error page: `<`, `>`, `"`, `'` escaped, and `&`
/// unless it starts an entity (`&amp;`, `&lt;`, `&gt;`, `&quot;`, `&#39;`, `&#x…;`, `&#…;`).
pub fn sanitize(input: &str) -> String {
    fn starts_entity(rest: &str) -> bool {
        if ["amp;", "lt;", "gt;", "quot;", "#39;"]
            .iter()
            .any(|e| rest.starts_with(e))
        {
            return true;
        }
        let (digits, hex) = match rest.strip_prefix("#x") {
            Some(r) => (r, true),
            None => match rest.strip_prefix('#') {
                Some(r) => (r, false),
                None => return false,
            },
        };
        let n = digits
            .chars()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        n > 0 && digits[n..].starts_with(';')
    }
    let mut out = String::with_capacity(input.len());
    for (i, c) in input.char_indices() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '&' if !starts_entity(&input[i + 1..]) => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
    out
}

/// The `?error=` code as Better Auth's error page shows it: `^['A-Za-z0-9_-]+$`, else
/// `UNKNOWN` (also when absent or empty).
fn error_code(raw: Option<&str>) -> &str {
    match raw {
        Some(code)
            if !code.is_empty()
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"'_-".contains(&b)) =>
        {
            code
        }
        _ => "UNKNOWN",
    }
}

/// `GET /api/auth/error`, Better Auth's error page and the default `errorCallbackURL`: 200
/// `text/html` naming the `?error=` code (Better Auth's shape only, else `UNKNOWN`) and the
/// `?error_description=` [`sanitize`]d, or else a link to Better Auth's page about the code.
/// Nothing from the query reaches the page unescaped. (Better Auth in production without
/// `onAPIError.errorURL` redirects to `/?error=` instead; the gateway always shows the page.)
async fn error_page(req: HttpRequest) -> HttpResponse {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let code = error_code(get("error"));
    // The code's characters are all safe in HTML and in a URL path (`'` inside a
    // double-quoted attribute).
    let description = match get("error_description").filter(|d| !d.is_empty()) {
        Some(d) => sanitize(d),
        None => format!(
            "We encountered an unexpected error. Please try again or return to the home page. \
             If you're a developer, you can find <a href=\"https://better-auth.com/docs/reference/errors/{code}\" \
             target=\"_blank\" rel=\"noopener noreferrer\">more information about the error</a>."
        ),
    };
    let page = format!(
        r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1.0" />
    <title>Error</title>
    <style>
      body {{ font-family: -apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, sans-serif;
        margin: 0; min-height: 100vh; display: flex; align-items: center;
        justify-content: center; }}
      main {{ border: 2px solid #ddd; padding: 1.5rem; max-width: 42rem; text-align: center; }}
      code {{ word-break: break-all; }}
    </style>
  </head>
  <body>
    <main>
      <h1>ERROR</h1>
      <h2>Something went wrong</h2>
      <p>CODE: <code id="error-code">{code}</code></p>
      <p id="error-description">{description}</p>
      <p><a href="/">Go Home</a></p>
    </main>
  </body>
</html>
"#
    );
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html"))
        .body(page)
}

/// A call to auth that waits on the social provider: the gateway's deadline
/// (`GATEWAY_AUTH_TIMEOUT_MS`) plus the most auth waits on a provider
/// ([`edge_proto::SOCIAL_PROVIDER_BUDGET`], 10 s), so auth's own answer to a slow provider
/// (the error redirect, or the refused ID token) reaches the browser.
///
/// The start (a generic provider's discovery on first use), the callback, and ID-token
/// sign-in and link.
fn waits_on_provider<T>(state: &State, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(state.config.auth_timeout + edge_proto::SOCIAL_PROVIDER_BUDGET);
    request
}

fn unauthorized() -> ApiError {
    ApiError::new(ErrorCode::UNAUTHORIZED, "Unauthorized")
}

/// `link-social`: the redirect flow of [`start`] for the signed-in user; the callback links the
/// provider's account to that user (`{url, redirect}` as sign-in); with `idToken` the account
/// is linked at once (`{url: "", status: true, redirect: false}`).
async fn link_social(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let cookie = session_cookie(&req).ok_or_else(unauthorized)?;
    let body = request::json_body(&req, payload, &state).await?;
    if let Some(id_token) = body.get("idToken") {
        let provider_id = string_field(&body, "provider", true)?.unwrap_or_default();
        let request = pb::LinkIdTokenRequest {
            cookie_value: cookie,
            id_token: Some(id_token_request(&req, &body, provider_id, id_token)?),
            dont_remember_cookie: dont_remember_cookie(&req),
        };
        state
            .auth()
            .link_id_token(waits_on_provider(&state, request))
            .await
            .map_err(id_token_error)?;
        return Ok(HttpResponse::Ok().json(json!({"url": "", "status": true, "redirect": false})));
    }
    redirect_start(&req, &state, &body, "provider", false, cookie).await
}

/// `unlink-account` (`{accountId}`: the account row's id): `{"status": true}`.
async fn unlink_account(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let cookie_value = session_cookie(&req).ok_or_else(unauthorized)?;
    let body = request::json_body(&req, payload, &state).await?;
    let account_id = string_field(&body, "accountId", true)?.unwrap_or_default();
    state
        .auth()
        .unlink_account(pb::UnlinkAccountRequest {
            cookie_value,
            account_id,
            dont_remember_cookie: dont_remember_cookie(&req),
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"status": true})))
}

/// Better Auth's `state` cookie name (`__Secure-` prefixed over https).
fn state_cookie_name(req: &HttpRequest) -> &'static str {
    if is_https(req) {
        "__Secure-better-auth.state"
    } else {
        "better-auth.state"
    }
}

fn state_cookie_header(req: &HttpRequest, value: &str, max_age: i64) -> String {
    let name = state_cookie_name(req);
    let secure = if is_https(req) { " Secure;" } else { "" };
    format!("{name}={value}; Max-Age={max_age}; Path=/; HttpOnly;{secure} SameSite=Lax")
}

fn state_cookie(req: &HttpRequest) -> String {
    cookie_named(req, state_cookie_name(req))
}

/// A URL field of the body checked as Better Auth's origin check does (`callbackURL`,
/// `errorCallbackURL`, `newUserCallbackURL`): a relative path or a trusted origin, else 403
/// `INVALID_CALLBACK_URL` (its code names every one of them so).
fn url_field(
    req: &HttpRequest,
    state: &State,
    body: &Map<String, Value>,
    name: &str,
) -> Result<String, ApiError> {
    let Some(value) = body.get(name) else {
        return Ok(String::new());
    };
    if !value.is_string() {
        return Err(invalid_type(name, "string", Some(value)));
    }
    let mut one = Map::new();
    one.insert("callbackURL".into(), value.clone());
    Ok(request::callback_url(req, state, &one)?.unwrap_or_default())
}

fn bool_field(body: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match body.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        other => Err(invalid_type(name, "boolean", other)),
    }
}

fn scopes(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match body.get("scopes") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid_type("scopes", "string", Some(other))),
            })
            .collect(),
        other => Err(invalid_type("scopes", "array", other)),
    }
}

async fn sign_in_social(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    start(req, payload, state, "provider", false).await
}

async fn sign_in_oauth2(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    start(req, payload, state, "providerId", true).await
}

async fn start(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
    provider_field: &str,
    oauth2_path: bool,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state, Csrf::CookieBearing)?;
    let body = request::json_body(&req, payload, &state).await?;
    let provider_id = string_field(&body, provider_field, true)?.unwrap_or_default();
    // Better Auth 1.6's `sign-in/oauth2` has no `idToken` member (its schema drops it).
    if let Some(id_token) = body.get("idToken").filter(|_| !oauth2_path) {
        return id_token_sign_in(&req, &state, &body, provider_id, id_token).await;
    }
    redirect_start(
        &req,
        &state,
        &body,
        provider_field,
        oauth2_path,
        String::new(),
    )
    .await
}

/// The redirect flow: auth stores the state and names the provider's URL; the answer sets
/// the `state` cookie. `link_cookie` (link-social) names the session to link to.
async fn redirect_start(
    req: &HttpRequest,
    state: &State,
    body: &Map<String, Value>,
    provider_field: &str,
    oauth2_path: bool,
    link_cookie: String,
) -> Result<HttpResponse, ApiError> {
    let request = pb::StartSocialSignInRequest {
        provider_id: string_field(body, provider_field, true)?.unwrap_or_default(),
        callback_url: url_field(req, state, body, "callbackURL")?,
        error_callback_url: url_field(req, state, body, "errorCallbackURL")?,
        new_user_callback_url: url_field(req, state, body, "newUserCallbackURL")?,
        scopes: scopes(body)?,
        login_hint: string_field(body, "loginHint", false)?.unwrap_or_default(),
        request_sign_up: bool_field(body, "requestSignUp")?,
        client: Some(client_info(req)),
        oauth2_path,
        link_dont_remember_cookie: if link_cookie.is_empty() {
            String::new()
        } else {
            dont_remember_cookie(req)
        },
        link_cookie_value: link_cookie,
    };
    let disable_redirect = bool_field(body, "disableRedirect")?;
    let r = state
        .auth()
        .start_social_sign_in(waits_on_provider(state, request))
        .await?
        .into_inner();
    let mut response = HttpResponse::Ok();
    response.append_header((
        header::SET_COOKIE,
        state_cookie_header(req, &r.state_cookie_value, r.state_cookie_max_age_seconds),
    ));
    if !disable_redirect {
        response.append_header((header::LOCATION, r.url.as_str()));
    }
    Ok(response.json(json!({"url": r.url, "redirect": !disable_redirect})))
}

/// `sign-in/social` with `idToken` (`{token, nonce?, accessToken?, refreshToken?, expiresAt?,
/// user?}`): Better Auth's `{redirect: false, token, user}` and the session cookie.
/// The `idToken` member (`{token, nonce?, accessToken?, refreshToken?, expiresAt?, user?}`)
/// as auth takes it.
fn id_token_request(
    req: &HttpRequest,
    body: &Map<String, Value>,
    provider_id: String,
    id_token: &Value,
) -> Result<pb::IdTokenSignInRequest, ApiError> {
    let Value::Object(id_token) = id_token else {
        return Err(invalid_type("idToken", "object", Some(id_token)));
    };
    let field = |name: &str, required: bool| {
        string_field(id_token, name, required)
            .map(Option::unwrap_or_default)
            .map_err(|_| invalid_type(&format!("idToken.{name}"), "string", id_token.get(name)))
    };
    Ok(pb::IdTokenSignInRequest {
        provider_id,
        token: field("token", true)?,
        nonce: field("nonce", false)?,
        access_token: field("accessToken", false)?,
        refresh_token: field("refreshToken", false)?,
        user: id_token
            .get("user")
            .filter(|u| u.is_object())
            .map(Value::to_string)
            .unwrap_or_default(),
        request_sign_up: bool_field(body, "requestSignUp")?,
        client: Some(client_info(req)),
    })
}

/// An error of an ID-token call, with Better Auth's name for a refused token (`INVALID_TOKEN`,
/// 401; its reset-token `INVALID_TOKEN` is 400, so auth names this one apart).
fn id_token_error(status: tonic::Status) -> ApiError {
    let mut error = ApiError::from(status);
    if error.code == ErrorCode::INVALID_ID_TOKEN {
        error.code = ErrorCode {
            code: "INVALID_TOKEN",
            ..ErrorCode::INVALID_ID_TOKEN
        };
    }
    error
}

/// `sign-in/social` with `idToken`: Better Auth's `{redirect: false, token, user}` and the
/// session cookie.
async fn id_token_sign_in(
    req: &HttpRequest,
    state: &State,
    body: &Map<String, Value>,
    provider_id: String,
    id_token: &Value,
) -> Result<HttpResponse, ApiError> {
    let request = id_token_request(req, body, provider_id, id_token)?;
    let r = state
        .auth()
        .id_token_sign_in(waits_on_provider(state, request))
        .await
        .map_err(id_token_error)?
        .into_inner();
    Ok(crate::routes::auth::opened_session(
        req,
        r,
        json!({"redirect": false}),
    ))
}

/// The callback's query (Better Auth's schema: every member an optional string).
#[derive(Debug, Default, serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
    user: Option<String>,
}

async fn callback(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    finish(req, id.into_inner(), state, false).await
}

async fn callback_oauth2(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    finish(req, id.into_inner(), state, true).await
}

/// A provider posting its answer (`response_mode=form_post`, Apple): Better Auth redirects it
/// to the GET callback with the body's and query's members as the query.
async fn callback_post(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let body = request::body(
        &req,
        payload,
        state.config.max_body_bytes,
        request::Accepts::JsonOrForm,
    )
    .await?;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let mut merged: Vec<(String, String)> = Vec::new();
    for name in [
        "code",
        "error",
        "device_id",
        "error_description",
        "state",
        "user",
        "iss",
    ] {
        let from_query = query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        let from_body = body.get(name).and_then(Value::as_str).map(str::to_owned);
        if let Some(v) = from_query.or(from_body) {
            merged.push((name.to_owned(), v));
        }
    }
    let query = serde_urlencoded::to_string(&merged).unwrap_or_default();
    // The site as the client reached it (the gateway holds no BETTER_AUTH_URL of its own).
    let origin = client_view(&req).origin();
    Ok(HttpResponse::Found()
        .insert_header((
            header::LOCATION,
            format!("{origin}/api/auth/callback/{}?{query}", id.into_inner()),
        ))
        .finish())
}

async fn finish(
    req: HttpRequest,
    provider_id: String,
    state: web::Data<State>,
    oauth2_path: bool,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<CallbackQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let request = pb::FinishSocialSignInRequest {
        provider_id,
        code: query.code.unwrap_or_default(),
        state: query.state.unwrap_or_default(),
        error: query.error.unwrap_or_default(),
        error_description: query.error_description.unwrap_or_default(),
        iss: query.iss.unwrap_or_default(),
        state_cookie: state_cookie(&req),
        client: Some(client_info(&req)),
        oauth2_path,
        user: query.user.unwrap_or_default(),
    };
    let r = state
        .auth()
        .finish_social_sign_in(waits_on_provider(&state, request))
        .await?
        .into_inner();
    let mut response = HttpResponse::Found();
    if r.clear_state_cookie {
        response.append_header((header::SET_COOKIE, state_cookie_header(&req, "", 0)));
    }
    if let Some(session) = &r.session {
        response.append_header((
            header::SET_COOKIE,
            set_cookie(&req, &session.cookie_value, session.cookie_max_age_seconds),
        ));
        // Better Auth's `setSessionCookie`: a remembered session replaces a browser-session one.
        if !dont_remember_cookie(&req).is_empty() {
            response.append_header((header::SET_COOKIE, expire_dont_remember(&req)));
        }
    }
    response.insert_header((header::LOCATION, r.location.as_str()));
    Ok(response.finish())
}

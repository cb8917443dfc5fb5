//! HTTP routes of the gateway.

pub mod account;
pub mod auth;
pub mod ops;
pub mod proxy;

use actix_web::HttpRequest;
use actix_web::http::header;
use edge_keys::cookie::{COOKIE_NAME, SECURE_COOKIE_NAME};

/// The session cookie's value from every `Cookie` header of the request.
pub(crate) fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(edge_keys::cookie::from_header)
        .map(str::to_owned)
}

/// Whether the client reached us over https (directly or through a proxy that says so).
pub(crate) fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// `Set-Cookie` exactly as Better Auth writes it; `max_age` 0 clears the cookie.
pub(crate) fn set_cookie(req: &HttpRequest, value: &str, max_age: i64) -> String {
    if is_https(req) {
        format!(
            "{SECURE_COOKIE_NAME}={value}; Max-Age={max_age}; Path=/; HttpOnly; Secure; SameSite=Lax"
        )
    } else {
        format!("{COOKIE_NAME}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax")
    }
}

/// `Set-Cookie` that removes the session cookie (its session has ended).
pub(crate) fn clear_cookie(req: &HttpRequest) -> String {
    set_cookie(req, "", 0)
}

//! HTTP routes of the gateway.

pub mod account;
pub mod auth;
pub mod cors;
pub mod ops;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod social;

use actix_web::HttpRequest;
use actix_web::http::header;
use edge_keys::cookie::{COOKIE_NAME, SECURE_COOKIE_NAME};

use crate::State;
use crate::client::ClientView;

/// The session cookie's value from every `Cookie` header of the request: the `__Secure-`
/// name over https, the plain one over http, as Better Auth reads it.
pub(crate) fn session_cookie(req: &HttpRequest) -> Option<String> {
    let secure = is_https(req);
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| edge_keys::cookie::from_header(h, secure))
        .map(str::to_owned)
}

/// Better Auth's `dont_remember` cookie as the browser sent it (the `__Secure-` name over
/// https), or empty; only auth can tell whether its signature holds.
pub(crate) fn dont_remember_cookie(req: &HttpRequest) -> String {
    use edge_keys::cookie::{DONT_REMEMBER_NAME, SECURE_DONT_REMEMBER_NAME};
    let name = if is_https(req) {
        SECURE_DONT_REMEMBER_NAME
    } else {
        DONT_REMEMBER_NAME
    };
    cookie_named(req, name)
}

/// The value of the cookie `name` as the browser sent it (in any `Cookie` header), or empty.
pub(crate) fn cookie_named(req: &HttpRequest, name: &str) -> String {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| edge_keys::cookie::named_from_header(h, name))
        .unwrap_or_default()
        .to_owned()
}

/// The client as the gateway may believe it (forwarding headers from trusted proxies only).
pub(crate) fn client_view(req: &HttpRequest) -> ClientView {
    let proxies = req
        .app_data::<actix_web::web::Data<State>>()
        .map(|state| state.config.trusted_proxies.clone())
        .unwrap_or_default();
    ClientView::of(req, &proxies)
}

/// Whether the client reached us over https (directly or through a trusted proxy that says so).
pub(crate) fn is_https(req: &HttpRequest) -> bool {
    client_view(req).is_https()
}

/// `Set-Cookie` of the session cookie for a `rememberMe: false` session: no Max-Age, so it
/// ends with the browser session, and Better Auth's `dont_remember` cookie (signed by auth)
/// beside it, with the same attributes.
pub(crate) fn set_browser_session_cookies(
    req: &HttpRequest,
    value: &str,
    dont_remember: &str,
) -> [String; 2] {
    let (prefix, secure) = if is_https(req) {
        ("__Secure-", " Secure;")
    } else {
        ("", "")
    };
    [
        format!("{prefix}{COOKIE_NAME}={value}; Path=/; HttpOnly;{secure} SameSite=Lax"),
        format!(
            "{prefix}better-auth.dont_remember={dont_remember}; Path=/; HttpOnly;{secure} SameSite=Lax"
        ),
    ]
}

/// `Set-Cookie` that removes Better Auth's `dont_remember` cookie (a session opened with
/// `rememberMe` replaces one that was not to be remembered).
pub(crate) fn expire_dont_remember(req: &HttpRequest) -> String {
    if is_https(req) {
        "__Secure-better-auth.dont_remember=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
            .to_owned()
    } else {
        "better-auth.dont_remember=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax".to_owned()
    }
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

/// The Convex JWT cookie of `@convex-dev/better-auth`'s `convex` plugin (`JWT_COOKIE_NAME`,
/// `src/plugins/convex/index.ts`): the token `GET /api/auth/convex/token` last answered, HttpOnly,
/// for the app's server-side rendering; cleared with the session.
pub(crate) const CONVEX_JWT_NAME: &str = "better-auth.convex_jwt";

/// Whether the request carries the Convex JWT cookie (the `__Secure-` name when `secure`, the
/// request came over https): the client keeps the tokens it is given, so it already holds one
/// and is asking for another.
pub(crate) fn holds_convex_jwt(req: &HttpRequest, secure: bool) -> bool {
    let name = if secure {
        format!("__Secure-{CONVEX_JWT_NAME}")
    } else {
        CONVEX_JWT_NAME.to_owned()
    };
    !cookie_named(req, &name).is_empty()
}

/// `Set-Cookie` of the Convex JWT cookie holding `jwt` for `max_age` seconds (the token's
/// remaining lifetime), with the session cookie's attributes (`secure`: the request came over
/// https), as the `convex` plugin sets it.
pub(crate) fn set_convex_jwt(secure: bool, jwt: &str, max_age: i64) -> String {
    if secure {
        format!(
            "__Secure-{CONVEX_JWT_NAME}={jwt}; Max-Age={max_age}; Path=/; HttpOnly; Secure; SameSite=Lax"
        )
    } else {
        format!("{CONVEX_JWT_NAME}={jwt}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax")
    }
}

/// What Better Auth's `deleteSessionCookie` sends on sign-out: the session token, the session
/// data cache and the `dont_remember` cookie, each expired, and the `convex` plugin's JWT
/// cookie when the browser holds one (that plugin clears it on sign-out and user deletion;
/// a browser that never asked for a Convex token gets what Better Auth alone sends).
pub(crate) fn clear_cookies(req: &HttpRequest) -> Vec<String> {
    let secure = is_https(req);
    let prefix = if secure { "__Secure-" } else { "" };
    let flags = if secure {
        "Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
    } else {
        "Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
    };
    let convex_jwt = holds_convex_jwt(req, secure).then_some("convex_jwt");
    ["session_token", "session_data", "dont_remember"]
        .into_iter()
        .chain(convex_jwt)
        .map(|name| format!("{prefix}better-auth.{name}=; {flags}"))
        .collect()
}

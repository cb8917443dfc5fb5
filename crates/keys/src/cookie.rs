//! Better Auth session cookies: `urlencode(token + "." + base64(HMAC-SHA256(secret, token)))`.
//!
//! The gateway never verifies a cookie (it holds no secret); it only canonicalises the value and
//! hashes it into a [`CacheKey`]. Auth verifies with [`verify`].

use std::fmt;

use aws_lc_rs::digest;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::Secret;
use crate::b64;

/// The cookie name on plain http.
pub const COOKIE_NAME: &str = "better-auth.session_token";
/// The cookie name on https.
pub const SECURE_COOKIE_NAME: &str = "__Secure-better-auth.session_token";
/// Session lifetime and cookie `Max-Age`: 7 days.
pub const SESSION_MAX_AGE_SECONDS: i64 = 7 * 24 * 3600;
/// Sessions older than this since their last refresh are extended: 1 day.
pub const SESSION_UPDATE_AGE_SECONDS: i64 = 24 * 3600;
/// Longest cookie value accepted; Better Auth's are about 80 bytes.
pub const MAX_COOKIE_VALUE_LEN: usize = 1024;

/// JavaScript's `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// JavaScript's `encodeURIComponent(s)`, as Better Auth encodes cookie values and the
/// `callbackURL` of its mailed links.
pub fn encode_uri_component(s: &str) -> String {
    utf8_percent_encode(s, URI_COMPONENT).to_string()
}

/// A session token (the `session.token` column). Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        SessionToken(crate::generate_id())
    }

    /// Accepts a token as stored by Better Auth: non-empty, printable ASCII, no `.`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok =
            !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'.');
        ok.then(|| SessionToken(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// `edge:jwt:` + base64url(SHA-256(canonical cookie value)): the token cache key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CacheKey(String);

impl CacheKey {
    pub const PREFIX: &'static str = "edge:jwt:";

    /// The key for a cookie value as a browser sent it; `None` for values no signer made.
    pub fn for_cookie(cookie_value: &str) -> Option<Self> {
        let canonical = canonical(cookie_value)?;
        let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
        Some(CacheKey(format!(
            "{}{}",
            Self::PREFIX,
            b64::url_encode(hash)
        )))
    }

    /// Parses a key received from auth.
    pub fn parse(s: &str) -> Option<Self> {
        let hash = s.strip_prefix(Self::PREFIX)?;
        (hash.len() == 43 && b64::url_decode(hash).is_some()).then(|| CacheKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The signed cookie value for a token, URL-encoded as Better Auth writes it.
pub fn sign(secret: &Secret, token: &SessionToken) -> String {
    let tag = secret.sign(token.as_str().as_bytes());
    let raw = format!("{}.{}", token.as_str(), b64::std_encode(tag.as_ref()));
    encode_uri_component(&raw)
}

/// Better Auth's `dont_remember` cookie (set beside a session opened with `rememberMe: false`),
/// over http and over https.
pub const DONT_REMEMBER_NAME: &str = "better-auth.dont_remember";
pub const SECURE_DONT_REMEMBER_NAME: &str = "__Secure-better-auth.dont_remember";
/// What Better Auth signs into the `dont_remember` cookie.
const DONT_REMEMBER_VALUE: &str = "true";
/// A session opened with `rememberMe: false` lasts this long (seconds) and is never refreshed.
pub const DONT_REMEMBER_SESSION_SECONDS: i64 = 24 * 3600;

/// The `dont_remember` cookie's value: `"true"` signed as Better Auth's `setSignedCookie` signs
/// (`true.<base64 HMAC-SHA256>`, URL-encoded).
pub fn sign_dont_remember(secret: &Secret) -> String {
    let tag = secret.sign(DONT_REMEMBER_VALUE.as_bytes());
    let raw = format!("{DONT_REMEMBER_VALUE}.{}", b64::std_encode(tag.as_ref()));
    encode_uri_component(&raw)
}

/// Whether a `dont_remember` cookie value is `"true"` signed under `secret` (Better Auth's
/// `getSignedCookie`: anything else counts as no cookie).
pub fn verify_dont_remember(secret: &Secret, cookie_value: &str) -> bool {
    if cookie_value.is_empty() || cookie_value.len() > MAX_COOKIE_VALUE_LEN {
        return false;
    }
    let Ok(decoded) = percent_decode_str(cookie_value).decode_utf8() else {
        return false;
    };
    let Some((value, signature)) = decoded.rsplit_once('.') else {
        return false;
    };
    if value != DONT_REMEMBER_VALUE || signature.len() != 44 {
        return false;
    }
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature)
        .is_ok_and(|tag| secret.verify(value.as_bytes(), &tag))
}

/// The one encoding of a cookie value: decoded, then encoded like `encodeURIComponent`, so
/// `%2B` and `+`-free spellings of the same value share a cache key.
pub fn canonical(cookie_value: &str) -> Option<String> {
    if cookie_value.is_empty() || cookie_value.len() > MAX_COOKIE_VALUE_LEN {
        return None;
    }
    let decoded = percent_decode_str(cookie_value).decode_utf8().ok()?;
    let (token, signature) = decoded.rsplit_once('.')?;
    if token.is_empty() || signature.is_empty() {
        return None;
    }
    Some(encode_uri_component(&decoded))
}

/// The token inside a cookie value, if its signature is valid under `secret`.
pub fn verify(secret: &Secret, cookie_value: &str) -> Option<SessionToken> {
    if cookie_value.len() > MAX_COOKIE_VALUE_LEN {
        return None;
    }
    let decoded = percent_decode_str(cookie_value).decode_utf8().ok()?;
    let (token, signature) = decoded.rsplit_once('.')?;
    // A SHA-256 HMAC is 44 base64 characters with its padding.
    if signature.len() != 44 {
        return None;
    }
    let tag = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature).ok()?;
    let token = SessionToken::parse(token)?;
    secret
        .verify(token.as_str().as_bytes(), &tag)
        .then_some(token)
}

/// The session cookie's value from a `Cookie` header, under the one name Better Auth reads:
/// `__Secure-better-auth.session_token` when the site is served over https (`secure`), else
/// `better-auth.session_token`. A cookie under the other name is ignored, as Better Auth
/// ignores it (over https a plain-named cookie may have been planted over http).
pub fn from_header(header: &str, secure: bool) -> Option<&str> {
    let wanted = if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    };
    named_from_header(header, wanted)
}

/// The value of the cookie `wanted` in a `Cookie` header.
pub fn named_from_header<'a>(header: &'a str, wanted: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name.trim() == wanted).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let secret = Secret::new("a-secret-of-some-length-0123456789");
        let token = SessionToken::generate();
        let value = sign(&secret, &token);
        assert_eq!(verify(&secret, &value), Some(token.clone()));
        assert_eq!(
            verify(&Secret::new("another-secret-0123456789abcdef"), &value),
            None
        );
    }

    #[test]
    fn dont_remember_is_signed_true() {
        let secret = Secret::new("a-secret-of-some-length-0123456789");
        let value = sign_dont_remember(&secret);
        assert!(value.starts_with("true."));
        assert!(verify_dont_remember(&secret, &value));
        assert!(!verify_dont_remember(
            &Secret::new("another-secret-0123456789abcdef"),
            &value
        ));
        let forged = value.replacen("true", "false", 1);
        assert!(!verify_dont_remember(&secret, &forged));
        for garbage in ["", "true", "true.", "%ZZ.x"] {
            assert!(!verify_dont_remember(&secret, garbage), "{garbage}");
        }
    }

    #[test]
    fn canonical_form_ignores_encoding_differences() {
        let a = CacheKey::for_cookie("abc.p9OQIt%2BJ2m%2FBZHQ%3D").unwrap();
        let b = CacheKey::for_cookie("abc.p9OQIt+J2m/BZHQ=").unwrap();
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("edge:jwt:"));
        assert!(!a.as_str().contains("abc"));
        assert_eq!(CacheKey::parse(a.as_str()), Some(a));
    }

    #[test]
    fn garbage_cookies_are_rejected() {
        let secret = Secret::new("s");
        for value in ["", "nodot", ".", "a.", ".b", "%ZZ.%ZZ", &"x".repeat(5000)] {
            assert_eq!(verify(&secret, value), None, "{value}");
        }
        assert!(canonical("nodot").is_none());
    }

    #[test]
    fn header_parsing_reads_the_one_name_of_the_scheme() {
        let h = "a=1; better-auth.session_token=plain; __Secure-better-auth.session_token=secure";
        assert_eq!(from_header(h, true), Some("secure"));
        assert_eq!(from_header(h, false), Some("plain"));
        assert_eq!(
            from_header("better-auth.session_token=x.y", false),
            Some("x.y")
        );
        assert_eq!(from_header("better-auth.session_token=x.y", true), None);
        assert_eq!(
            from_header("__Secure-better-auth.session_token=x", false),
            None
        );
        assert_eq!(from_header("other=1", false), None);
    }
}

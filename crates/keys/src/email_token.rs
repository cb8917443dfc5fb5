//! Better Auth's email-verification tokens: compact HS256 JWTs signed with `BETTER_AUTH_SECRET`
//! (`signJWT` in `better-auth/dist/crypto/jwt.mjs`), header `{"alg":"HS256"}`, claims
//! `{email, updateTo?, userId?, requestType?, iat, exp}` in seconds. They are not stored: a
//! link made by either side verifies on the other when both share the secret.

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::b64;

/// The claims of an email-verification token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailClaims {
    /// The address being verified (lowercase).
    pub email: String,
    /// The new address of a change-email request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `change-email-confirmation` or `change-email-verification` for change-email links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub iat: i64,
    /// Unix seconds.
    pub exp: i64,
}

/// Why a token was refused (Better Auth's `INVALID_TOKEN` / `TOKEN_EXPIRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailTokenError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
}

const HEADER: &str = r#"{"alg":"HS256"}"#;

/// Signs `claims` (their `iat`/`exp` as given).
pub fn sign(secret: &Secret, claims: &EmailClaims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialise");
    let input = format!("{}.{}", b64::url_encode(HEADER), b64::url_encode(payload));
    let tag = secret.sign(input.as_bytes());
    format!("{input}.{}", b64::url_encode(tag.as_ref()))
}

/// Checks the signature (constant time), that the header says HS256 and nothing the verifier
/// would have to act on, and that `exp` is after `now` (Unix seconds).
pub fn verify(secret: &Secret, token: &str, now: i64) -> Result<EmailClaims, EmailTokenError> {
    let bad = EmailTokenError::Invalid;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    let signature = b64::url_decode(s).ok_or(bad)?;
    let input_len = h.len() + 1 + p.len();
    if !secret.verify(&token.as_bytes()[..input_len], &signature) {
        return Err(bad);
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b64::url_decode(h).ok_or(bad)?).map_err(|_| bad)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") || header.contains_key("crit") {
        return Err(bad);
    }
    let claims: EmailClaims =
        serde_json::from_slice(&b64::url_decode(p).ok_or(bad)?).map_err(|_| bad)?;
    if claims.exp <= now {
        return Err(EmailTokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> EmailClaims {
        EmailClaims {
            email: "ada@example.com".into(),
            update_to: None,
            user_id: Some("u1".into()),
            request_type: None,
            iat: 100,
            exp,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let secret = Secret::new("s".repeat(32));
        let token = sign(&secret, &claims(200));
        assert_eq!(verify(&secret, &token, 150), Ok(claims(200)));
        assert_eq!(verify(&secret, &token, 200), Err(EmailTokenError::Expired));
        let other = Secret::new("t".repeat(32));
        assert_eq!(verify(&other, &token, 150), Err(EmailTokenError::Invalid));
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 2, 'x');
        assert_eq!(
            verify(&secret, &tampered, 150),
            Err(EmailTokenError::Invalid)
        );
        for garbage in ["", "a.b", "a.b.c.d", "..."] {
            assert_eq!(verify(&secret, garbage, 150), Err(EmailTokenError::Invalid));
        }
    }

    #[test]
    fn absent_claims_are_omitted_as_json_stringify_does() {
        let token = sign(&Secret::new("s".repeat(32)), &claims(200));
        let payload = b64::url_decode(token.split('.').nth(1).unwrap()).unwrap();
        let text = String::from_utf8(payload).unwrap();
        assert!(!text.contains("updateTo"), "{text}");
        assert!(text.contains(r#""userId":"u1""#), "{text}");
    }
}

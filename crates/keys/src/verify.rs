//! JWS and JWT verification under Convex's `customJwt` rules.
//!
//! The header must name exactly the algorithm of the key its `kid` selects (no `none`, no
//! HMAC, no key confusion); embedded keys (`jwk`, `jku`, `x5u`, `x5c`) and `crit` are refused;
//! `iss`, `sub`, `exp` are required, `aud` must match, `nbf` is honoured. Signatures are checked
//! by jsonwebtoken's aws-lc-rs provider.

use std::collections::HashMap;

use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use crate::jwk::{self, field};
use crate::{Alg, KeyError, b64};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("algorithm `{0}` is not accepted")]
    UnsupportedAlg(String),
    #[error("header field `{0}` is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("token has no `kid`")]
    MissingKid,
    #[error("no key with this `kid`")]
    UnknownKid,
    #[error("header algorithm does not match the key's")]
    AlgMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token is expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("claim `{0}` is missing or malformed")]
    MissingClaim(&'static str),
}

/// A public key with the one algorithm it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    alg: Alg,
    key: DecodingKey,
}

impl VerifyKey {
    /// From a public JWK; its `alg` (when present) must fit its key type.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<VerifyKey, KeyError> {
        let implied = jwk::alg_for_jwk(jwk)?;
        // A key published for encryption (`use: enc`) or without `verify` in `key_ops` must
        // not verify signatures.
        if jwk.get("use").is_some_and(|u| u != "sig") {
            return Err(KeyError::InvalidKey(
                "key is not for signatures (`use`)".into(),
            ));
        }
        if let Some(ops) = jwk.get("key_ops")
            && !ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
        {
            return Err(KeyError::InvalidKey(
                "key_ops does not allow `verify`".into(),
            ));
        }
        if let Some(alg) = jwk.get("alg").and_then(Value::as_str)
            && alg != implied.as_str()
        {
            return Err(KeyError::UnsupportedAlg(alg.to_owned()));
        }
        let bad = |e: jsonwebtoken::errors::Error| KeyError::InvalidKey(e.to_string());
        let key = match implied {
            Alg::RS256 => {
                // RSA keys below 2048 bits are refused, as Convex and NIST do.
                if jwk::field_bytes(jwk, "n")?.len() < 256 {
                    return Err(KeyError::InvalidKey(
                        "RSA modulus shorter than 2048 bits".into(),
                    ));
                }
                DecodingKey::from_rsa_components(field(jwk, "n")?, field(jwk, "e")?).map_err(bad)?
            }
            Alg::ES256 => {
                DecodingKey::from_ec_components(field(jwk, "x")?, field(jwk, "y")?).map_err(bad)?
            }
            Alg::EdDSA => DecodingKey::from_ed_components(field(jwk, "x")?).map_err(bad)?,
        };
        Ok(VerifyKey { alg: implied, key })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Checks a base64url signature over `message` with this key's algorithm.
    pub fn verify_raw(&self, message: &[u8], signature_b64: &str) -> bool {
        jsonwebtoken::crypto::verify(signature_b64, message, &self.key, self.alg.jsonwebtoken())
            .unwrap_or(false)
    }

    /// Verifies a compact JWS against this key and returns (header, payload bytes).
    pub fn verify_jws(&self, compact: &str) -> Result<(Map<String, Value>, Vec<u8>), VerifyError> {
        let mut parts = compact.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        if h.is_empty() || s.is_empty() {
            return Err(VerifyError::Malformed);
        }
        let header = parse_header(h)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(VerifyError::Malformed)?;
        let alg: Alg = alg
            .parse()
            .map_err(|_| VerifyError::UnsupportedAlg(alg.to_owned()))?;
        if alg != self.alg {
            return Err(VerifyError::AlgMismatch);
        }
        let payload = b64::url_decode(p).ok_or(VerifyError::Malformed)?;
        b64::url_decode(s).ok_or(VerifyError::Malformed)?;
        let message = &compact[..h.len() + 1 + p.len()];
        if self.verify_raw(message.as_bytes(), s) {
            Ok((header, payload))
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

fn parse_header(h: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = b64::url_decode(h).ok_or(VerifyError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)?;
    for forbidden in ["jwk", "jku", "x5u", "x5c", "crit"] {
        if header.contains_key(forbidden) {
            return Err(VerifyError::ForbiddenHeader(forbidden));
        }
    }
    Ok(header)
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub kid: String,
    pub claims: Map<String, Value>,
}

/// Verifies JWTs against a JWKS under Convex's rules.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: HashMap<String, VerifyKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_seconds: i64,
}

impl Verifier {
    /// From a JWKS document (`{"keys":[…]}`); every key needs a `kid`.
    pub fn from_jwks(json: &str) -> Result<Verifier, KeyError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| KeyError::InvalidJwks(e.to_string()))?;
        Self::from_jwks_value(&value)
    }

    pub fn from_jwks_value(value: &Value) -> Result<Verifier, KeyError> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::InvalidJwks("expected {\"keys\": [...]}".into()))?;
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            let jwk = key
                .as_object()
                .ok_or_else(|| KeyError::InvalidJwks("a key is not an object".into()))?;
            let kid = field(jwk, "kid")?.to_owned();
            out.insert(kid, VerifyKey::from_jwk(jwk)?);
        }
        Ok(Verifier {
            keys: out,
            ..Verifier::default()
        })
    }

    /// From a third party's JWKS (an OpenID provider's `jwks_uri`): keys this crate cannot
    /// verify with (encryption keys, other algorithms, no `kid`) are skipped instead of failing
    /// the set, since providers publish them beside their signing keys.
    pub fn from_foreign_jwks(value: &Value) -> Result<Verifier, KeyError> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::InvalidJwks("expected {\"keys\": [...]}".into()))?;
        let keys = keys
            .iter()
            .filter_map(Value::as_object)
            .filter_map(|jwk| {
                let kid = jwk.get("kid")?.as_str()?.to_owned();
                Some((kid, VerifyKey::from_jwk(jwk).ok()?))
            })
            .collect();
        Ok(Verifier {
            keys,
            ..Verifier::default()
        })
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to be or contain `audience` (Convex's `applicationID`).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn with_leeway(mut self, seconds: i64) -> Self {
        self.leeway_seconds = seconds;
        self
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies a JWT at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, VerifyError> {
        let h = token.split('.').next().ok_or(VerifyError::Malformed)?;
        let header = parse_header(h)?;
        let kid = match header.get("kid") {
            Some(Value::String(k)) => k,
            Some(_) => return Err(VerifyError::Malformed),
            None => return Err(VerifyError::MissingKid),
        };
        let key = self.keys.get(kid).ok_or(VerifyError::UnknownKid)?;
        let (_, payload) = key.verify_jws(token)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::MissingClaim("payload"))?;
        self.check_claims(&claims, now)?;
        Ok(VerifiedToken {
            kid: kid.clone(),
            claims,
        })
    }

    /// Checks what a JWT's claims say at `now` (unix seconds) without a key: `exp`, `nbf`,
    /// `sub`, and `iss`/`aud` when this verifier requires them. An error means no key could
    /// make the token valid (it is expired, or for someone else); `Ok` means only its
    /// signature can decide. For when the JWKS cannot be had.
    pub fn check_unverified_claims(&self, token: &str, now: i64) -> Result<(), VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        parse_header(h)?;
        let payload = b64::url_decode(p).ok_or(VerifyError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::MissingClaim("payload"))?;
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<(), VerifyError> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(VerifyError::MissingClaim("exp"))?;
        if now >= exp + self.leeway_seconds {
            return Err(VerifyError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_i64().ok_or(VerifyError::MissingClaim("nbf"))?;
            if now + self.leeway_seconds < nbf {
                return Err(VerifyError::NotYetValid);
            }
        }
        match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(VerifyError::MissingClaim("sub")),
        }
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(VerifyError::MissingClaim("iss"))?;
        if self.issuer.as_deref().is_some_and(|want| want != iss) {
            return Err(VerifyError::WrongIssuer);
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(VerifyError::WrongAudience);
            }
        }
        Ok(())
    }
}

//! JWKs, key generation, and the `jwks` rows Better Auth stores (also the static `JWKS` format).

use std::fmt;

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::signature::{self, KeyPair};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::{Alg, KeyError, Secret, b64, der, encryption};

/// A key id (`kid`): non-empty printable ASCII.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::InvalidKey(format!("invalid key id `{s}`")));
        }
        Ok(KeyId(s.to_owned()))
    }

    pub fn generate() -> Self {
        KeyId(crate::generate_id())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `jwks` table row: what Better Auth stores, and one element of the static `JWKS` array.
#[derive(Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    pub id: String,
    /// The public JWK as JSON text.
    pub public_key: String,
    /// The private JWK, encrypted (a JSON string literal of hex) or, when Better Auth's
    /// `disablePrivateKeyEncryption` was on, plain JSON text.
    pub private_key: String,
    #[serde(deserialize_with = "date_from_number_or_string")]
    pub created_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "opt_date_from_number_or_string")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
}

impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("id", &self.id)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn parse_date(v: &Value) -> Result<DateTime<Utc>, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or_else(|| format!("invalid epoch milliseconds {n}")),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| format!("invalid date `{s}`: {e}")),
        other => Err(format!("expected a date, got {other}")),
    }
}

fn date_from_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    parse_date(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_date_from_number_or_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => parse_date(&v).map(Some).map_err(serde::de::Error::custom),
    }
}

impl KeyRow {
    /// Parses the static `JWKS` variable: a JSON array of rows.
    pub fn parse_static(json: &str) -> Result<Vec<KeyRow>, KeyError> {
        let rows: Vec<KeyRow> = serde_json::from_str(json)
            .map_err(|e| KeyError::InvalidJwks(format!("expected an array of jwks rows: {e}")))?;
        if rows.is_empty() {
            return Err(KeyError::InvalidJwks("the array holds no key".into()));
        }
        Ok(rows)
    }

    /// The public JWK object.
    pub fn public_jwk(&self) -> Result<Map<String, Value>, KeyError> {
        serde_json::from_str(&self.public_key).map_err(|e| {
            KeyError::InvalidKey(format!("key {}: publicKey is not a JWK: {e}", self.id))
        })
    }

    /// The algorithm: the row's `alg` when set, else the one its key type implies.
    pub fn algorithm(&self) -> Result<Alg, KeyError> {
        match &self.alg {
            Some(a) => a.parse(),
            None => alg_for_jwk(&self.public_jwk()?),
        }
    }

    /// The decrypted private JWK.
    pub fn private_jwk(&self, secret: &Secret) -> Result<Map<String, Value>, KeyError> {
        let trimmed = self.private_key.trim_start();
        let text = if trimmed.starts_with('{') {
            self.private_key.clone()
        } else {
            encryption::decrypt(secret, &self.private_key)?
        };
        serde_json::from_str(&text)
            .map_err(|_| KeyError::InvalidKey(format!("key {}: private key is not a JWK", self.id)))
    }
}

/// The algorithm a JWK's key type implies.
pub fn alg_for_jwk(jwk: &Map<String, Value>) -> Result<Alg, KeyError> {
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    match (kty, crv) {
        (Some("RSA"), _) => Ok(Alg::RS256),
        (Some("EC"), Some("P-256")) => Ok(Alg::ES256),
        (Some("OKP"), Some("Ed25519")) => Ok(Alg::EdDSA),
        _ => Err(KeyError::UnsupportedAlg(format!("kty {kty:?} crv {crv:?}"))),
    }
}

pub(crate) fn field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, KeyError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::InvalidKey(format!("JWK lacks `{name}`")))
}

pub(crate) fn field_bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    b64::url_decode(field(jwk, name)?)
        .ok_or_else(|| KeyError::InvalidKey(format!("JWK `{name}` is not base64url")))
}

/// A new key pair as (public JWK, private JWK), the field order Better Auth (jose) writes.
pub fn generate_jwk_pair(alg: Alg) -> Result<(Value, Value), KeyError> {
    let fail = |what: &str| KeyError::InvalidKey(format!("key generation failed: {what}"));
    match alg {
        Alg::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| fail("rsa"))?;
            let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| fail("rsa export"))?;
            let [n, e, d, p, q, dp, dq, qi] =
                der::rsa_components_from_pkcs8(pkcs8.as_ref()).ok_or_else(|| fail("rsa parse"))?;
            let enc = b64::url_encode;
            let public = json!({"kty": "RSA", "n": enc(&n), "e": enc(&e)});
            let private = json!({
                "kty": "RSA", "n": enc(&n), "e": enc(&e), "d": enc(&d), "p": enc(&p),
                "q": enc(&q), "dp": enc(&dp), "dq": enc(&dq), "qi": enc(&qi),
            });
            Ok((public, private))
        }
        Alg::ES256 => {
            let pair =
                signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| fail("ec"))?;
            let d = pair
                .private_key()
                .as_be_bytes()
                .map_err(|_| fail("ec export"))?;
            let point = pair.public_key().as_ref();
            let (x, y) = (
                b64::url_encode(&point[1..33]),
                b64::url_encode(&point[33..65]),
            );
            let public = json!({"kty": "EC", "x": x, "y": y, "crv": "P-256"});
            let private = json!({"kty": "EC", "x": x, "y": y, "crv": "P-256", "d": b64::url_encode(d.as_ref())});
            Ok((public, private))
        }
        Alg::EdDSA => {
            let pair = signature::Ed25519KeyPair::generate().map_err(|_| fail("ed25519"))?;
            let seed = pair.seed().map_err(|_| fail("ed25519 seed"))?;
            let seed = seed.as_be_bytes().map_err(|_| fail("ed25519 export"))?;
            let x = b64::url_encode(pair.public_key().as_ref());
            let public = json!({"crv": "Ed25519", "x": x, "kty": "OKP"});
            let private = json!({"crv": "Ed25519", "d": b64::url_encode(seed.as_ref()), "x": x, "kty": "OKP"});
            Ok((public, private))
        }
    }
}

/// A new `jwks` row with its private key encrypted under `secret`, as Better Auth stores it.
pub fn generate_row(alg: Alg, secret: &Secret, now: DateTime<Utc>) -> Result<KeyRow, KeyError> {
    let (public, private) = generate_jwk_pair(alg)?;
    let encrypted = encryption::encrypt(secret, &private.to_string());
    Ok(KeyRow {
        id: KeyId::generate().0,
        public_key: public.to_string(),
        private_key: Value::String(encrypted).to_string(),
        created_at: now,
        expires_at: None,
        alg: Some(alg.as_str().to_owned()),
        crv: public.get("crv").and_then(Value::as_str).map(str::to_owned),
    })
}

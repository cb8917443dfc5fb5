//! A loaded key set: private keys parsed once, JWTs signed without any I/O, the JWKS prebuilt.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::jwk::{self, KeyRow};
use crate::{Alg, KeyError, KeyId, Secret, Verifier, b64, der};

/// How long a key stays published after it expires, so tokens it signed still verify
/// (Better Auth's default grace period: 30 days).
pub const DEFAULT_GRACE: Duration = Duration::days(30);

/// Claims of a Convex JWT, in the order `@convex-dev/better-auth` writes them, plus an optional
/// `jti` (a unique id per token, last).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub iat: i64,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    pub session_id: String,
    pub sub: String,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// A unique id per issued token, so two tokens issued for one session in the same second
    /// differ (RS256 and EdDSA signatures are deterministic): the Convex client stops
    /// scheduling refreshes when a forced refetch returns the string it already holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A signed JWT and what a cache needs to know about it.
#[derive(Clone)]
pub struct SignedToken {
    pub jwt: String,
    pub kid: KeyId,
    pub expires_at: i64,
}

impl fmt::Debug for SignedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedToken")
            .field("kid", &self.kid)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct LoadedKey {
    id: KeyId,
    alg: Alg,
    created_at: DateTime<Utc>,
    /// Since when verifiers can have it: its `createdAt`, or later if this process first
    /// published it later (see [`KeySet::published_since`]).
    published_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    signer: Signer,
    /// base64url of `{"alg":…,"kid":…}`.
    header_b64: String,
}

/// The keys auth signs with and publishes.
pub struct KeySet {
    /// Newest first.
    keys: Vec<LoadedKey>,
    jwks: Value,
    jwks_json: String,
    rng: SystemRandom,
    /// How long a key is published before it signs (see [`KeySet::with_publish_lead`]).
    publish_lead: Duration,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|k| (k.id.as_str(), k.alg)).collect();
        f.debug_struct("KeySet").field("keys", &ids).finish()
    }
}

fn load_signer(alg: Alg, private: &Map<String, Value>) -> Result<Signer, KeyError> {
    let reject = |e: aws_lc_rs::error::KeyRejected| KeyError::InvalidKey(e.to_string());
    let f = |name| jwk::field_bytes(private, name);
    match alg {
        Alg::RS256 => {
            let parts = [
                f("n")?,
                f("e")?,
                f("d")?,
                f("p")?,
                f("q")?,
                f("dp")?,
                f("dq")?,
                f("qi")?,
            ];
            Ok(Signer::Rsa(
                RsaKeyPair::from_der(&der::rsa_pkcs1(&parts)).map_err(reject)?,
            ))
        }
        Alg::ES256 => {
            let mut point = vec![0x04];
            point.extend(f("x")?);
            point.extend(f("y")?);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &f("d")?,
                &point,
            )
            .map_err(reject)?;
            Ok(Signer::Ec(pair))
        }
        Alg::EdDSA => {
            let pair =
                Ed25519KeyPair::from_seed_and_public_key(&f("d")?, &f("x")?).map_err(reject)?;
            Ok(Signer::Ed(pair))
        }
    }
}

impl KeySet {
    /// Loads `rows`, decrypting private keys with `secret`. Keys expired for longer than
    /// `grace` are dropped; every other key is published.
    pub fn load(
        rows: &[KeyRow],
        secret: &Secret,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<KeySet, KeyError> {
        let mut keys = Vec::with_capacity(rows.len());
        let mut published = Vec::with_capacity(rows.len());
        for row in rows {
            if row.expires_at.is_some_and(|e| e + grace <= now) {
                continue;
            }
            let id = KeyId::parse(&row.id)?;
            let alg = row.algorithm()?;
            let mut public = row.public_jwk()?;
            if jwk::alg_for_jwk(&public)? != alg {
                return Err(KeyError::InvalidKey(format!(
                    "key {id}: alg {alg} does not fit its key type"
                )));
            }
            let private = row.private_jwk(secret)?;
            let signer = load_signer(alg, &private)
                .map_err(|e| KeyError::InvalidKey(format!("key {id}: {e}")))?;
            let header = serde_json::json!({"alg": alg.as_str(), "kid": id.as_str()});
            public.insert("alg".into(), Value::String(alg.as_str().into()));
            public.insert("kid".into(), Value::String(id.as_str().into()));
            published.push((row.created_at, Value::Object(public)));
            keys.push(LoadedKey {
                header_b64: b64::url_encode(header.to_string()),
                id,
                alg,
                created_at: row.created_at,
                published_at: row.created_at,
                expires_at: row.expires_at,
                signer,
            });
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        published.sort_by_key(|p| std::cmp::Reverse(p.0));
        let jwks =
            serde_json::json!({"keys": published.into_iter().map(|(_, k)| k).collect::<Vec<_>>()});
        Ok(KeySet {
            keys,
            jwks_json: jwks.to_string(),
            jwks,
            rng: SystemRandom::new(),
            publish_lead: Duration::zero(),
        })
    }

    /// Verifiers cache the JWKS (Convex does not refetch on an unknown `kid`): a key signs only
    /// once it has been published for `lead` (the JWKS cache lifetime), while an older key can
    /// still sign. When no key has been published that long, the longest published signs (a
    /// first key signs at once).
    pub fn with_publish_lead(mut self, lead: Duration) -> Self {
        self.publish_lead = lead;
        self
    }

    /// The JWKS document, `{"keys":[…]}`.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// A verifier for exactly the published keys.
    pub fn verifier(&self) -> Verifier {
        Verifier::from_jwks_value(&self.jwks).expect("published keys are valid")
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key of `alg` can sign at `now`.
    pub fn can_sign(&self, alg: Alg, now: DateTime<Utc>) -> bool {
        self.signing_key(alg, now).is_some()
    }

    fn signing_key(&self, alg: Alg, now: DateTime<Utc>) -> Option<&LoadedKey> {
        let usable = || {
            self.keys
                .iter()
                .filter(move |k| k.alg == alg && k.expires_at.is_none_or(|e| e > now))
        };
        // The newest published for the lead; else the longest published (a verifier that has
        // any of them has that one), which is the newest when there is only one.
        usable()
            .find(|k| k.published_at + self.publish_lead <= now)
            .or_else(|| usable().min_by_key(|k| k.published_at))
    }

    /// Records that this process publishes `kid` only from `at` (a key loaded after its
    /// `createdAt`: verifiers reading this process's JWKS cannot have had it before).
    pub fn published_since(&mut self, kid: &str, at: DateTime<Utc>) {
        for key in self.keys.iter_mut().filter(|k| k.id.as_str() == kid) {
            key.published_at = key.published_at.max(at);
        }
    }

    /// The ids of the loaded keys.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The id of the key that signs `alg` at `now`.
    pub fn signing_kid(&self, alg: Alg, now: DateTime<Utc>) -> Option<&KeyId> {
        self.signing_key(alg, now).map(|k| &k.id)
    }

    /// Signs `claims` with the newest unexpired key of `alg` published for the lead (see
    /// [`KeySet::with_publish_lead`]).
    pub fn sign(
        &self,
        alg: Alg,
        claims: &Claims,
        now: DateTime<Utc>,
    ) -> Result<SignedToken, KeyError> {
        let key = self
            .signing_key(alg, now)
            .ok_or(KeyError::NoSigningKey(alg))?;
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut jwt = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 360);
        jwt.push_str(&key.header_b64);
        jwt.push('.');
        jwt.push_str(&b64::url_encode(&payload));
        let signature = match &key.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    jwt.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| KeyError::Sign)?;
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&self.rng, jwt.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(jwt.as_bytes()).as_ref().to_vec(),
        };
        jwt.push('.');
        jwt.push_str(&b64::url_encode(signature));
        Ok(SignedToken {
            jwt,
            kid: key.id.clone(),
            expires_at: claims.exp,
        })
    }
}

//! Convex's `customJwt` providers: issuer, `applicationID` (the audience), algorithm, and a
//! JWKS from a URL or a `data:` URI. Verified claims become the identity functions see.

use std::sync::RwLock;

use base64::Engine;
use edge_keys::{Alg, Verifier};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The caller's identity, as `ctx.auth.getUserIdentity()` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub token_identifier: String,
    pub subject: String,
    pub issuer: String,
    /// The token's `exp` (Unix seconds): the socket gets `AuthError` once it passes, unless a
    /// newer token came first. `None`: the token has no `exp`.
    pub expires_at: Option<i64>,
    /// Every other claim (`name`, `email`, `emailVerified`, custom ones).
    pub claims: Map<String, Value>,
}

impl Identity {
    pub fn to_json(&self) -> Value {
        let mut out = self.claims.clone();
        out.insert(
            "tokenIdentifier".into(),
            Value::String(self.token_identifier.clone()),
        );
        out.insert("subject".into(), Value::String(self.subject.clone()));
        out.insert("issuer".into(), Value::String(self.issuer.clone()));
        Value::Object(out)
    }

    pub fn display_name(&self) -> String {
        ["name", "email"]
            .iter()
            .find_map(|k| self.claims.get(*k).and_then(Value::as_str))
            .unwrap_or(&self.subject)
            .to_owned()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderConfig {
    #[serde(rename = "type")]
    kind: String,
    issuer: String,
    #[serde(rename = "applicationID")]
    application_id: String,
    algorithm: String,
    jwks: String,
}

#[derive(Deserialize)]
struct AuthConfig {
    providers: Vec<ProviderConfig>,
}

struct Provider {
    issuer: String,
    application_id: String,
    alg: Alg,
    jwks_url: Option<String>,
    verifier: RwLock<Option<Verifier>>,
}

/// Verifies tokens against the configured providers.
#[derive(Default)]
pub struct Authenticator {
    providers: Vec<Provider>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("providers", &self.providers.len())
            .finish()
    }
}

fn verifier_for(jwks: &str, p: &ProviderConfig) -> Result<Verifier, String> {
    Verifier::from_jwks(jwks)
        .map(|v| {
            v.with_issuer(p.issuer.clone())
                .with_audience(p.application_id.clone())
        })
        .map_err(|e| format!("provider {}: {e}", p.issuer))
}

impl Authenticator {
    pub fn from_config(json: Option<&str>) -> Result<Authenticator, String> {
        let Some(json) = json else {
            return Ok(Authenticator::default());
        };
        let config: AuthConfig = serde_json::from_str(json)
            .map_err(|e| format!("expected {{\"providers\": [...]}}: {e}"))?;
        let mut providers = Vec::new();
        for p in config.providers {
            if p.kind != "customJwt" {
                return Err(format!(
                    "provider type `{}` is not supported (customJwt only)",
                    p.kind
                ));
            }
            let alg: Alg = p
                .algorithm
                .parse()
                .map_err(|_| format!("algorithm `{}`", p.algorithm))?;
            if !matches!(alg, Alg::RS256 | Alg::ES256) {
                return Err(format!(
                    "algorithm {alg}: Convex's customJwt accepts RS256 and ES256"
                ));
            }
            let (jwks_url, verifier) = if let Some(rest) = p.jwks.strip_prefix("data:") {
                let (meta, data) = rest.split_once(',').ok_or("malformed data: URI")?;
                let bytes = if meta.ends_with(";base64") {
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|_| "data: URI is not base64")?
                } else {
                    data.as_bytes().to_vec()
                };
                let text = String::from_utf8(bytes).map_err(|_| "data: URI is not UTF-8")?;
                (None, Some(verifier_for(&text, &p)?))
            } else if p.jwks.starts_with("http://") || p.jwks.starts_with("https://") {
                (Some(p.jwks.clone()), None)
            } else {
                return Err("jwks must be an http(s) URL or a data: URI".into());
            };
            providers.push(Provider {
                issuer: p.issuer,
                application_id: p.application_id,
                alg,
                jwks_url,
                verifier: RwLock::new(verifier),
            });
        }
        Ok(Authenticator {
            providers,
            // JWKS over https:// trusts the OS roots plus SSL_CERT_FILE.
            http: edge_tls::Trust::from_env(|k| std::env::var(k).ok())
                .map_err(|e| e.to_string())?
                .http_client()
                .build()
                .map_err(|e| format!("cannot build the JWKS client: {e}"))?,
        })
    }

    async fn fetch(&self, provider: &Provider) -> Result<(), String> {
        let Some(url) = &provider.jwks_url else {
            return Ok(());
        };
        let text = async {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
        .await
        .map_err(|e| {
            let error = edge_tls::describe(&e);
            tracing::warn!(%url, %error, "could not fetch the JWKS");
            // The URL and the cause are the deployment's, for its log; Convex tells the client
            // only that the key set could not be had.
            "could not fetch the JWKS of this token's issuer".to_owned()
        })?;
        let verifier = Verifier::from_jwks(&text)
            .map_err(|e| e.to_string())?
            .with_issuer(provider.issuer.clone())
            .with_audience(provider.application_id.clone());
        *provider.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(verifier);
        Ok(())
    }

    /// Verifies `token` as Convex would; the error is what the client is told.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let (header, claims) = peek(token).ok_or("Could not parse JWT")?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or("JWT has no `iss`")?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer == iss)
            .ok_or_else(|| {
                format!("No auth provider found matching the given token (issuer {iss})")
            })?;
        if header.get("alg").and_then(Value::as_str) != Some(provider.alg.as_str()) {
            return Err(format!("JWT algorithm must be {}", provider.alg));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or("JWT has no `kid`")?;
        let known = provider
            .verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|v| v.has_kid(kid));
        if !known {
            // An unknown kid triggers one refresh (keys may have rotated).
            self.fetch(provider).await?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let verified = {
            let guard = provider.verifier.read().unwrap_or_else(|e| e.into_inner());
            let verifier = guard.as_ref().ok_or("no JWKS loaded")?;
            verifier
                .verify(token, now)
                .map_err(|e| format!("Could not verify token: {e}"))?
        };
        let mut claims = verified.claims;
        let expires_at = claims.get("exp").and_then(Value::as_i64);
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for registered in ["iss", "sub", "aud", "iat", "exp", "nbf", "jti"] {
            claims.remove(registered);
        }
        Ok(Identity {
            token_identifier: format!("{iss}|{subject}"),
            subject,
            issuer: iss.to_owned(),
            expires_at,
            claims,
        })
    }
}

/// The unverified header and claims, to pick a provider.
fn peek(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let mut parts = token.split('.');
    let decode = |p: &str| -> Option<Map<String, Value>> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    Some((decode(parts.next()?)?, decode(parts.next()?)?))
}

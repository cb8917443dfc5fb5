//! A generic OpenID Connect provider as Better Auth's genericOAuth plugin drives it: discovery
//! (fetched once, cached), the authorization URL with PKCE S256 and a nonce, the code exchange
//! (`client_secret_post`), ID token verification against the provider's JWKS, and the
//! userinfo endpoint when the ID token lacks claims.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_keys::Verifier;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

/// jose's `createRemoteJWKSet` `cooldownDuration`: after a JWKS fetch, a token naming an
/// unknown `kid` does not fetch the set again for this long (30 s).
pub(super) const JWKS_COOLDOWN: Duration = Duration::from_secs(30);

/// The provider's keys as last fetched, and when.
#[derive(Default)]
struct Keys {
    verifier: Option<Arc<Verifier>>,
    fetched_at: Option<std::time::Instant>,
}

impl Keys {
    /// The cached verifier when it serves `kid` (or no `kid` is named), or when a fetch was
    /// made within [`JWKS_COOLDOWN`] (then the token is refused with the keys at hand).
    fn usable(&self, kid: Option<&str>) -> Option<Arc<Verifier>> {
        let v = self.verifier.as_ref()?;
        let knows = kid.is_none_or(|kid| v.has_kid(kid));
        let cooling = self
            .fetched_at
            .is_some_and(|at| at.elapsed() < JWKS_COOLDOWN);
        (knows || cooling).then(|| v.clone())
    }
}

use super::builtin;
use super::config::{Kind, ProviderConfig};

/// Why a provider step failed (logged; the browser gets Better Auth's error code).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Bad(String),
}

pub(super) fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::Bad(message.into())
}

/// The parts of a discovery document genericOAuth reads.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub issuer: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    /// `id_token_signing_alg_values_supported`; non-empty makes the provider an OpenID one.
    pub signing_algs: Vec<String>,
}

impl Discovered {
    /// genericOAuth's `isOidc`.
    pub fn is_oidc(&self) -> bool {
        !self.signing_algs.is_empty()
    }

    /// Whether ID tokens are verified (and a nonce bound): discovery named a JWKS and an issuer.
    pub fn verifies_id_tokens(&self) -> bool {
        self.jwks_uri.is_some() && self.issuer.is_some()
    }
}

/// What one authorization URL carries.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizationRequest<'a> {
    pub state: &'a str,
    /// PKCE verifier; the URL carries its S256 challenge.
    pub code_verifier: &'a str,
    /// The OpenID nonce, when ID tokens are verified.
    pub nonce: Option<&'a str>,
    pub redirect_uri: &'a str,
    /// The body's scopes, asked for before the configured ones.
    pub scopes: &'a [String],
    pub login_hint: Option<&'a str>,
}

/// Token endpoint answer, as Better Auth's `getOAuth2Tokens` reads it.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    /// Apple's `user` (`{name: {firstName, lastName}, email}`), posted beside the code once.
    pub user: Option<Value>,
}

/// The user a provider vouches for, mapped as genericOAuth maps it.
#[derive(Debug, Clone)]
pub struct ProviderUser {
    /// The account's `accountId`: the ID token's `sub` for OpenID providers, else the
    /// profile's `id`.
    pub account_id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: String,
    pub image: Option<String>,
}

/// One configured provider with its cached discovery and keys.
pub struct Provider {
    pub config: ProviderConfig,
    pub(super) http: reqwest::Client,
    discovered: Mutex<Option<Arc<Discovered>>>,
    /// Short critical sections only; never held across a fetch.
    keys: std::sync::Mutex<Keys>,
    /// Held by the one JWKS fetch in flight; concurrent misses wait on it and share its result.
    jwks_fetch: Mutex<()>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

/// Better Auth's `parseStringBoolean`: `true`/`"true"` and `false`/`"false"`, nothing else.
pub(super) fn string_bool(v: Option<&Value>) -> Option<bool> {
    match v {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s == "true" => Some(true),
        Some(Value::String(s)) if s == "false" => Some(false),
        _ => None,
    }
}

pub(super) fn string(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The claims of a compact JWS, unverified (Better Auth's `decodeJwt`).
pub fn decode_claims(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The protected header of a compact JWS, unverified.
fn jws_header(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn header_alg(token: &str) -> Option<String> {
    string(jws_header(token)?.get("alg"))
}

/// Seconds of clock skew Better Auth tolerates on ID tokens.
const ID_TOKEN_LEEWAY: i64 = 30;
pub(super) const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

impl Provider {
    pub fn new(config: ProviderConfig, http: reqwest::Client) -> Self {
        Provider {
            config,
            http,
            discovered: Mutex::new(None),
            keys: std::sync::Mutex::new(Keys::default()),
            jwks_fetch: Mutex::new(()),
        }
    }

    /// A provider document (discovery, JWKS): a 2xx JSON answer, else an error.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, ProviderError> {
        Ok(self
            .http
            .get(url)
            .timeout(HTTP_TIMEOUT)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The discovery document, fetched on first use and kept; a failed fetch is tried again
    /// on the next request (genericOAuth's retry of a provider whose start-up discovery failed).
    pub async fn discovered(&self) -> Result<Arc<Discovered>, ProviderError> {
        let mut slot = self.discovered.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        if self.config.kind != Kind::Generic {
            let d = Arc::new(builtin::endpoints(&self.config));
            *slot = Some(d.clone());
            return Ok(d);
        }
        let doc: Map<String, Value> = self.get_json(&self.config.discovery_url).await?;
        let issuer = string(doc.get("issuer"));
        if let Some(issuer) = &issuer {
            url::Url::parse(issuer).map_err(|_| bad("discovery issuer is not a URL"))?;
        }
        let endpoint = |name: &str| string(doc.get(name));
        let jwks_uri = match endpoint("jwks_uri") {
            Some(uri) => Some(
                url::Url::parse(&self.config.discovery_url)
                    .and_then(|base| base.join(&uri))
                    .map_err(|_| bad("discovery jwks_uri is not a URL"))?
                    .to_string(),
            ),
            None => None,
        };
        let discovered = Arc::new(Discovered {
            issuer,
            authorization_endpoint: endpoint("authorization_endpoint")
                .ok_or_else(|| bad("discovery has no authorization_endpoint"))?,
            token_endpoint: endpoint("token_endpoint")
                .ok_or_else(|| bad("discovery has no token_endpoint"))?,
            userinfo_endpoint: endpoint("userinfo_endpoint"),
            jwks_uri,
            signing_algs: doc
                .get("id_token_signing_alg_values_supported")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| string(Some(v))).collect())
                .unwrap_or_default(),
        });
        *slot = Some(discovered.clone());
        Ok(discovered)
    }

    /// Whether the redirect flow binds a nonce to the ID token (genericOAuth with a JWKS; the
    /// built-in providers do not).
    pub fn requires_nonce(&self, d: &Discovered) -> bool {
        self.config.kind == Kind::Generic && d.verifies_id_tokens()
    }

    /// The authorization URL (Better Auth's `createAuthorizationURL`: parameters in its order).
    pub fn authorization_url(
        &self,
        d: &Discovered,
        a: &AuthorizationRequest<'_>,
    ) -> Result<String, ProviderError> {
        let scopes = builtin::scopes(&self.config, d, a.scopes);
        let extra = builtin::authorization_extras(self.config.kind);
        let mut url = url::Url::parse(&d.authorization_endpoint)
            .map_err(|_| bad("authorization_endpoint is not a URL"))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", extra.response_type);
            q.append_pair("client_id", &self.config.client_id);
            q.append_pair("state", a.state);
            if !scopes.is_empty() {
                q.append_pair("scope", &scopes.join(" "));
            }
            q.append_pair("redirect_uri", a.redirect_uri);
            if let Some(hint) = a.login_hint {
                q.append_pair("login_hint", hint);
            }
            if let Some(nonce) = a.nonce {
                q.append_pair("nonce", nonce);
            }
            if let Some(prompt) = extra.prompt {
                q.append_pair("prompt", prompt);
            }
            if let Some(mode) = extra.response_mode {
                q.append_pair("response_mode", mode);
            }
            if extra.pkce {
                q.append_pair("code_challenge_method", "S256");
                q.append_pair("code_challenge", &code_challenge(a.code_verifier));
            }
            for (k, v) in extra.params {
                q.append_pair(k, v);
            }
        }
        Ok(url.to_string())
    }

    /// The code exchange (`client_secret_post`), redirects refused.
    pub async fn exchange(
        &self,
        d: &Discovered,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, ProviderError> {
        let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
        if builtin::authorization_extras(self.config.kind).pkce {
            form.push(("code_verifier", code_verifier));
        }
        form.push(("redirect_uri", redirect_uri));
        // `client_secret_post` with a secret; a public client names itself only.
        form.push(("client_id", &self.config.client_id));
        if !self.config.client_secret.is_empty() {
            form.push(("client_secret", &self.config.client_secret));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .http
            .post(&d.token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(HTTP_TIMEOUT)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(bad(format!(
                "token endpoint answered {}",
                response.status()
            )));
        }
        let data: Map<String, Value> = response.json().await?;
        // GitHub answers a refused code with 200 and `error`.
        if data.contains_key("error") {
            return Err(bad("token endpoint answered an error"));
        }
        Ok(tokens_from(&data, Utc::now()))
    }

    fn cached_keys(&self, kid: Option<&str>) -> Option<Arc<Verifier>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .usable(kid)
    }

    /// The provider's keys for a token naming `kid`, as jose's remote JWK set gives them: the
    /// cached set when it has the key; else one fetch, at most once per [`JWKS_COOLDOWN`],
    /// shared by every concurrent miss. The keys lock is not held across the fetch, so tokens
    /// with known keys are checked meanwhile. A failed fetch is tried again on the next miss.
    async fn verifier(
        &self,
        d: &Discovered,
        kid: Option<&str>,
    ) -> Result<Arc<Verifier>, ProviderError> {
        if let Some(v) = self.cached_keys(kid) {
            return Ok(v);
        }
        let _fetching = self.jwks_fetch.lock().await;
        // A fetch that finished while this one waited counts (and starts the cooldown).
        if let Some(v) = self.cached_keys(kid) {
            return Ok(v);
        }
        let uri = d.jwks_uri.as_deref().ok_or_else(|| bad("no jwks_uri"))?;
        let jwks: Value = self.get_json(uri).await?;
        // `iss` and `aud` are checked by `verify_id_token` (some providers have two issuers).
        let verifier = Verifier::from_foreign_jwks(&jwks)
            .map_err(|e| bad(format!("provider jwks: {e}")))?
            .with_leeway(ID_TOKEN_LEEWAY);
        let verifier = Arc::new(verifier);
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.verifier = Some(verifier.clone());
        keys.fetched_at = Some(std::time::Instant::now());
        Ok(verifier)
    }

    /// Better Auth's `verifyIdToken`: signature against the provider's JWKS (fetched again for
    /// an unknown `kid` at most once per [`JWKS_COOLDOWN`], as jose's remote key set does), an
    /// algorithm discovery lists,
    /// `iss`, `aud`, `exp` (30 s leeway), `iat` and `sub` present, and the nonce when one
    /// was sent. Returns the claims.
    pub async fn verify_id_token(
        &self,
        d: &Discovered,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, ProviderError> {
        let rules = builtin::id_token_rules(&self.config, d);
        let alg = header_alg(token).ok_or_else(|| bad("id token is not a JWS"))?;
        if !rules.algorithms.is_empty() && !rules.algorithms.contains(&alg) {
            return Err(bad(format!("id token algorithm {alg} is not accepted")));
        }
        let now = Utc::now().timestamp();
        let verifier = self.verifier(d, token_kid(token).as_deref()).await?;
        let verified = verifier
            .verify(token, now)
            .map_err(|e| bad(format!("id token refused: {e}")))?;
        let claims = verified.claims;
        let iss = string(claims.get("iss")).unwrap_or_default();
        if !rules.issuers.is_empty() && !rules.issuers.contains(&iss) {
            return Err(bad("id token issuer is not the provider's"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == rules.audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&rules.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(bad("id token audience is not this client"));
        }
        let Some(iat) = claims.get("iat").and_then(Value::as_i64) else {
            return Err(bad("id token has no iat"));
        };
        // jose's `maxTokenAge`: too old, or issued in the future (beyond the same leeway).
        if let Some(max_age) = rules.max_age_seconds {
            if now - iat > max_age + ID_TOKEN_LEEWAY {
                return Err(bad("id token is too old"));
            }
            if iat > now + ID_TOKEN_LEEWAY {
                return Err(bad("id token is issued in the future"));
            }
        }
        if let Some(nonce) = nonce {
            let claim = claims.get("nonce").and_then(Value::as_str);
            let ok = claim == Some(nonce)
                || (rules.nonce_sha256 && claim == Some(sha256_hex(nonce).as_str()));
            if !ok {
                return Err(bad("id token nonce does not match"));
            }
        }
        if !builtin::verify_claims(&self.config, &claims) {
            return Err(bad("id token claims refused"));
        }
        Ok(claims)
    }

    /// The userinfo endpoint's JSON object, asked with the access token; `None` without an
    /// endpoint or a token, or when the provider does not answer 2xx.
    pub(super) async fn fetch_userinfo(
        &self,
        d: &Discovered,
        tokens: &Tokens,
    ) -> Result<Option<Map<String, Value>>, ProviderError> {
        let (Some(endpoint), Some(access)) = (&d.userinfo_endpoint, &tokens.access_token) else {
            return Ok(None);
        };
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access)
            .timeout(HTTP_TIMEOUT)
            .send()
            .await?;
        if !response.status().is_success() {
            return Ok(None);
        }
        Ok(Some(response.json().await?))
    }

    /// genericOAuth's `getUserInfo` after a code exchange: the verified ID token's claims when
    /// they carry `sub` and `email`, else the userinfo endpoint (whose `sub` must be the ID
    /// token's). `None` when the provider vouches for no one.
    pub async fn user_info(
        &self,
        d: &Discovered,
        tokens: &Tokens,
        nonce: Option<&str>,
    ) -> Result<Option<ProviderUser>, ProviderError> {
        if self.config.kind != Kind::Generic {
            return builtin::user_info(self, d, tokens, None).await;
        }
        let verified = match (&tokens.id_token, d.verifies_id_tokens()) {
            (Some(token), true) => Some(self.verify_id_token(d, token, nonce).await?),
            _ => None,
        };
        // Without a JWKS genericOAuth reads the ID token unverified.
        let claims = verified
            .clone()
            .or_else(|| tokens.id_token.as_deref().and_then(decode_claims));
        let raw = match &claims {
            Some(c) if c.get("sub").is_some() && c.get("email").is_some() => {
                let mut raw = c.clone();
                raw.insert("id".into(), c["sub"].clone());
                raw.insert(
                    "emailVerified".into(),
                    Value::Bool(string_bool(c.get("email_verified")).unwrap_or(false)),
                );
                if let Some(p) = c.get("picture") {
                    raw.insert("image".into(), p.clone());
                }
                raw
            }
            _ => {
                let Some(mut raw) = self.fetch_userinfo(d, tokens).await? else {
                    return Ok(None);
                };
                let verified_flag = string_bool(raw.get("email_verified")).unwrap_or(false);
                raw.insert("emailVerified".into(), Value::Bool(verified_flag));
                if let Some(p) = raw.get("picture").cloned() {
                    raw.insert("image".into(), p);
                }
                raw
            }
        };
        if let Some(sub) = verified.as_ref().and_then(|c| string(c.get("sub")))
            && string(raw.get("sub")).as_deref() != Some(sub.as_str())
        {
            return Ok(None);
        }
        let account_id = if !d.is_oidc() {
            string(raw.get("id"))
        } else if let Some(v) = &verified {
            string(v.get("sub"))
        } else {
            string(raw.get("sub"))
        }
        .filter(|s| !s.trim().is_empty());
        let Some(account_id) = account_id else {
            return Ok(None);
        };
        Ok(Some(ProviderUser {
            account_id,
            email: string(raw.get("email")),
            email_verified: string_bool(raw.get("emailVerified")).unwrap_or(false),
            name: string(raw.get("name")).unwrap_or_default(),
            image: string(raw.get("image")),
        }))
    }
}

fn sha256_hex(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn token_kid(token: &str) -> Option<String> {
    string(jws_header(token)?.get("kid"))
}

/// PKCE S256: base64url(SHA-256(verifier)), unpadded.
pub fn code_challenge(verifier: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Better Auth's `getOAuth2Tokens`: expiries from `expires_in` and `refresh_token_expires_in`
/// (seconds from now, millisecond dates), `scope` split on whitespace (or an array).
pub fn tokens_from(data: &Map<String, Value>, now: DateTime<Utc>) -> Tokens {
    let after = |name: &str| {
        data.get(name)
            .and_then(Value::as_f64)
            .filter(|s| *s != 0.0 && s.is_finite())
            .and_then(|s| {
                let ms = now.timestamp_millis() + (s * 1000.0) as i64;
                DateTime::from_timestamp_millis(ms)
            })
    };
    let scopes = match data.get("scope") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Tokens {
        access_token: string(data.get("access_token")),
        refresh_token: string(data.get("refresh_token")),
        id_token: string(data.get("id_token")),
        access_token_expires_at: after("expires_in"),
        refresh_token_expires_at: after("refresh_token_expires_in"),
        scopes,
        user: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A provider whose discovery and keys are already loaded (an Ed25519 key `k1`), and a
    /// signer of ID tokens with that key.
    async fn provider_with_key() -> (Provider, Arc<Discovered>, impl Fn(Value) -> String) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": b64(pair.public_key().as_ref())},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        ]});
        let config = ProviderConfig {
            id: "acme".into(),
            kind: Kind::Generic,
            client_id: "client".into(),
            client_secret: "secret".into(),
            discovery_url: "http://127.0.0.1:1/.well-known/openid-configuration".into(),
            endpoints: Default::default(),
            tenant: "common".into(),
            authority: "https://login.microsoftonline.com".into(),
            audience: None,
            scopes: vec![],
        };
        let provider = Provider::new(config, reqwest::Client::new());
        let discovered = Arc::new(Discovered {
            issuer: Some("https://idp.example".into()),
            authorization_endpoint: "https://idp.example/auth".into(),
            token_endpoint: "https://idp.example/token".into(),
            userinfo_endpoint: None,
            jwks_uri: Some("https://idp.example/jwks".into()),
            signing_algs: vec!["EdDSA".into()],
        });
        let verifier = Verifier::from_foreign_jwks(&jwks)
            .unwrap()
            .with_leeway(ID_TOKEN_LEEWAY);
        provider.keys.lock().unwrap().verifier = Some(Arc::new(verifier));
        *provider.discovered.lock().await = Some(discovered.clone());
        let sign = move |claims: Value| {
            let header = b64(br#"{"alg":"EdDSA","kid":"k1"}"#);
            let payload = b64(claims.to_string().as_bytes());
            let input = format!("{header}.{payload}");
            let signature = pair.sign(input.as_bytes());
            format!("{input}.{}", b64(signature.as_ref()))
        };
        (provider, discovered, sign)
    }

    #[tokio::test]
    async fn id_tokens_are_checked_as_better_auth_checks_them() {
        let (provider, d, sign) = provider_with_key().await;
        let now = Utc::now().timestamp();
        let good = json!({"iss": "https://idp.example", "aud": "client", "sub": "u1",
            "iat": now, "exp": now + 300, "nonce": "n1", "email": "a@example.com"});
        let claims = provider
            .verify_id_token(&d, &sign(good.clone()), Some("n1"))
            .await
            .unwrap();
        assert_eq!(claims["sub"], "u1");
        let with = |key: &str, value: Value| {
            let mut c = good.clone();
            c[key] = value;
            sign(c)
        };
        let refused = [
            (
                "wrong iss",
                with("iss", json!("https://evil.example")),
                Some("n1"),
            ),
            ("wrong aud", with("aud", json!("other-client")), Some("n1")),
            ("expired", with("exp", json!(now - 31)), Some("n1")),
            ("nonce", good.clone().to_string(), Some("n2")),
        ];
        for (what, token, nonce) in refused {
            let token = if token.starts_with('{') {
                sign(serde_json::from_str(&token).unwrap())
            } else {
                token
            };
            assert!(
                provider.verify_id_token(&d, &token, nonce).await.is_err(),
                "{what} accepted"
            );
        }
        let mut no_iat = good.clone();
        no_iat.as_object_mut().unwrap().remove("iat");
        assert!(
            provider
                .verify_id_token(&d, &sign(no_iat), Some("n1"))
                .await
                .is_err()
        );
        // Within the leeway an expired token still counts, as with Better Auth (30 s).
        assert!(
            provider
                .verify_id_token(&d, &with("exp", json!(now - 5)), Some("n1"))
                .await
                .is_ok()
        );
        // A tampered payload fails the signature.
        let token = sign(good.clone());
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = with("sub", json!("u2"));
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(
            provider
                .verify_id_token(&d, &parts.join("."), Some("n1"))
                .await
                .is_err()
        );
    }

    /// An Ed25519 key named `kid`: its public JWK and a signer of ID tokens.
    fn key(kid: &'static str) -> (Value, impl Fn(Value) -> String) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": b64(pair.public_key().as_ref())});
        let sign = move |claims: Value| {
            let header = b64(json!({"alg": "EdDSA", "kid": kid}).to_string().as_bytes());
            let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
            format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()))
        };
        (jwk, sign)
    }

    /// A provider's JWKS endpoint on a real socket (HTTP/1.1, one request a connection): it
    /// serves the set in `jwks` and counts the requests it answers.
    async fn jwks_endpoint(
        jwks: Arc<std::sync::Mutex<Value>>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (jwks, counter) = (jwks.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = jwks.lock().unwrap().to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn unknown_kids_refetch_the_jwks_once_per_cooldown_as_jose_does() {
        use std::sync::atomic::Ordering::SeqCst;
        let (jwk1, sign1) = key("k1");
        let (jwk2, sign2) = key("k2");
        let jwks = Arc::new(std::sync::Mutex::new(json!({"keys": [jwk1]})));
        let (jwks_uri, fetches) = jwks_endpoint(jwks.clone()).await;
        let (provider, _, _) = provider_with_key().await;
        *provider.keys.lock().unwrap() = Keys::default();
        let provider = Arc::new(provider);
        let d = Arc::new(Discovered {
            issuer: Some("https://idp.example".into()),
            authorization_endpoint: "https://idp.example/auth".into(),
            token_endpoint: "https://idp.example/token".into(),
            userinfo_endpoint: None,
            jwks_uri: Some(jwks_uri),
            signing_algs: vec!["EdDSA".into()],
        });
        let now = Utc::now().timestamp();
        let claims = json!({"iss": "https://idp.example", "aud": "client", "sub": "u1",
            "iat": now, "exp": now + 300});
        provider
            .verify_id_token(&d, &sign1(claims.clone()), None)
            .await
            .unwrap();
        assert_eq!(fetches.load(SeqCst), 1);

        // 50 tokens naming forged kids, at once: within the cooldown none fetches.
        let forged = |i: usize| {
            let header = b64(json!({"alg": "EdDSA", "kid": format!("forged-{i}")})
                .to_string()
                .as_bytes());
            let token = sign1(claims.clone());
            let mut parts: Vec<&str> = token.split('.').collect();
            parts[0] = &header;
            parts.join(".")
        };
        let storm = |provider: Arc<Provider>| {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let (provider, d, token) = (provider.clone(), d.clone(), forged(i));
                    tokio::spawn(async move { provider.verify_id_token(&d, &token, None).await })
                })
                .collect();
            async move {
                for task in tasks {
                    assert!(task.await.unwrap().is_err(), "a forged kid was accepted");
                }
            }
        };
        storm(provider.clone()).await;
        assert_eq!(fetches.load(SeqCst), 1, "forged kids fetched the JWKS");

        // After the cooldown, 50 concurrent misses share one fetch.
        let backdate = |provider: &Provider| {
            provider.keys.lock().unwrap().fetched_at =
                Some(std::time::Instant::now() - JWKS_COOLDOWN);
        };
        backdate(&provider);
        storm(provider.clone()).await;
        assert_eq!(
            fetches.load(SeqCst),
            2,
            "concurrent misses did not share one fetch"
        );

        // The provider rotates to k2: refused while cooling down, accepted after it.
        *jwks.lock().unwrap() = json!({"keys": [jwk2]});
        let rotated = sign2(claims.clone());
        assert!(provider.verify_id_token(&d, &rotated, None).await.is_err());
        assert_eq!(fetches.load(SeqCst), 2);
        backdate(&provider);
        let verified = provider.verify_id_token(&d, &rotated, None).await.unwrap();
        assert_eq!(verified["sub"], "u1");
        assert_eq!(fetches.load(SeqCst), 3);
        // A token with a known kid uses the cached set.
        provider.verify_id_token(&d, &rotated, None).await.unwrap();
        assert_eq!(fetches.load(SeqCst), 3);
    }

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn token_answers_read_as_better_auth_reads_them() {
        let now = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let data = serde_json::json!({"access_token": "a", "expires_in": 3600, "scope": "openid  email", "id_token": "x.y.z"});
        let t = tokens_from(data.as_object().unwrap(), now);
        assert_eq!(t.scopes, ["openid", "email"]);
        assert_eq!(
            t.access_token_expires_at.unwrap().timestamp_millis(),
            1_700_003_600_123
        );
        assert!(t.refresh_token.is_none() && t.refresh_token_expires_at.is_none());
    }
}

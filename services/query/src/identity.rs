//! Who a token belongs to, decided locally: JWTs are verified against the JWKS from auth
//! (`GetJwks`, cached; one refresh when a `kid` is unknown). The identity key is the verified
//! claims without `iat`, `exp`, `nbf`, `jti`, so every token of one session shares an upstream.
//!
//! A token is refused ([`IdentityError::Unauthenticated`]) only when it is known to be bad.
//! When the JWKS it needs cannot be had (auth unreachable before the first JWKS, or a `kid`
//! the cached JWKS lacks while auth is unreachable), the answer is
//! [`IdentityError::AuthUnavailable`] (HTTP 503, gRPC `UNAVAILABLE`, a socket closed for the
//! client to reconnect), unless the claims alone already condemn the token (expired, another
//! issuer or audience, malformed).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edge_keys::Verifier;
use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::revocations::Revoked;

/// Why a token was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The token is bad (malformed, bad signature, expired, another issuer or audience,
    /// revoked): Convex's `Unauthenticated`; the client must get another token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token cannot be checked now: the JWKS it needs could not be learnt from auth. Not
    /// the token's fault: the client keeps it and retries.
    #[error("{0}")]
    AuthUnavailable(String),
}

/// The outcome of the last `GetJwks`, shared by every caller within [`REFRESH_INTERVAL`].
struct Attempt {
    at: Instant,
    /// Why it failed (`None`: the JWKS was learnt).
    failure: Option<String>,
}

/// The identity a token stands for. `Anonymous` is one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKey {
    Anonymous,
    /// Canonical JSON of the claims that identify the caller.
    User(String),
}

/// A verified token.
#[derive(Clone)]
pub struct VerifiedUser {
    pub key: IdentityKey,
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds (`iat`; 0 when absent).
    pub issued_at: i64,
    /// The `sessionId` claim Better Auth's tokens carry.
    pub session_id: Option<String>,
    /// The `sub` claim.
    pub subject: Option<String>,
}

/// The token never reaches a log.
impl std::fmt::Debug for VerifiedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedUser")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("session_id", &self.session_id)
            .finish()
    }
}

/// What tokens must carry, and where that came from (for the start-up log and the errors).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    pub issuer: String,
    pub audience: String,
    /// auth's `JWT_ALG` (each key of the JWKS names its own; this is for the log).
    pub alg: String,
    /// `JWT_ISSUER`/`JWT_AUDIENCE` set for this service, or learnt from auth.
    pub configured: bool,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = if self.configured {
            "JWT_ISSUER/JWT_AUDIENCE of the query service"
        } else {
            "learnt from auth"
        };
        write!(
            f,
            "issuer `{}`, audience `{}` ({source})",
            self.issuer, self.audience
        )
    }
}

pub struct Identities {
    auth: AuthServiceClient<Channel>,
    /// `JWT_ISSUER`/`JWT_AUDIENCE` of this service, when set: they win over auth's.
    issuer: Option<String>,
    audience: Option<String>,
    /// What the verifier checks now (empty until the first JWKS).
    expected: RwLock<Expected>,
    verifier: RwLock<Option<Verifier>>,
    /// The last `GetJwks`; held across the call, so concurrent refreshes make one call.
    last_refresh: tokio::sync::Mutex<Option<Attempt>>,
    /// Tokens already verified, until they expire or the JWKS changes: the gateway sends the
    /// same token with every page a session renders, and a signature check is most of a
    /// cached read's work here.
    verified: std::sync::Mutex<HashMap<String, VerifiedUser>>,
    /// Ended sessions and changed users from auth's session log.
    revoked: Arc<Revoked>,
}

/// At most this many verified tokens are remembered; when full, expired ones are dropped and,
/// if that frees nothing, all of them.
const VERIFIED_CAPACITY: usize = 16_384;

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Unknown kids trigger at most one JWKS fetch per this interval (a failed one too: its
/// failure is every caller's answer until then).
const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// How long one `GetJwks` may take: a partition that swallows traffic must not hold requests.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

impl Identities {
    pub fn new(
        auth: AuthServiceClient<Channel>,
        issuer: Option<String>,
        audience: Option<String>,
        revoked: Arc<Revoked>,
    ) -> Self {
        Identities {
            auth,
            issuer,
            audience,
            expected: RwLock::new(Expected::default()),
            verifier: RwLock::new(None),
            last_refresh: tokio::sync::Mutex::new(None),
            verified: std::sync::Mutex::new(HashMap::new()),
            revoked,
        }
    }

    /// Learns the JWKS from auth, at most once per [`REFRESH_INTERVAL`]; concurrent callers
    /// share one call and its outcome. The error says why the JWKS could not be had.
    async fn refresh(&self) -> Result<(), String> {
        let mut last = self.last_refresh.lock().await;
        if let Some(attempt) = last.as_ref()
            && attempt.at.elapsed() < REFRESH_INTERVAL
        {
            return attempt.failure.clone().map_or(Ok(()), Err);
        }
        let outcome = self.fetch_jwks().await;
        *last = Some(Attempt {
            at: Instant::now(),
            failure: outcome.as_ref().err().cloned(),
        });
        outcome
    }

    async fn fetch_jwks(&self) -> Result<(), String> {
        let unanswered = |why: &str| format!("the auth service did not answer for the JWKS: {why}");
        let answer = tokio::time::timeout(
            JWKS_TIMEOUT,
            self.auth.clone().get_jwks(pb::GetJwksRequest {}),
        )
        .await
        .map_err(|_| unanswered(&format!("no answer within {JWKS_TIMEOUT:?}")))?
        .map_err(|e| unanswered(e.message()))?
        .into_inner();
        let expected = self.expected_from(&answer)?;
        let verifier = Verifier::from_jwks(&answer.jwks_json)
            .map_err(|e| e.to_string())?
            .with_issuer(expected.issuer.clone())
            .with_audience(expected.audience.clone());
        {
            let mut current = self.expected.write().unwrap_or_else(|e| e.into_inner());
            if *current != expected {
                tracing::info!(
                    issuer = %expected.issuer,
                    audience = %expected.audience,
                    alg = %expected.alg,
                    configured = expected.configured,
                    "verifying tokens for {expected}"
                );
                *current = expected;
            }
        }
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(verifier);
        // A key may have been withdrawn: what it verified is checked again.
        self.verified_tokens().clear();
        Ok(())
    }

    /// What tokens must carry: this service's `JWT_ISSUER`/`JWT_AUDIENCE` when set (with a
    /// warning when they differ from what auth signs, as every token would then be refused),
    /// else auth's.
    fn expected_from(&self, answer: &pb::GetJwksResponse) -> Result<Expected, String> {
        let configured = self.issuer.is_some() || self.audience.is_some();
        let pick = |mine: &Option<String>, auths: &str, name: &str| match mine {
            Some(mine) => {
                if !auths.is_empty() && auths != mine {
                    tracing::warn!(
                        "{name} `{mine}` set for the query service differs from auth's `{auths}`: every token auth issues will be refused"
                    );
                }
                Ok(mine.clone())
            }
            None if auths.is_empty() => Err(format!(
                "auth did not say its {name} (an older auth?): set {name} for the query service"
            )),
            None => Ok(auths.to_owned()),
        };
        Ok(Expected {
            issuer: pick(&self.issuer, &answer.issuer, "JWT_ISSUER")?,
            audience: pick(&self.audience, &answer.audience, "JWT_AUDIENCE")?,
            alg: answer.alg.clone(),
            configured,
        })
    }

    /// Fetches the JWKS (and what tokens must carry) now, for the start-up log.
    pub async fn learn(&self) -> Result<Expected, String> {
        self.refresh().await?;
        Ok(self
            .expected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// A verifier without keys that checks what tokens must carry, as far as it is known:
    /// `JWT_ISSUER`/`JWT_AUDIENCE` of this service, else what auth said last, else only the
    /// claims every token needs (`exp`, `nbf`, `sub`, `iss`).
    fn claims_checker(&self) -> Verifier {
        let expected = self.expected.read().unwrap_or_else(|e| e.into_inner());
        let known = |mine: &Option<String>, learnt: &str| {
            mine.clone()
                .or_else(|| (!learnt.is_empty()).then(|| learnt.to_owned()))
        };
        let mut checker = Verifier::default();
        if let Some(issuer) = known(&self.issuer, &expected.issuer) {
            checker = checker.with_issuer(issuer);
        }
        if let Some(audience) = known(&self.audience, &expected.audience) {
            checker = checker.with_audience(audience);
        }
        checker
    }

    fn verified_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifiedUser>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies `token`, and that auth's session log has not revoked it; the error's message
    /// is what the client is told.
    pub async fn verify(&self, token: &str) -> Result<VerifiedUser, IdentityError> {
        let user = self.verify_signature_cached(token).await?;
        let refused = self.revoked.refuses(
            user.session_id.as_deref(),
            user.subject.as_deref(),
            user.issued_at,
        );
        match refused {
            Some(reason) => Err(IdentityError::Unauthenticated(reason.to_owned())),
            None => Ok(user),
        }
    }

    async fn verify_signature_cached(&self, token: &str) -> Result<VerifiedUser, IdentityError> {
        let now = unix_now();
        if let Some(user) = self.verified_tokens().get(token)
            && user.expires_at > now
        {
            return Ok(user.clone());
        }
        let user = self.verify_signature(token, now).await?;
        let mut verified = self.verified_tokens();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, u| u.expires_at > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), user.clone());
        Ok(user)
    }

    async fn verify_signature(&self, token: &str, now: i64) -> Result<VerifiedUser, IdentityError> {
        let refused = |e: edge_keys::VerifyError| {
            IdentityError::Unauthenticated(match e {
                // Name what was expected, so a mismatch between services is diagnosable.
                edge_keys::VerifyError::WrongIssuer | edge_keys::VerifyError::WrongAudience => {
                    let expected = self.expected.read().unwrap_or_else(|e| e.into_inner());
                    format!("Could not verify token: {e} (expected {expected})")
                }
                e => format!("Could not verify token: {e}"),
            })
        };
        let kid = kid_of(token)
            .ok_or_else(|| IdentityError::Unauthenticated("Could not parse JWT".into()))?;
        let known = self
            .verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|v| v.has_kid(&kid));
        if !known && let Err(why) = self.refresh().await {
            // Whether the signature holds cannot be known; what the claims say can.
            self.claims_checker()
                .check_unverified_claims(token, now)
                .map_err(refused)?;
            return Err(IdentityError::AuthUnavailable(format!(
                "Could not verify token now, retry: {why}"
            )));
        }
        let verified = {
            let guard = self.verifier.read().unwrap_or_else(|e| e.into_inner());
            let verifier = guard.as_ref().ok_or_else(|| {
                IdentityError::AuthUnavailable("Could not verify token now, retry: no JWKS".into())
            })?;
            verifier.verify(token, now).map_err(refused)?
        };
        let mut claims = verified.claims;
        let expires_at = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let issued_at = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let (session_id, subject) = (text("sessionId"), text("sub"));
        for volatile in ["iat", "exp", "nbf", "jti"] {
            claims.remove(volatile);
        }
        let key = IdentityKey::User(edge_convex::value::canonical_string(&Value::Object(claims)));
        Ok(VerifiedUser {
            key,
            token: token.to_owned(),
            expires_at,
            issued_at,
            session_id,
            subject,
        })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn kid_of(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

//! Better Auth's built-in providers (`@better-auth/core/social-providers`): Google, GitHub,
//! Apple, Microsoft Entra ID and Discord, each with its endpoints, default scopes, quirks of
//! the authorization URL and code exchange, ID token rules and profile mapping; and the
//! same rules for a generic OpenID provider where they differ by kind.

use serde_json::{Map, Value};

use super::config::{Kind, ProviderConfig};
use super::provider::{
    Discovered, HTTP_TIMEOUT, Provider, ProviderError, ProviderUser, Tokens, decode_claims, string,
    string_bool,
};

/// Endpoints of a built-in provider, its own or the configured overrides.
pub fn endpoints(c: &ProviderConfig) -> Discovered {
    let ms = format!("{}/{}", c.authority, c.tenant);
    let (authorization, token, userinfo, jwks): (String, String, Option<&str>, Option<String>) =
        match c.kind {
            Kind::Google => (
                "https://accounts.google.com/o/oauth2/v2/auth".into(),
                "https://oauth2.googleapis.com/token".into(),
                None,
                Some("https://www.googleapis.com/oauth2/v3/certs".into()),
            ),
            Kind::GitHub => (
                "https://github.com/login/oauth/authorize".into(),
                "https://github.com/login/oauth/access_token".into(),
                Some("https://api.github.com/user"),
                None,
            ),
            Kind::Apple => (
                "https://appleid.apple.com/auth/authorize".into(),
                "https://appleid.apple.com/auth/token".into(),
                None,
                Some("https://appleid.apple.com/auth/keys".into()),
            ),
            Kind::Microsoft => (
                format!("{ms}/oauth2/v2.0/authorize"),
                format!("{ms}/oauth2/v2.0/token"),
                None,
                Some(format!("{ms}/discovery/v2.0/keys")),
            ),
            Kind::Discord => (
                "https://discord.com/api/oauth2/authorize".into(),
                "https://discord.com/api/oauth2/token".into(),
                Some("https://discord.com/api/users/@me"),
                None,
            ),
            Kind::Generic => unreachable!("generic providers are discovered"),
        };
    let e = &c.endpoints;
    Discovered {
        // Better Auth checks a callback's `iss` only for providers that name an issuer:
        // none of the built-in ones do.
        issuer: None,
        authorization_endpoint: e.authorization.clone().unwrap_or(authorization),
        token_endpoint: e.token.clone().unwrap_or(token),
        userinfo_endpoint: e.userinfo.clone().or(userinfo.map(str::to_owned)),
        jwks_uri: e.jwks.clone().or(jwks),
        signing_algs: Vec::new(),
    }
}

/// The scopes of an authorization URL, in Better Auth's order for the provider: its defaults,
/// the configured ones and the body's (Discord: the body's before the configured ones).
pub fn scopes(c: &ProviderConfig, d: &Discovered, body: &[String]) -> Vec<String> {
    let defaults: &[&str] = match c.kind {
        Kind::Google => &["email", "profile", "openid"],
        Kind::GitHub => &["read:user", "user:email"],
        Kind::Apple => &["email", "name"],
        Kind::Microsoft => &["openid", "profile", "email", "User.Read", "offline_access"],
        Kind::Discord => &["identify", "email"],
        Kind::Generic => {
            let mut merged: Vec<String> = body.iter().chain(c.scopes.iter()).cloned().collect();
            if d.is_oidc() && !merged.iter().any(|s| s == "openid") {
                merged.insert(0, "openid".into());
            }
            return merged;
        }
    };
    let mut out: Vec<String> = defaults.iter().map(|s| (*s).to_owned()).collect();
    if c.kind == Kind::Discord {
        out.extend(body.iter().cloned());
        out.extend(c.scopes.iter().cloned());
    } else {
        out.extend(c.scopes.iter().cloned());
        out.extend(body.iter().cloned());
    }
    out
}

/// What differs between providers' authorization URLs and code exchanges.
pub struct Extras {
    pub response_type: &'static str,
    pub prompt: Option<&'static str>,
    pub response_mode: Option<&'static str>,
    /// PKCE S256 (Discord's provider sends none).
    pub pkce: bool,
    pub params: &'static [(&'static str, &'static str)],
}

pub fn authorization_extras(kind: Kind) -> Extras {
    let plain = Extras {
        response_type: "code",
        prompt: None,
        response_mode: None,
        pkce: true,
        params: &[],
    };
    match kind {
        Kind::Google => Extras {
            params: &[("include_granted_scopes", "true")],
            ..plain
        },
        Kind::Discord => Extras {
            prompt: Some("none"),
            pkce: false,
            ..plain
        },
        Kind::Apple => Extras {
            response_type: "code id_token",
            response_mode: Some("form_post"),
            ..plain
        },
        _ => plain,
    }
}

/// How an ID token of this provider is checked (Better Auth's `idToken` options).
pub struct IdTokenRules {
    /// Accepted `iss` values (none: any).
    pub issuers: Vec<String>,
    pub audience: String,
    /// Accepted header algorithms (none: any this crate verifies).
    pub algorithms: Vec<String>,
    /// `maxTokenAge`: the longest since `iat`, seconds.
    pub max_age_seconds: Option<i64>,
    /// Apple's `nonceComparison: "exact-or-sha256"`.
    pub nonce_sha256: bool,
}

pub fn id_token_rules(c: &ProviderConfig, d: &Discovered) -> IdTokenRules {
    let rs256 = vec!["RS256".to_owned()];
    match c.kind {
        Kind::Generic => IdTokenRules {
            issuers: d.issuer.iter().cloned().collect(),
            audience: c.client_id.clone(),
            algorithms: d.signing_algs.clone(),
            max_age_seconds: None,
            nonce_sha256: false,
        },
        Kind::Google => IdTokenRules {
            issuers: vec![
                "https://accounts.google.com".into(),
                "accounts.google.com".into(),
            ],
            audience: c.client_id.clone(),
            algorithms: rs256,
            max_age_seconds: Some(3600),
            nonce_sha256: false,
        },
        Kind::Apple => IdTokenRules {
            issuers: vec!["https://appleid.apple.com".into()],
            audience: c.audience.clone().unwrap_or_else(|| c.client_id.clone()),
            algorithms: rs256,
            max_age_seconds: Some(3600),
            nonce_sha256: true,
        },
        Kind::Microsoft => {
            let specific = !matches!(c.tenant.as_str(), "common" | "organizations" | "consumers");
            IdTokenRules {
                issuers: if specific {
                    vec![format!("{}/{}/v2.0", c.authority, c.tenant)]
                } else {
                    Vec::new()
                },
                audience: c.client_id.clone(),
                algorithms: rs256,
                max_age_seconds: Some(3600),
                nonce_sha256: false,
            }
        }
        // No ID tokens: `supports_id_token` keeps them out.
        Kind::GitHub | Kind::Discord => IdTokenRules {
            issuers: vec!["-".into()],
            audience: c.client_id.clone(),
            algorithms: rs256,
            max_age_seconds: Some(0),
            nonce_sha256: false,
        },
    }
}

/// The personal Microsoft account tenant.
const MICROSOFT_CONSUMER_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Microsoft's `verifyClaims`: `iss` must be the token's own tenant's, and a tenant of
/// `organizations`/`consumers` admits only work or only personal accounts.
pub fn verify_claims(c: &ProviderConfig, claims: &Map<String, Value>) -> bool {
    if c.kind != Kind::Microsoft {
        return true;
    }
    let Some(tid) = claims.get("tid").and_then(Value::as_str) else {
        return false;
    };
    if claims.get("iss").and_then(Value::as_str)
        != Some(format!("{}/{tid}/v2.0", c.authority).as_str())
    {
        return false;
    }
    match c.tenant.as_str() {
        "organizations" => tid != MICROSOFT_CONSUMER_TENANT_ID,
        "consumers" => tid == MICROSOFT_CONSUMER_TENANT_ID,
        _ => true,
    }
}

/// Whether `sign-in/social` takes an ID token for this provider (`supportsIdTokenSignIn`).
pub fn supports_id_token(c: &ProviderConfig, d: &Discovered) -> bool {
    match c.kind {
        Kind::Generic => d.verifies_id_tokens(),
        Kind::Google | Kind::Apple | Kind::Microsoft => d.jwks_uri.is_some(),
        Kind::GitHub | Kind::Discord => false,
    }
}

fn user(account_id: Option<String>, raw: &Map<String, Value>) -> Option<ProviderUser> {
    let account_id = account_id.filter(|s| !s.trim().is_empty())?;
    Some(ProviderUser {
        account_id,
        email: string(raw.get("email")),
        email_verified: string_bool(raw.get("emailVerified")).unwrap_or(false),
        name: string(raw.get("name")).unwrap_or_default(),
        image: string(raw.get("image")),
    })
}

/// The user a built-in provider vouches for after a code exchange, or from an ID token
/// alone (`sign-in/social` with `idToken`; Apple's `user` from its form post either way).
pub async fn user_info(
    p: &Provider,
    d: &Discovered,
    tokens: &Tokens,
    _nonce: Option<&str>,
) -> Result<Option<ProviderUser>, ProviderError> {
    let claims = || tokens.id_token.as_deref().and_then(decode_claims);
    match p.config.kind {
        Kind::Google => {
            let Some(c) = claims() else { return Ok(None) };
            let mut raw = Map::new();
            raw.insert("email".into(), c.get("email").cloned().unwrap_or_default());
            raw.insert(
                "emailVerified".into(),
                c.get("email_verified").cloned().unwrap_or_default(),
            );
            raw.insert("name".into(), c.get("name").cloned().unwrap_or_default());
            raw.insert(
                "image".into(),
                c.get("picture").cloned().unwrap_or_default(),
            );
            Ok(user(string(c.get("sub")), &raw))
        }
        Kind::Apple => {
            let Some(c) = claims() else { return Ok(None) };
            let from_user = tokens
                .user
                .as_ref()
                .and_then(|u| u.get("name"))
                .filter(|n| n.is_object())
                .map(|n| {
                    let part = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or_default();
                    format!("{} {}", part("firstName"), part("lastName"))
                        .trim()
                        .to_owned()
                });
            let name = from_user.unwrap_or_else(|| string(c.get("name")).unwrap_or_default());
            let mut raw = Map::new();
            raw.insert("email".into(), c.get("email").cloned().unwrap_or_default());
            raw.insert(
                "emailVerified".into(),
                Value::Bool(string_bool(c.get("email_verified")).unwrap_or(false)),
            );
            raw.insert("name".into(), Value::String(name));
            Ok(user(string(c.get("sub")), &raw))
        }
        Kind::Microsoft => {
            let Some(c) = claims() else { return Ok(None) };
            let email = string(c.get("email"));
            let listed = |k: &str| {
                email.as_ref().is_some_and(|e| match c.get(k) {
                    Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(e)),
                    Some(Value::String(s)) => s.contains(e.as_str()),
                    _ => false,
                })
            };
            let verified = match c.get("email_verified") {
                Some(v) => string_bool(Some(v)).unwrap_or(false),
                None => listed("verified_primary_email") || listed("verified_secondary_email"),
            };
            let mut raw = Map::new();
            raw.insert("email".into(), c.get("email").cloned().unwrap_or_default());
            raw.insert("emailVerified".into(), Value::Bool(verified));
            raw.insert("name".into(), c.get("name").cloned().unwrap_or_default());
            raw.insert(
                "image".into(),
                c.get("picture").cloned().unwrap_or_default(),
            );
            Ok(user(string(c.get("oid")), &raw))
        }
        Kind::GitHub => {
            let (Some(endpoint), Some(access)) = (&d.userinfo_endpoint, &tokens.access_token)
            else {
                return Ok(None);
            };
            let get = |url: String| {
                p.http
                    .get(url)
                    .header(reqwest::header::USER_AGENT, "better-auth")
                    .bearer_auth(access)
                    .timeout(HTTP_TIMEOUT)
                    .send()
            };
            let response = get(endpoint.clone()).await?;
            if !response.status().is_success() {
                return Ok(None);
            }
            let profile: Map<String, Value> = response.json().await?;
            let emails: Vec<Value> = match get(format!("{endpoint}/emails")).await {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                _ => Vec::new(),
            };
            let email = string(profile.get("email"))
                .filter(|e| !e.is_empty())
                .or_else(|| {
                    emails
                        .iter()
                        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
                        .or(emails.first())
                        .and_then(|e| string(e.get("email")))
                });
            let verified = emails
                .iter()
                .find(|e| email.is_some() && string(e.get("email")) == email)
                .and_then(|e| e.get("verified"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let name = string(profile.get("name"))
                .filter(|n| !n.is_empty())
                .or_else(|| string(profile.get("login")))
                .unwrap_or_default();
            let mut raw = Map::new();
            raw.insert("email".into(), email.map(Value::String).unwrap_or_default());
            raw.insert("emailVerified".into(), Value::Bool(verified));
            raw.insert("name".into(), Value::String(name));
            raw.insert(
                "image".into(),
                profile.get("avatar_url").cloned().unwrap_or_default(),
            );
            Ok(user(string(profile.get("id")), &raw))
        }
        Kind::Discord => {
            let Some(profile) = p.fetch_userinfo(d, tokens).await? else {
                return Ok(None);
            };
            let id = string(profile.get("id")).unwrap_or_default();
            let image = match profile.get("avatar").and_then(Value::as_str) {
                Some(avatar) => {
                    let format = if avatar.starts_with("a_") {
                        "gif"
                    } else {
                        "png"
                    };
                    format!("https://cdn.discordapp.com/avatars/{id}/{avatar}.{format}")
                }
                None => {
                    let discriminator =
                        string(profile.get("discriminator")).unwrap_or_else(|| "0".into());
                    let index = if discriminator == "0" {
                        id.parse::<u64>().map(|n| (n >> 22) % 6).unwrap_or(0)
                    } else {
                        discriminator.parse::<u64>().map(|n| n % 5).unwrap_or(0)
                    };
                    format!("https://cdn.discordapp.com/embed/avatars/{index}.png")
                }
            };
            let name = string(profile.get("global_name"))
                .filter(|n| !n.is_empty())
                .or_else(|| string(profile.get("username")))
                .unwrap_or_default();
            let mut raw = Map::new();
            raw.insert(
                "email".into(),
                profile.get("email").cloned().unwrap_or_default(),
            );
            raw.insert(
                "emailVerified".into(),
                profile.get("verified").cloned().unwrap_or_default(),
            );
            raw.insert("name".into(), Value::String(name));
            raw.insert("image".into(), Value::String(image));
            Ok(user(Some(id), &raw))
        }
        Kind::Generic => unreachable!("generic providers map their own users"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str) -> ProviderConfig {
        ProviderConfig {
            id: id.into(),
            kind: Kind::of(id),
            client_id: "client".into(),
            client_secret: "secret".into(),
            discovery_url: String::new(),
            endpoints: Default::default(),
            tenant: "common".into(),
            authority: "https://login.microsoftonline.com".into(),
            audience: None,
            scopes: vec!["extra".into()],
        }
    }

    #[test]
    fn built_in_scopes_are_in_better_auths_order() {
        let body = ["asked".to_owned()];
        let d = endpoints(&config("github"));
        assert_eq!(
            scopes(&config("github"), &d, &body),
            ["read:user", "user:email", "extra", "asked"]
        );
        assert_eq!(
            scopes(&config("discord"), &d, &body),
            ["identify", "email", "asked", "extra"]
        );
        assert_eq!(
            endpoints(&config("microsoft")).token_endpoint,
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
    }

    #[test]
    fn microsoft_tokens_must_come_from_their_own_tenant() {
        let c = config("microsoft");
        let claims = |iss: &str, tid: &str| {
            serde_json::json!({"iss": iss, "tid": tid})
                .as_object()
                .unwrap()
                .clone()
        };
        assert!(verify_claims(
            &c,
            &claims("https://login.microsoftonline.com/t1/v2.0", "t1")
        ));
        assert!(!verify_claims(
            &c,
            &claims("https://login.microsoftonline.com/t2/v2.0", "t1")
        ));
    }
}

//! Social provider settings from the environment: `AUTH_SOCIAL_PROVIDERS` and the
//! `AUTH_<ID>_*` variables of each provider.

use edge_telemetry::ConfigError;

/// Which of Better Auth's providers this is: its built-in ones by their ids, or a generic
/// OpenID provider (genericOAuth) for any other id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generic,
    Google,
    GitHub,
    Apple,
    Microsoft,
    Discord,
}

impl Kind {
    pub fn of(id: &str) -> Kind {
        match id {
            "google" => Kind::Google,
            "github" => Kind::GitHub,
            "apple" => Kind::Apple,
            "microsoft" => Kind::Microsoft,
            "discord" => Kind::Discord,
            _ => Kind::Generic,
        }
    }
}

/// Endpoint overrides of a built-in provider (`AUTH_<ID>_AUTHORIZATION_URL`, `_TOKEN_URL`,
/// `_USERINFO_URL`, `_JWKS_URL`): stand-ins in tests, regional or proxied endpoints in
/// production. Unset: the provider's own, as Better Auth names them.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub authorization: Option<String>,
    pub token: Option<String>,
    pub userinfo: Option<String>,
    pub jwks: Option<String>,
}

/// One configured provider. `Debug` leaves the client secret out.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Better Auth's provider id (`providerId` of its `account` rows, `:id` of the callback).
    pub id: String,
    pub kind: Kind,
    pub client_id: String,
    pub client_secret: String,
    /// An OpenID provider's discovery document (`…/.well-known/openid-configuration`);
    /// empty for built-in providers.
    pub discovery_url: String,
    pub endpoints: Endpoints,
    /// Microsoft: `AUTH_MICROSOFT_TENANT_ID` (`common`) under `AUTH_MICROSOFT_AUTHORITY`
    /// (`https://login.microsoftonline.com`).
    pub tenant: String,
    pub authority: String,
    /// Apple: the ID token audience for sign-in with an ID token from an app
    /// (`AUTH_APPLE_APP_BUNDLE_IDENTIFIER`); the client id otherwise.
    pub audience: Option<String>,
    /// Scopes always asked for (`AUTH_<ID>_SCOPES`, space or comma separated); the body's
    /// `scopes` come first, and `openid` is added for OpenID providers, as genericOAuth does.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("discovery_url", &self.discovery_url)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// A provider of kind [`Kind::of`] `id`, with the defaults `from_env` gives (generic ones
    /// ask for `openid email profile`); tests and embedders set the rest.
    pub fn new(id: &str, client_id: &str, client_secret: &str) -> Self {
        let kind = Kind::of(id);
        ProviderConfig {
            id: id.to_owned(),
            kind,
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            discovery_url: String::new(),
            endpoints: Endpoints::default(),
            tenant: "common".into(),
            authority: "https://login.microsoftonline.com".into(),
            audience: None,
            scopes: if kind == Kind::Generic {
                vec!["openid".into(), "email".into(), "profile".into()]
            } else {
                Vec::new()
            },
        }
    }

    /// `AUTH_<ID>_…`: the id upper-cased with `-` and `.` as `_`.
    pub fn var(id: &str, suffix: &str) -> String {
        let id: String = id
            .chars()
            .map(|c| match c {
                '-' | '.' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        format!("AUTH_{id}_{suffix}")
    }
}

fn leak(s: String) -> &'static str {
    // Configuration errors name their variable as a static string; parsed once per process.
    Box::leak(s.into_boxed_str())
}

/// Reads `AUTH_SOCIAL_PROVIDERS` and each provider's variables.
pub fn from_env(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Vec<ProviderConfig>, Vec<String>), ConfigError> {
    // A comma-separated list of ids.
    let ids_of = |var: &str| -> Vec<String> {
        get(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let ids = ids_of("AUTH_SOCIAL_PROVIDERS");
    let mut providers = Vec::with_capacity(ids.len());
    for id in ids {
        let valid = id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ConfigError::new(
                "AUTH_SOCIAL_PROVIDERS",
                format!("`{id}` is not a provider id (letters, digits, `-`, `_`, `.`)"),
            ));
        }
        if providers.iter().any(|p: &ProviderConfig| p.id == id) {
            return Err(ConfigError::new(
                "AUTH_SOCIAL_PROVIDERS",
                format!("`{id}` is listed twice"),
            ));
        }
        let required = |suffix: &str| {
            let var = ProviderConfig::var(&id, suffix);
            get(&var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::new(leak(var), "required for this provider"))
        };
        let kind = Kind::of(&id);
        let client_id = required("CLIENT_ID")?;
        // Microsoft may run without a secret (a public client); every other needs one.
        let client_secret = if kind == Kind::Microsoft {
            get(&ProviderConfig::var(&id, "CLIENT_SECRET")).unwrap_or_default()
        } else {
            required("CLIENT_SECRET")?
        };
        let discovery_url = if kind == Kind::Generic {
            required("DISCOVERY_URL")?
        } else {
            String::new()
        };
        let url_var = |suffix: &str| -> Result<Option<String>, ConfigError> {
            let var = ProviderConfig::var(&id, suffix);
            match get(&var).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match url::Url::parse(&v) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(v)),
                    _ => Err(ConfigError::new(leak(var), "expected an http(s) URL")),
                },
            }
        };
        if kind == Kind::Generic {
            url_var("DISCOVERY_URL")?;
        }
        let endpoints = Endpoints {
            authorization: url_var("AUTHORIZATION_URL")?,
            token: url_var("TOKEN_URL")?,
            userinfo: url_var("USERINFO_URL")?,
            jwks: url_var("JWKS_URL")?,
        };
        let scopes = match get(&ProviderConfig::var(&id, "SCOPES")) {
            Some(s) => s
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            // genericOAuth asks for what it is configured with; built-ins have their own
            // defaults and take these as extra scopes.
            None if kind == Kind::Generic => {
                vec!["openid".into(), "email".into(), "profile".into()]
            }
            None => Vec::new(),
        };
        let tenant = get("AUTH_MICROSOFT_TENANT_ID")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "common".into());
        let authority = url_var("AUTHORITY")?
            .unwrap_or_else(|| "https://login.microsoftonline.com".into())
            .trim_end_matches('/')
            .to_owned();
        let audience = get("AUTH_APPLE_APP_BUNDLE_IDENTIFIER").filter(|v| !v.is_empty());
        providers.push(ProviderConfig {
            id,
            kind,
            client_id,
            client_secret,
            discovery_url,
            endpoints,
            tenant,
            authority,
            audience,
            scopes,
        });
    }
    Ok((providers, ids_of("AUTH_TRUSTED_PROVIDERS")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn providers_need_their_variables_and_name_the_missing_one() {
        let e = from_env(&env(&[("AUTH_SOCIAL_PROVIDERS", "acme-id")])).unwrap_err();
        assert_eq!(e.var, "AUTH_ACME_ID_CLIENT_ID");
        let e = from_env(&env(&[("AUTH_SOCIAL_PROVIDERS", "github")])).unwrap_err();
        assert_eq!(e.var, "AUTH_GITHUB_CLIENT_ID");
        let e = from_env(&env(&[
            ("AUTH_SOCIAL_PROVIDERS", "github"),
            ("AUTH_GITHUB_CLIENT_ID", "id"),
            ("AUTH_GITHUB_CLIENT_SECRET", "secret"),
            ("AUTH_GITHUB_TOKEN_URL", "ftp://x"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "AUTH_GITHUB_TOKEN_URL");
        let (p, trusted) = from_env(&env(&[
            ("AUTH_SOCIAL_PROVIDERS", "acme"),
            ("AUTH_ACME_CLIENT_ID", "id"),
            ("AUTH_ACME_CLIENT_SECRET", "secret"),
            (
                "AUTH_ACME_DISCOVERY_URL",
                "https://idp.example/.well-known/openid-configuration",
            ),
            ("AUTH_TRUSTED_PROVIDERS", "acme"),
        ]))
        .unwrap();
        assert_eq!(p[0].id, "acme");
        assert_eq!(p[0].scopes, ["openid", "email", "profile"]);
        assert_eq!(trusted, ["acme"]);
    }
}

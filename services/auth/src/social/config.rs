//! Social provider settings from the environment: `AUTH_SOCIAL_PROVIDERS` and the
//! `AUTH_<ID>_*` variables of each provider.

use edge_telemetry::ConfigError;

/// One configured provider. `Debug` leaves the client secret out.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Better Auth's provider id (`providerId` of its `account` rows, `:id` of the callback).
    pub id: String,
    pub client_id: String,
    pub client_secret: String,
    /// An OpenID provider's discovery document (`…/.well-known/openid-configuration`).
    pub discovery_url: String,
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

/// Names Better Auth gives its built-in providers; convex-edge does not serve them yet, so
/// naming one is a configuration error rather than a silently broken button.
const BUILT_IN: &[&str] = &["google", "github", "apple", "microsoft", "discord"];

fn leak(s: String) -> &'static str {
    // Configuration errors name their variable as a static string; parsed once per process.
    Box::leak(s.into_boxed_str())
}

/// Reads `AUTH_SOCIAL_PROVIDERS` and each provider's variables.
pub fn from_env(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Vec<ProviderConfig>, Vec<String>), ConfigError> {
    let ids: Vec<String> = get("AUTH_SOCIAL_PROVIDERS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
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
        if BUILT_IN.contains(&id.as_str()) {
            return Err(ConfigError::new(
                "AUTH_SOCIAL_PROVIDERS",
                format!(
                    "built-in provider `{id}` is not served yet; configure it as a generic OpenID provider under another id"
                ),
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
        let client_id = required("CLIENT_ID")?;
        let client_secret = required("CLIENT_SECRET")?;
        let discovery_url = required("DISCOVERY_URL")?;
        match url::Url::parse(&discovery_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(ConfigError::new(
                    leak(ProviderConfig::var(&id, "DISCOVERY_URL")),
                    "expected an http(s) URL",
                ));
            }
        }
        let scopes = get(&ProviderConfig::var(&id, "SCOPES"))
            .map(|s| {
                s.split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        providers.push(ProviderConfig {
            id,
            client_id,
            client_secret,
            discovery_url,
            scopes,
        });
    }
    let trusted = get("AUTH_TRUSTED_PROVIDERS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((providers, trusted))
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
        assert_eq!(e.var, "AUTH_SOCIAL_PROVIDERS");
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

//! Mail for password reset and email verification: SMTP through `lettre` (rustls, the
//! service's trust store), or the log in `dev` when no `SMTP_URL` is set.
//!
//! Bodies come from templates (minijinja): `reset-password.txt`/`.html` and
//! `verify-email.txt`/`.html`, compiled in, each overridable by a file of the same name in
//! `AUTH_EMAIL_TEMPLATES_DIR`. Templates see `url`, `user` (`name`, `email`), `email` (the
//! address the mail goes to) and `expires_minutes`.

use std::path::{Path, PathBuf};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

/// How mail leaves the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailMode {
    /// No mail: routes that need it answer as Better Auth does without a sender.
    Off,
    /// `dev` without `SMTP_URL`: the link goes to the log.
    Log,
    /// `SMTP_URL`.
    Smtp(SmtpUrl),
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte (port 465 by default).
    Implicit,
    /// `smtp://`: STARTTLS, required (port 587 by default).
    StartTls,
    /// `smtp://…?tls=none`: plain text, for a relay on the same host or network.
    None,
}

/// A parsed `SMTP_URL`: `smtp://[user:password@]host[:port][?tls=none]` or `smtps://…`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::str::FromStr for SmtpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        let mut security = match url.scheme() {
            "smtps" => SmtpSecurity::Implicit,
            "smtp" => SmtpSecurity::StartTls,
            other => return Err(format!("expected smtp:// or smtps://, got `{other}://`")),
        };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref(), security) {
                ("tls", "none", SmtpSecurity::StartTls) => security = SmtpSecurity::None,
                ("tls", "required" | "starttls", SmtpSecurity::StartTls) => {}
                _ => return Err(format!("unknown parameter `{key}={value}`")),
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("a host is required")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(match security {
            SmtpSecurity::Implicit => 465,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::None => 25,
        });
        let decode =
            |v: &str| percent_decode(v).ok_or("credentials are not valid percent-encoded UTF-8");
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((decode(user)?, decode(password.unwrap_or(""))?)),
        };
        Ok(SmtpUrl {
            host,
            port,
            security,
            credentials,
        })
    }
}

fn percent_decode(v: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={}", v.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The mail settings of [`crate::Config`].
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub mode: MailMode,
    /// `EMAIL_FROM`: the sender, `Name <address>` or a bare address.
    pub from: String,
    /// `AUTH_EMAIL_TEMPLATES_DIR`: files here replace the compiled-in templates.
    pub templates_dir: Option<PathBuf>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            mode: MailMode::Off,
            from: "convex-edge <no-reply@localhost>".into(),
            templates_dir: None,
        }
    }
}

/// Which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    ResetPassword,
    VerifyEmail,
}

impl MailKind {
    fn template(self) -> &'static str {
        match self {
            MailKind::ResetPassword => "reset-password",
            MailKind::VerifyEmail => "verify-email",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            MailKind::ResetPassword => "Reset your password",
            MailKind::VerifyEmail => "Verify your email address",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("template {name}: {source}")]
    Template {
        name: String,
        source: minijinja::Error,
    },
    #[error("failed to read template {path}: {source}")]
    TemplateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("message: {0}")]
    Message(#[from] lettre::error::Error),
}

const DEFAULT_TEMPLATES: &[(&str, &str)] = &[
    (
        "reset-password.txt",
        include_str!("../templates/reset-password.txt"),
    ),
    (
        "reset-password.html",
        include_str!("../templates/reset-password.html"),
    ),
    (
        "verify-email.txt",
        include_str!("../templates/verify-email.txt"),
    ),
    (
        "verify-email.html",
        include_str!("../templates/verify-email.html"),
    ),
];

enum Sender {
    Off,
    Log,
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// Renders and sends the service's mail.
pub struct Mailer {
    sender: Sender,
    from: Mailbox,
    templates: minijinja::Environment<'static>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.sender {
            Sender::Off => "Mailer::Off",
            Sender::Log => "Mailer::Log",
            Sender::Smtp(_) => "Mailer::Smtp",
        })
    }
}

/// The templates: compiled-in defaults, each replaced by a file in `dir` when it has one.
fn load_templates(dir: Option<&Path>) -> Result<minijinja::Environment<'static>, MailError> {
    let mut env = minijinja::Environment::new();
    for (name, default) in DEFAULT_TEMPLATES {
        let source = match dir.map(|d| d.join(name)) {
            Some(path) if path.exists() => std::fs::read_to_string(&path)
                .map_err(|source| MailError::TemplateFile { path, source })?,
            _ => (*default).to_owned(),
        };
        env.add_template_owned(*name, source)
            .map_err(|source| MailError::Template {
                name: (*name).to_owned(),
                source,
            })?;
    }
    Ok(env)
}

/// PEM certificates of a bundle, one by one.
fn pem_certificates(bundle: &[u8]) -> Vec<Vec<u8>> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(bundle);
    text.split_inclusive(END)
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(|c| c.trim().as_bytes().to_vec())
        .collect()
}

impl Mailer {
    /// Builds the sender (no connection is made until the first message) and loads the
    /// templates; TLS trusts `trust` (the OS roots plus `SSL_CERT_FILE`).
    pub fn new(config: &MailConfig, trust: &edge_tls::Trust) -> Result<Mailer, MailError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| MailError::Address(format!("EMAIL_FROM: {e}")))?;
        let sender = match &config.mode {
            MailMode::Off => Sender::Off,
            MailMode::Log => Sender::Log,
            MailMode::Smtp(url) => {
                let tls = || -> Result<TlsParameters, MailError> {
                    let mut builder = TlsParameters::builder(url.host.clone())
                        .certificate_store(CertificateStore::None);
                    for pem in pem_certificates(&trust.pem_bundle()) {
                        if let Ok(cert) = Certificate::from_pem(&pem) {
                            builder = builder.add_root_certificate(cert);
                        }
                    }
                    Ok(builder.build_rustls()?)
                };
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(url.host.as_str())
                        .port(url.port)
                        .tls(match url.security {
                            SmtpSecurity::Implicit => Tls::Wrapper(tls()?),
                            SmtpSecurity::StartTls => Tls::Required(tls()?),
                            SmtpSecurity::None => Tls::None,
                        })
                        .timeout(Some(std::time::Duration::from_secs(20)));
                if let Some((user, password)) = &url.credentials {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Sender::Smtp(builder.build())
            }
        };
        Ok(Mailer {
            sender,
            from,
            templates: load_templates(config.templates_dir.as_deref())?,
        })
    }

    /// Whether mail can be sent (SMTP or the dev log).
    pub fn enabled(&self) -> bool {
        !matches!(self.sender, Sender::Off)
    }

    fn render(&self, kind: MailKind, ext: &str, context: &Value) -> Result<String, MailError> {
        let name = format!("{}.{ext}", kind.template());
        let wrap = |source| MailError::Template {
            name: name.clone(),
            source,
        };
        self.templates
            .get_template(&name)
            .map_err(wrap)?
            .render(context)
            .map_err(wrap)
    }

    /// Sends `kind` to `to`; `context` fills the templates (`url` is the link).
    pub async fn send(&self, kind: MailKind, to: &str, context: Value) -> Result<(), MailError> {
        let text = self.render(kind, "txt", &context)?;
        let html = self.render(kind, "html", &context)?;
        match &self.sender {
            Sender::Off => Ok(()),
            Sender::Log => {
                // Only `dev` logs links: it has no mail server and a developer must click them.
                tracing::info!(
                    kind = kind.template(),
                    to,
                    url = context["url"].as_str().unwrap_or_default(),
                    "mail (dev: no SMTP_URL, not sent)"
                );
                Ok(())
            }
            Sender::Smtp(transport) => {
                let to: Mailbox = to.parse().map_err(|e| MailError::Address(format!("{e}")))?;
                // RFC 5322 §3.6.4: a unique id on the sender's domain (large providers refuse
                // mail without one when the relay does not add it).
                let message_id = format!(
                    "<{}@{}>",
                    edge_keys::random_hex(16),
                    self.from.email.domain()
                );
                let message = Message::builder()
                    .message_id(Some(message_id))
                    .from(self.from.clone())
                    .to(to)
                    .subject(kind.subject())
                    .multipart(MultiPart::alternative_plain_html(text, html))?;
                transport.send(message).await?;
                tracing::info!(kind = kind.template(), "mail sent");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        let u: SmtpUrl = "smtps://me%40x.org:p%3Ass@mail.example.com"
            .parse()
            .unwrap();
        assert_eq!(u.security, SmtpSecurity::Implicit);
        assert_eq!(u.port, 465);
        assert_eq!(u.credentials, Some(("me@x.org".into(), "p:ss".into())));
        let u: SmtpUrl = "smtp://mail.example.com".parse().unwrap();
        assert_eq!(
            (u.security, u.port, u.credentials),
            (SmtpSecurity::StartTls, 587, None)
        );
        let u: SmtpUrl = "smtp://127.0.0.1:2525?tls=none".parse().unwrap();
        assert_eq!((u.security, u.port), (SmtpSecurity::None, 2525));
        for bad in [
            "http://x",
            "smtp://",
            "smtps://x?tls=none",
            "smtp://x?foo=1",
            "nope",
        ] {
            assert!(bad.parse::<SmtpUrl>().is_err(), "{bad}");
        }
        assert!(
            !format!("{:?}", "smtp://u:secret@h".parse::<SmtpUrl>().unwrap()).contains("secret")
        );
    }

    #[test]
    fn templates_render_and_can_be_overridden() {
        let dir = std::env::temp_dir().join(format!("edge-mail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("verify-email.txt"), "custom {{ url }}").unwrap();
        let config = MailConfig {
            templates_dir: Some(dir.clone()),
            ..MailConfig::default()
        };
        let mailer = Mailer::new(&config, &edge_tls::Trust::empty()).unwrap();
        let context = serde_json::json!({"url": "http://x/y?a=1&b=2", "user": {"name": "A", "email": "a@b.c"}, "email": "a@b.c", "expires_minutes": 60});
        assert_eq!(
            mailer
                .render(MailKind::VerifyEmail, "txt", &context)
                .unwrap(),
            "custom http://x/y?a=1&b=2"
        );
        let html = mailer
            .render(MailKind::ResetPassword, "html", &context)
            .unwrap();
        // HTML-escaped (minijinja also writes `/` as `&#x2f;`), which mail clients decode.
        assert!(html.contains("y?a=1&amp;b=2"), "{html}");
        assert!(!html.contains("a=1&b"), "{html}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

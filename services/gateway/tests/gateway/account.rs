//! Better Auth's session and account routes and the email flows: the official client
//! (`better-auth/client`) against the gateway, mail delivered to a real SMTP server
//! (aiosmtpd, `tests/smtp/sink.py`), and bad input on each route.

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::{PASSWORD, Stack, cookie_of, http};

/// The test's SMTP server; it stops when dropped.
pub struct Smtp {
    pub port: u16,
    pub dir: std::path::PathBuf,
    _child: tokio::process::Child,
}

impl Smtp {
    pub async fn start() -> Smtp {
        let dir = std::env::temp_dir().join(format!(
            "edge-mail-{}-{}",
            std::process::id(),
            edge_keys::generate_id_of(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = tokio::process::Command::new("python3")
            .arg(edge_testkit::workspace_root().join("tests/smtp/sink.py"))
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (pip install aiosmtpd)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .next_line()
            .await
            .unwrap()
            .expect("the SMTP sink prints its port (is aiosmtpd installed?)")
            .trim()
            .parse()
            .unwrap();
        Smtp {
            port,
            dir,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    /// Waits for the `n`th message (0-based) and returns the first link of its text body.
    pub async fn link(&self, n: usize) -> (Value, String) {
        for _ in 0..2000 {
            if let Some(m) = self.messages().get(n).cloned() {
                let text = m["text"].as_str().unwrap().to_owned();
                let start = text.find("http").unwrap();
                let link = text[start..].split_whitespace().next().unwrap().to_owned();
                return (m, link);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no message {n} in {}", self.dir.display());
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn stack_with_mail(smtp: &Smtp, tweak: impl FnOnce(&mut edge_auth::Config)) -> Stack {
    let db = edge_testkit::test_database().await;
    let url = smtp.url();
    Stack::start_on(db, move |c| {
        c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
        c.mail.from = "Edge Tests <tests@example.com>".into();
        c.account.delete_user_enabled = true;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn the_official_client_runs_an_apps_account_and_session_screens() {
    let smtp = Smtp::start().await;
    // Links are made for the site's public origin (BETTER_AUTH_URL, here the default: the
    // issuer); the script opens them on this gateway.
    let stack = stack_with_mail(&smtp, |_| {}).await;
    let out = edge_testkit::node(
        "account-client.mjs",
        &[json!({"baseURL": stack.base, "mailDir": smtp.dir, "publicURL": "http://localhost:8080", "email": "ada@example.com", "password": PASSWORD}).to_string()],
    )
    .await;
    assert_eq!(out["ok"], true, "{out:#}");
    // Every mail came from EMAIL_FROM with both bodies.
    for m in smtp.messages() {
        assert_eq!(m["from"], "tests@example.com");
        assert!(m["html"].as_str().unwrap().contains("<a href="), "{m}");
    }
}

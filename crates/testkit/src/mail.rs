//! A real SMTP server for tests: `tests/smtp/sink.py` (aiosmtpd), which writes each message it
//! receives as one JSON file `{from, to, subject, text, html}` in arrival order.

use std::path::PathBuf;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// The test's SMTP server on 127.0.0.1; it stops (and its directory goes) when dropped.
pub struct SmtpSink {
    pub port: u16,
    /// Where the messages are written (`00000.json`, `00001.json`, …).
    pub dir: PathBuf,
    _dir: crate::TempDir,
    _child: tokio::process::Child,
}

impl SmtpSink {
    /// A plain-text sink (`SMTP_URL` `smtp://127.0.0.1:<port>?tls=none`).
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(&[]).await
    }

    /// The sink with extra arguments (`starttls|smtps CERT KEY`, `USER PASSWORD`).
    ///
    /// Panics when `python3` or `aiosmtpd` is missing (`pip install aiosmtpd`).
    pub async fn start_with(extra: &[&str]) -> SmtpSink {
        let dir = crate::TempDir::default();
        let mut child = tokio::process::Command::new("python3")
            .arg(crate::workspace_root().join("tests/smtp/sink.py"))
            .arg(dir.path())
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (pip install aiosmtpd)");
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = lines
            .next_line()
            .await
            .expect("the SMTP sink's stdout")
            .expect("the SMTP sink prints its port (is aiosmtpd installed?)")
            .trim()
            .parse()
            .expect("a port number");
        SmtpSink {
            port,
            dir: dir.path().to_owned(),
            _dir: dir,
            _child: child,
        }
    }

    /// The `SMTP_URL` of a plain-text sink.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .expect("the sink's directory")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                serde_json::from_str(&std::fs::read_to_string(p).expect("a message file"))
                    .expect("a message is JSON")
            })
            .collect()
    }

    /// Waits (up to 20 s) for the `n`th message (0-based) and returns it with the first link
    /// of its text body.
    pub async fn link(&self, n: usize) -> (Value, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(m) = self.messages().get(n).cloned() {
                let text = m["text"].as_str().expect("a text body").to_owned();
                let start = text.find("http").expect("a link in the text body");
                let link = text[start..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                return (m, link);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no message {n} in {}",
                self.dir.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

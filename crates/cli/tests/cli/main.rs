//! The `convex-edge` binary as users run it: processes, environment, exit codes, output.

mod commands;
mod deploy;
mod logs;
mod memory;
mod pages;
mod processes;
mod query_process;
mod scale;
mod shutdown;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "cli-test-secret-0123456789abcdef0123";
pub const BIN: &str = env!("CARGO_BIN_EXE_convex-edge");

/// Runs the binary to completion with exactly `env` (plus PATH).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("convex-edge runs")
}

/// A service process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(args: &[&str], env: &[(String, String)], cwd: Option<&std::path::Path>) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn convex-edge"))
}

/// Waits until `url` answers 200.
pub async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads stdout lines up to the first that contains `needle` (within 60 s), then keeps
/// draining the rest in the background so the process never writes into a closed pipe.
pub fn read_lines_until(proc: &mut Proc, needle: &str) -> Vec<String> {
    let stdout = proc.0.stdout.take().expect("stdout piped");
    // A thread reads (a pipe read cannot time out); the test waits on its lines with a deadline.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // Once the test stops listening, the rest is drained into nothing.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line with {needle} within 60 s: {lines:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("process exited before printing {needle}: {lines:?}")
            }
        };
        let done = line.contains(needle);
        lines.push(line.trim().to_owned());
        if done {
            return lines;
        }
    }
}

/// A series' value in Prometheus text (`name{labels}` exactly as exported).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A series' value from a `/metrics` URL; 0 when it has not been exported yet.
pub async fn scrape(url: &str, series: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    metric(&text, series).unwrap_or(0.0)
}

/// The `Cookie` header value (`name=value`) a response's `Set-Cookie` opens.
pub fn cookie_from(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Signs a new user up through the gateway at `base`; the `Cookie` header value.
pub async fn sign_up(base: &str, name: &str, email: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&serde_json::json!({"name": name, "email": email, "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cookie_from(&r)
}

//! `edge-bench`: benchmarks that print figures, peers side by side in one run.
//!
//! - `edge-bench tokens`: the token endpoint of convex-edge (auth + gateway, release binaries,
//!   Postgres) against the real better-auth (npm, Postgres, jwt plugin) on the same machine, per
//!   algorithm. Prints throughput, client-side latency, errors and database reads per token.
//!   Options: `--seconds N --connections N --algs RS256,ES256,EdDSA --no-peer`.
//! - `edge-bench cache`: the token endpoint and an SSR page with one authenticated query
//!   through three gateways (token cache off, memory, Redis) with the better-auth token endpoint
//!   as the reference. Options: `--seconds N --connections N --redis URL --linger S --no-peer`.
//! - `edge-bench sync`: N WebSocket clients on one query, on devconvex directly and through the
//!   query service, anonymous and signed in as many users (a shared function and a per-user
//!   one): upstream subscriptions, executions per change, change-to-client latency and missed
//!   updates, resident memory per idle client (a fresh process per row); and HTTP query
//!   overhead. Options: `--clients 1000,10000 --changes N --http N --users N` (`--users 0`:
//!   anonymous rows only).
//! - `edge-bench query-memory`: the query service's resident memory grown by the queries of a
//!   handful of client addresses (signed-out sockets, each within its limits), against the
//!   query bytes the limits count. Options: `--addresses N --sockets N --queries N
//!   --query-bytes N`.
//! - `edge-bench revocation`: sign-outs through one gateway seen by another under load
//!   (latency p50/p99), and gateway start-up with a large session log. Options: `--sessions N
//!   --concurrency N --connections N --log N`.
//!
//! What a figure means: a request counts only if its response holds what it should (a token;
//! the page with the signed-in user's name and its query's rows), every other outcome is an
//! error printed beside it, and a run with errors or missed updates exits non-zero after
//! printing. A metric the run reads that is not exported, or a memory figure that cannot be
//! read, stops the run with its name instead of reading as 0.

mod cache;
mod query_memory;
mod revocation;
mod sync;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The bench's HTTP clients trust what the services trust: the OS roots plus `SSL_CERT_FILE`.
pub(crate) fn http_client() -> reqwest::ClientBuilder {
    trust().http_client().timeout(REQUEST_TIMEOUT)
}

/// The bench's one trust store (see `edge_tls`).
pub(crate) fn trust() -> &'static edge_tls::Trust {
    static TRUST: std::sync::OnceLock<edge_tls::Trust> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| {
        edge_tls::Trust::from_env(|k| std::env::var(k).ok()).expect("SSL_CERT_FILE is readable")
    })
}

pub(crate) const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// How long one load request may take before it counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Args {
    seconds: u64,
    connections: usize,
    algs: Vec<String>,
    peer: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        connections: 16,
        algs: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        peer: true,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => args.seconds = it.next().context("--seconds N")?.parse()?,
            "--connections" => args.connections = it.next().context("--connections N")?.parse()?,
            "--algs" => {
                args.algs = it
                    .next()
                    .context("--algs LIST")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--no-peer" => args.peer = false,
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(args)
}

/// What a response must hold to count as a success.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// `{"token": "<a JWT>"}`.
    Token,
    /// An HTML page holding every one of these strings (the signed-in user's name and the rows
    /// of its query results): a page whose queries failed, or that fell back to anonymous, is
    /// also a 200 and must not count as a render.
    Page(&'static [&'static str]),
}

impl Expect {
    fn check(self, body: &[u8]) -> Result<(), String> {
        match self {
            Expect::Token => {
                let v: serde_json::Value =
                    serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?;
                match v["token"].as_str() {
                    Some(t) if t.split('.').count() == 3 => Ok(()),
                    _ => Err(format!("no token in {}", String::from_utf8_lossy(body))),
                }
            }
            Expect::Page(needles) => {
                let text = String::from_utf8_lossy(body);
                match needles.iter().find(|n| !text.contains(**n)) {
                    None => Ok(()),
                    Some(missing) => Err(format!("the page lacks {missing:?}")),
                }
            }
        }
    }
}

/// One request's outcome: its latency, or why it does not count.
pub(crate) type Outcome = Result<Duration, String>;

/// Latency and throughput of one load run. Only good responses count as requests; every other
/// outcome is an error, counted and reported beside them.
pub(crate) struct Stats {
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    /// The first error seen, for the report.
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Stats {
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }

    /// Says on stderr what the first error was, so an error count never stands unexplained.
    pub(crate) fn explain(&self, what: &str) {
        if let Some(e) = &self.first_error {
            eprintln!("{what}: {} errors, the first: {e}", self.errors);
        }
    }
}

/// Percentile `p` of sorted latencies, in milliseconds (NaN when there are none).
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// `connections` concurrent keep-alive clients, each with its own session, for `duration`.
pub(crate) async fn load(
    url: &str,
    cookies: &[String],
    connections: usize,
    duration: Duration,
    expect: Expect,
) -> Stats {
    let client = http_client()
        .pool_max_idle_per_host(connections)
        // A request that never answers is an error of its row, not a run that never ends.
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (client, url) = (client.clone(), url.to_owned());
        let cookie = cookies[i % cookies.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < deadline {
                outcomes.push(timed_get(&client, &url, &cookie, expect).await);
            }
            outcomes
        }));
    }
    gather(tasks, start).await
}

/// One GET with the session cookie `value`: its latency, or why it failed.
pub(crate) async fn timed_get(
    client: &reqwest::Client,
    url: &str,
    value: &str,
    expect: Expect,
) -> Outcome {
    let t = Instant::now();
    let r = client
        .get(url)
        .header("cookie", format!("better-auth.session_token={value}"))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| format!("body failed: {e}"))?;
    let elapsed = t.elapsed();
    if status != 200 {
        return Err(format!("status {status}"));
    }
    expect.check(&body)?;
    Ok(elapsed)
}

/// The outcomes of load tasks as one `Stats`, timed from `start`.
pub(crate) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
    start: Instant,
) -> Stats {
    let mut stats = Stats {
        requests: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        for outcome in task.await.expect("load task") {
            match outcome {
                Ok(latency) => stats.latencies.push(latency),
                Err(e) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(e);
                }
            }
        }
    }
    stats.requests = stats.latencies.len();
    stats.elapsed = start.elapsed();
    stats.latencies.sort();
    stats
}

/// Signs `email` in `n` times through the gateway at `base`; the session cookie values.
pub(crate) async fn sign_in_sessions(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut cookies = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client
            .post(format!("{base}/api/auth/sign-in/email"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await?
            .error_for_status()?;
        let set_cookie = r
            .headers()
            .get("set-cookie")
            .context("sign-in sets a cookie")?
            .to_str()?;
        let value = set_cookie
            .split(';')
            .next()
            .and_then(|c| c.split_once('='))
            .context("cookie")?
            .1;
        cookies.push(value.to_owned());
    }
    Ok(cookies)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    url.rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or(url)
}

pub(crate) async fn fresh_database(name: &str) -> anyhow::Result<String> {
    let base = server_url();
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .context("connect to Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    Ok(format!("{base}/{name}"))
}

pub(crate) async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sample's value in Prometheus text: `family` with `labels` (`""` or `result="miss"`).
///
/// The family and the series must be listed: a renamed or missing metric, label or label value
/// aborts the run rather than reading as 0.
pub(crate) fn metric(text: &str, family: &str, labels: &str) -> anyhow::Result<f64> {
    if !text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .and_then(|r| r.strip_prefix(family))
            .is_some_and(|r| r.starts_with(' '))
    }) {
        bail!("metric {family} is missing from /metrics: the figures that read it would be wrong");
    }
    let series = if labels.is_empty() {
        family.to_owned()
    } else {
        format!("{family}{{{labels}}}")
    };
    let value = text.lines().find_map(|l| {
        l.strip_prefix(series.as_str())
            .and_then(|rest| rest.strip_prefix(' '))
    });
    // Every labelled series a run reads is exported from the start (the gateway's `init`
    // registers each label value at 0) or has counted by then (devconvex's executions): a
    // missing one is a renamed label or label value, never 0.
    match value {
        Some(v) => v
            .trim()
            .parse()
            .with_context(|| format!("metric {series} has the value {v:?}")),
        None => bail!(
            "metric {series} has no sample in /metrics: the figures that read it would be wrong"
        ),
    }
}

/// How much `family{labels}` moved between two scrapes.
pub(crate) fn delta(before: &str, after: &str, family: &str, labels: &str) -> anyhow::Result<f64> {
    Ok(metric(after, family, labels)? - metric(before, family, labels)?)
}

pub(crate) struct Row {
    alg: String,
    pub(crate) server: &'static str,
    pub(crate) stats: Stats,
    key_reads_per_token: Option<f64>,
    db_reads_per_token: f64,
}

pub(crate) fn spawn_quiet(mut cmd: Command) -> anyhow::Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Ok(cmd.spawn()?)
}

async fn run_ours(bin: &Path, alg: &str, args: &Args) -> anyhow::Result<Row> {
    let db = fresh_database(&format!("edge_bench_ours_{}", alg.to_lowercase())).await?;
    let (grpc, http, gw) = (free_port(), free_port(), free_port());
    let env = |cmd: &mut Command| {
        cmd.env("BETTER_AUTH_SECRET", SECRET)
            .env("DATABASE_URL", &db)
            .env("JWT_ALG", alg)
            .env("AUTH_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("AUTH_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("AUTH_GRPC_URL", format!("http://127.0.0.1:{grpc}"))
            .env("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{gw}"))
            // One load generator on one address, far past every per-address rule.
            .env("GATEWAY_READ_RATE_LIMIT_MAX", "0")
            .env("AUTH_SIGN_IN_LIMIT_PER_ACCOUNT", "100000")
            .env("AUTH_SIGN_IN_LIMIT_PER_ADDRESS", "100000")
            .env("AUTH_RATE_LIMIT_MAX", "100000")
            .env("AUTH_MAIL_LIMIT_PER_ADDRESS", "100000")
            // This run measures token issuance: every request goes to auth.
            .env("AUTH_CACHE_ENABLED", "false")
            .env("RUST_LOG", "warn");
    };
    let mut auth = Command::new(bin);
    auth.arg("auth");
    env(&mut auth);
    let _auth = spawn_quiet(auth)?;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await?;
    let mut gateway = Command::new(bin);
    gateway.arg("gateway");
    env(&mut gateway);
    let _gateway = spawn_quiet(gateway)?;
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await?;

    let client = http_client().build().expect("http client");
    let body =
        serde_json::json!({"name": "Bench", "email": "bench@example.com", "password": PASSWORD});
    client
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let cookies = sign_in_sessions(&client, &base, "bench@example.com", args.connections).await?;
    let url = format!("{base}/api/auth/convex/token");
    load(
        &url,
        &cookies,
        args.connections,
        Duration::from_secs(1),
        Expect::Token,
    )
    .await;
    let metrics_url = format!("http://127.0.0.1:{http}/metrics");
    let before = client.get(&metrics_url).send().await?.text().await?;
    let stats = load(
        &url,
        &cookies,
        args.connections,
        Duration::from_secs(args.seconds),
        Expect::Token,
    )
    .await;
    stats.explain(&format!("convex-edge {alg}"));
    let after = client.get(&metrics_url).send().await?.text().await?;
    let tokens = delta(&before, &after, "edge_auth_tokens_issued_total", "")?;
    if tokens < 1.0 {
        bail!(
            "auth counted no token issued in a run of {} good responses",
            stats.requests
        );
    }
    let key_reads = delta(&before, &after, "edge_auth_jwks_db_reads_total", "")? / tokens;
    let session_reads = delta(&before, &after, "edge_auth_session_db_reads_total", "")? / tokens;
    Ok(Row {
        alg: alg.into(),
        server: "convex-edge",
        stats,
        key_reads_per_token: Some(key_reads),
        db_reads_per_token: key_reads + session_reads,
    })
}

pub(crate) async fn run_peer(node_dir: &Path, alg: &str, args: &Args) -> anyhow::Result<Row> {
    let db = fresh_database(&format!("edge_bench_peer_{}", alg.to_lowercase())).await?;
    let config = serde_json::json!({"databaseUrl": db, "secret": SECRET, "alg": alg, "sessions": args.connections});
    let mut cmd = Command::new("node");
    cmd.current_dir(node_dir)
        .arg("bench-peer.mjs")
        .arg(config.to_string());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("start node bench-peer.mjs")?;
    let stdout = child.stdout.take().context("peer stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("peer did not start")??
    .context("peer exited")?;
    let ready: serde_json::Value = serde_json::from_str(&line)?;
    let port = ready["port"].as_u64().context("port")?;
    let cookies: Vec<String> = ready["cookies"]
        .as_array()
        .context("cookies")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/api/auth/token");
    load(
        &url,
        &cookies,
        args.connections,
        Duration::from_secs(1),
        Expect::Token,
    )
    .await;
    let queries = || async {
        let v: serde_json::Value = reqwest::get(format!("{base}/__bench/queries"))
            .await?
            .json()
            .await?;
        v["queries"]
            .as_f64()
            .context("the peer's /__bench/queries has no `queries` count")
    };
    let before = queries().await?;
    let stats = load(
        &url,
        &cookies,
        args.connections,
        Duration::from_secs(args.seconds),
        Expect::Token,
    )
    .await;
    stats.explain(&format!("better-auth {alg}"));
    let after = queries().await?;
    if stats.requests == 0 {
        bail!("better-auth answered no token request in the run");
    }
    let per = (after - before) / stats.requests as f64;
    drop(child);
    Ok(Row {
        alg: alg.into(),
        server: "better-auth 1.6.15",
        stats,
        key_reads_per_token: None,
        db_reads_per_token: per,
    })
}

fn print(rows: &[Row], args: &Args) {
    println!(
        "\nGET token endpoint, cache off, {} connections, {} s per run (client-side latency)\n",
        args.connections, args.seconds
    );
    println!(
        "{:<6} {:<19} {:>10} {:>9} {:>9} {:>8} {:>14} {:>12}",
        "alg", "server", "req/s", "p50 ms", "p99 ms", "errors", "DB reads/token", "vs peer"
    );
    for row in rows {
        let peer = rows
            .iter()
            .find(|r| r.alg == row.alg && r.server != "convex-edge");
        let ratio = match (row.server, peer) {
            ("convex-edge", Some(p)) if p.stats.rps() > 0.0 => {
                format!("{:.1}x", row.stats.rps() / p.stats.rps())
            }
            _ => "-".into(),
        };
        let reads = match row.key_reads_per_token {
            Some(k) => format!("{:.2} ({k:.2} key)", row.db_reads_per_token),
            None => format!("{:.2}", row.db_reads_per_token),
        };
        println!(
            "{:<6} {:<19} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>14} {:>12}",
            row.alg,
            row.server,
            row.stats.rps(),
            row.stats.percentile_ms(0.50),
            row.stats.percentile_ms(0.99),
            row.stats.errors,
            reads,
            ratio
        );
    }
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let exe = std::env::current_exe()?;
    let bin: PathBuf = exe.with_file_name("convex-edge");
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release --bin convex-edge --bin edge-bench",
            bin.display()
        );
    }
    // One core for the load generator, leaving the other to the server under test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command.as_str() {
        "tokens" => rt.block_on(tokens(&bin, parse_args(argv)?)),
        "sync" => rt.block_on(sync::run(&bin, sync::Args::parse(argv)?)),
        "cache" => rt.block_on(cache::run(&bin, cache::Args::parse(argv)?)),
        "revocation" => rt.block_on(revocation::run(&bin, revocation::Args::parse(argv)?)),
        "query-memory" => rt.block_on(query_memory::run(&bin, query_memory::Args::parse(argv)?)),
        _ => bail!(
            "usage: edge-bench tokens|sync|cache|revocation|query-memory [options] (see the crate              docs)"
        ),
    }
}

async fn tokens(bin: &Path, args: Args) -> anyhow::Result<()> {
    let node_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node");
    if args.peer && !node_dir.join("node_modules/better-auth").is_dir() {
        bail!("the peer needs npm packages: npm ci --prefix tests/node");
    }
    let mut rows = Vec::new();
    for alg in &args.algs {
        eprintln!("running convex-edge {alg}");
        rows.push(run_ours(bin, alg, &args).await?);
        if args.peer {
            eprintln!("running better-auth {alg}");
            rows.push(run_peer(&node_dir, alg, &args).await?);
        }
    }
    print(&rows, &args);
    let errors: usize = rows.iter().map(|r| r.stats.errors).sum();
    if errors > 0 {
        bail!("{errors} token requests failed (see the errors column above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total a\n# TYPE a_total counter\na_total 3\n\
        # HELP v_total v\n# TYPE v_total counter\nv_total{result=\"hit\"} 7\n";

    #[test]
    fn a_metric_not_exported_stops_the_run() {
        assert_eq!(metric(TEXT, "a_total", "").unwrap(), 3.0);
        assert_eq!(metric(TEXT, "v_total", "result=\"hit\"").unwrap(), 7.0);
        // A label set that is not exported (a renamed label or value) and a family that is
        // not there are errors, never 0.
        assert!(metric(TEXT, "v_total", "result=\"miss\"").is_err());
        let err = metric(TEXT, "renamed_total", "").unwrap_err().to_string();
        assert!(err.contains("renamed_total is missing"), "{err}");
        assert!(metric(TEXT, "a", "").is_err(), "a prefix is not the family");
        assert!(metric("# TYPE a_total counter\n", "a_total", "").is_err());
    }

    #[test]
    fn a_response_counts_only_when_its_body_holds_what_it_should() {
        assert!(Expect::Token.check(br#"{"token":"a.b.c"}"#).is_ok());
        assert!(Expect::Token.check(br#"{"token":null}"#).is_err());
        assert!(Expect::Token.check(b"<html>").is_err());
        let page = Expect::Page(&["<h1>Bench</h1>", "<li>ship it</li>"]);
        assert!(
            page.check(b"<h1>Bench</h1><ul><li>ship it</li></ul>")
                .is_ok()
        );
        // Anonymous, or the query failed: still a 200, not a render.
        assert!(page.check(b"<h1></h1><ul></ul>").is_err());
        assert!(page.check(b"<h1>Bench</h1><ul></ul>").is_err());
    }
}

//! `edge-bench revocation`: how fast a sign-out reaches another gateway under load, and how
//! fast a gateway starts (becomes ready: the session log's backlog read) with a large log.
//!
//! Revocation latency: sessions cached on gateway B are signed out through gateway A,
//! `--concurrency` at a time, while `--connections` clients keep B busy with cache hits; for
//! each, the time from A answering the sign-out to B first refusing the session a token.
//! Start-up: a gateway process spawned against a log of `--log` entries inside the retention
//! window (all read), then the same number outside it (skipped), timed to `/readyz`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::process::{Child, Command};

use crate::{
    PASSWORD, SECRET, free_port, fresh_database, sign_in_sessions, spawn_quiet, wait_ready,
};

pub struct Args {
    sessions: usize,
    concurrency: usize,
    connections: usize,
    log: u64,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut args = Args {
            sessions: 300,
            concurrency: 16,
            connections: 16,
            log: 100_000,
        };
        while let Some(arg) = it.next() {
            let mut value = || -> anyhow::Result<usize> {
                it.next().context("a value")?.parse().context("a number")
            };
            match arg.as_str() {
                "--sessions" => args.sessions = value()?,
                "--concurrency" => args.concurrency = value()?.max(1),
                "--connections" => args.connections = value()?,
                "--log" => args.log = value()? as u64,
                other => bail!(
                    "unknown option {other} (--sessions N --concurrency N --connections N --log N)"
                ),
            }
        }
        Ok(args)
    }
}

struct Env {
    bin: std::path::PathBuf,
    db: String,
    grpc: u16,
}

impl Env {
    fn start(&self, sub: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(sub)
            .env("BETTER_AUTH_SECRET", SECRET)
            .env("DATABASE_URL", &self.db)
            .env("AUTH_GRPC_ADDR", format!("127.0.0.1:{}", self.grpc))
            .env("AUTH_GRPC_URL", format!("http://127.0.0.1:{}", self.grpc))
            .env("AUTH_SIGN_IN_LIMIT_PER_ACCOUNT", "100000")
            .env("AUTH_SIGN_IN_LIMIT_PER_ADDRESS", "100000")
            .env("AUTH_RATE_LIMIT_MAX", "100000")
            .env("AUTH_MAIL_LIMIT_PER_ADDRESS", "100000")
            .env("RUST_LOG", "warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        spawn_quiet(cmd)
    }

    /// A gateway (memory cache); its base URL once ready, and how long that took.
    async fn gateway(&self) -> anyhow::Result<(String, Child, Duration)> {
        let addr = format!("127.0.0.1:{}", free_port());
        let started = Instant::now();
        let child = self.start(
            "gateway",
            &[
                ("GATEWAY_HTTP_ADDR", addr.clone()),
                ("GATEWAY_READ_RATE_LIMIT_MAX", "0".to_owned()),
            ],
        )?;
        let base = format!("http://{addr}");
        wait_ready(&format!("{base}/readyz")).await?;
        Ok((base, child, started.elapsed()))
    }
}

async fn token_status(client: &reqwest::Client, base: &str, cookie: &str) -> anyhow::Result<u16> {
    Ok(client
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await?
        .status()
        .as_u16())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(bin: &Path, args: Args) -> anyhow::Result<()> {
    let env = Env {
        bin: bin.to_owned(),
        db: fresh_database("edge_bench_revocation").await?,
        grpc: free_port(),
    };
    let auth_http = free_port();
    let _auth = env.start(
        "auth",
        &[("AUTH_HTTP_ADDR", format!("127.0.0.1:{auth_http}"))],
    )?;
    wait_ready(&format!("http://127.0.0.1:{auth_http}/readyz")).await?;
    let (a, _ga, _) = env.gateway().await?;
    let (b, _gb, _) = env.gateway().await?;

    let client = crate::http_client().build()?;
    client
        .post(format!("{a}/api/auth/sign-up/email"))
        .json(&serde_json::json!({"name": "Bench", "email": "bench@example.com", "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?;
    eprintln!("signing in {} sessions…", args.sessions + args.connections);
    let cookies = sign_in_sessions(
        &client,
        &a,
        "bench@example.com",
        args.sessions + args.connections,
    )
    .await?;
    let (ending, live) = cookies.split_at(args.sessions);
    for cookie in &cookies {
        for _ in 0..2 {
            if token_status(&client, &b, cookie).await? != 200 {
                bail!("a fresh session got no token");
            }
        }
    }

    // Load on B: cache hits for live sessions until the sign-outs are done.
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for cookie in live {
        let (client, b, cookie, done, served, failed) = (
            client.clone(),
            b.clone(),
            cookie.clone(),
            done.clone(),
            served.clone(),
            failed.clone(),
        );
        load.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                // A live session must get a token: anything else is an error, never dropped.
                let counter = match token_status(&client, &b, &cookie).await {
                    Ok(200) => &served,
                    _ => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let b_metrics = format!("{b}/metrics");
    let hits_before = crate::metric(
        &client.get(&b_metrics).send().await?.text().await?,
        "edge_gateway_token_cache_total",
        "result=\"l1_hit\"",
    )?;

    // Sign-outs through A, `concurrency` at a time; each watched on B until refused.
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(ending.len());
    for batch in ending.chunks(args.concurrency) {
        let mut tasks = Vec::new();
        for cookie in batch {
            let (client, a, b, cookie) = (client.clone(), a.clone(), b.clone(), cookie.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(format!("{a}/api/auth/sign-out"))
                    .header("origin", &a)
                    .header("cookie", format!("better-auth.session_token={cookie}"))
                    .send()
                    .await?;
                if r.status() != 200 {
                    bail!("sign-out failed: {}", r.status());
                }
                let answered = Instant::now();
                let deadline = answered + Duration::from_secs(30);
                while token_status(&client, &b, &cookie).await? != 401 {
                    if Instant::now() > deadline {
                        bail!("gateway B still serves a signed-out session after 30 s");
                    }
                }
                Ok(answered.elapsed())
            }));
        }
        for task in tasks {
            latencies.push(task.await??);
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let hits = crate::metric(
        &client.get(&b_metrics).send().await?.text().await?,
        "edge_gateway_token_cache_total",
        "result=\"l1_hit\"",
    )? - hits_before;
    latencies.sort();
    // Cache hits as B's own counter has them (the watchers' refused requests are not hits).
    let load_rps = hits.min(served.load(Ordering::Relaxed) as f64) / elapsed.as_secs_f64();
    let load_errors = failed.load(Ordering::Relaxed);

    // Start-up with a large log: entries inside the window, then the same number outside it.
    let mut conn = sqlx::PgConnection::connect(&env.db).await?;
    sqlx::query(r#"INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") SELECT 'bench-' || g, 'bench', 'deleted' FROM generate_series(1, $1) g"#)
        .bind(args.log as i64)
        .execute(&mut conn)
        .await?;
    let (in_window, _g1, in_window_time) = env.gateway().await?;
    if token_status(&client, &in_window, &live[0]).await? != 200 {
        bail!("a live session got no token");
    }
    sqlx::query(r#"UPDATE "edge_session_log" SET "committedAt" = now() - interval '2 hours' WHERE "sessionId" LIKE 'bench-%'"#)
        .execute(&mut conn)
        .await?;
    let (_, _g2, old_time) = env.gateway().await?;
    let (rows,): (i64,) = sqlx::query_as(r#"SELECT COUNT(*) FROM "edge_session_log""#)
        .fetch_one(&mut conn)
        .await?;

    println!(
        "revocation across gateways: {} sign-outs through A ({} at a time) while {} clients keep B busy ({:.0} cache hits/s, {} errors)",
        latencies.len(),
        args.concurrency,
        live.len(),
        load_rps,
        load_errors
    );
    println!(
        "  sign-out answered on A → B refuses: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "gateway start-up to ready (process spawn → /readyz 200, backlog read):\n  {} log entries inside the retention window: {:.0} ms\n  {} entries outside it ({} rows in the table): {:.0} ms",
        args.log,
        in_window_time.as_secs_f64() * 1000.0,
        args.log,
        rows,
        old_time.as_secs_f64() * 1000.0
    );
    if load_errors > 0 {
        bail!("{load_errors} token requests of live sessions on B failed during the run");
    }
    Ok(())
}

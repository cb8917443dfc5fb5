//! `edge-bench cache`: the token endpoint and an SSR page with one authenticated query
//! (`tasks:list`), each through three gateways on the same auth, query service and devconvex —
//! token cache off, in memory, and in Redis — side by side with the real better-auth token
//! endpoint as the reference. Prints throughput, client-side latency, server-side latency from
//! the gateway's own `edge_gateway_request_duration_seconds` histogram, and cache outcomes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

use crate::{
    PASSWORD, SECRET, Stats, counter, free_port, fresh_database, gather, load, sign_in_sessions,
    spawn_quiet, timed_get, wait_ready,
};

/// Sessions whose first request on a fresh gateway measures L2 hits.
const L2_SESSIONS: usize = 600;
const L2_WARMUP: usize = 100;

/// One request per session (cookie values), `connections` at a time.
async fn once_each(url: &str, sessions: &[String], connections: usize) -> Stats {
    let client = crate::http_client().build().expect("http client");
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in sessions.chunks(sessions.len().div_ceil(connections.max(1))) {
        let (client, url, chunk) = (client.clone(), url.to_owned(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(chunk.len());
            for cookie in chunk {
                outcomes.push(timed_get(&client, &url, &cookie).await);
            }
            outcomes
        }));
    }
    gather(tasks, start).await
}

pub struct Args {
    seconds: u64,
    connections: usize,
    peer: bool,
    redis_url: String,
    /// The query service's `QUERY_READ_LINGER_SECONDS`.
    linger: u64,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut args = Args {
            seconds: 10,
            connections: 16,
            peer: true,
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            linger: 30,
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--seconds" => args.seconds = it.next().context("--seconds N")?.parse()?,
                "--connections" => {
                    args.connections = it.next().context("--connections N")?.parse()?
                }
                "--redis" => args.redis_url = it.next().context("--redis URL")?,
                "--linger" => args.linger = it.next().context("--linger SECONDS")?.parse()?,
                "--no-peer" => args.peer = false,
                other => anyhow::bail!("unknown argument `{other}`"),
            }
        }
        Ok(args)
    }
}

/// Quantile `q` of a route's latency, from the difference of two histogram scrapes,
/// interpolated within a bucket as Prometheus' `histogram_quantile` does. Milliseconds.
fn server_quantile(before: &str, after: &str, route: &str, q: f64) -> f64 {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let prefix = "edge_gateway_request_duration_seconds_bucket{";
        let route = format!("route=\"{route}\"");
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(&route))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some((le, count))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let diff: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            let earlier = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - earlier)
        })
        .collect();
    let Some(total) = diff.last().map(|(_, n)| *n).filter(|n| *n > 0.0) else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in diff {
        if n >= rank {
            if le.is_infinite() {
                return lower.0 * 1000.0;
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return (lower.0 + (le - lower.0) * within) * 1000.0;
        }
        lower = (le, n);
    }
    f64::NAN
}

struct Row {
    what: &'static str,
    cache: &'static str,
    stats: Stats,
    server_p50: f64,
    server_p99: f64,
    outcomes: String,
    /// Page queries served from a live watch and fetched (`edge_gateway_page_queries_total`).
    page_queries: (f64, f64),
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url).await?.text().await?)
}

/// The bench page: one authenticated query, rendered by the gateway.
fn write_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("pages.json"),
        r#"{"pages": [{"route": "/bench", "template": "bench.html",
            "queries": {"tasks": {"path": "tasks:list"}}}]}"#,
    )?;
    std::fs::write(
        dir.join("bench.html"),
        "<!doctype html><html><head>{{ convex_edge }}</head><body><h1>{{ user.name }}</h1>\
         <ul>{% for t in queries.tasks %}<li>{{ t.text }}</li>{% endfor %}</ul></body></html>",
    )?;
    Ok(())
}

pub async fn run(bin: &Path, args: Args) -> anyhow::Result<()> {
    let db = fresh_database("edge_bench_cache").await?;
    let (grpc, http, dc, qh, qg) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let pages = std::env::temp_dir().join(format!("edge-bench-pages-{}", std::process::id()));
    write_pages(&pages)?;
    let linger = args.linger.to_string();
    let base_env = |cmd: &mut Command| {
        cmd.env("BETTER_AUTH_SECRET", SECRET)
            .env("DATABASE_URL", &db)
            .env("AUTH_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("AUTH_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("AUTH_GRPC_URL", format!("http://127.0.0.1:{grpc}"))
            .env("AUTH_SIGN_IN_LIMIT_PER_ACCOUNT", "100000")
            .env("AUTH_SIGN_IN_LIMIT_PER_ADDRESS", "100000")
            .env("DEVCONVEX_ADDR", format!("127.0.0.1:{dc}"))
            .env(
                "DEVCONVEX_AUTH_CONFIG",
                serde_json::json!({"providers": [{"type": "customJwt",
                    "issuer": "http://localhost:8080", "applicationID": "convex", "algorithm": "RS256",
                    "jwks": format!("http://127.0.0.1:{http}/api/auth/jwks")}]})
                .to_string(),
            )
            .env("CONVEX_URL", format!("http://127.0.0.1:{dc}"))
            .env("QUERY_HTTP_ADDR", format!("127.0.0.1:{qh}"))
            .env("QUERY_GRPC_ADDR", format!("127.0.0.1:{qg}"))
            .env("QUERY_GRPC_URL", format!("http://127.0.0.1:{qg}"))
            .env("PAGES_DIR", &pages)
            .env("QUERY_READ_LINGER_SECONDS", &linger)
            .env("RUST_LOG", "warn");
    };
    let start = |sub: &str, extra: &[(&str, &str)]| {
        let mut cmd = Command::new(bin);
        cmd.arg(sub);
        base_env(&mut cmd);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        spawn_quiet(cmd)
    };
    let _auth = start("auth", &[])?;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await?;
    let _devconvex = start("devconvex", &[])?;
    wait_ready(&format!("http://127.0.0.1:{dc}/readyz")).await?;
    let _query = start("query", &[])?;
    wait_ready(&format!("http://127.0.0.1:{qh}/readyz")).await?;
    let modes: [(&'static str, Vec<(&str, &str)>); 3] = [
        ("off", vec![("AUTH_CACHE_ENABLED", "false")]),
        ("memory", vec![]),
        ("redis", vec![("REDIS_URL", args.redis_url.as_str())]),
    ];
    let mut gateways = Vec::new();
    for (name, extra) in &modes {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut env = extra.clone();
        env.push(("GATEWAY_HTTP_ADDR", &addr));
        let proc = start("gateway", &env)?;
        let base = format!("http://{addr}");
        wait_ready(&format!("{base}/readyz")).await?;
        gateways.push((*name, base, proc));
    }

    // One user with three tasks, and a session per connection for each gateway.
    let client = crate::http_client().build()?;
    let site = &gateways[0].1;
    client
        .post(format!("{site}/api/auth/sign-up/email"))
        .json(&serde_json::json!({"name": "Bench", "email": "bench@example.com", "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?;
    let cookies = sign_in_sessions(
        &client,
        site,
        "bench@example.com",
        args.connections * gateways.len(),
    )
    .await?;
    let token: serde_json::Value = client
        .get(format!("{site}/api/auth/convex/token"))
        .header(
            "cookie",
            format!("better-auth.session_token={}", cookies[0]),
        )
        .send()
        .await?
        .json()
        .await?;
    let jwt = token["token"].as_str().context("a token")?;
    for text in ["write the benchmark", "read the figures", "ship it"] {
        client
            .post(format!("http://127.0.0.1:{qh}/api/mutation"))
            .bearer_auth(jwt)
            .json(&serde_json::json!({"path": "tasks:add", "args": {"text": text}}))
            .send()
            .await?
            .error_for_status()?;
    }

    let seconds = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for (i, (name, base, _)) in gateways.iter().enumerate() {
        let sessions = &cookies[i * args.connections..(i + 1) * args.connections];
        for (what, path) in [("token", "/api/auth/convex/token"), ("SSR page", "/bench")] {
            eprintln!("running {what} with cache {name}");
            let url = format!("{base}{path}");
            load(&url, sessions, args.connections, Duration::from_secs(1)).await;
            let before = scrape(&format!("{base}/metrics")).await?;
            let stats = load(&url, sessions, args.connections, seconds).await;
            let after = scrape(&format!("{base}/metrics")).await?;
            let outcome = |result: &str| {
                let series = format!("edge_gateway_token_cache_total{{result=\"{result}\"}}");
                counter(&after, &series) - counter(&before, &series)
            };
            let outcomes = if *name == "off" {
                "-".to_owned()
            } else {
                format!(
                    "{:.0}/{:.0}/{:.0}",
                    outcome("l1_hit"),
                    outcome("l2_hit"),
                    outcome("miss")
                )
            };
            let source = |source: &str| {
                let series = format!("edge_gateway_page_queries_total{{source=\"{source}\"}}");
                counter(&after, &series) - counter(&before, &series)
            };
            rows.push(Row {
                page_queries: (source("watch"), source("fetch")),
                what,
                cache: name,
                server_p50: server_quantile(&before, &after, path, 0.50),
                server_p99: server_quantile(&before, &after, path, 0.99),
                stats,
                outcomes,
            });
        }
    }
    // L2 hits: sessions another Redis gateway cached, first requested on a fresh one.
    eprintln!("running token L2 hits on a fresh Redis gateway");
    let l2_row = {
        let redis_base = gateways[2].1.clone();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let _fresh = start(
            "gateway",
            &[
                ("REDIS_URL", args.redis_url.as_str()),
                ("GATEWAY_HTTP_ADDR", &addr),
            ],
        )?;
        let fresh = format!("http://{addr}");
        wait_ready(&format!("{fresh}/readyz")).await?;
        let sessions = sign_in_sessions(&client, site, "bench@example.com", L2_SESSIONS).await?;
        once_each(
            &format!("{redis_base}/api/auth/convex/token"),
            &sessions,
            args.connections,
        )
        .await;
        // The first requests open the fresh gateway's connections (client and Redis pool).
        let (warm, measured) = sessions.split_at(L2_WARMUP);
        once_each(
            &format!("{fresh}/api/auth/convex/token"),
            warm,
            args.connections,
        )
        .await;
        let before = scrape(&format!("{fresh}/metrics")).await?;
        let stats = once_each(
            &format!("{fresh}/api/auth/convex/token"),
            measured,
            args.connections,
        )
        .await;
        let after = scrape(&format!("{fresh}/metrics")).await?;
        let outcome = |result: &str| {
            let series = format!("edge_gateway_token_cache_total{{result=\"{result}\"}}");
            counter(&after, &series) - counter(&before, &series)
        };
        let path = "/api/auth/convex/token";
        Row {
            page_queries: (0.0, 0.0),
            what: "token",
            cache: "redis, L2 hit",
            server_p50: server_quantile(&before, &after, path, 0.50),
            server_p99: server_quantile(&before, &after, path, 0.99),
            stats,
            outcomes: format!(
                "{:.0}/{:.0}/{:.0}",
                outcome("l1_hit"),
                outcome("l2_hit"),
                outcome("miss")
            ),
        }
    };
    rows.push(l2_row);
    let peer = if args.peer {
        eprintln!("running better-auth RS256");
        let node_dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node");
        let crate_args = crate::Args {
            seconds: args.seconds,
            connections: args.connections,
            algs: Vec::new(),
            peer: true,
        };
        Some(crate::run_peer(&node_dir, "RS256", &crate_args).await?)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&pages);
    print(&rows, peer.as_ref(), &args);
    Ok(())
}

fn print(rows: &[Row], peer: Option<&crate::Row>, args: &Args) {
    println!(
        "\nToken endpoint and SSR page (one authenticated query), RS256, {} connections, {} s per run",
        args.connections, args.seconds
    );
    println!("client: latency to the whole response; server: the gateway's TTFB histogram\n");
    println!(
        "{:<9} {:<19} {:>9} {:>8} {:>8} {:>10} {:>10} {:>7} {:>16} {:>9}",
        "what",
        "cache",
        "req/s",
        "p50 ms",
        "p99 ms",
        "srv p50",
        "srv p99",
        "errors",
        "l1/l2/miss",
        "vs peer"
    );
    let peer_rps = peer.map(|p| p.stats.rps()).filter(|r| *r > 0.0);
    for row in rows {
        let ratio = match (row.what, peer_rps) {
            ("token", Some(p)) if row.cache != "redis, L2 hit" => {
                format!("{:.1}x", row.stats.rps() / p)
            }
            _ => "-".into(),
        };
        println!(
            "{:<9} {:<19} {:>9.0} {:>8.2} {:>8.2} {:>10.3} {:>10.3} {:>7} {:>16} {:>9}",
            row.what,
            row.cache,
            row.stats.rps(),
            row.stats.percentile_ms(0.50),
            row.stats.percentile_ms(0.99),
            row.server_p50,
            row.server_p99,
            row.stats.errors,
            row.outcomes,
            ratio
        );
    }
    if let Some(p) = peer {
        println!(
            "{:<9} {:<19} {:>9.0} {:>8.2} {:>8.2} {:>10} {:>10} {:>7} {:>16} {:>9}",
            "token",
            p.server,
            p.stats.rps(),
            p.stats.percentile_ms(0.50),
            p.stats.percentile_ms(0.99),
            "-",
            "-",
            p.stats.errors,
            "-",
            "1.0x"
        );
    }
    let ssr = |cache: &str| {
        rows.iter()
            .find(|r| r.what == "SSR page" && r.cache == cache)
    };
    if let (Some(off), Some(mem), Some(redis)) = (ssr("off"), ssr("memory"), ssr("redis")) {
        let client = |r: &Row| r.stats.percentile_ms(0.50);
        println!(
            "\nSSR TTFB p50, uncached vs cached token: server-side {:.3} ms vs memory {:.3} ms ({:.1}x lower), Redis {:.3} ms ({:.1}x lower)",
            off.server_p50,
            mem.server_p50,
            off.server_p50 / mem.server_p50,
            redis.server_p50,
            off.server_p50 / redis.server_p50
        );
        println!(
            "                                        client-side {:.3} ms vs memory {:.3} ms ({:.1}x lower), Redis {:.3} ms ({:.1}x lower)",
            client(off),
            client(mem),
            client(off) / client(mem),
            client(redis),
            client(off) / client(redis)
        );
        let watched = |r: &Row| {
            let (watch, fetch) = r.page_queries;
            100.0 * watch / (watch + fetch).max(1.0)
        };
        println!(
            "page queries served from a live watch: off {:.0}%, memory {:.0}%, Redis {:.0}%",
            watched(off),
            watched(mem),
            watched(redis)
        );
    }
}

//! `edge-bench cache`: the token endpoint and an SSR page with one authenticated query
//! (`tasks:list`), each through three gateways on the same auth, query service and devconvex —
//! token cache off, in memory, and in Redis — side by side with the real better-auth token
//! endpoint as the reference. Prints throughput, client-side latency, server-side latency from
//! the gateway's own `edge_gateway_request_duration_seconds` histogram, and cache outcomes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::{
    Expect, PASSWORD, SECRET, Stats, delta, free_port, fresh_database, gather, load,
    sign_in_sessions, spawn_quiet, timed_get, wait_ready,
};

/// What the bench page must hold to count as a render: the signed-in user's name and every
/// task of its `tasks:list` result (an anonymous render has no name and no tasks; a failed
/// query, no tasks).
const PAGE: Expect = Expect::Page(&[
    "<h1>Bench</h1>",
    "<li>write the benchmark</li>",
    "<li>read the figures</li>",
    "<li>ship it</li>",
]);

/// Sessions whose first request on a fresh gateway measures L2 hits.
const L2_SESSIONS: usize = 600;
const L2_WARMUP: usize = 100;

/// One request per session (cookie values), `connections` at a time.
async fn once_each(url: &str, sessions: &[String], connections: usize) -> Stats {
    let expect = Expect::Token;
    let client = crate::http_client()
        .timeout(crate::REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in sessions.chunks(sessions.len().div_ceil(connections.max(1))) {
        let (client, url, chunk) = (client.clone(), url.to_owned(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(chunk.len());
            for cookie in chunk {
                outcomes.push(timed_get(&client, &url, &cookie, expect).await);
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

/// A quantile of the gateway's TTFB histogram: interpolated within its bucket as Prometheus'
/// `histogram_quantile` does, and the bucket's bounds, which are all the histogram knows.
/// Milliseconds.
#[derive(Clone, Copy)]
struct Quantile {
    interpolated: f64,
    lower: f64,
    upper: f64,
}

/// Quantile `q` of a route's latency, from the difference of two histogram scrapes. A missing
/// histogram or a route it did not count is an error, never a figure.
fn server_quantile(before: &str, after: &str, route: &str, q: f64) -> anyhow::Result<Quantile> {
    const FAMILY: &str = "edge_gateway_request_duration_seconds";
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let prefix = format!("{FAMILY}_bucket{{");
        let route = format!("route=\"{route}\"");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&route))
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
    if !after.contains(&format!("# TYPE {FAMILY} histogram")) {
        bail!("metric {FAMILY} is missing from the gateway's /metrics");
    }
    let (b, a) = (buckets(before), buckets(after));
    let diff: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            let earlier = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - earlier)
        })
        .collect();
    let Some(total) = diff.last().map(|(_, n)| *n).filter(|n| *n > 0.0) else {
        bail!("{FAMILY} counted no request of route {route} in the run");
    };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in diff {
        if n >= rank {
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            let interpolated = if le.is_infinite() {
                lower.0
            } else {
                lower.0 + (le - lower.0) * within
            };
            return Ok(Quantile {
                interpolated: interpolated * 1000.0,
                lower: lower.0 * 1000.0,
                upper: le * 1000.0,
            });
        }
        lower = (le, n);
    }
    bail!("{FAMILY} of route {route} has no +Inf bucket")
}

struct Row {
    what: &'static str,
    cache: &'static str,
    stats: Stats,
    server_p50: Quantile,
    server_p99: Quantile,
    outcomes: String,
    /// Page queries served from a live watch with a value, from a watch with an error, and
    /// fetched (`edge_gateway_page_queries_total`, `edge_gateway_page_query_errors_total`).
    page_queries: (f64, f64, f64),
}

/// Token cache outcomes between two scrapes: `(l1, l2, miss)`.
fn cache_outcomes(before: &str, after: &str) -> anyhow::Result<(f64, f64, f64)> {
    let outcome = |result: &str| {
        delta(
            before,
            after,
            "edge_gateway_token_cache_total",
            &format!("result=\"{result}\""),
        )
    };
    Ok((outcome("l1_hit")?, outcome("l2_hit")?, outcome("miss")?))
}

/// Every counted response went through the token cache (and, for a page, ran its one query):
/// counters that moved less than the responses are counting something else.
fn at_least(what: &str, counted: f64, stats: &Stats) -> anyhow::Result<()> {
    if counted < stats.requests as f64 {
        bail!(
            "{what} counted {counted} in a run of {} good responses: a renamed series or an uncounted path",
            stats.requests
        );
    }
    Ok(())
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
    let node_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node");
    if args.peer && !node_dir.join("node_modules/better-auth").is_dir() {
        bail!("the peer needs npm packages: npm ci --prefix tests/node");
    }
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
            .env("AUTH_RATE_LIMIT_MAX", "100000")
            .env("AUTH_MAIL_LIMIT_PER_ADDRESS", "100000")
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
        // One load generator on one address, far past the read routes' per-address rule.
        env.push(("GATEWAY_READ_RATE_LIMIT_MAX", "0"));
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
        for (what, path, expect) in [
            ("token", "/api/auth/convex/token", Expect::Token),
            ("SSR page", "/bench", PAGE),
        ] {
            eprintln!("running {what} with cache {name}");
            let url = format!("{base}{path}");
            load(
                &url,
                sessions,
                args.connections,
                Duration::from_secs(1),
                expect,
            )
            .await;
            let before = scrape(&format!("{base}/metrics")).await?;
            let stats = load(&url, sessions, args.connections, seconds, expect).await;
            let after = scrape(&format!("{base}/metrics")).await?;
            stats.explain(&format!("{what} with cache {name}"));
            let outcomes = if *name == "off" {
                "-".to_owned()
            } else {
                let (l1, l2, miss) = cache_outcomes(&before, &after)?;
                at_least("edge_gateway_token_cache_total", l1 + l2 + miss, &stats)?;
                format!("{l1:.0}/{l2:.0}/{miss:.0}")
            };
            let page_queries = if what == "SSR page" {
                let count = |family: &str, source: &str| {
                    delta(&before, &after, family, &format!("source=\"{source}\""))
                };
                let watched = count("edge_gateway_page_queries_total", "watch")?;
                let watch_errors = count("edge_gateway_page_query_errors_total", "watch")?;
                let fetched = count("edge_gateway_page_queries_total", "fetch")?;
                at_least("edge_gateway_page_queries_total", watched + fetched, &stats)?;
                (watched - watch_errors, watch_errors, fetched)
            } else {
                (0.0, 0.0, 0.0)
            };
            rows.push(Row {
                page_queries,
                what,
                cache: name,
                server_p50: server_quantile(&before, &after, path, 0.50)?,
                server_p99: server_quantile(&before, &after, path, 0.99)?,
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
                ("GATEWAY_READ_RATE_LIMIT_MAX", "0"),
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
        stats.explain("token L2 hits");
        let (l1, l2, miss) = cache_outcomes(&before, &after)?;
        // The row is named for L2 hits: a response that was not one is not its figure.
        if l2 < stats.requests as f64 {
            bail!(
                "the L2 row counted {l1}/{l2}/{miss} (l1/l2/miss) for {} good responses",
                stats.requests
            );
        }
        let path = "/api/auth/convex/token";
        Row {
            page_queries: (0.0, 0.0, 0.0),
            what: "token",
            cache: "redis, L2 hit",
            server_p50: server_quantile(&before, &after, path, 0.50)?,
            server_p99: server_quantile(&before, &after, path, 0.99)?,
            stats,
            outcomes: format!("{l1:.0}/{l2:.0}/{miss:.0}"),
        }
    };
    rows.push(l2_row);
    let peer = if args.peer {
        eprintln!("running better-auth RS256");
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
    let errors: usize = rows.iter().map(|r| r.stats.errors).sum::<usize>()
        + peer.as_ref().map_or(0, |p| p.stats.errors);
    if errors > 0 {
        bail!(
            "{errors} requests did not get what they asked for (see the errors column and the first error of each row above)"
        );
    }
    Ok(())
}

/// A histogram bucket `(lower, upper]` in milliseconds.
fn bucket(q: Quantile) -> String {
    format!("({}, {}]", trim(q.lower), trim(q.upper))
}

fn trim(ms: f64) -> String {
    let s = format!("{ms:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// How many times lower `cached` is than `uncached`, as the bounds their buckets allow.
fn ratio_bounds(uncached: Quantile, cached: Quantile) -> String {
    let low = uncached.lower / cached.upper;
    if cached.lower > 0.0 {
        format!("{low:.1}x to {:.1}x", uncached.upper / cached.lower)
    } else {
        format!("at least {low:.1}x")
    }
}

fn print(rows: &[Row], peer: Option<&crate::Row>, args: &Args) {
    println!(
        "\nToken endpoint and SSR page (one authenticated query), RS256, {} connections, {} s per run",
        args.connections, args.seconds
    );
    println!(
        "client: latency to the whole response; server: the gateway's TTFB histogram, interpolated, with its bucket"
    );
    println!(
        "a request counts only if its body holds what it should (a token; the user's name and tasks); the rest are errors\n"
    );
    println!(
        "{:<9} {:<19} {:>9} {:>8} {:>8} {:>8} {:>16} {:>8} {:>16} {:>7} {:>16} {:>9}",
        "what",
        "cache",
        "req/s",
        "p50 ms",
        "p99 ms",
        "srv p50",
        "bucket",
        "srv p99",
        "bucket",
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
            "{:<9} {:<19} {:>9.0} {:>8.2} {:>8.2} {:>8.3} {:>16} {:>8.3} {:>16} {:>7} {:>16} {:>9}",
            row.what,
            row.cache,
            row.stats.rps(),
            row.stats.percentile_ms(0.50),
            row.stats.percentile_ms(0.99),
            row.server_p50.interpolated,
            bucket(row.server_p50),
            row.server_p99.interpolated,
            bucket(row.server_p99),
            row.stats.errors,
            row.outcomes,
            ratio
        );
    }
    if let Some(p) = peer {
        println!(
            "{:<9} {:<19} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>16} {:>8} {:>16} {:>7} {:>16} {:>9}",
            "token",
            p.server,
            p.stats.rps(),
            p.stats.percentile_ms(0.50),
            p.stats.percentile_ms(0.99),
            "-",
            "",
            "-",
            "",
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
        println!(
            "\nSSR TTFB p50, uncached vs cached token, server-side (bucket bounds): uncached {} ms; memory {} ms ({} lower); Redis {} ms ({} lower)",
            bucket(off.server_p50),
            bucket(mem.server_p50),
            ratio_bounds(off.server_p50, mem.server_p50),
            bucket(redis.server_p50),
            ratio_bounds(off.server_p50, redis.server_p50),
        );
        let client = |r: &Row| r.stats.percentile_ms(0.50);
        println!(
            "SSR p50, client-side: uncached {:.3} ms; memory {:.3} ms ({:.1}x lower); Redis {:.3} ms ({:.1}x lower)",
            client(off),
            client(mem),
            client(off) / client(mem),
            client(redis),
            client(off) / client(redis)
        );
        let watched = |r: &Row| {
            let (ok, failed, fetched) = r.page_queries;
            format!(
                "{:.0}% ({:.0} with an error, {:.0} fetched)",
                100.0 * ok / (ok + failed + fetched).max(1.0),
                failed,
                fetched
            )
        };
        println!(
            "page queries answered with a value from a live watch: off {}, memory {}, Redis {}",
            watched(off),
            watched(mem),
            watched(redis)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(counts: &[(&str, u64)]) -> String {
        let mut text = "# TYPE edge_gateway_request_duration_seconds histogram\n".to_owned();
        for (le, n) in counts {
            text.push_str(&format!(
                "edge_gateway_request_duration_seconds_bucket{{route=\"/x\",le=\"{le}\"}} {n}\n"
            ));
        }
        text
    }

    #[test]
    fn a_quantile_is_the_bucket_it_falls_in() {
        let before = scrape(&[("0.00001", 0), ("0.00002", 0), ("0.00003", 0), ("+Inf", 0)]);
        let after = scrape(&[
            ("0.00001", 10),
            ("0.00002", 60),
            ("0.00003", 100),
            ("+Inf", 100),
        ]);
        let q = server_quantile(&before, &after, "/x", 0.5).unwrap();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            near(q.lower, 0.01) && near(q.upper, 0.02),
            "{} {}",
            q.lower,
            q.upper
        );
        assert!(q.interpolated > 0.01 && q.interpolated <= 0.02);
        let q = server_quantile(&before, &after, "/x", 0.99).unwrap();
        assert!(
            near(q.lower, 0.02) && near(q.upper, 0.03),
            "{} {}",
            q.lower,
            q.upper
        );
        // A route the run never reached, or no histogram at all, is an error.
        assert!(server_quantile(&before, &after, "/y", 0.5).is_err());
        assert!(server_quantile("", "", "/x", 0.5).is_err());
        assert_eq!(
            ratio_bounds(
                Quantile {
                    interpolated: 6.0,
                    lower: 5.0,
                    upper: 7.5
                },
                Quantile {
                    interpolated: 0.02,
                    lower: 0.015,
                    upper: 0.02
                },
            ),
            "250.0x to 500.0x"
        );
    }
}

//! `edge-bench sync`: one query watched by N WebSocket clients, directly on devconvex and
//! through the query service, in one run; then the HTTP query overhead of the proxy.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::{counter, free_port, spawn_quiet, wait_ready};

pub struct Args {
    clients: Vec<usize>,
    changes: usize,
    http: usize,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut args = Args {
            clients: vec![1000, 10_000],
            changes: 5,
            http: 2000,
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--clients" => {
                    args.clients = it
                        .next()
                        .context("--clients LIST")?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--changes" => args.changes = it.next().context("--changes N")?.parse()?,
                "--http" => args.http = it.next().context("--http N")?.parse()?,
                other => bail!("unknown argument `{other}`"),
            }
        }
        Ok(args)
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

struct Row {
    target: &'static str,
    clients: usize,
    upstream_subscriptions: f64,
    executions_per_change: f64,
    latencies: Vec<Duration>,
    missed: usize,
    kib_per_client: f64,
}

/// Change `i` is the message body `change-i`; every client records when it first sees it.
type Sent = Arc<Mutex<Vec<Option<Instant>>>>;

async fn client(
    ws_url: String,
    sent: Sent,
    seen: tokio::sync::mpsc::UnboundedSender<(usize, Duration)>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls = tokio_tungstenite::Connector::Rustls(crate::trust().client_config());
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(ws_url, None, false, Some(tls)).await?;
    let (mut sink, mut stream) = ws.split();
    let connect = json!({"type": "Connect", "sessionId": "bench", "connectionCount": 0, "lastCloseReason": null});
    let add = json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
        "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "bench"}]}]});
    sink.send(Message::Text(connect.to_string().into())).await?;
    sink.send(Message::Text(add.to_string().into())).await?;
    let mut got_first = false;
    let mut recorded = 0usize;
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(m)) => m,
                    _ => break,
                },
                _ = stop.changed() => break,
            };
            let Message::Text(text) = m else { continue };
            if !text.contains("QueryUpdated") {
                continue;
            }
            if !got_first {
                got_first = true;
                let _ = ready.send(()).await;
            }
            // The newest message is the list's last, so its body is the text's last
            // `"change-N"`: found without parsing every client's whole list (the load generator
            // shares the machine with the service it measures).
            let Some(last) = text.rfind("\"change-").map(|at| &text[at + 1..]) else {
                continue;
            };
            let last = &last[..last.find('"').unwrap_or(last.len())];
            if let Some(i) = last
                .strip_prefix("change-")
                .and_then(|i| i.parse::<usize>().ok())
                && i >= recorded
                && let Some(Some(t0)) = sent.lock().unwrap().get(i).copied()
            {
                recorded = i + 1;
                let _ = seen.send((i, t0.elapsed()));
            }
        }
        let _ = sink.close().await;
    });
    Ok(())
}

struct Stack {
    devconvex: String,
    query: String,
    devconvex_pid: u32,
    query_pid: u32,
    token: String,
    _children: Vec<tokio::process::Child>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(bin: &Path) -> anyhow::Result<Stack> {
    let dir = std::env::temp_dir().join(format!("edge-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (grpc, http, gw, dc, qh, qg) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let auth_config = json!({"providers": [{"type": "customJwt", "issuer": "http://localhost:8080", "applicationID": "convex",
        "algorithm": "RS256", "jwks": format!("http://127.0.0.1:{http}/api/auth/jwks")}]});
    let env = [
        ("BETTER_AUTH_SECRET", crate::SECRET.to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/auth.db", dir.display()),
        ),
        ("AUTH_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR", format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL", format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{gw}")),
        ("DEVCONVEX_ADDR", format!("127.0.0.1:{dc}")),
        ("DEVCONVEX_AUTH_CONFIG", auth_config.to_string()),
        ("CONVEX_URL", format!("http://127.0.0.1:{dc}")),
        ("QUERY_HTTP_ADDR", format!("127.0.0.1:{qh}")),
        ("QUERY_GRPC_ADDR", format!("127.0.0.1:{qg}")),
        ("RUST_LOG", "error".to_owned()),
    ];
    let mut children = Vec::new();
    for (service, ready) in [
        ("auth", format!("http://127.0.0.1:{http}/readyz")),
        ("gateway", format!("http://127.0.0.1:{gw}/readyz")),
        ("devconvex", format!("http://127.0.0.1:{dc}/readyz")),
        ("query", format!("http://127.0.0.1:{qh}/readyz")),
    ] {
        let mut cmd = Command::new(bin);
        cmd.arg(service);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        children.push(spawn_quiet(cmd)?);
        wait_ready(&ready).await?;
    }
    let (devconvex_pid, query_pid) = (
        children[2].id().context("pid")?,
        children[3].id().context("pid")?,
    );
    let client = crate::http_client().build()?;
    let r = client
        .post(format!("http://127.0.0.1:{gw}/api/auth/sign-up/email"))
        .json(&json!({"name": "Bench", "email": "sync@example.com", "password": crate::PASSWORD}))
        .send()
        .await?
        .error_for_status()?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("cookie")?
        .to_str()?
        .split(';')
        .next()
        .context("cookie")?
        .to_owned();
    let token: Value = client
        .get(format!("http://127.0.0.1:{gw}/api/auth/convex/token"))
        .header("cookie", cookie)
        .send()
        .await?
        .json()
        .await?;
    Ok(Stack {
        devconvex: format!("http://127.0.0.1:{dc}"),
        query: format!("http://127.0.0.1:{qh}"),
        devconvex_pid,
        query_pid,
        token: token["token"].as_str().context("token")?.to_owned(),
        _children: children,
        _dir: TempDir(dir),
    })
}

async fn metrics(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{url}/metrics")).await?.text().await?)
}

async fn run_clients(
    stack: &Stack,
    target: &'static str,
    n: usize,
    changes: usize,
    offset: usize,
) -> anyhow::Result<Row> {
    let (base, pid) = if target == "direct" {
        (&stack.devconvex, stack.devconvex_pid)
    } else {
        (&stack.query, stack.query_pid)
    };
    let ws_url = format!("{}/api/1.48.0/sync", base.replacen("http://", "ws://", 1));
    let rss_before = rss_kib(pid);
    let sent: Sent = Arc::new(Mutex::new(vec![None; offset + changes]));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opened = futures_util::stream::iter(0..n)
        .map(|_| {
            client(
                ws_url.clone(),
                sent.clone(),
                seen_tx.clone(),
                ready_tx.clone(),
                stop_rx.clone(),
            )
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for r in opened {
        r?;
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("a client's first value")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_client = (rss_kib(pid).saturating_sub(rss_before)) as f64 / n as f64;
    let before = metrics(&stack.devconvex).await?;
    let upstream_subscriptions = counter(&before, "devconvex_subscriptions");
    let exec_name = "devconvex_function_executions_total{path=\"messages:list\"}";
    let http = crate::http_client().build()?;
    let mut latencies = Vec::new();
    for i in offset..offset + changes {
        sent.lock().unwrap()[i] = Some(Instant::now());
        http.post(format!("{}/api/mutation", stack.devconvex))
            .bearer_auth(&stack.token)
            .json(&json!({"path": "messages:send", "args": {"channel": "bench", "body": format!("change-{i}")}}))
            .send()
            .await?
            .error_for_status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < n && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await {
                Ok(Some((change, latency))) if change == i => {
                    latencies.push(latency);
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => {}
            }
        }
    }
    let after = metrics(&stack.devconvex).await?;
    let _ = stop_tx.send(true);
    let executions_per_change =
        (counter(&after, exec_name) - counter(&before, exec_name)) / changes as f64;
    latencies.sort();
    let missed = n * changes - latencies.len();
    Ok(Row {
        target,
        clients: n,
        upstream_subscriptions,
        executions_per_change,
        latencies,
        missed,
        kib_per_client,
    })
}

async fn wait_drained(stack: &Stack) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&metrics(&stack.devconvex).await?, "devconvex_subscriptions") > 0.0 {
        if Instant::now() > deadline {
            bail!("subscriptions did not drain");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn http_overhead(stack: &Stack, n: usize) -> anyhow::Result<[(f64, f64); 2]> {
    let client = crate::http_client().build()?;
    let mut out = [(0.0, 0.0); 2];
    for (slot, base) in [&stack.devconvex, &stack.query].into_iter().enumerate() {
        let url = format!("{base}/api/query");
        let body = json!({"path": "config:get", "args": {}, "format": "json"});
        for _ in 0..100 {
            client.post(&url).json(&body).send().await?.bytes().await?;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            client
                .post(&url)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            times.push(t.elapsed());
        }
        times.sort();
        out[slot] = (percentile_ms(&times, 0.5), percentile_ms(&times, 0.99));
    }
    Ok(out)
}

pub async fn run(bin: &Path, args: Args) -> anyhow::Result<()> {
    let stack = start(bin).await?;
    let mut rows = Vec::new();
    let mut offset = 0;
    for &n in &args.clients {
        for target in ["direct", "proxy"] {
            eprintln!("{n} clients, {target}");
            rows.push(run_clients(&stack, target, n, args.changes, offset).await?);
            offset += args.changes;
            wait_drained(&stack).await?;
        }
    }
    let http = http_overhead(&stack, args.http).await?;
    println!(
        "\nOne query (messages:list), N WebSocket clients, {} changes; devconvex as the upstream (release binaries)\n",
        args.changes
    );
    println!(
        "{:<7} {:>7} {:>14} {:>16} {:>9} {:>9} {:>7} {:>13}",
        "target",
        "clients",
        "upstream subs",
        "executions/chg",
        "p50 ms",
        "p99 ms",
        "missed",
        "KiB/client"
    );
    for r in &rows {
        println!(
            "{:<7} {:>7} {:>14} {:>16.1} {:>9.1} {:>9.1} {:>7} {:>13.1}",
            r.target,
            r.clients,
            r.upstream_subscriptions,
            r.executions_per_change,
            percentile_ms(&r.latencies, 0.5),
            percentile_ms(&r.latencies, 0.99),
            r.missed,
            r.kib_per_client
        );
    }
    println!(
        "\nHTTP query (config:get, not subscribed), {} sequential calls: direct p50 {:.3} ms p99 {:.3} ms; through the proxy p50 {:.3} ms p99 {:.3} ms; overhead p50 {:.3} ms",
        args.http,
        http[0].0,
        http[0].1,
        http[1].0,
        http[1].1,
        http[1].0 - http[0].0
    );
    Ok(())
}

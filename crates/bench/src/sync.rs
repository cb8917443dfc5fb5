//! `edge-bench sync`: one query watched by N WebSocket clients, on devconvex directly and through
//! the query service, anonymous and signed in as many users; then the HTTP query overhead of the
//! proxy.
//!
//! Every row runs on a fresh set of processes, so its memory figure is what that many clients
//! cost a process that served nothing before. A client that does not see a change within 30 s
//! is counted as missed, beside the latency of those that did.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::{delta, free_port, metric, percentile_ms, spawn_quiet, wait_ready};

/// How long every client has to see a change before it counts as missed.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

pub struct Args {
    clients: Vec<usize>,
    changes: usize,
    http: usize,
    users: usize,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut args = Args {
            clients: vec![1000, 10_000],
            changes: 5,
            http: 2000,
            users: 100,
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
                "--users" => args.users = it.next().context("--users N")?.parse()?,
                other => bail!("unknown argument `{other}`"),
            }
        }
        if args.changes == 0 || args.clients.contains(&0) {
            bail!("--changes and --clients must be at least 1");
        }
        Ok(args)
    }
}

/// Resident memory of a process, in KiB; an unreadable figure aborts the run.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` figure (`VmRSS:`, `VmHWM:`), in KiB; an unreadable one aborts the
/// run.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status for the memory figure"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("/proc/{pid}/status has no {field} line"))?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("VmRSS of {pid} is {line:?}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Devconvex,
    Proxy,
}

struct Row {
    target: Target,
    /// Signed-in users the clients are spread over (0: anonymous).
    users: usize,
    clients: usize,
    upstream_subscriptions: f64,
    executions_per_change: f64,
    latencies: Vec<Duration>,
    missed: usize,
    kib_per_client: f64,
}

/// Change `i` is the message body `change-i`; every client records when it first sees it.
type Sent = Arc<Mutex<Vec<Option<Instant>>>>;

/// What one client does: its token (none: anonymous) and whether it also watches its own tasks.
#[derive(Clone)]
struct Plan {
    ws_url: String,
    token: Option<String>,
    own_tasks: bool,
}

async fn client(
    plan: Plan,
    sent: Sent,
    seen: tokio::sync::mpsc::UnboundedSender<(usize, Duration)>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls = tokio_tungstenite::Connector::Rustls(crate::trust().client_config());
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        plan.ws_url.as_str(),
        None,
        false,
        Some(tls),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let connect = json!({"type": "Connect", "sessionId": "bench", "connectionCount": 0, "lastCloseReason": null});
    sink.send(Message::Text(connect.to_string().into())).await?;
    if let Some(token) = &plan.token {
        let auth =
            json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token});
        sink.send(Message::Text(auth.to_string().into())).await?;
    }
    let mut adds = vec![
        json!({"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "bench"}]}),
    ];
    if plan.own_tasks {
        adds.push(json!({"type": "Add", "queryId": 1, "udfPath": "tasks:list", "args": [{}]}));
    }
    let wanted = adds.len();
    let add =
        json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": adds});
    sink.send(Message::Text(add.to_string().into())).await?;
    let mut first_values = BTreeSet::new();
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
            if first_values.len() < wanted {
                // Until every query has its first value, frames are read in full: an error here
                // (a refused token, a failed query) must stop the run, not leave it waiting.
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("Transition") => {
                        for m in v["modifications"].as_array().into_iter().flatten() {
                            match m["type"].as_str() {
                                Some("QueryUpdated") => {
                                    first_values.insert(m["queryId"].as_u64());
                                }
                                Some("QueryFailed") => {
                                    let _ = ready.send(Err(format!("a query failed: {m}"))).await;
                                }
                                _ => {}
                            }
                        }
                        if first_values.len() == wanted {
                            let _ = ready.send(Ok(())).await;
                        }
                    }
                    Some(other @ ("AuthError" | "FatalError")) => {
                        let _ = ready.send(Err(format!("{other}: {text}"))).await;
                    }
                    _ => {}
                }
                continue;
            }
            if !text.contains("QueryUpdated") {
                continue;
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

/// auth, gateway, devconvex and the query service as fresh release processes.
pub(crate) struct Stack {
    devconvex: String,
    pub(crate) query: String,
    gateway: String,
    devconvex_pid: u32,
    pub(crate) query_pid: u32,
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
    start_with(bin, &[]).await
}

/// [`start`] with more environment for every process (`extra` wins).
pub(crate) async fn start_with(bin: &Path, extra: &[(&str, String)]) -> anyhow::Result<Stack> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STACKS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edge-bench-sync-{}-{}",
        std::process::id(),
        STACKS.fetch_add(1, Ordering::Relaxed)
    ));
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
        ("AUTH_SIGN_IN_LIMIT_PER_ADDRESS", "100000".to_owned()),
        ("AUTH_RATE_LIMIT_MAX", "100000".to_owned()),
        ("GATEWAY_READ_RATE_LIMIT_MAX", "0".to_owned()),
        ("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{gw}")),
        ("DEVCONVEX_ADDR", format!("127.0.0.1:{dc}")),
        ("DEVCONVEX_AUTH_CONFIG", auth_config.to_string()),
        ("CONVEX_URL", format!("http://127.0.0.1:{dc}")),
        ("QUERY_HTTP_ADDR", format!("127.0.0.1:{qh}")),
        ("QUERY_GRPC_ADDR", format!("127.0.0.1:{qg}")),
        // As `dev` sets it: the messages are the same for everyone, tasks are per user.
        (
            "QUERY_SHARED_FUNCTIONS",
            "messages:list,config:get".to_owned(),
        ),
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
        for (k, v) in env.iter().chain(extra) {
            cmd.env(k, v);
        }
        children.push(spawn_quiet(cmd)?);
        wait_ready(&ready).await?;
    }
    let (devconvex_pid, query_pid) = (
        children[2].id().context("pid")?,
        children[3].id().context("pid")?,
    );
    Ok(Stack {
        devconvex: format!("http://127.0.0.1:{dc}"),
        query: format!("http://127.0.0.1:{qh}"),
        gateway: format!("http://127.0.0.1:{gw}"),
        devconvex_pid,
        query_pid,
        _children: children,
        _dir: TempDir(dir),
    })
}

/// Signs up `email` through the gateway; its Convex JWT.
async fn token_for(client: &reqwest::Client, gateway: &str, email: &str) -> anyhow::Result<String> {
    let r = client
        .post(format!("{gateway}/api/auth/sign-up/email"))
        .json(&json!({"name": "Bench", "email": email, "password": crate::PASSWORD}))
        .send()
        .await?
        .error_for_status()?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("sign-up sets a cookie")?
        .to_str()?
        .split(';')
        .next()
        .context("cookie")?
        .to_owned();
    let token: Value = client
        .get(format!("{gateway}/api/auth/convex/token"))
        .header("cookie", cookie)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(token["token"].as_str().context("a token")?.to_owned())
}

/// Signs up `n` users; their JWTs.
async fn tokens(stack: &Stack, n: usize) -> anyhow::Result<Vec<String>> {
    let client = crate::http_client().build()?;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, gateway) = (client.clone(), stack.gateway.clone());
            async move { token_for(&client, &gateway, &format!("user{i}@example.com")).await }
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub(crate) async fn metrics(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{url}/metrics")).await?.text().await?)
}

/// Waits until `family` (a gauge) on `url` reads `want`: the process has taken in every client.
async fn wait_gauge(url: &str, family: &str, want: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(&metrics(url).await?, family, "")?;
        if now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{family} stayed at {now}, not {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_clients(
    bin: &Path,
    target: Target,
    users: usize,
    n: usize,
    changes: usize,
) -> anyhow::Result<Row> {
    let stack = start(bin).await?;
    let writer = token_for(
        &crate::http_client().build()?,
        &stack.gateway,
        "writer@example.com",
    )
    .await?;
    let user_tokens = tokens(&stack, users).await?;
    let (base, pid) = match target {
        Target::Devconvex => (&stack.devconvex, stack.devconvex_pid),
        Target::Proxy => (&stack.query, stack.query_pid),
    };
    let ws_url = format!("{}/api/1.48.0/sync", base.replacen("http://", "ws://", 1));
    let rss_before = rss_kib(pid)?;
    let sent: Sent = Arc::new(Mutex::new(vec![None; changes]));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opened = futures_util::stream::iter(0..n)
        .map(|i| {
            let plan = Plan {
                ws_url: ws_url.clone(),
                token: (users > 0).then(|| user_tokens[i % users].clone()),
                own_tasks: users > 0,
            };
            client(
                plan,
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
        r.context("a client could not connect")?;
    }
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("a client was refused its first values: {e}"),
            _ => bail!("a client had no first values within 60 s"),
        }
    }
    // Every client has its values; memory is read once the process counts them all.
    let queries_per_client = if users > 0 { 2.0 } else { 1.0 };
    match target {
        Target::Proxy => {
            wait_gauge(base, "edge_query_downstream_connections", n as f64).await?;
            wait_gauge(
                base,
                "edge_query_downstream_subscriptions",
                n as f64 * queries_per_client,
            )
            .await?
        }
        Target::Devconvex => {
            wait_gauge(
                base,
                "devconvex_subscriptions",
                n as f64 * queries_per_client,
            )
            .await?
        }
    }
    let rss_after = rss_kib(pid)?;
    if rss_after <= rss_before {
        bail!(
            "resident memory of {pid} did not grow with {n} clients ({rss_before} → {rss_after} KiB): no figure"
        );
    }
    let kib_per_client = (rss_after - rss_before) as f64 / n as f64;
    let before = metrics(&stack.devconvex).await?;
    let upstream_subscriptions = metric(&before, "devconvex_subscriptions", "")?;
    let exec = (
        "devconvex_function_executions_total",
        "path=\"messages:list\"",
    );
    let http = crate::http_client().build()?;
    let mut latencies = Vec::new();
    for i in 0..changes {
        sent.lock().unwrap()[i] = Some(Instant::now());
        http.post(format!("{}/api/mutation", stack.devconvex))
            .bearer_auth(&writer)
            .json(&json!({"path": "messages:send", "args": {"channel": "bench", "body": format!("change-{i}")}}))
            .send()
            .await?
            .error_for_status()?;
        let deadline = tokio::time::Instant::now() + CHANGE_DEADLINE;
        let mut got = 0;
        while got < n {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some((change, latency))) if change == i => {
                    latencies.push(latency);
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let after = metrics(&stack.devconvex).await?;
    let _ = stop_tx.send(true);
    let executions_per_change = delta(&before, &after, exec.0, exec.1)? / changes as f64;
    latencies.sort();
    let missed = n * changes - latencies.len();
    Ok(Row {
        target,
        users,
        clients: n,
        upstream_subscriptions,
        executions_per_change,
        latencies,
        missed,
        kib_per_client,
    })
}

async fn http_overhead(bin: &Path, n: usize) -> anyhow::Result<[(f64, f64); 2]> {
    let stack = start(bin).await?;
    let client = crate::http_client().build()?;
    let mut out = [(0.0, 0.0); 2];
    for (slot, base) in [&stack.devconvex, &stack.query].into_iter().enumerate() {
        let url = format!("{base}/api/query");
        let body = json!({"path": "config:get", "args": {}, "format": "json"});
        let call = || async {
            let t = Instant::now();
            let v: Value = client
                .post(&url)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if v["status"] != "success" {
                bail!("config:get answered {v}");
            }
            anyhow::Ok(t.elapsed())
        };
        for _ in 0..100 {
            call().await?;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(call().await?);
        }
        times.sort();
        out[slot] = (percentile_ms(&times, 0.5), percentile_ms(&times, 0.99));
    }
    Ok(out)
}

pub async fn run(bin: &Path, args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut whos = vec![0];
    if args.users > 0 {
        whos.push(args.users);
    }
    for &n in &args.clients {
        for &users in &whos {
            for target in [Target::Devconvex, Target::Proxy] {
                let name = match target {
                    Target::Devconvex => "devconvex directly",
                    Target::Proxy => "through the query service",
                };
                eprintln!("{n} clients, {users} users, {name}");
                rows.push(run_clients(bin, target, users, n, args.changes).await?);
            }
        }
    }
    let http = http_overhead(bin, args.http).await?;
    println!(
        "\nN WebSocket clients, {} changes of messages:list (shared); signed-in clients also watch their own tasks:list; \
         devconvex as the upstream (release binaries, a fresh process per row)\n",
        args.changes
    );
    println!(
        "{:<9} {:>7} {:>7} {:>14} {:>16} {:>9} {:>9} {:>7} {:>11}",
        "target",
        "users",
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
            "{:<9} {:>7} {:>7} {:>14} {:>16.1} {:>9.1} {:>9.1} {:>7} {:>11.1}",
            match r.target {
                Target::Devconvex => "devconvex",
                Target::Proxy => "proxy",
            },
            if r.users == 0 {
                "anon".to_owned()
            } else {
                r.users.to_string()
            },
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
        "\nlatency: mutation sent to each client seeing the change (missed: not seen within {} s, left out of p50/p99)",
        CHANGE_DEADLINE.as_secs()
    );
    println!(
        "devconvex directly runs each session's query itself; a Convex deployment answers identical queries from its cache, \
         so the devconvex rows show devconvex's cost, not Convex's"
    );
    println!(
        "\nHTTP query (config:get, not subscribed), {} sequential calls: direct p50 {:.3} ms p99 {:.3} ms; through the proxy p50 {:.3} ms p99 {:.3} ms; overhead p50 {:.3} ms",
        args.http,
        http[0].0,
        http[0].1,
        http[1].0,
        http[1].1,
        http[1].0 - http[0].0
    );
    let missed: usize = rows.iter().map(|r| r.missed).sum();
    if missed > 0 {
        bail!("{missed} client updates were missed (see the missed column above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreadable_memory_figure_is_an_error() {
        assert!(super::rss_kib(std::process::id()).unwrap() > 0);
        // Above the kernel's largest pid: no such process.
        assert!(super::rss_kib(4_194_305).is_err());
    }
}

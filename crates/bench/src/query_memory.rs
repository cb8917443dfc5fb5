//! `edge-bench query-memory`: what the query service's memory grows by for the queries its
//! clients hold, against the bytes its limits count for them.
//!
//! A handful of client addresses (`X-Forwarded-For` from a trusted proxy, as behind the
//! shipped Ingress), each with several signed-out sockets, add large queries, every one
//! distinct, up to about their limits (8 MiB per socket, 32 MiB per address by default). Once
//! every query has its first result, the row prints the query bytes held (path and canonical
//! arguments, what `QUERY_MAX_*_QUERY_BYTES` count), the query process's resident memory
//! before and after (`VmRSS`), its peak (`VmHWM`), and the growth per byte of queries. A
//! refused query, or a socket ended, stops the run with its message.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::sync::{rss_kib, start_with, status_kib};

pub struct Args {
    addresses: usize,
    sockets: usize,
    queries: usize,
    query_bytes: usize,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        // 4 addresses × 4 sockets × 2,000 queries of 4 KB: each socket just under its 8 MiB,
        // each address under its 32 MiB, 128 MB in all.
        let mut args = Args {
            addresses: 4,
            sockets: 4,
            queries: 2000,
            query_bytes: 4000,
        };
        while let Some(arg) = it.next() {
            let mut number = |name: &str| -> anyhow::Result<usize> {
                Ok(it.next().with_context(|| format!("{name} N"))?.parse()?)
            };
            match arg.as_str() {
                "--addresses" => args.addresses = number("--addresses")?,
                "--sockets" => args.sockets = number("--sockets")?,
                "--queries" => args.queries = number("--queries")?,
                "--query-bytes" => args.query_bytes = number("--query-bytes")?,
                other => bail!("unknown argument `{other}`"),
            }
        }
        if [args.addresses, args.sockets, args.queries].contains(&0) || args.query_bytes < 100 {
            bail!("--addresses, --sockets and --queries at least 1, --query-bytes at least 100");
        }
        Ok(args)
    }
}

/// The channel of query `i` of socket `socket`: `query_bytes` long with its path and the
/// arguments' JSON around it, and unlike any other.
fn channel(socket: usize, i: usize, query_bytes: usize) -> String {
    let tag = format!("s{socket}-q{i}-");
    // `messages:list` (13) and `{"channel":""}` (14).
    let pad = query_bytes.saturating_sub(27 + tag.len());
    format!("{tag}{}", "x".repeat(pad))
}

/// One socket: adds its queries in batches of 100 and reads everything it is sent, counting
/// first results into `answered`; a `FatalError` or a failed query goes to `failed`.
async fn socket(
    ws_url: String,
    address: String,
    socket: usize,
    args: (usize, usize),
    answered: Arc<AtomicUsize>,
    failed: tokio::sync::mpsc::UnboundedSender<String>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (queries, query_bytes) = args;
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut sink, mut stream) = ws.split();
    let connect = json!({"type": "Connect", "sessionId": format!("memory-{socket}"),
        "connectionCount": 0, "lastCloseReason": null});
    sink.send(Message::Text(connect.to_string().into())).await?;
    for (version, start) in (0..queries).step_by(100).enumerate() {
        let adds: Vec<Value> = (start..(start + 100).min(queries))
            .map(|i| {
                json!({"type": "Add", "queryId": i, "udfPath": "messages:list",
                    "args": [{"channel": channel(socket, i, query_bytes)}]})
            })
            .collect();
        let message = json!({"type": "ModifyQuerySet", "baseVersion": version,
            "newVersion": version + 1, "modifications": adds});
        sink.send(Message::Text(message.to_string().into())).await?;
    }
    Ok(tokio::spawn(async move {
        let _keep = sink;
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.contains("\"FatalError\"") || text.contains("\"QueryFailed\"") {
                let _ = failed.send(text.chars().take(300).collect());
                continue;
            }
            answered.fetch_add(text.matches("\"QueryUpdated\"").count(), Ordering::Relaxed);
        }
        let _ = failed.send(format!("socket {socket} closed"));
    }))
}

pub async fn run(bin: &Path, args: Args) -> anyhow::Result<()> {
    let stack = start_with(bin, &[("QUERY_TRUSTED_PROXIES", "127.0.0.1".to_owned())]).await?;
    let ws_url = format!(
        "{}/api/1.48.0/sync",
        stack.query.replacen("http://", "ws://", 1)
    );
    let pid = stack.query_pid;
    let rss_before = rss_kib(pid)?;
    let answered = Arc::new(AtomicUsize::new(0));
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    let mut held_bytes = 0usize;
    let started = Instant::now();
    for a in 0..args.addresses {
        for s in 0..args.sockets {
            let n = a * args.sockets + s;
            let reader = socket(
                ws_url.clone(),
                format!("10.9.{a}.1"),
                n,
                (args.queries, args.query_bytes),
                answered.clone(),
                failed_tx.clone(),
            )
            .await?;
            readers.push(reader);
            held_bytes += (0..args.queries)
                .map(|i| {
                    "messages:list".len()
                        + json!({"channel": channel(n, i, args.query_bytes)})
                            .to_string()
                            .len()
                })
                .sum::<usize>();
        }
    }
    let total = args.addresses * args.sockets * args.queries;
    let deadline = Instant::now() + Duration::from_secs(600);
    while answered.load(Ordering::Relaxed) < total {
        if let Ok(message) = failed.try_recv() {
            bail!("a client was refused: {message}");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} queries answered",
                answered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    // Let the last transitions leave the send queues before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscriptions = crate::metric(
        &crate::sync::metrics(&stack.query).await?,
        "edge_query_upstream_subscriptions",
        "",
    )?;
    let (rss_after, peak) = (rss_kib(pid)?, status_kib(pid, "VmHWM:")?);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let grown = rss_after.saturating_sub(rss_before) * 1024;
    println!(
        "query-memory: {} addresses × {} sockets × {} queries of {} B ({} queries, {subscriptions} \
         upstream subscriptions, all answered in {:.1} s)",
        args.addresses,
        args.sockets,
        args.queries,
        args.query_bytes,
        total,
        took.as_secs_f64()
    );
    println!(
        "query bytes held {:.1} MiB | RSS before {:.1} MiB, after {:.1} MiB (+{:.1} MiB), peak \
         {:.1} MiB | RSS growth per query byte {:.2}",
        held_bytes as f64 / 1024.0 / 1024.0,
        mib(rss_before),
        mib(rss_after),
        grown as f64 / 1024.0 / 1024.0,
        mib(peak),
        grown as f64 / held_bytes as f64
    );
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

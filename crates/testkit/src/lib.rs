//! Test fixtures: real Postgres and Redis, one fresh database per test, and the shared
//! fixtures directory (`../shared` beside the checkout).
//!
//! Postgres is found through `DATABASE_URL`, else on 127.0.0.1:5432; if neither answers, a
//! throwaway cluster is started from the local `initdb`/`pg_ctl` binaries. Redis likewise
//! through `REDIS_URL`, 127.0.0.1:6379, or a throwaway `redis-server`. Mail goes to a real
//! SMTP server (`SmtpSink`, aiosmtpd).

mod mail;
mod postgres;
mod redis;
mod relay;
mod tls;

use std::path::PathBuf;

pub use mail::SmtpSink;
pub use postgres::{TestDb, test_database};
pub use redis::{TestRedis, redis_url, spawn_redis, spawn_redis_tls};
pub use relay::Relay;
pub use tls::{ServerCert, TestCa, TlsRelay};

/// The shared fixtures directory: `CONVEX_EDGE_SHARED`, else `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVEX_EDGE_SHARED") {
        return PathBuf::from(dir);
    }
    let root = workspace_root();
    let beside = root.join("../shared");
    assert!(
        beside.join("fixtures").is_dir(),
        "shared fixtures not found at {}: set CONVEX_EDGE_SHARED",
        beside.display()
    );
    beside
}

/// The workspace root (where the top `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() && dir.pop() {}
    dir
}

/// The Better Auth golden file, parsed.
pub fn better_auth_fixture() -> serde_json::Value {
    let path = shared_dir().join("fixtures/better-auth-1.6.15.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A Wycheproof vector file from `testvectors/wycheproof/`, parsed.
pub fn wycheproof(name: &str) -> serde_json::Value {
    let path = shared_dir().join("testvectors/wycheproof").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("vector file is JSON")
}

/// Finds `bin` on `PATH` or in the usual PostgreSQL install folders.
pub(crate) fn find_binary(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (for child processes that cannot take a pre-bound listener).
///
/// Ports come from 20000–31999, below Linux's ephemeral range (32768–60999): a port handed out
/// here is never the one the kernel gives an outgoing connection or another `bind(0)` in the
/// moment before the child binds it (a CI run once lost an auth process that way). Each call
/// in a process takes the next port, starting at an offset from the process id, so concurrent
/// tests and test binaries do not pick the same one; a port something already listens on is
/// skipped.
///
/// # Panics
/// When all 12,000 ports are taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "convex-edge-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl TempDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a script of `tests/node` (the real npm clients) with `args` and parses the last line it
/// prints as JSON. Panics with the install command when the packages are missing.
pub async fn node(script: &str, args: &[String]) -> serde_json::Value {
    let dir = workspace_root().join("tests/node");
    assert!(
        dir.join("node_modules").is_dir(),
        "npm packages missing: run `npm ci --prefix tests/node`"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(&dir).arg(script).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("node task")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "{script} printed {stdout:?}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A long-running script of `tests/node` (a server: an OpenID provider, a Better Auth site),
/// killed when dropped.
pub struct NodeServer {
    _child: tokio::process::Child,
    /// The JSON line the script printed once it was ready.
    pub ready: serde_json::Value,
}

/// Starts `script` with `arg` (one JSON argument) and waits, up to 30 s, for the first JSON
/// line it prints (its readiness: the address it listens on).
pub async fn node_server(script: &str, arg: &serde_json::Value) -> NodeServer {
    use tokio::io::AsyncBufReadExt;
    let dir = workspace_root().join("tests/node");
    assert!(
        dir.join("node_modules").is_dir(),
        "npm packages missing: run `npm ci --prefix tests/node`"
    );
    let mut child = tokio::process::Command::new("node")
        .current_dir(&dir)
        .arg(script)
        .arg(arg.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{script} printed nothing within 30 s"))
        .expect("read node stdout")
        .unwrap_or_else(|| panic!("{script} exited before it was ready"));
    let ready = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("{script} printed {line:?}, not JSON"));
    // Keep reading so the script never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    NodeServer {
        _child: child,
        ready,
    }
}

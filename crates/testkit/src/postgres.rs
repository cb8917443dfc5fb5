//! One fresh Postgres database per test.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// A database created for one test; dropped by a later run's sweep (the first
/// [`test_database`] of every test process), not on drop, so a failing test leaves it behind for
/// inspection until then.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgres://…/<name>`
    pub url: String,
    pub name: String,
}

/// The server URL (no database path), found or started once per process.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let candidates = [
            std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres")),
            Some("postgres://postgres@127.0.0.1:5432".to_owned()),
        ];
        for url in candidates.into_iter().flatten() {
            let base = strip_database(&url);
            if reachable(&format!("{base}/postgres")) {
                sweep(&base);
                return base;
            }
        }
        start_throwaway().unwrap_or_else(|e| {
            panic!("no PostgreSQL: set DATABASE_URL, run one on 127.0.0.1:5432, or install postgresql (initdb, pg_ctl): {e}")
        })
    })
}

fn strip_database(url: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url.to_owned(),
    }
}

fn reachable(url: &str) -> bool {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(&url))
                .await
                .ok()?
                .ok()
        })
        .map(|_| ())
    })
    .join()
    .ok()
    .flatten()
    .is_some()
}

/// Drops the `edge_test_<pid>_…` databases of test processes that have ended.
///
/// Safe beside concurrent test runs on the same server: a database is dropped only when the
/// process named in it is gone (this machine's `/proc`; the server is local to the tests), and
/// a database still in use is left (plain `DROP DATABASE` refuses it). Nothing is swept where
/// `/proc` cannot say which processes live.
fn sweep(base: &str) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let url = format!("{base}/postgres");
    let swept = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let mut admin = PgConnection::connect(&url).await.ok()?;
            let names: Vec<(String,)> = sqlx::query_as(
                "SELECT datname FROM pg_database WHERE datname LIKE 'edge\\_test\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .ok()?;
            let mut dropped = 0usize;
            for (name,) in names {
                if !leftover(&name) {
                    continue;
                }
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\"");
                if sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .is_ok()
                {
                    dropped += 1;
                }
            }
            Some(dropped)
        })
    })
    .join()
    .ok()
    .flatten();
    if let Some(n) = swept.filter(|n| *n > 0) {
        eprintln!("edge-testkit: dropped {n} test databases of ended test processes");
    }
}

/// Whether `name` is a test database whose creating process has ended.
fn leftover(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix("edge_test_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn start_throwaway() -> anyhow::Result<String> {
    let initdb = crate::find_binary("initdb").ok_or_else(|| anyhow::anyhow!("initdb not found"))?;
    let pg_ctl = crate::find_binary("pg_ctl").ok_or_else(|| anyhow::anyhow!("pg_ctl not found"))?;
    let dir = std::env::temp_dir().join(format!("convex-edge-pg-{}", std::process::id()));
    let port = crate::free_port();
    let status = Command::new(initdb)
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&dir)
        .output()?;
    anyhow::ensure!(
        status.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = Command::new(pg_ctl)
        .arg("-D")
        .arg(&dir)
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        ))
        .arg("start")
        .output()?;
    anyhow::ensure!(status.status.success(), "pg_ctl start failed");
    Ok(format!("postgres://postgres@127.0.0.1:{port}"))
}

/// A fresh, empty database on the test server.
pub async fn test_database() -> TestDb {
    let base = server_url().to_owned();
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to postgres");
    let name = format!("edge_test_{}", random_suffix());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    TestDb {
        url: format!("{base}/{name}"),
        name,
    }
}

fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_databases_of_ended_processes_are_leftovers() {
        let me = std::process::id();
        assert!(!super::leftover(&format!("edge_test_{me}_1_0")), "our own");
        assert!(!super::leftover("edge_test_1_1_0"), "init lives");
        assert!(!super::leftover("edge_bench_cache"), "not a test database");
        assert!(!super::leftover("edge_test_x_1"), "no pid in the name");
        // A pid above the kernel's maximum was never a process.
        assert!(super::leftover("edge_test_4194305_1_0"));
    }

    #[tokio::test]
    async fn a_leftover_database_is_swept_and_a_live_ones_is_kept() {
        use sqlx::Connection;
        let live = super::test_database().await;
        let base = super::server_url();
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
            .await
            .unwrap();
        // A database as a test process that has ended would have left it. A pid above the
        // kernel's maximum, so that no live process is named (concurrent runs each pick their
        // own counter suffix, so the name is ours alone).
        let dead = format!("edge_test_4194305_{}", super::random_suffix());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {dead}")))
            .execute(&mut admin)
            .await
            .unwrap();
        super::sweep(base);
        let exists = |name: String| {
            let url = format!("{base}/postgres");
            async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
                        .bind(name)
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                n == 1
            }
        };
        assert!(
            !exists(dead).await,
            "the ended process's database is dropped"
        );
        assert!(
            exists(live.name.clone()).await,
            "a live process's database stays"
        );
    }

    #[tokio::test]
    async fn each_call_gets_a_fresh_empty_database() {
        use sqlx::Connection;
        let (a, b) = (super::test_database().await, super::test_database().await);
        assert_ne!(a.name, b.name);
        let mut conn = sqlx::PgConnection::connect(&a.url).await.unwrap();
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 0);
    }
}

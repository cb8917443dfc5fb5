//! One fresh Postgres database per test.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// A database created for one test; dropped by the next run's sweep, not on drop, so a failing
/// test leaves it behind for inspection.
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

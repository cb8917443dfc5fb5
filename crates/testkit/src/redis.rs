//! Redis for tests: the shared local server, or a throwaway `redis-server` a test owns.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis URL: `REDIS_URL`, else 127.0.0.1:6379 if it answers; panics with what to
/// install otherwise.
pub fn redis_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return url;
    }
    if TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().expect("addr"),
        Duration::from_secs(1),
    )
    .is_ok()
    {
        return "redis://127.0.0.1:6379".to_owned();
    }
    panic!("no Redis: set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server")
}

/// A `redis-server` owned by one test; killed on drop.
#[derive(Debug)]
pub struct TestRedis {
    pub url: String,
    pub port: u16,
    child: Child,
}

impl TestRedis {
    /// Kills the server (to simulate an outage).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a throwaway `redis-server` on `port` (0: any free port) and waits until it accepts.
pub fn spawn_redis(port: u16) -> anyhow::Result<TestRedis> {
    let port = if port == 0 { crate::free_port() } else { port };
    let child = start(&["--port", &port.to_string()], port)?;
    Ok(TestRedis {
        url: format!("redis://127.0.0.1:{port}"),
        port,
        child,
    })
}

/// Starts a throwaway `redis-server` that speaks only TLS (`rediss://127.0.0.1:<port>`), its
/// certificate issued by `ca` for 127.0.0.1.
pub fn spawn_redis_tls(ca: &crate::TestCa) -> anyhow::Result<TestRedis> {
    let port = crate::free_port();
    let cert = ca.issue("redis", &["127.0.0.1", "localhost"]);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let child = start(
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&cert.cert_file),
            "--tls-key-file",
            &path(&cert.key_file),
            "--tls-ca-cert-file",
            &path(&ca.ca_file),
            "--tls-auth-clients",
            "no",
        ],
        port,
    )?;
    Ok(TestRedis {
        url: format!("rediss://127.0.0.1:{port}"),
        port,
        child,
    })
}

/// Runs `redis-server` with `args` and waits until `port` accepts connections.
fn start(args: &[&str], port: u16) -> anyhow::Result<Child> {
    let bin = crate::find_binary("redis-server")
        .ok_or_else(|| anyhow::anyhow!("redis-server not found: install redis-server"))?;
    let mut child = Command::new(bin)
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            anyhow::bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn ping(url: &str) -> String {
        let addr = url.trim_start_matches("redis://");
        let mut stream = TcpStream::connect(addr).expect("connect to redis");
        stream.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn shared_and_throwaway_servers_answer() {
        assert_eq!(ping(&super::redis_url()), "+PONG\r\n");
        let mut server = super::spawn_redis(0).expect("redis-server starts");
        assert_eq!(ping(&server.url), "+PONG\r\n");
        server.kill();
        assert!(
            TcpStream::connect(("127.0.0.1", server.port)).is_err(),
            "killed"
        );
    }
}

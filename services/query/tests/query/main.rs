//! The query service between real clients and devconvex: dedup, fan-out, consistency, faults.

mod auth_outage;
mod client;
mod dedup;
mod errors;
mod faults;
mod http_api;
mod limits;
mod npm_client;
mod protocol;
mod revocation;
mod route_revocation;
mod tls;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_query::metrics::Stats;

pub use client::Client;

/// A running service that stops when dropped (or on `stop`).
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Starts the service's shutdown and returns at once.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the service and waits until its port is free.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

fn run<F>(
    addr: SocketAddr,
    serve: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(Box::pin(async {
        let _ = stopped.await;
    })));
    Running {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// auth (SQLite) + gateway + devconvex + query, wired like `convex-edge dev`.
pub struct Stack {
    pub auth: Arc<edge_auth::AuthCore>,
    pub auth_grpc: SocketAddr,
    pub auth_http: SocketAddr,
    pub gateway: Running,
    pub devconvex: Running,
    pub devconvex_engine: Arc<edge_devconvex::Engine>,
    pub query: Running,
    pub stats: Arc<Stats>,
    /// The running query service's query budgets.
    pub owners: Arc<edge_query::owners::Owners>,
    pub query_config: edge_query::Config,
    pub query_grpc: SocketAddr,
    _auth: Running,
    /// Gateways added by [`Stack::gateway_with_redis`].
    _gateways: Vec<Running>,
    _dir: edge_testkit::TempDir,
    _tls: Option<(edge_testkit::TestCa, edge_testkit::TlsRelay)>,
    /// With `Options::upstream_inactivity`: a relay between the query service and devconvex
    /// that a test can partition.
    pub upstream_relay: Option<edge_testkit::Relay>,
    /// With `Options::auth_partitioned`: the relay the query service reaches auth's gRPC
    /// through, swallowing traffic from the start until healed.
    pub auth_relay: Option<edge_testkit::Relay>,
    _auth_tls: Option<(edge_testkit::TestCa, edge_testkit::TlsRelay)>,
}

/// A change to auth's configuration, applied before it starts.
pub type AuthTweak = Box<dyn FnOnce(&mut edge_auth::Config) + Send>;

pub struct Options {
    pub token_ttl: Duration,
    pub socket_queue: usize,
    pub socket_queue_bytes: usize,
    /// Put a delaying TCP relay in front of devconvex.
    pub slow_upstream: Option<Duration>,
    pub read_linger: Option<Duration>,
    pub ping_interval: Duration,
    /// Serve devconvex over TLS (a test CA's certificate, through a TLS relay); `true` also
    /// makes the query service trust that CA through its `SSL_CERT_FILE`.
    pub tls_upstream: Option<bool>,
    /// Changes to auth's configuration (mail, Better Auth's account options).
    pub auth: Option<AuthTweak>,
    /// `QUERY_MAX_QUERIES_PER_IDENTITY`, `QUERY_MAX_IDENTITY_QUERY_BYTES`.
    pub owner_limits: edge_query::owners::OwnerLimits,
    /// `QUERY_TRUSTED_PROXIES`.
    pub trusted_proxies: &'static str,
    /// The query service's `upstream_inactivity`, with a relay in front of devconvex
    /// (`Stack::upstream_relay`).
    pub upstream_inactivity: Option<Duration>,
    /// The query service reaches auth's gRPC through a relay (`Stack::auth_relay`) that is
    /// partitioned before the query service starts: it has never learnt the JWKS.
    pub auth_partitioned: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_ttl: Duration::from_secs(900),
            socket_queue: 1024,
            socket_queue_bytes: 16 * 1024 * 1024,
            slow_upstream: None,
            read_linger: None,
            ping_interval: Duration::from_secs(15),
            upstream_inactivity: None,
            tls_upstream: None,
            auth: None,
            owner_limits: edge_query::owners::OwnerLimits::default(),
            trusted_proxies: "",
            auth_partitioned: false,
        }
    }
}

pub const ISSUER: &str = "http://localhost:8080";

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Stack {
        let dir = edge_testkit::TempDir::default();
        let mut auth_config =
            edge_auth::Config::local(edge_keys::Secret::new("query-test-secret-0123456789abcdef"));
        auth_config.database_url = format!("sqlite://{}/auth.db", dir.path().display());
        auth_config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        auth_config.http_addr = "127.0.0.1:0".parse().unwrap();
        auth_config.token_ttl = options.token_ttl;
        auth_config.sign_in_limit.per_address = 100_000;
        if let Some(tweak) = options.auth {
            tweak(&mut auth_config);
        }
        let auth = edge_auth::Application::build(auth_config).await.unwrap();
        let (auth_core, auth_grpc, auth_http) = (auth.core(), auth.grpc_addr(), auth.http_addr());
        let auth_running = run(auth_grpc, |s| auth.run_until(s));

        let mut gw = edge_gateway::Config::local();
        gw.http_addr = "127.0.0.1:0".parse().unwrap();
        gw.auth_grpc_url = format!("http://{auth_grpc}");
        gw.workers = 1;
        // Many token fetches from one address: past Better Auth's default rule.
        gw.read_rate_limit = None;
        let gateway = edge_gateway::Application::build(gw).await.unwrap();
        let gateway_addr = gateway.addr();
        let gateway = run(gateway_addr, |s| gateway.run_until(s));

        let devconvex_config = devconvex_config(auth_http, "127.0.0.1:0".parse().unwrap());
        let dc = edge_devconvex::Application::build(devconvex_config)
            .await
            .unwrap();
        let (dc_addr, engine) = (dc.addr(), dc.engine());
        let devconvex = run(dc_addr, |s| dc.run_until(s));

        let upstream = match options.slow_upstream {
            Some(delay) => relay(dc_addr, delay).await,
            None => dc_addr,
        };
        let upstream_relay = match options.upstream_inactivity {
            Some(_) => Some(edge_testkit::Relay::start(upstream).await),
            None => None,
        };
        let upstream = upstream_relay.as_ref().map_or(upstream, |r| r.addr());
        let (scheme, upstream, tls) = match options.tls_upstream {
            Some(trusted) => {
                let ca = edge_testkit::TestCa::new();
                let cert = ca.issue("devconvex", &["127.0.0.1", "localhost"]);
                let relay = edge_testkit::TlsRelay::start(&cert, upstream, &[]).await;
                let trust = trusted.then(|| ca.ca_file.clone());
                ("https", relay.addr, Some((ca, relay, trust)))
            }
            None => ("http", upstream, None),
        };
        let mut config = edge_query::Config::local(format!("{scheme}://{upstream}"));
        config.ssl_cert_file = tls.as_ref().and_then(|t| t.2.clone());
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        // A partitioned link to auth is TLS, as in production: the partition swallows the
        // handshake itself, which only a bounded dial gets past once it heals.
        let (auth_relay, auth_tls) = match options.auth_partitioned {
            true => {
                let ca = edge_testkit::TestCa::new();
                let cert = ca.issue("auth", &["localhost"]);
                let tls = edge_testkit::TlsRelay::start(&cert, auth_grpc, &["h2"]).await;
                let relay = edge_testkit::Relay::start(tls.addr).await;
                relay.partition();
                config.ssl_cert_file.get_or_insert(ca.ca_file.clone());
                config.auth_grpc_url = format!("https://localhost:{}", relay.addr().port());
                (Some(relay), Some((ca, tls)))
            }
            false => {
                config.auth_grpc_url = format!("http://{auth_grpc}");
                (None, None)
            }
        };
        config.shared_functions =
            edge_query::config::parse_shared("messages:list,config:get").unwrap();
        config.socket_queue = options.socket_queue;
        config.socket_queue_bytes = options.socket_queue_bytes;
        config.upstream_idle = Duration::from_millis(500);
        config.read_linger = options.read_linger;
        config.ping_interval = options.ping_interval;
        if let Some(inactivity) = options.upstream_inactivity {
            config.upstream_inactivity = inactivity;
        }
        config.owner_limits = options.owner_limits;
        config.trusted_proxies = options.trusted_proxies.parse().unwrap();
        let query = start_query(config.clone()).await;
        Stack {
            auth: auth_core,
            auth_grpc,
            auth_http,
            gateway,
            devconvex,
            devconvex_engine: engine,
            stats: query.1,
            owners: query.3,
            query: query.0,
            query_grpc: query.2,
            query_config: config,
            _auth: auth_running,
            _gateways: Vec::new(),
            _dir: dir,
            _tls: tls.map(|(ca, relay, _)| (ca, relay)),
            upstream_relay,
            auth_relay,
            _auth_tls: auth_tls,
        }
    }

    /// The first gateway's base URL (memory token cache).
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway.addr)
    }

    /// Another gateway on this stack's auth with its token cache shared through Redis at
    /// `redis_url` (`REDIS_URL`); returns its base URL. It stops with the stack.
    pub async fn gateway_with_redis(&mut self, redis_url: &str) -> String {
        let mut config = edge_gateway::Config::local();
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.auth_grpc_url = format!("http://{}", self.auth_grpc);
        config.workers = 1;
        // Many token fetches from one address: past Better Auth's default rule.
        config.read_rate_limit = None;
        config
            .cache
            .as_mut()
            .expect("the token cache is on by default")
            .redis_url = Some(redis_url.to_owned());
        let gateway = edge_gateway::Application::build(config).await.unwrap();
        let addr = gateway.addr();
        self._gateways.push(run(addr, |s| gateway.run_until(s)));
        format!("http://{addr}")
    }

    pub fn query_url(&self) -> String {
        format!("http://{}", self.query.addr)
    }

    pub fn query_grpc(&self) -> SocketAddr {
        self.query_grpc
    }

    pub fn devconvex_url(&self) -> String {
        format!("http://{}", self.devconvex.addr)
    }

    /// Signs up `email` and returns a JWT for the new session.
    pub async fn token_for(&self, email: &str) -> String {
        self.session_for(email).await.1
    }

    /// Signs up `email`; returns the session cookie's value and a JWT for the session.
    pub async fn session_for(&self, email: &str) -> (String, String) {
        let client = edge_auth::service::Client::default();
        let info = self
            .auth
            .sign_up(
                "Test User",
                email,
                "correct horse battery staple",
                None,
                "",
                &client,
            )
            .await
            .unwrap()
            .session()
            .expect("sign-up opens a session");
        let jwt = self
            .auth
            .issue_token(&info.cookie_value)
            .await
            .unwrap()
            .token
            .jwt;
        (info.cookie_value, jwt)
    }

    /// devconvex's live subscriptions.
    pub fn upstream_subscriptions(&self) -> i64 {
        self.devconvex_engine.stats.subscriptions()
    }

    /// Stops devconvex and starts a fresh one (empty, trusting the same auth) on its port.
    pub async fn restart_devconvex(&mut self) {
        let addr = self.devconvex.addr;
        let old = std::mem::replace(
            &mut self.devconvex,
            Running {
                addr,
                stop: None,
                task: None,
            },
        );
        old.stop().await;
        let config = devconvex_config(self.auth_http, addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let app = loop {
            match edge_devconvex::Application::build(config.clone()).await {
                Ok(app) => break app,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "devconvex could not bind {addr} again: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        };
        self.devconvex_engine = app.engine();
        self.devconvex = run(addr, |s| app.run_until(s));
    }

    /// Restarts the query service on the same ports.
    pub async fn restart_query(&mut self) {
        let addr = self.query.addr;
        let old = std::mem::replace(
            &mut self.query,
            Running {
                addr,
                stop: None,
                task: None,
            },
        );
        old.stop().await;
        let mut config = self.query_config.clone();
        config.http_addr = addr;
        config.grpc_addr = self.query_grpc;
        let (running, stats, grpc, owners) = start_query(config).await;
        self.query = running;
        self.stats = stats;
        self.owners = owners;
        self.query_grpc = grpc;
    }
}

pub fn devconvex_config(auth_http: SocketAddr, addr: SocketAddr) -> edge_devconvex::Config {
    let mut c = edge_devconvex::Config::local();
    c.addr = addr;
    c.auth_config = Some(
        serde_json::json!({"providers": [{
            "type": "customJwt", "issuer": ISSUER, "applicationID": "convex", "algorithm": "RS256",
            "jwks": format!("http://{auth_http}/api/auth/jwks"),
        }]})
        .to_string(),
    );
    c
}

async fn start_query(
    config: edge_query::Config,
) -> (
    Running,
    Arc<Stats>,
    SocketAddr,
    Arc<edge_query::owners::Owners>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let app = loop {
        match edge_query::Application::build(config.clone()).await {
            Ok(app) => break app,
            // The previous instance may still hold the port for a moment.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("query builds: {e:#}"),
        }
    };
    let (addr, stats, grpc, owners) = (app.http_addr(), app.stats(), app.grpc_addr(), app.owners());
    (run(addr, |s| app.run_until(s)), stats, grpc, owners)
}

/// A TCP relay to `target` that holds each upstream→client chunk for `delay` (a slow network).
async fn relay(target: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = tokio::io::copy(&mut ri, &mut wo);
                let down = async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = ro.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        tokio::time::sleep(delay).await;
                        wi.write_all(&buf[..n]).await?;
                    }
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    addr
}

/// Waits until `check` holds, polling; panics with `what` after 60 s (generous: the whole
/// suite shares two cores in CI, where 3,000 subscriptions took over 20 s to reach devconvex).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `tests/node` script driven in phases: it prints JSON lines with a `"phase"` (and logs
/// whatever else it likes to stdout), and reads a line on stdin to go on. Killed on drop.
pub struct NodeScript {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stdin: tokio::process::ChildStdin,
}

impl NodeScript {
    /// Runs `node <script> <arg>` in `tests/node` (its npm packages installed).
    pub fn start(script: &str, arg: &str) -> NodeScript {
        use tokio::io::AsyncBufReadExt;
        let dir = edge_testkit::workspace_root().join("tests/node");
        assert!(
            dir.join("node_modules/convex").is_dir(),
            "npm packages missing: run `npm ci --prefix tests/node`"
        );
        let mut child = tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg(script)
            .arg(arg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take().unwrap();
        NodeScript {
            _child: child,
            lines,
            stdin,
        }
    }

    /// The next phase line, within 120 s however much the script logs meanwhile.
    pub async fn next_phase(&mut self) -> serde_json::Value {
        let lines = &mut self.lines;
        let phase = async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("node is still running");
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v.get("phase").is_some()
                {
                    return v;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), phase)
            .await
            .expect("node answers in time")
    }

    /// Tells the script to go on past its current phase.
    pub async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
}

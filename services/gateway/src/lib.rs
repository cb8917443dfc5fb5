//! The gateway: the site origin. It serves Better Auth's `/api/auth/*` routes through the auth
//! service's gRPC API and holds no secret: it never verifies a cookie itself.
//!
//! [`Application::build`] binds the listener (port 0 in tests); [`Application::run_until`]
//! serves until a shutdown future resolves.

pub mod client;
pub mod config;
mod error;
mod metrics;
pub mod pages;
mod revocations;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use edge_cache::{Outcome, Token, TokenCache};
use edge_keys::CacheKey;
use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use edge_proto::error::ErrorCode;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use config::{Config, ConfigError, ProxyConfig, Ssr};
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use pages::Pages;

/// What every handler shares.
pub struct State {
    pub config: Config,
    clients: Clients,
    /// The token cache, when enabled.
    cache: Option<Arc<TokenCache<tonic::Status>>>,
    /// False while the revocation stream is down: the cache is bypassed, since a revocation
    /// could be missed.
    cache_trusted: Arc<AtomicBool>,
    /// Set once the session log's backlog has been read (readiness).
    pub(crate) log_caught_up: Arc<AtomicBool>,
    /// Template mode's pages.
    pages: Option<Pages>,
    /// Template mode's live page data, when `GATEWAY_PAGE_WATCH_SECONDS` is not 0.
    pub(crate) live: Option<Arc<pages::LiveData>>,
    /// Proxy mode's client of the SSR app.
    http: reqwest::Client,
    /// Better Auth's default rule on the cached read routes, counted in this gateway's
    /// memory; `None` when `GATEWAY_READ_RATE_LIMIT_MAX` is 0.
    pub(crate) read_limiter: Option<routes::ratelimit::ReadLimiter>,
}

/// The gRPC clients of auth and query, one pair per thread.
///
/// Each actix worker runs its own single-threaded runtime. A channel made on the main runtime
/// would move every call to another thread and back (two wake-ups per hop, most of a cached
/// page's latency); a channel made on the worker's own runtime keeps the call on its thread.
struct Clients {
    /// Tells this gateway's clients apart from another's in the same process (tests).
    id: u64,
    auth: Endpoint,
    /// `GATEWAY_AUTH_TIMEOUT_MS`, the deadline of auth calls that name none of their own.
    auth_timeout: std::time::Duration,
    query: Endpoint,
}

/// Gives a call to auth the gateway's deadline (`GATEWAY_AUTH_TIMEOUT_MS`, sent as
/// `grpc-timeout` and enforced by the channel) unless the call set its own with
/// [`tonic::Request::set_timeout`] (the social calls that wait on a provider).
#[derive(Debug, Clone, Copy)]
pub struct AuthDeadline(std::time::Duration);

impl tonic::service::Interceptor for AuthDeadline {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key("grpc-timeout") {
            request.set_timeout(self.0);
        }
        Ok(request)
    }
}

/// A client of auth whose calls carry a deadline ([`AuthDeadline`]).
pub type AuthClient = AuthServiceClient<InterceptedService<Channel, AuthDeadline>>;

type ClientPair = (AuthClient, QueryServiceClient<Channel>);

thread_local! {
    static CLIENTS: std::cell::RefCell<Vec<(u64, ClientPair)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Clients {
    fn new(auth: Endpoint, auth_timeout: std::time::Duration, query: Endpoint) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Clients {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            auth,
            auth_timeout,
            query,
        }
    }

    /// This thread's clients (made lazily; must be called within a Tokio runtime).
    fn get(&self) -> ClientPair {
        CLIENTS.with_borrow_mut(|clients| {
            if let Some((_, pair)) = clients.iter().find(|(id, _)| *id == self.id) {
                return pair.clone();
            }
            let pair = (
                AuthServiceClient::with_interceptor(
                    edge_proto::endpoint::lazy_channel(&self.auth),
                    AuthDeadline(self.auth_timeout),
                ),
                QueryServiceClient::new(edge_proto::endpoint::lazy_channel(&self.query)),
            );
            clients.push((self.id, pair.clone()));
            pair
        })
    }
}

impl State {
    /// A client of auth (cheap: clones share this thread's connection).
    pub fn auth(&self) -> AuthClient {
        self.clients.get().0
    }

    /// A client of the query service.
    pub(crate) fn query(&self) -> QueryServiceClient<Channel> {
        self.clients.get().1
    }

    pub(crate) fn proxy_config(&self) -> Option<&ProxyConfig> {
        match &self.config.ssr {
            Ssr::Proxy(p) => Some(p),
            Ssr::Pages(_) => None,
        }
    }

    pub(crate) fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The cache if it may be used now.
    pub(crate) fn trusted_cache(&self) -> Option<&TokenCache<tonic::Status>> {
        self.cache
            .as_deref()
            .filter(|_| self.cache_trusted.load(Ordering::Acquire))
    }

    pub(crate) fn cache(&self) -> Option<&TokenCache<tonic::Status>> {
        self.cache.as_deref()
    }

    /// The Convex JWT for a session cookie: from the cache when it is trusted, else from auth
    /// (one call per key however many requests wait). The token route and SSR both use it.
    /// `dont_remember` is the browser's `dont_remember` cookie as sent (or empty): auth does not
    /// refresh a `rememberMe: false` session when it issues the token.
    pub(crate) async fn token_for(
        &self,
        cookie_value: String,
        dont_remember: String,
    ) -> Result<Token, tonic::Status> {
        self.token_with(cookie_value, dont_remember, Freshness::Cached)
            .await
    }

    /// [`State::token_for`], or with [`Freshness::Fresh`] a token newly issued by auth (still
    /// fenced, checked against the revocation index and stored in place of the cached one), for
    /// a client that forces a refresh.
    pub(crate) async fn token_with(
        &self,
        cookie_value: String,
        dont_remember: String,
        freshness: Freshness,
    ) -> Result<Token, tonic::Status> {
        let mut auth = self.auth();
        // Read before the request goes out: every log entry at or below it was committed
        // before auth reads the session, so the token reflects it.
        let fence = self.cache.as_ref().map_or(0, |c| c.fence());
        let issue = move |cookie_value: String| async move {
            let r = auth
                .issue_token(pb::IssueTokenRequest {
                    cookie_value,
                    dont_remember_cookie: dont_remember,
                })
                .await?
                .into_inner();
            Ok::<_, tonic::Status>(Token {
                issued_at: edge_cache::issued_at(&r.jwt),
                jwt: r.jwt.into(),
                expires_at: r.expires_at,
                session_id: r.session_id.into(),
                user_id: r.user_id.into(),
                fence,
            })
        };
        // The cache key hashes the cookie's canonical form; a value that cannot be
        // canonicalised goes to auth, which refuses it.
        let (token, outcome) = match (self.trusted_cache(), CacheKey::for_cookie(&cookie_value)) {
            (Some(cache), Some(key)) if freshness == Freshness::Fresh => {
                cache.reissue(&key, issue(cookie_value)).await?
            }
            (Some(cache), Some(key)) => {
                cache
                    .get_or_issue(&key, move || issue(cookie_value))
                    .await?
            }
            _ => (issue(cookie_value).await?, Outcome::Miss),
        };
        if self.cache.is_some() {
            metrics::TOKEN_CACHE
                .with_label_values(&[outcome.label()])
                .inc();
        }
        Ok(token)
    }
}

/// Whether a token may come from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Cached,
    /// Newly issued: the client holds the cached one and asks for another (the Convex client's
    /// `forceRefreshToken`, sent as `Cache-Control: no-cache`).
    Fresh,
}

/// What a caller gets for a token whose session ended while it was being issued: what auth
/// says for an ended session.
fn revoked_status() -> tonic::Status {
    ErrorCode::UNAUTHORIZED.to_status("Unauthorized")
}

pub struct Application {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: web::Data<State>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        metrics::init();
        let trust = edge_tls::Trust::load(config.ssl_cert_file.as_deref())
            .context("invalid SSL_CERT_FILE")?;
        let endpoint = edge_proto::endpoint::endpoint(&config.auth_grpc_url, &trust)
            .context("invalid AUTH_GRPC_URL")?
            // Keepalive pings break a connection whose traffic is swallowed; a call's deadline
            // (`AuthDeadline`: `GATEWAY_AUTH_TIMEOUT_MS` unless the call names a longer one)
            // bounds it on a connection that stays up while auth does not answer it.
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        let query = edge_proto::endpoint::endpoint(&config.query_grpc_url, &trust)
            .context("invalid QUERY_GRPC_URL")?
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        let pages = match &config.ssr {
            Ssr::Pages(None) => Some(Pages::demo().map_err(|e| anyhow::anyhow!(e))?),
            Ssr::Pages(Some(dir)) => {
                Some(Pages::load(dir).map_err(|e| anyhow::anyhow!("PAGES_DIR: {e}"))?)
            }
            Ssr::Proxy(_) => None,
        };
        let http = trust
            .http_client()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .context("failed to build the SSR proxy client")?;
        let listener = std::net::TcpListener::bind(config.http_addr)
            .with_context(|| format!("failed to bind GATEWAY_HTTP_ADDR {}", config.http_addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let cache = match &config.cache {
            Some(c) => Some(Arc::new(
                TokenCache::with_trust(c.clone(), &trust, revoked_status)
                    .map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        let live = match (&pages, config.page_watch) {
            (Some(_), Some(idle)) => Some(pages::LiveData::new(idle)),
            _ => None,
        };
        let read_limiter = config
            .read_rate_limit
            .map(|rule| routes::ratelimit::ReadLimiter::new(rule.max, rule.window));
        let clients = Clients::new(endpoint, config.auth_timeout, query);
        let state = State {
            read_limiter,
            config,
            live,
            clients,
            cache,
            cache_trusted: Arc::new(AtomicBool::new(false)),
            log_caught_up: Arc::new(AtomicBool::new(false)),
            pages,
            http,
        };
        Ok(Application {
            listener,
            addr,
            state: web::Data::new(state),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let watcher = self.state.cache.clone().map(|cache| {
            tokio::spawn(revocations::watch(
                self.state.auth(),
                cache,
                self.state.cache_trusted.clone(),
                self.state.log_caught_up.clone(),
            ))
        });
        let state = self.state.clone();
        let workers = state.config.workers;
        // Requests no route matched: the SSR app's in proxy mode.
        let fallback_label = if state.proxy_config().is_some() {
            "ssr_proxy"
        } else {
            "unmatched"
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(routes::ratelimit::limit))
                .wrap(actix_web::middleware::from_fn(routes::cors::cors))
                .wrap_fn(|req, srv| {
                    let start = Instant::now();
                    let route = req
                        .match_pattern()
                        .unwrap_or_else(|| fallback_label.to_owned());
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await;
                        metrics::REQUEST_DURATION
                            .with_label_values(&[route.as_str()])
                            .observe(start.elapsed().as_secs_f64());
                        res
                    }
                })
                .configure(routes::auth::configure)
                .configure(routes::account::configure)
                .configure(routes::social::configure)
                .configure(routes::ops::configure)
                .configure(|cfg| configure_pages(cfg, &state))
                .default_service(web::to(fallback))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(10)
        .listen(self.listener)?
        .run();
        let handle = server.handle();
        tracing::info!(http = %self.addr, "gateway serving");
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        server.await.context("gateway HTTP server failed")?;
        if let Some(w) = watcher {
            w.abort();
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Template mode's page routes and script.
fn configure_pages(cfg: &mut web::ServiceConfig, state: &State) {
    let Some(pages) = &state.pages else {
        return;
    };
    cfg.route("/_edge/client.js", web::get().to(pages::client_js));
    for (index, route) in pages.routes() {
        cfg.service(
            web::resource(route)
                .app_data(web::Data::new(pages::PageIndex(index)))
                .route(web::get().to(pages::render))
                .route(web::head().to(pages::render)),
        );
    }
}

/// What no route matched: the SSR app in proxy mode, else 404.
async fn fallback(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    if state.proxy_config().is_some() {
        return routes::proxy::forward(req, payload, state).await;
    }
    not_found().await
}

async fn not_found() -> HttpResponse {
    let code = ErrorCode::NOT_FOUND;
    HttpResponse::NotFound().json(serde_json::json!({"code": code.code, "message": "Not found"}))
}

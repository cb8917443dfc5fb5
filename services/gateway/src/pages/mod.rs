//! Template mode of SSR: pages rendered by the gateway with minijinja, their Convex queries run
//! through the query service's gRPC API with the user's token (from the shared token cache),
//! and the results embedded for the small client script (`client.js`) that keeps them live.
//!
//! A page's queries run concurrently, identical ones once: the subscribed ones from a live
//! watch on the query service (`live.rs`), the others in one `QueryBatch`. `server: false`
//! queries are left to the browser; `subscribe: false` ones are rendered but never subscribed.

mod live;
pub mod manifest;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge_proto::error::ErrorCode;
use edge_proto::query::v1 as qpb;
use minijinja::Environment;
use serde_json::{Map, Value, json};

use crate::State;
use crate::metrics;
use crate::routes::{clear_cookie, session_cookie};
use live::Identity;
pub use live::LiveData;
use manifest::Page;

/// The script that keeps rendered pages live, served at `/_edge/client.js`.
pub const CLIENT_JS: &str = include_str!("client.js");

/// The built-in demo (devconvex's demo app): chat, tasks, sign-up and sign-in.
const DEMO: [(&str, &str); 7] = [
    ("pages.json", include_str!("../../pages/pages.json")),
    ("layout.html", include_str!("../../pages/layout.html")),
    ("chat.html", include_str!("../../pages/chat.html")),
    ("tasks.html", include_str!("../../pages/tasks.html")),
    ("auth-page.html", include_str!("../../pages/auth-page.html")),
    ("sign-in.html", include_str!("../../pages/sign-in.html")),
    ("sign-up.html", include_str!("../../pages/sign-up.html")),
];

/// Every page with its compiled templates.
pub struct Pages {
    env: Environment<'static>,
    pages: Vec<Page>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field(
                "routes",
                &self.pages.iter().map(|p| &p.route).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pages {
    /// The built-in demo.
    pub fn demo() -> Result<Pages, String> {
        Self::from_files(
            DEMO.iter()
                .map(|(name, text)| (name.to_string(), text.to_string()))
                .collect(),
        )
    }

    /// `pages.json` and every `*.html` (templates may include one another) in `dir`.
    pub fn load(dir: &Path) -> Result<Pages, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read PAGES_DIR {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read PAGES_DIR {}: {e}", dir.display()))?
                .path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if name == "pages.json" || name.ends_with(".html") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                files.push((name, text));
            }
        }
        if !files.iter().any(|(n, _)| n == "pages.json") {
            return Err(format!("no pages.json in PAGES_DIR {}", dir.display()));
        }
        Self::from_files(files)
    }

    fn from_files(files: Vec<(String, String)>) -> Result<Pages, String> {
        let mut env = Environment::new();
        let mut manifest = None;
        for (name, text) in files {
            if name == "pages.json" {
                manifest = Some(text);
            } else {
                env.add_template_owned(name.clone(), text)
                    .map_err(|e| format!("template `{name}`: {e}"))?;
            }
        }
        let manifest = manifest.ok_or("no pages.json")?;
        let pages = manifest::parse(&manifest, |t| env.get_template(t).is_ok())?;
        Ok(Pages { env, pages })
    }

    pub fn routes(&self) -> impl Iterator<Item = (usize, &str)> {
        self.pages.iter().map(|p| p.route.as_str()).enumerate()
    }
}

/// Which page a route serves (route-local data).
#[derive(Debug, Clone, Copy)]
pub struct PageIndex(pub usize);

/// The identity a page renders for.
struct Viewer {
    identity: Identity,
    user: Value,
    /// The cookie named a session that has ended: clear it.
    clear_cookie: bool,
}

impl Viewer {
    fn anonymous(clear_cookie: bool) -> Viewer {
        Viewer {
            identity: Identity {
                key: Some(String::new()),
                jwt: None,
                expires_at: i64::MAX,
            },
            user: Value::Null,
            clear_cookie,
        }
    }

    /// The viewer a JWT auth issued stands for (its claims are read, not verified: the
    /// gateway holds no key and got the token from auth itself).
    fn signed_in(jwt: &str, expires_at: i64) -> Viewer {
        let mut claims = jwt
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
            .unwrap_or_default();
        let user = json!({"id": claims.get("sub"), "name": claims.get("name"), "email": claims.get("email")});
        for volatile in ["iat", "exp", "nbf", "jti"] {
            claims.remove(volatile);
        }
        let key = claims
            .get("sub")
            .is_some_and(Value::is_string)
            .then(|| edge_convex::value::canonical_string(&Value::Object(claims)));
        Viewer {
            identity: Identity {
                key,
                jwt: Some(jwt.to_owned()),
                expires_at,
            },
            user,
            clear_cookie: false,
        }
    }
}

async fn viewer(req: &HttpRequest, state: &State) -> Result<Viewer, HttpResponse> {
    let Some(cookie) = session_cookie(req) else {
        return Ok(Viewer::anonymous(false));
    };
    match state
        .token_for(cookie, crate::routes::dont_remember_cookie(req))
        .await
    {
        Ok(token) => Ok(Viewer::signed_in(&token.jwt, token.expires_at)),
        Err(status) if ErrorCode::from_status(&status) == ErrorCode::UNAUTHORIZED => {
            Ok(Viewer::anonymous(true))
        }
        Err(status) => {
            tracing::warn!(grpc_code = ?status.code(), "page rendered without auth");
            Err(HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("auth service unavailable"))
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The query service's calls for `calls` (path, args JSON) under one token.
fn function_calls(calls: &[&(String, String)], jwt: Option<&str>) -> Vec<qpb::FunctionCall> {
    calls
        .iter()
        .map(|(path, args)| qpb::FunctionCall {
            path: path.clone(),
            args_json: args.clone(),
            jwt: jwt.unwrap_or_default().to_owned(),
            format: "convex_encoded_json".into(),
        })
        .collect()
}

/// One query's outcome while rendering.
enum Outcome {
    /// Convex encoded JSON.
    Value(Value),
    Error(String),
}

impl Outcome {
    /// From Convex's result body.
    fn of(result_json: &str) -> Outcome {
        let mut body: Value = serde_json::from_str(result_json).unwrap_or(Value::Null);
        if body["status"] == "success" {
            Outcome::Value(body["value"].take())
        } else {
            let message = body["errorMessage"].as_str().unwrap_or("query failed");
            Outcome::Error(message.to_owned())
        }
    }
}

/// Runs the page's server queries, identical ones once: the subscribed ones from a live watch
/// when watches are on, the rest (and all of them if no watch can serve) in one `QueryBatch`,
/// both at once.
async fn run_queries<'a>(
    state: &State,
    page: &Page,
    calls: &'a [(String, String)],
    identity: &Identity,
) -> Result<HashMap<&'a (String, String), Outcome>, AuthUnavailable> {
    let mut watched: Vec<&(String, String)> = Vec::new();
    let mut fetched: Vec<&(String, String)> = Vec::new();
    for (q, call) in page.queries.iter().zip(calls) {
        if !q.server || watched.contains(&call) || fetched.contains(&call) {
            continue;
        }
        if q.subscribe && state.live.is_some() {
            watched.push(call);
        } else {
            fetched.push(call);
        }
    }
    let jwt = identity.jwt.as_deref();
    let live = async {
        match &state.live {
            Some(live) if !watched.is_empty() => {
                live.results(state.query(), identity, &watched).await
            }
            _ => None,
        }
    };
    let (live, fetched) = futures_util::join!(live, fetch(state, &fetched, jwt));
    let mut out: HashMap<_, _> = fetched?.into_iter().collect();
    match live {
        Some(results) => {
            metrics::PAGE_QUERIES
                .with_label_values(&["watch"])
                .inc_by(watched.len() as u64);
            for (call, result) in watched.into_iter().zip(results.iter()) {
                let outcome = Outcome::of(&result.result_json);
                if matches!(outcome, Outcome::Error(_)) {
                    metrics::PAGE_QUERY_ERRORS
                        .with_label_values(&["watch"])
                        .inc();
                }
                out.insert(call, outcome);
            }
        }
        None => out.extend(fetch(state, &watched, jwt).await?),
    }
    Ok(out)
}

/// The query service could not check the viewer's token (`AUTH_UNAVAILABLE`: auth's JWKS
/// unreachable): the page is answered 503, as when the gateway cannot reach auth, never
/// rendered as signed out or with the viewer's queries failed.
#[derive(Debug)]
struct AuthUnavailable;

/// Runs `calls` in one `QueryBatch`.
async fn fetch<'a>(
    state: &State,
    calls: &[&'a (String, String)],
    jwt: Option<&str>,
) -> Result<Vec<(&'a (String, String), Outcome)>, AuthUnavailable> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    metrics::PAGE_QUERIES
        .with_label_values(&["fetch"])
        .inc_by(calls.len() as u64);
    let request = qpb::QueryBatchRequest {
        queries: function_calls(calls, jwt),
    };
    let outcomes: Vec<_> = match state.query().query_batch(request).await {
        Ok(r) => calls
            .iter()
            .copied()
            .zip(r.into_inner().results)
            .map(|(call, result)| (call, Outcome::of(&result.result_json)))
            .collect(),
        Err(status) if ErrorCode::from_status(&status) == ErrorCode::AUTH_UNAVAILABLE => {
            tracing::warn!(
                message = status.message(),
                "page not rendered: the query service could not check the token"
            );
            return Err(AuthUnavailable);
        }
        Err(status) => {
            tracing::warn!(grpc_code = ?status.code(), "page queries failed");
            calls
                .iter()
                .map(|call| (*call, Outcome::Error("query service unavailable".into())))
                .collect()
        }
    };
    let failed = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Error(_)))
        .count();
    metrics::PAGE_QUERY_ERRORS
        .with_label_values(&["fetch"])
        .inc_by(failed as u64);
    Ok(outcomes)
}

/// JSON that is safe inside `<script>`: no `<`, `>`, `&` or line separators left raw.
fn script_json(v: &Value) -> String {
    let json = v.to_string();
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `GET` of a page route.
pub async fn render(
    req: HttpRequest,
    state: web::Data<State>,
    index: web::Data<PageIndex>,
) -> HttpResponse {
    let Some(pages) = state.pages.as_ref() else {
        return HttpResponse::NotFound().finish();
    };
    let page = &pages.pages[index.0];
    let params: BTreeMap<String, String> = req
        .match_info()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The parameters become query arguments, held on the query service (and by Convex) as
    // long as the page's watch lives: bounded before anyone is asked anything.
    let param_bytes: usize = params.values().map(String::len).sum();
    if param_bytes > state.config.max_page_param_bytes {
        return HttpResponse::UriTooLong()
            .content_type("text/plain; charset=utf-8")
            .body(format!(
                "page parameters too long: {param_bytes} bytes, the limit is {}",
                state.config.max_page_param_bytes
            ));
    }
    let viewer = match viewer(&req, &state).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    // Each query's arguments, and its call as sent (path, args JSON).
    let args: Vec<Map<String, Value>> = page.queries.iter().map(|q| q.args_for(&params)).collect();
    let calls: Vec<(String, String)> = page
        .queries
        .iter()
        .zip(&args)
        .map(|(q, a)| (q.path.to_string(), Value::Object(a.clone()).to_string()))
        .collect();
    let Ok(outcomes) = run_queries(&state, page, &calls, &viewer.identity).await else {
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "2"))
            .content_type("text/plain; charset=utf-8")
            .body("auth service unavailable");
    };

    let mut values = Map::new();
    let mut errors = Map::new();
    let mut hydration = Map::new();
    for ((q, call), args) in page.queries.iter().zip(&calls).zip(args) {
        let mut entry = Map::new();
        entry.insert("path".into(), Value::String(call.0.clone()));
        entry.insert("args".into(), Value::Object(args));
        entry.insert("subscribe".into(), Value::Bool(q.subscribe));
        entry.insert("server".into(), Value::Bool(q.server));
        match outcomes.get(call) {
            Some(Outcome::Value(value)) => {
                values.insert(q.name.clone(), edge_convex::value::export_json(value));
                entry.insert("value".into(), value.clone());
            }
            Some(Outcome::Error(error)) => {
                errors.insert(q.name.clone(), Value::String(error.clone()));
                entry.insert("error".into(), Value::String(error.clone()));
            }
            None => {}
        }
        hydration.insert(q.name.clone(), Value::Object(entry));
    }
    let state_json = json!({
        "convexUrl": state.config.query_public_url,
        "tokenUrl": "/api/auth/convex/token",
        "signedIn": viewer.identity.jwt.is_some(),
        "userId": viewer.user["id"],
        "queries": hydration,
    });
    let head = format!(
        "<script id=\"convex-edge-state\" type=\"application/json\">{}</script>\n<script src=\"/_edge/client.js\"></script>",
        script_json(&state_json)
    );
    let context = minijinja::context! {
        queries => Value::Object(values),
        errors => Value::Object(errors),
        user => viewer.user,
        params => params,
        path => req.path(),
        social_providers => social_buttons(&state.config.social_providers),
        convex_edge => minijinja::Value::from_safe_string(head),
    };
    let html = match pages
        .env
        .get_template(&page.template)
        .and_then(|t| t.render(context))
    {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(template = %page.template, error = %e, "page template failed");
            return HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("page template failed");
        }
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "private, no-store"));
    if viewer.clear_cookie {
        response.insert_header((header::SET_COOKIE, clear_cookie(&req)));
    }
    response.body(html)
}

/// `GET /_edge/client.js`.
pub async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(CLIENT_JS)
}

/// `social_providers` in templates: `[{id, name}]`, with Better Auth's names for its built-in
/// providers and the id itself for any other.
fn social_buttons(ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            let name = match id.as_str() {
                "google" => "Google",
                "github" => "GitHub",
                "apple" => "Apple",
                "microsoft" => "Microsoft",
                "discord" => "Discord",
                other => other,
            };
            json!({"id": id, "name": name})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_loads_and_renders() {
        let pages = Pages::demo().unwrap();
        assert!(pages.routes().any(|(_, r)| r == "/"));
        for (template, needle) in [
            ("sign-in.html", r#"data-action="signIn""#),
            ("sign-up.html", r#"id="name""#),
        ] {
            let html = pages
                .env
                .get_template(template)
                .unwrap()
                .render(minijinja::context! { convex_edge => "" })
                .unwrap();
            assert!(html.contains(needle), "{template}: {html}");
            assert!(html.contains("<h1>Sign"), "{template}: {html}");
        }
    }

    #[test]
    fn embedded_json_cannot_close_the_script() {
        let s = script_json(&json!({"body": "</script><script>alert(1)</script>&\u{2028}"}));
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["body"], "</script><script>alert(1)</script>&\u{2028}");
    }

    #[test]
    fn viewer_and_watch_identity_come_from_the_token_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"u1","name":"Ada","email":"a@x"}"#);
        let viewer = Viewer::signed_in(&format!("h.{payload}.s"), 0);
        assert_eq!(
            viewer.user,
            json!({"id": "u1", "name": "Ada", "email": "a@x"})
        );
        // Successive tokens of one session share a watch; other sessions and unreadable
        // tokens do not.
        let token = |claims: Value| format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let key = |claims: Value| Viewer::signed_in(&token(claims), 0).identity.key;
        let first = key(json!({"sub": "u1", "sessionId": "s1", "iat": 1, "exp": 900}));
        assert!(first.is_some());
        assert_eq!(
            first,
            key(json!({"exp": 960, "sessionId": "s1", "iat": 60, "sub": "u1"}))
        );
        assert_ne!(
            first,
            key(json!({"sub": "u1", "sessionId": "s2", "iat": 1, "exp": 900}))
        );
        assert_eq!(key(json!({"name": "no subject"})), None);
        assert_eq!(Viewer::signed_in("not a jwt", 0).identity.key, None);
    }
}

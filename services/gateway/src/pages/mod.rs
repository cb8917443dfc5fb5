//! Template mode of SSR: pages rendered by the gateway with minijinja, their Convex queries run
//! through the query service's gRPC API with the user's token (from the shared token cache),
//! and the results embedded for the small client script (`client.js`) that keeps them live.
//!
//! A page's queries run concurrently in one `QueryBatch`, identical ones once. `server: false`
//! queries are left to the browser; `subscribe: false` ones are rendered but never subscribed.

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
use crate::routes::{clear_cookie, session_cookie};
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
    jwt: Option<String>,
    user: Value,
    /// The cookie named a session that has ended: clear it.
    clear_cookie: bool,
}

/// The display claims of a JWT auth issued (not verified here: the gateway holds no key and
/// got the token from auth itself).
fn user_of(jwt: &str) -> Value {
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    json!({"id": claims["sub"], "name": claims["name"], "email": claims["email"]})
}

async fn viewer(req: &HttpRequest, state: &State) -> Result<Viewer, HttpResponse> {
    let Some(cookie) = session_cookie(req) else {
        return Ok(Viewer {
            jwt: None,
            user: Value::Null,
            clear_cookie: false,
        });
    };
    match state.token_for(cookie).await {
        Ok(token) => Ok(Viewer {
            user: user_of(&token.jwt),
            jwt: Some(token.jwt.to_string()),
            clear_cookie: false,
        }),
        Err(status) if ErrorCode::from_status(&status) == ErrorCode::UNAUTHORIZED => Ok(Viewer {
            jwt: None,
            user: Value::Null,
            clear_cookie: true,
        }),
        Err(status) => {
            tracing::warn!(grpc_code = ?status.code(), "page rendered without auth");
            Err(HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("auth service unavailable"))
        }
    }
}

/// One query's outcome while rendering.
enum Outcome {
    /// Convex encoded JSON.
    Value(Value),
    Error(String),
}

/// Runs the page's server queries in one batch, identical ones once.
async fn run_queries<'a>(
    state: &State,
    calls: &[&'a (String, String)],
    jwt: Option<&str>,
) -> HashMap<&'a (String, String), Outcome> {
    let mut unique: Vec<&(String, String)> = Vec::new();
    for call in calls {
        if !unique.contains(call) {
            unique.push(call);
        }
    }
    let mut out = HashMap::new();
    if unique.is_empty() {
        return out;
    }
    let request = qpb::QueryBatchRequest {
        queries: unique
            .iter()
            .map(|(path, args)| qpb::FunctionCall {
                path: path.clone(),
                args_json: args.clone(),
                jwt: jwt.unwrap_or_default().to_owned(),
                format: "convex_encoded_json".into(),
            })
            .collect(),
    };
    let results = state.query().query_batch(request).await;
    match results {
        Ok(r) => {
            for (call, result) in unique.into_iter().zip(r.into_inner().results) {
                let mut body: Value =
                    serde_json::from_str(&result.result_json).unwrap_or(Value::Null);
                let outcome = if body["status"] == "success" {
                    Outcome::Value(body["value"].take())
                } else {
                    let message = body["errorMessage"].as_str().unwrap_or("query failed");
                    Outcome::Error(message.to_owned())
                };
                out.insert(call, outcome);
            }
        }
        Err(status) => {
            tracing::warn!(grpc_code = ?status.code(), "page queries failed");
            for call in unique {
                out.insert(call, Outcome::Error("query service unavailable".into()));
            }
        }
    }
    out
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
    let server_calls: Vec<&(String, String)> = page
        .queries
        .iter()
        .zip(&calls)
        .filter(|(q, _)| q.server)
        .map(|(_, c)| c)
        .collect();
    let outcomes = run_queries(&state, &server_calls, viewer.jwt.as_deref()).await;

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
        "signedIn": viewer.jwt.is_some(),
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
    fn user_claims_come_from_the_token_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"u1","name":"Ada","email":"a@x"}"#);
        let user = user_of(&format!("h.{payload}.s"));
        assert_eq!(user, json!({"id": "u1", "name": "Ada", "email": "a@x"}));
    }
}

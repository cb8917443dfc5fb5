//! The pages manifest (`pages.json` in `PAGES_DIR`): each page's route, template and queries,
//! with the options of the well-known `useConvexQuery` (`server`, `subscribe`).
//!
//! ```json
//! {"pages": [{"route": "/chat/{channel}", "template": "chat.html",
//!             "queries": {"messages": {"path": "messages:list", "args": {"channel": "{channel}"}},
//!                         "config": {"path": "config:get", "subscribe": false}}}]}
//! ```
//! An argument whose value is exactly `"{name}"` takes the route parameter `name`.

use std::collections::BTreeMap;

use edge_convex::UdfPath;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Paths the gateway answers itself; a page may not shadow them.
const RESERVED: [&str; 5] = ["/api/auth", "/_edge", "/healthz", "/readyz", "/metrics"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    pages: Vec<RawPage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPage {
    route: String,
    template: String,
    #[serde(default)]
    queries: BTreeMap<String, RawQuery>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    path: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default = "yes")]
    server: bool,
    #[serde(default = "yes")]
    subscribe: bool,
}

fn yes() -> bool {
    true
}

/// A validated page.
#[derive(Debug, Clone)]
pub struct Page {
    /// An actix route pattern, e.g. `/chat/{channel}`.
    pub route: String,
    pub template: String,
    pub queries: Vec<PageQuery>,
}

#[derive(Debug, Clone)]
pub struct PageQuery {
    /// The name templates and the client script know it by.
    pub name: String,
    pub path: UdfPath,
    /// The arguments object, with `"{param}"` placeholders still in it.
    pub args: Map<String, Value>,
    /// Run while rendering (`server: false`: only in the browser).
    pub server: bool,
    /// Kept live in the browser (`subscribe: false`: rendered once, refreshed over HTTP).
    pub subscribe: bool,
}

impl PageQuery {
    /// The arguments for one request: placeholders replaced by the route's parameters.
    pub fn args_for(&self, params: &BTreeMap<String, String>) -> Map<String, Value> {
        self.args
            .iter()
            .map(|(k, v)| {
                let v = match placeholder(v).and_then(|p| params.get(p)) {
                    Some(param) => Value::String(param.clone()),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

fn placeholder(v: &Value) -> Option<&str> {
    v.as_str()?.strip_prefix('{')?.strip_suffix('}')
}

/// The names of a route's parameters (`/chat/{channel}` → `channel`).
fn route_params(route: &str) -> Vec<&str> {
    route
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect()
}

/// Parses and checks a manifest; `has_template` says whether a template exists.
pub fn parse(text: &str, has_template: impl Fn(&str) -> bool) -> Result<Vec<Page>, String> {
    let raw: RawManifest =
        serde_json::from_str(text).map_err(|e| format!("invalid pages.json: {e}"))?;
    let mut pages = Vec::with_capacity(raw.pages.len());
    let mut seen = std::collections::HashSet::new();
    for page in raw.pages {
        let route = page.route;
        if !route.starts_with('/') {
            return Err(format!("page `{route}`: a route starts with `/`"));
        }
        if RESERVED
            .iter()
            .any(|r| route == *r || route.starts_with(&format!("{r}/")))
        {
            return Err(format!(
                "page `{route}`: the gateway serves this path itself"
            ));
        }
        if !seen.insert(route.clone()) {
            return Err(format!("page `{route}` is declared twice"));
        }
        if !has_template(&page.template) {
            return Err(format!("page `{route}`: no template `{}`", page.template));
        }
        let params = route_params(&route);
        let mut queries = Vec::with_capacity(page.queries.len());
        for (name, q) in page.queries {
            let path = UdfPath::parse(&q.path).map_err(|e| format!("page `{route}`: {e}"))?;
            let args = match q.args {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(map)) => map,
                Some(_) => {
                    return Err(format!(
                        "page `{route}`, query `{name}`: args must be an object"
                    ));
                }
            };
            if let Some(p) = args
                .values()
                .filter_map(placeholder)
                .find(|p| !params.contains(p))
            {
                return Err(format!(
                    "page `{route}`, query `{name}`: `{{{p}}}` is not a parameter of the route"
                ));
            }
            queries.push(PageQuery {
                name,
                path,
                args,
                server: q.server,
                subscribe: q.subscribe,
            });
        }
        pages.push(Page {
            route,
            template: page.template,
            queries,
        });
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<Page> {
        parse(text, |t| t == "a.html").unwrap()
    }

    #[test]
    fn options_default_to_server_rendered_and_live() {
        let pages = parse_ok(
            r#"{"pages":[{"route":"/c/{channel}","template":"a.html","queries":{
                "m":{"path":"messages:list","args":{"channel":"{channel}","n":1}},
                "c":{"path":"config:get","subscribe":false},
                "u":{"path":"users.js:me","server":false}}}]}"#,
        );
        let q = &pages[0].queries;
        let by = |n: &str| q.iter().find(|x| x.name == n).unwrap();
        assert!(by("m").server && by("m").subscribe);
        assert!(by("c").server && !by("c").subscribe);
        assert!(!by("u").server && by("u").subscribe);
        assert_eq!(by("u").path.as_str(), "users:me");
        let params = BTreeMap::from([("channel".to_owned(), "random".to_owned())]);
        assert_eq!(
            Value::Object(by("m").args_for(&params)),
            serde_json::json!({"channel": "random", "n": 1})
        );
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let cases = [
            (
                r#"{"pages":[{"route":"x","template":"a.html"}]}"#,
                "starts with",
            ),
            (
                r#"{"pages":[{"route":"/api/auth/x","template":"a.html"}]}"#,
                "itself",
            ),
            (
                r#"{"pages":[{"route":"/","template":"b.html"}]}"#,
                "no template",
            ),
            (
                r#"{"pages":[{"route":"/","template":"a.html"},{"route":"/","template":"a.html"}]}"#,
                "twice",
            ),
            (
                r#"{"pages":[{"route":"/","template":"a.html","queries":{"q":{"path":"bad path"}}}]}"#,
                "invalid function path",
            ),
            (
                r#"{"pages":[{"route":"/","template":"a.html","queries":{"q":{"path":"a:b","args":[]}}}]}"#,
                "must be an object",
            ),
            (
                r#"{"pages":[{"route":"/","template":"a.html","queries":{"q":{"path":"a:b","args":{"x":"{id}"}}}}]}"#,
                "not a parameter",
            ),
            (
                r#"{"pages":[{"route":"/","template":"a.html","extra":1}]}"#,
                "unknown field",
            ),
        ];
        for (text, reason) in cases {
            let err = parse(text, |t| t == "a.html").unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}

//! The demo app (DESIGN section 6a): the same names, arguments and results as the TypeScript
//! functions in `examples/demo/convex/`.

use edge_convex::UdfPath;
use serde_json::{Map, Value, json};

use crate::auth::Identity;
use crate::db::Tx;
use crate::pagination::{self, Journal, Order, PaginationOpts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Mutation,
    Action,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
            Kind::Action => "action",
        }
    }
}

/// A function's failure, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionError {
    pub message: String,
    /// `ConvexError` data, when the function threw one.
    pub data: Option<Value>,
}

impl FunctionError {
    fn new(message: impl Into<String>) -> Self {
        FunctionError {
            message: message.into(),
            data: None,
        }
    }
}

pub struct Ctx<'a, 'b> {
    pub db: &'a mut Tx<'b>,
    pub identity: Option<&'a Identity>,
    /// What the function logged, as Convex's log lines (`[LOG] 'text'`).
    pub logs: &'a mut Vec<String>,
    /// The journal this execution was given and the one it produces (`paginate`).
    pub journal: &'a mut Journal,
}

impl Ctx<'_, '_> {
    /// `console.log(text)`: a log line as Convex sends it to the client.
    fn log(&mut self, text: &str) {
        self.logs.push(format!("[LOG] '{text}'"));
    }
}

type Handler = fn(&mut Ctx<'_, '_>, &Map<String, Value>) -> Result<Value, FunctionError>;

/// The function at `path`, if the app has one.
pub fn lookup(path: &UdfPath) -> Option<(Kind, Handler)> {
    let f: (Kind, Handler) = match path.as_str() {
        "messages:list" => (Kind::Query, messages_list),
        "messages:send" => (Kind::Mutation, messages_send),
        "messages:page" => (Kind::Query, messages_page),
        "tasks:list" => (Kind::Query, tasks_list),
        "tasks:add" => (Kind::Mutation, tasks_add),
        "tasks:toggle" => (Kind::Mutation, tasks_toggle),
        "users:me" => (Kind::Query, users_me),
        "config:get" => (Kind::Query, config_get),
        "demo:echo" => (Kind::Action, demo_echo),
        "demo:check" => (Kind::Query, demo_check),
        _ => return None,
    };
    Some(f)
}

/// The error Convex gives for a path with no public function.
pub fn not_found(path: &str) -> FunctionError {
    FunctionError::new(format!(
        "Could not find public function for '{path}'. Did you forget to run `npx convex dev` or `npx convex deploy`?"
    ))
}

/// Checks the arguments object against a validator: exactly these fields, each a string.
fn string_args<'a, const N: usize>(
    args: &'a Map<String, Value>,
    fields: [&str; N],
) -> Result<[&'a str; N], FunctionError> {
    if let Some(extra) = args.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(FunctionError::new(format!(
            "ArgumentValidationError: Object contains extra field `{extra}` that is not in the validator."
        )));
    }
    let mut out = [""; N];
    for (slot, f) in out.iter_mut().zip(fields) {
        *slot = match args.get(f) {
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(other) => Err(FunctionError::new(format!(
                "ArgumentValidationError: Value does not match validator.\nPath: .{f}\nValue: {other}\nValidator: v.string()"
            ))),
            None => Err(FunctionError::new(format!(
                "ArgumentValidationError: Object is missing the required field `{f}`."
            ))),
        }?;
    }
    Ok(out)
}

fn signed_in<'a>(ctx: &Ctx<'a, '_>) -> Result<&'a Identity, FunctionError> {
    ctx.identity
        .ok_or_else(|| FunctionError::new("Uncaught Error: Not signed in"))
}

fn messages_list(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let [channel] = string_args(args, ["channel"])?;
    let all: Vec<Value> = ctx
        .db
        .scan("messages")
        .into_iter()
        .filter(|m| m["channel"] == channel)
        .collect();
    let start = all.len().saturating_sub(100);
    Ok(Value::Array(all[start..].to_vec()))
}

/// One page of a channel's messages, newest first: `{channel, paginationOpts}` →
/// `{page, isDone, continueCursor, splitCursor, pageStatus}` (`usePaginatedQuery`'s shape).
fn messages_page(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let mut rest = args.clone();
    let opts = rest.remove("paginationOpts").ok_or_else(|| {
        FunctionError::new(
            "ArgumentValidationError: Object is missing the required field `paginationOpts`.",
        )
    })?;
    let [channel] = string_args(&rest, ["channel"])?;
    let opts = PaginationOpts::parse(&opts)?;
    let docs = ctx
        .db
        .scan("messages")
        .into_iter()
        .filter(|m| m["channel"] == channel)
        .collect();
    pagination::paginate(docs, Order::Desc, &opts, ctx.journal)
}

fn messages_send(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let [channel, body] = string_args(args, ["channel", "body"])?;
    let author = signed_in(ctx)?.display_name();
    let mut doc = Map::new();
    doc.insert("channel".into(), json!(channel));
    doc.insert("body".into(), json!(body));
    doc.insert("author".into(), json!(author));
    ctx.db
        .insert("messages", doc)
        .map(Value::String)
        .map_err(FunctionError::new)
}

fn owner(ctx: &Ctx<'_, '_>) -> Option<String> {
    ctx.identity.map(|i| i.token_identifier.clone())
}

fn tasks_list(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    string_args(args, [])?;
    let Some(owner) = owner(ctx) else {
        return Ok(json!([]));
    };
    let tasks = ctx
        .db
        .scan("tasks")
        .into_iter()
        .filter(|t| t["owner"] == owner.as_str())
        .map(|t| json!({"_id": t["_id"], "_creationTime": t["_creationTime"], "text": t["text"], "done": t["done"]}))
        .collect();
    Ok(Value::Array(tasks))
}

fn tasks_add(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let [text] = string_args(args, ["text"])?;
    let owner = signed_in(ctx)?.token_identifier.clone();
    let mut doc = Map::new();
    doc.insert("text".into(), json!(text));
    doc.insert("done".into(), json!(false));
    doc.insert("owner".into(), json!(owner));
    ctx.db
        .insert("tasks", doc)
        .map(Value::String)
        .map_err(FunctionError::new)
}

fn tasks_toggle(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let [id] = string_args(args, ["id"])?;
    let owner = signed_in(ctx)?.token_identifier.clone();
    let mut task = ctx
        .db
        .get("tasks", id)
        .filter(|t| t["owner"] == owner.as_str())
        .ok_or_else(|| FunctionError::new("Uncaught Error: Task not found"))?;
    let done = task["done"].as_bool().unwrap_or(false);
    task["done"] = json!(!done);
    ctx.db
        .replace("tasks", id, task)
        .map_err(FunctionError::new)?;
    Ok(Value::Null)
}

fn users_me(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    string_args(args, [])?;
    Ok(ctx.identity.map(Identity::to_json).unwrap_or(Value::Null))
}

fn config_get(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    string_args(args, [])?;
    // Settings live in a table so a deployment could change them; the demo seeds none.
    let stored = ctx.db.scan("config").into_iter().next();
    Ok(stored.unwrap_or_else(|| json!({"siteName": "convex-edge demo", "defaultChannel": "general", "maxMessageLength": 1000})))
}

fn demo_echo(_: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    Ok(Value::Object(args.clone()))
}

/// The longest message body `demo:check` accepts (`config:get`'s `maxMessageLength`).
const MAX_BODY: usize = 1000;

/// Logs the check; a body over [`MAX_BODY`] characters fails with `ConvexError` data
/// `{"code": "TooLong", "max", "length"}`.
fn demo_check(ctx: &mut Ctx<'_, '_>, args: &Map<String, Value>) -> Result<Value, FunctionError> {
    let [body] = string_args(args, ["body"])?;
    let length = body.chars().count();
    ctx.log(&format!("checking {length} characters"));
    if length > MAX_BODY {
        let data = json!({"code": "TooLong", "max": MAX_BODY, "length": length});
        return Err(FunctionError {
            message: format!("Uncaught ConvexError: {data}"),
            data: Some(data),
        });
    }
    Ok(Value::Bool(true))
}

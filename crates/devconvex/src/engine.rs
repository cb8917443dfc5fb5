//! Runs functions against the database and keeps subscriptions consistent: every evaluation of
//! a session's queries happens on one snapshot, under one lock, and reports that snapshot's `ts`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use edge_convex::sync::{QueryId, StateModification};
use edge_convex::{UdfPath, value};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::auth::{Authenticator, Identity};
use crate::db::{Access, Database, Snapshot, Tx};
use crate::functions::{self, Ctx, FunctionError, Kind};
use crate::metrics::Stats;
use crate::pagination::Journal;

/// One live query of one session.
#[derive(Debug)]
pub struct Subscription {
    pub query_id: QueryId,
    pub path: String,
    pub args: Value,
    /// The journal the next execution starts from: the client's (`Add.journal`) at first,
    /// then the one the previous execution produced, as Convex re-runs a subscription.
    journal: Option<String>,
    reads: BTreeSet<String>,
    /// The last result sent: the serialised value or the error message, with its journal.
    last: Option<(Result<String, String>, Option<String>)>,
}

impl Subscription {
    pub fn new(query_id: QueryId, path: String, args: Value, journal: Option<String>) -> Self {
        Subscription {
            query_id,
            path,
            args,
            journal,
            reads: BTreeSet::new(),
            last: None,
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    db: Mutex<Database>,
    ts: watch::Sender<u64>,
    pub auth: Authenticator,
    pub stats: Stats,
}

/// The arguments object of a call: one object, a valid Convex value.
fn args_object(args: &Value) -> Result<Map<String, Value>, FunctionError> {
    let bad = |m: String| FunctionError {
        message: m,
        data: None,
    };
    match args {
        Value::Object(map) => {
            value::validate(args).map_err(|e| bad(format!("ArgumentValidationError: {e}")))?;
            Ok(map.clone())
        }
        _ => Err(bad("ArgumentValidationError: args must be an object".into())),
    }
}

/// One query run by [`Engine::query`].
#[derive(Debug)]
pub struct QueryRun {
    pub result: Result<Value, FunctionError>,
    /// The snapshot it read.
    pub ts: u64,
    /// What it logged (`console.log` lines as Convex formats them).
    pub log_lines: Vec<String>,
}

impl Engine {
    pub fn new(auth: Authenticator) -> Self {
        let db = Database::new();
        let (ts, _) = watch::channel(db.ts());
        Engine {
            db: Mutex::new(db),
            ts,
            auth,
            stats: Stats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Database> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ts(&self) -> u64 {
        self.lock().ts()
    }

    /// Wakes when a commit moves the timestamp.
    pub fn watch_ts(&self) -> watch::Receiver<u64> {
        self.ts.subscribe()
    }

    /// The kind of the function at `path`.
    pub fn kind(path: &str) -> Option<Kind> {
        UdfPath::parse(path)
            .ok()
            .and_then(|p| functions::lookup(&p))
            .map(|(k, _)| k)
    }

    /// Runs one function on `snapshot`; the returned transaction holds its reads and writes.
    fn run<'s>(
        &self,
        snapshot: &'s Snapshot,
        path: &str,
        expected: Kind,
        args: &Value,
        identity: Option<&Identity>,
        journal: &mut Journal,
    ) -> (Result<Value, FunctionError>, Tx<'s>, Vec<String>) {
        let access = if expected == Kind::Mutation {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        let mut tx = Tx::new(snapshot, access);
        let mut logs = Vec::new();
        let result = (|| {
            let udf = UdfPath::parse(path).map_err(|_| functions::not_found(path))?;
            let (kind, handler) =
                functions::lookup(&udf).ok_or_else(|| functions::not_found(path))?;
            if kind != expected {
                return Err(FunctionError {
                    message: format!(
                        "Trying to execute {udf} as {}, but it is defined as {}.",
                        title(expected),
                        title(kind)
                    ),
                    data: None,
                });
            }
            let args = args_object(args)?;
            self.stats.executed(udf.as_str());
            handler(
                &mut Ctx {
                    db: &mut tx,
                    identity,
                    logs: &mut logs,
                    journal,
                },
                &args,
            )
        })();
        (result, tx, logs)
    }

    /// Runs a query at the current state, or at `at` when still retained: its result, the
    /// snapshot's `ts` and the lines it logged.
    pub fn query(
        &self,
        path: &str,
        args: &Value,
        identity: Option<&Identity>,
        at: Option<u64>,
    ) -> Result<QueryRun, String> {
        let db = self.lock();
        let snapshot = match at {
            Some(ts) => db.snapshot_at(ts).ok_or("timestamp is too old")?,
            None => db.snapshot(),
        };
        let (result, _, log_lines) = self.run(
            snapshot,
            path,
            Kind::Query,
            args,
            identity,
            &mut Journal::default(),
        );
        Ok(QueryRun {
            result,
            ts: snapshot.ts,
            log_lines,
        })
    }

    /// Runs a mutation and commits its writes; returns the result and the commit's `ts`.
    pub fn mutation(
        &self,
        path: &str,
        args: &Value,
        identity: Option<&Identity>,
    ) -> (Result<Value, FunctionError>, u64) {
        self.mutation_once(None, path, args, identity)
    }

    /// [`Engine::mutation`] as the sync protocol runs it, with `once` its
    /// `(sessionId, requestId)`: as Convex (`check_mutation_status`), a mutation that already
    /// committed under it is not run again, and answers with its first result and commit `ts`.
    pub fn mutation_once(
        &self,
        once: Option<(&str, u32)>,
        path: &str,
        args: &Value,
        identity: Option<&Identity>,
    ) -> (Result<Value, FunctionError>, u64) {
        let mut db = self.lock();
        if let Some((session, request)) = once
            && let Some((result, ts)) = db.session_request(session, request)
        {
            return (Ok(result), ts);
        }
        let snapshot = db.snapshot().clone();
        let (result, tx, _) = self.run(
            &snapshot,
            path,
            Kind::Mutation,
            args,
            identity,
            &mut Journal::default(),
        );
        let writes = tx.writes;
        let ts = match &result {
            Ok(_) => db.commit(writes),
            Err(_) => db.ts(),
        };
        if let (Some((session, request)), Ok(value)) = (once, &result) {
            db.record_session_request(session, request, value.clone(), ts);
        }
        drop(db);
        self.ts.send_if_modified(|current| {
            let moved = ts > *current;
            if moved {
                *current = ts;
            }
            moved
        });
        (result, ts)
    }

    /// Runs an action (the demo's actions touch no table).
    pub fn action(
        &self,
        path: &str,
        args: &Value,
        identity: Option<&Identity>,
    ) -> Result<Value, FunctionError> {
        let snapshot = Snapshot::default();
        self.run(
            &snapshot,
            path,
            Kind::Action,
            args,
            identity,
            &mut Journal::default(),
        )
        .0
    }

    /// Re-evaluates `subs` on the current snapshot: those `forced`, and those invalidated,
    /// whose tables were written after `since`.
    pub fn refresh<'s>(
        &self,
        subs: impl Iterator<Item = &'s mut Subscription>,
        since: u64,
        identity: Option<&Identity>,
        forced: impl Fn(&Subscription) -> bool,
    ) -> Refresh {
        let db = self.lock();
        let written = db.written_since(since);
        let snapshot = db.snapshot();
        let mut mods = Vec::new();
        let mut invalidated = false;
        for sub in subs {
            let stale = match &written {
                Some(tables) => sub.reads.iter().any(|t| tables.contains(t)),
                None => true,
            };
            if !(stale || forced(sub) || sub.last.is_none()) {
                continue;
            }
            invalidated |= stale;
            let (result, reads, logs, journal) = match Journal::from_client(sub.journal.as_deref())
            {
                Ok(mut journal) => {
                    let (result, tx, logs) = self.run(
                        snapshot,
                        &sub.path,
                        Kind::Query,
                        &sub.args,
                        identity,
                        &mut journal,
                    );
                    (result, tx.reads, logs, journal.serialized())
                }
                // A journal this backend did not produce fails the query, as Convex's
                // decryption does; it is kept, so the query fails until removed.
                Err(e) => (Err(e), BTreeSet::new(), Vec::new(), sub.journal.clone()),
            };
            sub.reads = reads;
            if journal.is_some() {
                sub.journal = journal.clone();
            }
            let now = match &result {
                Ok(v) => Ok(v.to_string()),
                Err(e) => Err(format!("{}{:?}", e.message, e.data)),
            };
            let now = (now, journal.clone());
            if sub.last.as_ref() == Some(&now) {
                continue;
            }
            sub.last = Some(now);
            mods.push(match result {
                Ok(value) => StateModification::QueryUpdated {
                    query_id: sub.query_id,
                    value,
                    log_lines: logs,
                    journal,
                },
                Err(e) => StateModification::QueryFailed {
                    query_id: sub.query_id,
                    error_message: e.message,
                    log_lines: logs,
                    journal,
                    error_data: e.data,
                },
            });
        }
        Refresh {
            ts: snapshot.ts,
            modifications: mods,
            invalidated,
        }
    }
}

/// What [`Engine::refresh`] found.
#[derive(Debug)]
pub struct Refresh {
    /// The snapshot every query ran on.
    pub ts: u64,
    /// One for every result that changed.
    pub modifications: Vec<StateModification>,
    /// Whether a commit after `since` wrote a table a subscription had read (its result may
    /// still be the same): Convex's invalidation, at table granularity.
    pub invalidated: bool,
}

fn title(kind: Kind) -> &'static str {
    match kind {
        Kind::Query => "Query",
        Kind::Mutation => "Mutation",
        Kind::Action => "Action",
    }
}

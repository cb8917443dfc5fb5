//! An in-memory document store with Convex's system fields, snapshots by timestamp, and a log of
//! which tables each commit wrote (so subscriptions re-run only when their tables change).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

pub type Table = Arc<BTreeMap<String, Value>>;

/// Tables as of one timestamp; cloning is cheap (tables are shared until written).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ts: u64,
    tables: HashMap<String, Table>,
}

impl Snapshot {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}

/// How many past snapshots and commit records are kept.
const HISTORY: usize = 256;

#[derive(Debug, Default)]
pub struct Database {
    current: Snapshot,
    history: VecDeque<Snapshot>,
    /// (ts, tables written) per commit, oldest first.
    log: VecDeque<(u64, BTreeSet<String>)>,
    /// Mutations run over the sync protocol, by `(sessionId, requestId)`: their result and
    /// commit `ts` (Convex's `SessionRequestModel`), so one sent again after a reconnect is
    /// answered with its first outcome rather than run twice. The newest
    /// [`MAX_SESSION_REQUESTS`] are kept.
    session_requests: HashMap<(String, u32), (Value, u64)>,
    session_request_order: VecDeque<(String, u32)>,
}

/// How many mutation outcomes [`Database`] keeps for `(sessionId, requestId)` (Convex keeps
/// them for a retention period; a dev server keeps the newest).
pub const MAX_SESSION_REQUESTS: usize = 65_536;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Database {
    pub fn new() -> Self {
        let mut db = Database::default();
        db.current.ts = now_nanos();
        db
    }

    pub fn ts(&self) -> u64 {
        self.current.ts
    }

    /// The result and commit `ts` of the mutation `(session, request)` ran as, if it did.
    pub fn session_request(&self, session: &str, request: u32) -> Option<(Value, u64)> {
        self.session_requests
            .get(&(session.to_owned(), request))
            .cloned()
    }

    /// Records a committed mutation's outcome under `(session, request)`.
    pub fn record_session_request(&mut self, session: &str, request: u32, result: Value, ts: u64) {
        let key = (session.to_owned(), request);
        if self
            .session_requests
            .insert(key.clone(), (result, ts))
            .is_none()
        {
            self.session_request_order.push_back(key);
        }
        while self.session_request_order.len() > MAX_SESSION_REQUESTS {
            if let Some(old) = self.session_request_order.pop_front() {
                self.session_requests.remove(&old);
            }
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.current
    }

    /// The newest snapshot at or before `ts`, if still retained.
    pub fn snapshot_at(&self, ts: u64) -> Option<&Snapshot> {
        if ts >= self.current.ts {
            return Some(&self.current);
        }
        self.history.iter().rev().find(|s| s.ts <= ts)
    }

    /// The tables written after `since`; `None` if the log no longer reaches back that far.
    pub fn written_since(&self, since: u64) -> Option<BTreeSet<String>> {
        if since >= self.current.ts {
            return Some(BTreeSet::new());
        }
        if self
            .log
            .front()
            .is_none_or(|(first, _)| *first > since + 1 && self.log.len() == HISTORY)
        {
            return None;
        }
        let mut out = BTreeSet::new();
        for (ts, tables) in self.log.iter().rev() {
            if *ts <= since {
                break;
            }
            out.extend(tables.iter().cloned());
        }
        Some(out)
    }

    /// Applies `writes` as one commit at a new, strictly larger timestamp.
    pub fn commit(&mut self, writes: Vec<(String, String, Option<Value>)>) -> u64 {
        if writes.is_empty() {
            return self.current.ts;
        }
        self.history.push_back(self.current.clone());
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let mut tables = BTreeSet::new();
        for (table, id, doc) in writes {
            let t = Arc::make_mut(self.current.tables.entry(table.clone()).or_default());
            match doc {
                Some(doc) => t.insert(id, doc),
                None => t.remove(&id),
            };
            tables.insert(table);
        }
        let ts = now_nanos().max(self.current.ts + 1);
        self.current.ts = ts;
        self.log.push_back((ts, tables));
        if self.log.len() > HISTORY {
            self.log.pop_front();
        }
        ts
    }
}

/// Whether a transaction may write: mutations may, queries may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A function's view of the database: reads from one snapshot (recorded), writes buffered
/// until commit.
pub struct Tx<'a> {
    snapshot: &'a Snapshot,
    pub reads: BTreeSet<String>,
    pub writes: Vec<(String, String, Option<Value>)>,
    access: Access,
}

impl<'a> Tx<'a> {
    pub fn new(snapshot: &'a Snapshot, access: Access) -> Self {
        Tx {
            snapshot,
            reads: BTreeSet::new(),
            writes: Vec::new(),
            access,
        }
    }

    /// Every document of `table`, in `_creationTime` order, with this transaction's writes.
    pub fn scan(&mut self, table: &str) -> Vec<Value> {
        self.reads.insert(table.to_owned());
        let mut docs: BTreeMap<String, Value> = self
            .snapshot
            .table(table)
            .map(|t| (**t).clone())
            .unwrap_or_default();
        for (t, id, doc) in &self.writes {
            if t == table {
                match doc {
                    Some(d) => docs.insert(id.clone(), d.clone()),
                    None => docs.remove(id),
                };
            }
        }
        let mut out: Vec<Value> = docs.into_values().collect();
        out.sort_by(|a, b| {
            let ct = |v: &Value| {
                v.get("_creationTime")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            };
            ct(a).total_cmp(&ct(b))
        });
        out
    }

    pub fn get(&mut self, table: &str, id: &str) -> Option<Value> {
        self.scan(table)
            .into_iter()
            .find(|d| d.get("_id").and_then(Value::as_str) == Some(id))
    }

    /// Inserts a document, adding `_id` and `_creationTime`; returns the id.
    pub fn insert(
        &mut self,
        table: &str,
        mut fields: Map<String, Value>,
    ) -> Result<String, String> {
        if self.access == Access::ReadOnly {
            return Err("queries cannot write to the database".into());
        }
        let id = new_id();
        let creation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        fields.insert("_id".into(), Value::String(id.clone()));
        fields.insert(
            "_creationTime".into(),
            serde_json::Number::from_f64(creation)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        );
        self.writes
            .push((table.to_owned(), id.clone(), Some(Value::Object(fields))));
        Ok(id)
    }

    pub fn replace(&mut self, table: &str, id: &str, doc: Value) -> Result<(), String> {
        if self.access == Access::ReadOnly {
            return Err("queries cannot write to the database".into());
        }
        self.writes
            .push((table.to_owned(), id.to_owned(), Some(doc)));
        Ok(())
    }
}

/// A document id: 32 characters of Convex's lowercase base32 alphabet.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 32];
    edge_keys::random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect()
}

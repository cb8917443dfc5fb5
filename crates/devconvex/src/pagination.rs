//! Reactive pagination as Convex defines it (convex-backend `isolate/.../async_syscall.rs`
//! `query_page`, `common/src/query_journal.rs`): `paginate` reads one page of an ordered
//! document stream from a cursor, and the page's end goes into the query's journal, so a
//! re-execution with that journal (a live update, or a client that re-subscribes with the
//! journal it was sent) ends at the same place whatever was inserted or deleted meanwhile.
//!
//! Cursors and journals are opaque strings to the client. Convex encrypts them; devconvex
//! writes them as `p1.` + base64url(JSON `[creationTime's IEEE bits, id]`) for the position of a
//! document (bits, not a decimal: serde_json's default float parsing may be one ulp off, which
//! would move a page's end), and `p1.end` for the end of the stream, and a journal is its end cursor (or `null` when the
//! function did not paginate).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::functions::FunctionError;

/// A position in a stream ordered by `(_creationTime, _id)`: after that document, or the end.
#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    After { creation_time: f64, id: String },
    End,
}

/// The largest page a client may ask for (Convex's `TRANSACTION_MAX_READ_SIZE_ROWS`).
pub const MAX_PAGE_SIZE: usize = 32_000;

const PREFIX: &str = "p1.";

impl Cursor {
    /// The cursor of the position just after `doc`.
    fn after(doc: &Value) -> Cursor {
        Cursor::After {
            creation_time: creation_time(doc),
            id: doc_id(doc).to_owned(),
        }
    }

    /// The opaque string the client holds.
    pub fn encode(&self) -> String {
        match self {
            Cursor::End => format!("{PREFIX}end"),
            Cursor::After { creation_time, id } => format!(
                "{PREFIX}{}",
                URL_SAFE_NO_PAD.encode(json!([creation_time.to_bits(), id]).to_string())
            ),
        }
    }

    /// # Errors
    /// A string this backend did not hand out: `InvalidCursor`, as Convex names it.
    pub fn decode(s: &str) -> Result<Cursor, FunctionError> {
        let bad = || FunctionError {
            message: format!("InvalidCursor: failed to parse cursor {s:?}"),
            data: None,
        };
        let rest = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if rest == "end" {
            return Ok(Cursor::End);
        }
        let bytes = URL_SAFE_NO_PAD.decode(rest).map_err(|_| bad())?;
        let (bits, id): (u64, String) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(Cursor::After {
            creation_time: f64::from_bits(bits),
            id,
        })
    }
}

/// What a query function's executions hand each other: the journal it was run with, and the
/// one this run produces (Convex's `prev_journal`/`next_journal`).
#[derive(Debug, Default)]
pub struct Journal {
    pub prev_end: Option<Cursor>,
    pub next_end: Option<Cursor>,
}

impl Journal {
    /// The journal a client sent (`null` or a string this backend produced).
    ///
    /// # Errors
    /// `InvalidCursor` for a string that is not one of this backend's journals.
    pub fn from_client(journal: Option<&str>) -> Result<Journal, FunctionError> {
        Ok(Journal {
            prev_end: journal.map(Cursor::decode).transpose()?,
            next_end: None,
        })
    }

    /// The journal sent back with the result: the end of the page the function read, if any.
    pub fn serialized(&self) -> Option<String> {
        self.next_end.as_ref().map(Cursor::encode)
    }
}

/// `paginationOpts` as `paginationOptsValidator` accepts them (`numItems`, `cursor`, optional
/// `endCursor`, `id`, `maximumRowsRead`, `maximumBytesRead`).
#[derive(Debug)]
pub struct PaginationOpts {
    pub num_items: usize,
    pub cursor: Option<Cursor>,
    pub end_cursor: Option<Cursor>,
}

impl PaginationOpts {
    /// # Errors
    /// `ArgumentValidationError` for a value the validator refuses; `InvalidCursor` for a cursor
    /// this backend did not produce.
    pub fn parse(v: &Value) -> Result<PaginationOpts, FunctionError> {
        let invalid = |m: &str| FunctionError {
            message: format!("ArgumentValidationError: {m}\nPath: .paginationOpts"),
            data: None,
        };
        let Value::Object(o) = v else {
            return Err(invalid("Value does not match validator."));
        };
        const FIELDS: [&str; 6] = [
            "numItems",
            "cursor",
            "endCursor",
            "id",
            "maximumRowsRead",
            "maximumBytesRead",
        ];
        if let Some(extra) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(&format!(
                "Object contains extra field `{extra}` that is not in the validator."
            )));
        }
        let num_items = o
            .get("numItems")
            .and_then(Value::as_f64)
            .ok_or_else(|| invalid("`numItems` must be a number."))?;
        let cursor = |field: &str, required: bool| -> Result<Option<Cursor>, FunctionError> {
            match o.get(field) {
                Some(Value::String(s)) => Cursor::decode(s).map(Some),
                Some(Value::Null) => Ok(None),
                None if !required => Ok(None),
                _ => Err(invalid(&format!("`{field}` must be a string or null."))),
            }
        };
        let opts = PaginationOpts {
            // Convex rounds a fractional page size down and needs at least one item.
            num_items: num_items.max(0.0).floor() as usize,
            cursor: cursor("cursor", true)?,
            end_cursor: cursor("endCursor", false)?,
        };
        if opts.num_items == 0 {
            return Err(FunctionError {
                message: "Uncaught Error: NoDocumentsForPagination: Must request at least 1 \
                          document while paginating"
                    .into(),
                data: None,
            });
        }
        if opts.num_items > MAX_PAGE_SIZE {
            return Err(FunctionError {
                message: format!(
                    "Uncaught Error: PageSizeTooLarge: Requested too many items: {}",
                    opts.num_items
                ),
                data: None,
            });
        }
        Ok(opts)
    }
}

/// Whether the stream is read oldest first (`order("asc")`) or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

fn creation_time(doc: &Value) -> f64 {
    doc.get("_creationTime")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn doc_id(doc: &Value) -> &str {
    doc.get("_id").and_then(Value::as_str).unwrap_or("")
}

/// Whether `doc` comes strictly after `cursor` in `order`.
fn beyond(doc: &Value, cursor: &Cursor, order: Order) -> bool {
    match cursor {
        Cursor::End => false,
        Cursor::After {
            creation_time: t,
            id,
        } => {
            let key = (creation_time(doc), doc_id(doc));
            let ordering = key.0.total_cmp(t).then_with(|| key.1.cmp(id.as_str()));
            match order {
                Order::Asc => ordering.is_gt(),
                Order::Desc => ordering.is_lt(),
            }
        }
    }
}

/// `query.paginate(opts)` over `docs` (already filtered, in ascending `(_creationTime, _id)`
/// order), recording the page's end in `journal`.
///
/// The page starts after `opts.cursor` and ends at `opts.endCursor`, else at the end the
/// previous execution's journal recorded (every document up to it, however many), else after
/// `numItems` documents, or at the end of the stream (`isDone`). Returns Convex's
/// `{page, isDone, continueCursor, splitCursor, pageStatus}`; `splitCursor` is the position
/// after the first half of a page of two or more documents (the client splits pages that grow
/// past twice their size there).
///
/// # Errors
/// `MultiplePaginatedDatabaseQueries` when the function already paginated once.
pub fn paginate(
    mut docs: Vec<Value>,
    order: Order,
    opts: &PaginationOpts,
    journal: &mut Journal,
) -> Result<Value, FunctionError> {
    if journal.next_end.is_some() {
        return Err(FunctionError {
            message: "Uncaught Error: MultiplePaginatedDatabaseQueries: This query or mutation \
                      function ran multiple paginated queries. Convex only supports a single \
                      paginated query in each function."
                .into(),
            data: None,
        });
    }
    if order == Order::Desc {
        docs.reverse();
    }
    let start = opts.cursor.as_ref();
    let mut stream = docs
        .into_iter()
        .filter(|d| start.is_none_or(|c| beyond(d, c, order)));
    let end = opts.end_cursor.clone().or_else(|| journal.prev_end.clone());
    let mut page = Vec::new();
    let cursor = match end {
        Some(end) => {
            page.extend(stream.take_while(|d| !beyond(d, &end, order)));
            end
        }
        None => {
            page.extend(stream.by_ref().take(opts.num_items));
            match page.last() {
                Some(last) if page.len() == opts.num_items => Cursor::after(last),
                _ => Cursor::End,
            }
        }
    };
    let split_cursor = (page.len() >= 2).then(|| Cursor::after(&page[page.len() / 2 - 1]).encode());
    let is_done = cursor == Cursor::End;
    let continue_cursor = cursor.encode();
    journal.next_end = Some(cursor);
    let mut out = Map::new();
    out.insert("page".into(), Value::Array(page));
    out.insert("isDone".into(), Value::Bool(is_done));
    out.insert("continueCursor".into(), Value::String(continue_cursor));
    out.insert(
        "splitCursor".into(),
        split_cursor.map_or(Value::Null, Value::String),
    );
    out.insert("pageStatus".into(), Value::Null);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(t: f64, id: &str) -> Value {
        json!({"_creationTime": t, "_id": id})
    }

    fn ids(result: &Value) -> Vec<&str> {
        result["page"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["_id"].as_str().unwrap())
            .collect()
    }

    fn opts(n: usize, cursor: Option<&Value>) -> PaginationOpts {
        PaginationOpts {
            num_items: n,
            cursor: cursor.map(|c| Cursor::decode(c.as_str().unwrap()).unwrap()),
            end_cursor: None,
        }
    }

    #[test]
    fn pages_follow_each_other_and_the_journal_pins_the_end() {
        let docs: Vec<Value> = (1..=5).map(|i| doc(i as f64, &format!("d{i}"))).collect();
        let mut j1 = Journal::default();
        let first = paginate(docs.clone(), Order::Desc, &opts(2, None), &mut j1).unwrap();
        assert_eq!(ids(&first), ["d5", "d4"]);
        assert_eq!(first["isDone"], false);
        let journal = j1.serialized().unwrap();
        assert_eq!(first["continueCursor"], journal.as_str());

        let mut j2 = Journal::default();
        let second = paginate(
            docs.clone(),
            Order::Desc,
            &opts(2, Some(&first["continueCursor"])),
            &mut j2,
        )
        .unwrap();
        assert_eq!(ids(&second), ["d3", "d2"]);

        // A newer document lands in the first page, which keeps its end at d4.
        let mut more = docs.clone();
        more.push(doc(6.0, "d6"));
        let mut again = Journal::from_client(Some(&journal)).unwrap();
        let first_again = paginate(more.clone(), Order::Desc, &opts(2, None), &mut again).unwrap();
        assert_eq!(ids(&first_again), ["d6", "d5", "d4"]);
        assert_eq!(again.serialized().unwrap(), journal);
        // Without the journal the page would be two documents, and d4 would fall in a gap.
        let mut fresh = Journal::default();
        let unpinned = paginate(more, Order::Desc, &opts(2, None), &mut fresh).unwrap();
        assert_eq!(ids(&unpinned), ["d6", "d5"]);
    }

    #[test]
    fn cursors_round_trip_exactly() {
        // A millisecond time with a fraction, as `_creationTime` is: serde_json's default float
        // parsing reads this decimal one ulp off, which moved a page's end.
        let doc = doc(1796096951344.7415, "9aytqprvmsadw1e4gf03gej3ym7b7wn4");
        let cursor = Cursor::after(&doc);
        let decoded = Cursor::decode(&cursor.encode()).unwrap();
        assert_eq!(decoded, cursor);
        assert_eq!(decoded.encode(), cursor.encode());
        assert!(!beyond(&doc, &decoded, Order::Asc));
        assert!(!beyond(&doc, &decoded, Order::Desc));
    }

    #[test]
    fn the_last_page_is_done_and_ends_at_the_end() {
        let docs: Vec<Value> = (1..=3).map(|i| doc(i as f64, &format!("d{i}"))).collect();
        let mut j = Journal::default();
        let all = paginate(docs.clone(), Order::Asc, &opts(5, None), &mut j).unwrap();
        assert_eq!(ids(&all), ["d1", "d2", "d3"]);
        assert_eq!(all["isDone"], true);
        assert_eq!(j.serialized().unwrap(), "p1.end");
        // A later document joins the last page when it re-runs with its journal.
        let mut more = docs;
        more.push(doc(4.0, "d4"));
        let mut again = Journal::from_client(Some("p1.end")).unwrap();
        let grown = paginate(more, Order::Asc, &opts(5, None), &mut again).unwrap();
        assert_eq!(ids(&grown), ["d1", "d2", "d3", "d4"]);
    }

    #[test]
    fn bad_cursors_journals_and_sizes_are_refused_by_name() {
        assert!(
            Cursor::decode("nope")
                .unwrap_err()
                .message
                .contains("InvalidCursor")
        );
        assert!(Journal::from_client(Some("p1.!!")).is_err());
        for (v, what) in [
            (
                json!({"numItems": 0, "cursor": null}),
                "NoDocumentsForPagination",
            ),
            (
                json!({"numItems": 40000, "cursor": null}),
                "PageSizeTooLarge",
            ),
            (json!({"numItems": 2}), "`cursor`"),
            (
                json!({"numItems": 2, "cursor": null, "x": 1}),
                "extra field `x`",
            ),
        ] {
            let e = PaginationOpts::parse(&v).unwrap_err();
            assert!(e.message.contains(what), "{v}: {}", e.message);
        }
        let mut j = Journal::default();
        paginate(vec![], Order::Asc, &opts(1, None), &mut j).unwrap();
        let e = paginate(vec![], Order::Asc, &opts(1, None), &mut j).unwrap_err();
        assert!(e.message.contains("MultiplePaginatedDatabaseQueries"));
    }
}

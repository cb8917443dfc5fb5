//! The mutation journal: a client's mutation runs once per `(sessionId, requestId)`, however
//! many times the client sends it.
//!
//! convex-js sends again, on every new socket, each mutation still in flight and each one
//! answered whose transition it has not seen (`RequestManager.restart` in
//! `src/browser/sync/request_manager.ts`: "safe since mutations are idempotent"). Convex makes
//! that safe by recording a successful mutation's outcome under the client's `Connect.sessionId`
//! and `requestId` in the transaction that commits it (`check_mutation_status` and
//! `write_mutation_status` in `crates/application/src/application_function_runner`), and by
//! answering a repeat with the recorded result, log lines and commit `ts`. Identity is not
//! compared: a mutation sent as one user and again after the socket signed out is answered
//! with the first run's outcome.
//!
//! The proxy sends each mutation upstream under its upstream's own session and request id, so
//! Convex cannot see a client's repeat. This journal does it in front of Convex:
//! - the first time a key is seen it is [`Claim::Run`]: the caller forwards the mutation with
//!   the [`Ticket`], and the upstream settles the ticket with Convex's answer, whether or not
//!   the socket that sent it is still there;
//! - while it runs, a repeat [`Claim::Wait`]s: the answer reaches the repeat's socket as an
//!   [`Event::Response`] with `replayed` set;
//! - once it succeeded, a repeat is answered at once from the record (`replayed` set; no
//!   transition of any upstream follows it, so the socket asks its routes to advance);
//! - a failed mutation is not recorded (Convex records successes only: a failure wrote
//!   nothing, and a repeat runs again), and neither is one that never reached Convex (refused
//!   by the upstream, or dropped unsent): the repeats waiting for it get [`Event::Rerun`] and
//!   run it themselves.
//!
//! Records are kept for [`RETENTION`] and within [`MAX_BYTES`], oldest dropped first. The journal
//! lives in one query-service process: a client that reconnects to another replica is not
//! deduplicated (see README, "Mutations sent again").

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_convex::RequestId;
use edge_convex::sync::RequestKind;

use crate::listener::Inbox;
use crate::upstream::{Event, RequestOutcome};

/// How long a successful mutation's outcome is kept for repeats: convex-js repeats a mutation
/// only on a new socket, so minutes cover reconnect backoff and a token refresh.
pub const RETENTION: Duration = Duration::from_secs(10 * 60);
/// The bytes of outcomes kept (results, log lines, keys); past it the oldest are dropped.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Whether a `Connect.sessionId` is a hyphenated UUID, as Convex parses it (`SessionId(Uuid)`
/// in `crates/sync_types`) and every official client makes it (`crypto.randomUUID`). A socket
/// with another one is served without the journal: clients sharing an empty or fixed id would
/// otherwise be answered with each other's mutations.
pub fn is_uuid(session_id: &str) -> bool {
    let bytes = session_id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A client's mutation: its socket's `Connect.sessionId` and its `requestId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JournalKey {
    pub session_id: Arc<str>,
    pub request_id: RequestId,
}

/// The socket a repeat came from, and the request id it waits under.
#[derive(Debug)]
pub struct Waiter {
    pub inbox: Inbox,
    pub request_id: RequestId,
}

/// What [`Journal::claim`] tells the socket that sent a mutation.
#[derive(Debug)]
pub enum Claim {
    /// First seen: forward it upstream with this ticket.
    Run(Ticket),
    /// Already answered: the recorded outcome is in the socket's inbox.
    Replayed,
    /// Running for an earlier send: the outcome (or [`Event::Rerun`]) comes to the inbox.
    Wait,
}

#[derive(Debug)]
enum Entry {
    Running(Vec<Waiter>),
    Done {
        outcome: RequestOutcome,
        bytes: usize,
        at: Instant,
    },
}

#[derive(Debug, Default)]
struct Records {
    entries: HashMap<JournalKey, Entry>,
    /// Done entries, oldest first, each with the instant it was recorded (an entry recorded
    /// again after it was dropped has a later one).
    done: VecDeque<(Instant, JournalKey)>,
    bytes: usize,
}

/// Mutations by `(sessionId, requestId)`; shared by every socket of the process.
#[derive(Debug)]
pub struct Journal {
    records: Mutex<Records>,
    retention: Duration,
    max_bytes: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new(RETENTION, MAX_BYTES)
    }
}

impl Journal {
    pub fn new(retention: Duration, max_bytes: usize) -> Self {
        Journal {
            records: Mutex::default(),
            retention,
            max_bytes,
        }
    }

    /// A socket received mutation `key`: run it, or take the answer of its first send.
    pub fn claim(self: &Arc<Self>, key: JournalKey, waiter: Waiter) -> Claim {
        let mut records = self.lock();
        records.expire(Instant::now(), self.retention, self.max_bytes);
        match records.entries.get_mut(&key) {
            None => {
                records
                    .entries
                    .insert(key.clone(), Entry::Running(Vec::new()));
                Claim::Run(Ticket {
                    journal: self.clone(),
                    key: Some(key),
                })
            }
            Some(Entry::Running(waiters)) => {
                waiters.push(waiter);
                Claim::Wait
            }
            Some(Entry::Done { outcome, .. }) => {
                let outcome = outcome.clone();
                drop(records);
                answer(&waiter, outcome);
                Claim::Replayed
            }
        }
    }

    /// Whether no mutation is held, running or recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    fn settle(&self, key: JournalKey, outcome: Option<&RequestOutcome>) {
        let mut records = self.lock();
        if matches!(records.entries.get(&key), Some(Entry::Done { .. })) {
            // Settled already: nothing waits on it.
            return;
        }
        let waiters = match records.entries.remove(&key) {
            Some(Entry::Running(waiters)) => waiters,
            _ => Vec::new(),
        };
        match outcome {
            Some(outcome) if outcome.success => {
                let at = Instant::now();
                let bytes = outcome_bytes(&key, outcome);
                records.bytes += bytes;
                records.done.push_back((at, key.clone()));
                records.entries.insert(
                    key,
                    Entry::Done {
                        outcome: outcome.clone(),
                        bytes,
                        at,
                    },
                );
                records.expire(at, self.retention, self.max_bytes);
                drop(records);
                for waiter in &waiters {
                    answer(waiter, outcome.clone());
                }
            }
            _ => {
                drop(records);
                for waiter in &waiters {
                    let event = Event::Rerun {
                        request_id: waiter.request_id,
                    };
                    waiter.inbox.offer(event);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records {
    /// Drops records older than `retention`, then the oldest until within `max_bytes`.
    fn expire(&mut self, now: Instant, retention: Duration, max_bytes: usize) {
        while let Some((oldest, _)) = self.done.front() {
            let old = now.saturating_duration_since(*oldest) >= retention;
            if !old && self.bytes <= max_bytes {
                break;
            }
            let Some((at, key)) = self.done.pop_front() else {
                break;
            };
            if let Some(Entry::Done { at: recorded, .. }) = self.entries.get(&key)
                && *recorded == at
                && let Some(Entry::Done { bytes, .. }) = self.entries.remove(&key)
            {
                self.bytes -= bytes;
            }
        }
    }
}

/// A mutation forwarded upstream for the journal: settled with Convex's answer. One dropped
/// unsettled never reached Convex (refused, or dropped before it was sent): its repeats run it.
#[derive(Debug)]
pub struct Ticket {
    journal: Arc<Journal>,
    key: Option<JournalKey>,
}

impl Ticket {
    /// Convex answered: a success is recorded and answers every repeat; a failure is not, and
    /// the repeats run again.
    pub fn settle(mut self, outcome: &RequestOutcome) {
        if let Some(key) = self.key.take() {
            self.journal.settle(key, Some(outcome));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.journal.settle(key, None);
        }
    }
}

/// The recorded outcome, to a repeat's socket.
fn answer(waiter: &Waiter, outcome: RequestOutcome) {
    waiter.inbox.offer(Event::Response {
        request_id: waiter.request_id,
        kind: RequestKind::Mutation,
        outcome: Box::new(Ok(outcome)),
        replayed: true,
    });
}

fn outcome_bytes(key: &JournalKey, outcome: &RequestOutcome) -> usize {
    const ENTRY: usize = 128;
    ENTRY
        + key.session_id.len()
        + outcome.result.to_string().len()
        + outcome.log_lines.iter().map(|l| l.len() + 8).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Mailbox;
    use edge_convex::Timestamp;
    use serde_json::json;

    fn key(session: &str, request: u32) -> JournalKey {
        JournalKey {
            session_id: session.into(),
            request_id: RequestId(request),
        }
    }

    fn socket() -> (Inbox, Mailbox) {
        Inbox::new(16)
    }

    fn waiter(inbox: &Inbox, request: u32) -> Waiter {
        Waiter {
            inbox: inbox.clone(),
            request_id: RequestId(request),
        }
    }

    fn success(value: i64, ts: u64) -> RequestOutcome {
        RequestOutcome {
            success: true,
            result: json!(value),
            ts: Some(Timestamp(ts)),
            log_lines: vec!["ran".into()],
            error_data: None,
        }
    }

    fn failure() -> RequestOutcome {
        RequestOutcome {
            success: false,
            result: json!("Uncaught Error: no"),
            ts: None,
            log_lines: vec![],
            error_data: None,
        }
    }

    /// (request id, result, replayed) of a response, or the request id of a rerun.
    fn next(mailbox: &mut Mailbox) -> Option<String> {
        Some(match mailbox.try_recv()? {
            Event::Response {
                request_id,
                outcome,
                replayed,
                ..
            } => {
                let outcome = outcome.as_ref().as_ref().unwrap();
                format!(
                    "response {} {} {replayed} ts={:?}",
                    request_id.0,
                    outcome.result,
                    outcome.ts.map(|t| t.0)
                )
            }
            Event::Rerun { request_id } => format!("rerun {}", request_id.0),
            other => format!("{other:?}"),
        })
    }

    fn run(claim: Claim) -> Ticket {
        match claim {
            Claim::Run(ticket) => ticket,
            other => panic!("expected to run it, got {other:?}"),
        }
    }

    #[test]
    fn only_uuid_session_ids_are_journaled() {
        assert!(is_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(is_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        for other in [
            "",
            "s",
            "not-a-uuid",
            "0f8fad5bd9cb469fa16570867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5b-d9cb-469f-a165-70867728950e0",
            "0f8fad5b_d9cb_469f_a165_70867728950e",
            "zf8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            assert!(!is_uuid(other), "{other:?}");
        }
    }

    #[test]
    fn a_repeat_of_a_running_mutation_waits_for_its_answer() {
        let journal = Arc::new(Journal::default());
        let (first, mut first_box) = socket();
        let (second, mut second_box) = socket();
        let ticket = run(journal.claim(key("s", 7), waiter(&first, 7)));
        assert!(matches!(
            journal.claim(key("s", 7), waiter(&second, 7)),
            Claim::Wait
        ));
        assert_eq!(next(&mut second_box), None);
        ticket.settle(&success(1, 40));
        assert_eq!(
            next(&mut second_box).as_deref(),
            Some("response 7 1 true ts=Some(40)")
        );
        // The socket that ran it gets Convex's answer from its upstream, not from here.
        assert_eq!(next(&mut first_box), None);
    }

    #[test]
    fn a_repeat_of_a_succeeded_mutation_is_answered_from_the_record() {
        let journal = Arc::new(Journal::default());
        let (inbox, mut mailbox) = socket();
        run(journal.claim(key("s", 1), waiter(&inbox, 1))).settle(&success(5, 9));
        assert!(matches!(
            journal.claim(key("s", 1), waiter(&inbox, 1)),
            Claim::Replayed
        ));
        assert_eq!(
            next(&mut mailbox).as_deref(),
            Some("response 1 5 true ts=Some(9)")
        );
        // Another session's request 1 is another mutation.
        run(journal.claim(key("t", 1), waiter(&inbox, 1)));
    }

    #[test]
    fn a_failed_or_unsent_mutation_is_not_recorded_and_its_repeats_run_it() {
        let journal = Arc::new(Journal::default());
        let (inbox, mut mailbox) = socket();
        let ticket = run(journal.claim(key("s", 1), waiter(&inbox, 1)));
        assert!(matches!(
            journal.claim(key("s", 1), waiter(&inbox, 11)),
            Claim::Wait
        ));
        ticket.settle(&failure());
        assert_eq!(next(&mut mailbox).as_deref(), Some("rerun 11"));
        let ticket = run(journal.claim(key("s", 1), waiter(&inbox, 1)));
        assert!(matches!(
            journal.claim(key("s", 1), waiter(&inbox, 12)),
            Claim::Wait
        ));
        // Refused before it reached Convex: the ticket is dropped unsettled.
        drop(ticket);
        assert_eq!(next(&mut mailbox).as_deref(), Some("rerun 12"));
        assert!(journal.is_empty());
        run(journal.claim(key("s", 1), waiter(&inbox, 1)));
    }

    #[test]
    fn records_are_dropped_after_their_retention_and_past_the_byte_bound() {
        let journal = Arc::new(Journal::new(Duration::from_millis(30), MAX_BYTES));
        let (inbox, _mailbox) = socket();
        run(journal.claim(key("s", 1), waiter(&inbox, 1))).settle(&success(1, 1));
        std::thread::sleep(Duration::from_millis(40));
        run(journal.claim(key("s", 1), waiter(&inbox, 1)));

        // Room for about two records: the oldest goes first, running ones stay.
        let one = outcome_bytes(&key("s", 0), &success(1, 1));
        let journal = Arc::new(Journal::new(RETENTION, 2 * one + one / 2));
        let running = run(journal.claim(key("s", 99), waiter(&inbox, 99)));
        for request in 0..3 {
            run(journal.claim(key("s", request), waiter(&inbox, request))).settle(&success(1, 1));
        }
        assert!(matches!(
            journal.claim(key("s", 2), waiter(&inbox, 2)),
            Claim::Replayed
        ));
        assert!(matches!(
            journal.claim(key("s", 1), waiter(&inbox, 1)),
            Claim::Replayed
        ));
        run(journal.claim(key("s", 0), waiter(&inbox, 0)));
        assert!(matches!(
            journal.claim(key("s", 99), waiter(&inbox, 99)),
            Claim::Wait
        ));
        drop(running);
        assert!(journal.lock().bytes <= 2 * one + one / 2);
    }

    #[test]
    fn a_record_made_again_after_it_was_dropped_keeps_its_own_age() {
        let one = outcome_bytes(&key("s", 0), &success(1, 1));
        let journal = Arc::new(Journal::new(RETENTION, one));
        let (inbox, _mailbox) = socket();
        run(journal.claim(key("s", 1), waiter(&inbox, 1))).settle(&success(1, 1));
        run(journal.claim(key("s", 2), waiter(&inbox, 2))).settle(&success(1, 1));
        // 1 was dropped for room; run again and recorded again, it outlives its old slot.
        run(journal.claim(key("s", 1), waiter(&inbox, 1))).settle(&success(1, 1));
        assert!(matches!(
            journal.claim(key("s", 1), waiter(&inbox, 1)),
            Claim::Replayed
        ));
        let records = journal.lock();
        let done_bytes: usize = records
            .entries
            .values()
            .map(|e| match e {
                Entry::Done { bytes, .. } => *bytes,
                Entry::Running(_) => 0,
            })
            .sum();
        assert_eq!(records.bytes, done_bytes);
    }
}

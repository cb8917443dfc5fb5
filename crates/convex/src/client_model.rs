//! A model of the client's side of the sync protocol, for tests: it records what a client sends
//! and checks every server message the way Convex's client does (`remote_query_set.ts`,
//! `request_manager.ts`, `authentication_manager.ts` in get-convex/convex-js), and a little
//! more strictly (the rules of DESIGN section 6).
//!
//! Checked on each server message:
//! - a `Transition` starts exactly at the version the client holds; its query-set version is
//!   one the client sent (never ahead of it, never backwards), its identity version never
//!   ahead of the `Authenticate`s sent and never backwards, its `ts` never backwards;
//! - results only for queries in the query set as of the transition's end, `QueryRemoved` only
//!   for queries no longer in it;
//! - a `MutationResponse`/`ActionResponse` only for a request in flight of that kind, and a
//!   successful mutation carries the `ts` it committed at; it completes once a transition
//!   reaches that `ts`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::sync::{
    ClientMessage, IdentityVersion, QueryId, QuerySetModification, QuerySetVersion, RequestId,
    RequestKind, ServerMessage, StateModification, StateVersion, Timestamp,
};

/// What a server message did for the client.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Received {
    /// Mutations whose promise resolves with this message.
    pub completed: Vec<RequestId>,
    /// Whether this transition confirmed an `Authenticate` (its identity version went up).
    pub auth_confirmed: bool,
}

/// The client's view of one socket.
#[derive(Debug, Default, Clone)]
pub struct ClientModel {
    held: StateVersion,
    /// The query set after each version the client sent (version 0: empty).
    query_sets: BTreeMap<QuerySetVersion, BTreeSet<QueryId>>,
    last_query_set: QuerySetVersion,
    authenticates_sent: u32,
    in_flight: BTreeMap<RequestId, RequestKind>,
    /// Mutations answered with a `ts` no transition since has reached.
    awaiting_ts: BTreeMap<RequestId, Timestamp>,
    /// The latest result of each query, as the client would show it.
    results: BTreeMap<QueryId, Value>,
}

impl ClientModel {
    pub fn new() -> Self {
        let mut model = ClientModel::default();
        model.query_sets.insert(QuerySetVersion(0), BTreeSet::new());
        model
    }

    /// The last query-set version the client sent (the base of its next `ModifyQuerySet`).
    pub fn last_query_set(&self) -> QuerySetVersion {
        self.last_query_set
    }

    /// `Authenticate` messages sent (the base of the next one).
    pub fn authenticates_sent(&self) -> IdentityVersion {
        IdentityVersion(self.authenticates_sent)
    }

    /// The version the client holds.
    pub fn held(&self) -> StateVersion {
        self.held
    }

    /// The last result of a query (`QueryUpdated`'s value, or `QueryFailed` as
    /// `{"error": message}`), if it is in the query set and has one.
    pub fn result(&self, query_id: QueryId) -> Option<&Value> {
        self.results.get(&query_id)
    }

    /// Every query's last result.
    pub fn results(&self) -> &BTreeMap<QueryId, Value> {
        &self.results
    }

    /// Mutations answered but not yet reached by a transition.
    pub fn awaiting(&self) -> impl Iterator<Item = (&RequestId, &Timestamp)> {
        self.awaiting_ts.iter()
    }

    /// The query ids of the last query set the client sent.
    pub fn query_set(&self) -> Vec<QueryId> {
        self.query_sets[&self.last_query_set]
            .iter()
            .copied()
            .collect()
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Records a message the client sends, as the real client would build it.
    ///
    /// # Errors
    /// When the message is one the real client never sends (wrong base version, a query id
    /// already in the set, a request id reused while in flight).
    pub fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        match message {
            ClientMessage::ModifyQuerySet {
                base_version,
                new_version,
                modifications,
            } => {
                if *base_version != self.last_query_set || base_version.next() != Some(*new_version)
                {
                    return Err(format!(
                        "the client sends ModifyQuerySet from {}, not {base_version}",
                        self.last_query_set
                    ));
                }
                let mut set = self.query_sets[&self.last_query_set].clone();
                for m in modifications {
                    match m {
                        QuerySetModification::Add { query_id, .. } => {
                            if !set.insert(*query_id) {
                                return Err(format!("query id {query_id} added twice"));
                            }
                        }
                        QuerySetModification::Remove { query_id } => {
                            if !set.remove(query_id) {
                                return Err(format!(
                                    "query id {query_id} removed but not in the set"
                                ));
                            }
                        }
                    }
                }
                self.query_sets.insert(*new_version, set);
                self.last_query_set = *new_version;
            }
            ClientMessage::Authenticate { base_version, .. } => {
                if base_version.0 != self.authenticates_sent {
                    return Err(format!(
                        "the client authenticates from {}, not {base_version}",
                        self.authenticates_sent
                    ));
                }
                self.authenticates_sent += 1;
            }
            ClientMessage::Mutation { request_id, .. } => {
                self.start_request(*request_id, RequestKind::Mutation)?
            }
            ClientMessage::Action { request_id, .. } => {
                self.start_request(*request_id, RequestKind::Action)?
            }
            ClientMessage::Connect { .. } | ClientMessage::Event { .. } => {}
        }
        Ok(())
    }

    fn start_request(&mut self, id: RequestId, kind: RequestKind) -> Result<(), String> {
        if self.in_flight.insert(id, kind).is_some() {
            return Err(format!("request id {id} reused while in flight"));
        }
        Ok(())
    }

    /// Checks a message from the server and applies it.
    ///
    /// # Errors
    /// The rule the message breaks, worded as the violation.
    pub fn receive(&mut self, message: &ServerMessage) -> Result<Received, String> {
        let mut received = Received::default();
        match message {
            ServerMessage::Transition {
                start_version,
                end_version,
                modifications,
                ..
            } => {
                self.check_versions(*start_version, *end_version)?;
                let live = &self.query_sets[&end_version.query_set];
                for m in modifications {
                    match m {
                        StateModification::QueryUpdated {
                            query_id, value, ..
                        } => {
                            if !live.contains(query_id) {
                                return Err(format!(
                                    "a result for query {query_id}, not in the set"
                                ));
                            }
                            self.results.insert(*query_id, value.clone());
                        }
                        StateModification::QueryFailed {
                            query_id,
                            error_message,
                            ..
                        } => {
                            if !live.contains(query_id) {
                                return Err(format!(
                                    "a failure for query {query_id}, not in the set"
                                ));
                            }
                            let failed = serde_json::json!({ "error": error_message });
                            self.results.insert(*query_id, failed);
                        }
                        StateModification::QueryRemoved { query_id } => {
                            if live.contains(query_id) {
                                return Err(format!(
                                    "query {query_id} removed while still in the set"
                                ));
                            }
                            self.results.remove(query_id);
                        }
                    }
                }
                // The client drops results of queries the new set no longer has.
                self.results.retain(|id, _| live.contains(id));
                received.auth_confirmed = end_version.identity > start_version.identity;
                self.held = *end_version;
                let ts = end_version.ts;
                let done: Vec<RequestId> = self
                    .awaiting_ts
                    .iter()
                    .filter(|(_, at)| **at <= ts)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &done {
                    self.awaiting_ts.remove(id);
                }
                received.completed = done;
            }
            ServerMessage::MutationResponse {
                request_id,
                success,
                ts,
                ..
            } => {
                self.finish_request(*request_id, RequestKind::Mutation)?;
                // convex-js resolves a mutation that succeeded only on a `Transition` whose
                // `ts` reaches its own (`RequestManager.removeCompleted`, called on each
                // transition), even one the client already holds: the server owes one after.
                match (success, ts) {
                    (true, None) => {
                        return Err(format!("mutation {request_id} succeeded without a ts"));
                    }
                    (true, Some(ts)) => {
                        self.awaiting_ts.insert(*request_id, *ts);
                    }
                    (false, _) => received.completed.push(*request_id),
                }
            }
            ServerMessage::ActionResponse { request_id, .. } => {
                self.finish_request(*request_id, RequestKind::Action)?;
            }
            ServerMessage::TransitionChunk { .. } => {
                return Err("a TransitionChunk must be assembled before it is applied".into());
            }
            ServerMessage::AuthError { .. }
            | ServerMessage::FatalError { .. }
            | ServerMessage::Ping => {}
        }
        Ok(received)
    }

    fn check_versions(&self, start: StateVersion, end: StateVersion) -> Result<(), String> {
        if start != self.held {
            return Err(format!(
                "a transition starts at {start:?}, the client holds {:?}",
                self.held
            ));
        }
        if end.query_set < start.query_set || !self.query_sets.contains_key(&end.query_set) {
            return Err(format!(
                "query-set version {} was never sent (last sent {})",
                end.query_set, self.last_query_set
            ));
        }
        if end.identity < start.identity || end.identity > IdentityVersion(self.authenticates_sent)
        {
            return Err(format!(
                "identity version {} after {} Authenticate messages (held {})",
                end.identity, self.authenticates_sent, start.identity
            ));
        }
        if end.ts < start.ts {
            return Err(format!("ts went back from {:?} to {:?}", start.ts, end.ts));
        }
        Ok(())
    }

    fn finish_request(&mut self, id: RequestId, kind: RequestKind) -> Result<(), String> {
        match self.in_flight.remove(&id) {
            Some(k) if k == kind => Ok(()),
            Some(_) => Err(format!("request {id} answered as the other kind")),
            None => Err(format!(
                "a response to request {id}, which is not in flight"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add(model: &mut ClientModel, base: u32, id: u32) {
        let message = ClientMessage::ModifyQuerySet {
            base_version: QuerySetVersion(base),
            new_version: QuerySetVersion(base + 1),
            modifications: vec![QuerySetModification::Add {
                query_id: QueryId(id),
                udf_path: "messages:list".into(),
                args: vec![json!({})],
                journal: None,
                component_path: None,
            }],
        };
        model.send(&message).unwrap();
    }

    fn version(qs: u32, id: u32, ts: u64) -> StateVersion {
        StateVersion {
            query_set: QuerySetVersion(qs),
            identity: IdentityVersion(id),
            ts: Timestamp(ts),
        }
    }

    fn transition(
        start: StateVersion,
        end: StateVersion,
        m: Vec<StateModification>,
    ) -> ServerMessage {
        ServerMessage::Transition {
            start_version: start,
            end_version: end,
            modifications: m,
            client_clock_skew: None,
            server_ts: None,
        }
    }

    fn updated(id: u32, value: Value) -> StateModification {
        StateModification::QueryUpdated {
            query_id: QueryId(id),
            value,
            log_lines: vec![],
            journal: None,
        }
    }

    #[test]
    fn accepts_a_well_formed_stream() {
        let mut m = ClientModel::new();
        add(&mut m, 0, 7);
        let t = transition(
            version(0, 0, 0),
            version(1, 0, 5),
            vec![updated(7, json!(1))],
        );
        m.receive(&t).unwrap();
        assert_eq!(m.result(QueryId(7)), Some(&json!(1)));
        assert_eq!(m.held(), version(1, 0, 5));
    }

    #[test]
    fn refuses_a_wrong_start_a_backwards_ts_and_unsent_versions() {
        let mut m = ClientModel::new();
        add(&mut m, 0, 1);
        let wrong_start = transition(version(0, 0, 1), version(1, 0, 2), vec![]);
        assert!(m.receive(&wrong_start).unwrap_err().contains("starts at"));
        let ahead = transition(version(0, 0, 0), version(2, 0, 2), vec![]);
        assert!(m.receive(&ahead).unwrap_err().contains("never sent"));
        let identity = transition(version(0, 0, 0), version(1, 1, 2), vec![]);
        assert!(
            m.receive(&identity)
                .unwrap_err()
                .contains("identity version")
        );
        m.receive(&transition(version(0, 0, 0), version(1, 0, 9), vec![]))
            .unwrap();
        let back = transition(version(1, 0, 9), version(1, 0, 8), vec![]);
        assert!(m.receive(&back).unwrap_err().contains("ts went back"));
    }

    #[test]
    fn refuses_results_for_queries_outside_the_set() {
        let mut m = ClientModel::new();
        let t = transition(
            version(0, 0, 0),
            version(0, 0, 1),
            vec![updated(3, json!(1))],
        );
        assert!(m.receive(&t).unwrap_err().contains("not in the set"));
    }

    #[test]
    fn a_mutation_completes_when_a_transition_reaches_its_ts() {
        let mut m = ClientModel::new();
        let request_id = RequestId(4);
        m.send(&ClientMessage::Mutation {
            request_id,
            udf_path: "tasks:add".into(),
            args: vec![json!({})],
            component_path: None,
        })
        .unwrap();
        let response = ServerMessage::MutationResponse {
            request_id,
            success: true,
            result: Value::Null,
            ts: Some(Timestamp(10)),
            log_lines: vec![],
            error_data: None,
        };
        assert!(m.receive(&response).unwrap().completed.is_empty());
        assert!(m.receive(&response).is_err(), "answered twice");
        let early = transition(version(0, 0, 0), version(0, 0, 9), vec![]);
        assert!(m.receive(&early).unwrap().completed.is_empty());
        let reach = transition(version(0, 0, 9), version(0, 0, 10), vec![]);
        assert_eq!(m.receive(&reach).unwrap().completed, vec![request_id]);
    }

    /// A mutation run before (sent again after a reconnect, Convex answering with the first
    /// commit's `ts`) may be answered with a `ts` the client already holds: convex-js still
    /// waits for the next transition.
    #[test]
    fn a_mutation_answered_below_the_held_ts_completes_with_the_next_transition() {
        let mut m = ClientModel::new();
        m.receive(&transition(version(0, 0, 0), version(0, 0, 20), vec![]))
            .unwrap();
        let request_id = RequestId(1);
        m.send(&ClientMessage::Mutation {
            request_id,
            udf_path: "tasks:add".into(),
            args: vec![json!({})],
            component_path: None,
        })
        .unwrap();
        let response = ServerMessage::MutationResponse {
            request_id,
            success: true,
            result: Value::Null,
            ts: Some(Timestamp(10)),
            log_lines: vec![],
            error_data: None,
        };
        assert!(m.receive(&response).unwrap().completed.is_empty());
        assert_eq!(m.awaiting().count(), 1);
        let still = transition(version(0, 0, 20), version(0, 0, 20), vec![]);
        assert_eq!(m.receive(&still).unwrap().completed, vec![request_id]);
    }

    #[test]
    fn auth_is_confirmed_by_an_identity_version_that_goes_up() {
        let mut m = ClientModel::new();
        m.send(&ClientMessage::Authenticate {
            base_version: IdentityVersion(0),
            token_type: crate::sync::TokenType::None,
            value: None,
        })
        .unwrap();
        let t = transition(version(0, 0, 0), version(0, 1, 0), vec![]);
        assert!(m.receive(&t).unwrap().auth_confirmed);
    }
}

//! What Convex sends an upstream: transitions (only changed results go on, once, to every
//! listener; a transition that does not start where the last one ended breaks the
//! connection), answers to requests (back to the listener that asked, under its own request
//! id), `AuthError` (to every listener; the token is dropped) and `FatalError`.

use std::sync::Arc;

use edge_convex::sync::StateModification;
use edge_convex::{QueryId, RequestId, ServerMessage, StateVersion};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Audience, Outbox, UpstreamState};
use crate::upstream::{Event, QueryResult, RequestOutcome, SharedText, lock};

impl UpstreamState {
    /// Applies a message from Convex; `Err` means the connection is unusable.
    pub fn on_server_message(
        &mut self,
        message: ServerMessage,
        out: &mut Outbox,
    ) -> Result<(), String> {
        match message {
            ServerMessage::Transition {
                start_version,
                end_version,
                modifications,
                ..
            } => self.on_transition(start_version, end_version, modifications, out)?,
            ServerMessage::MutationResponse {
                request_id,
                success,
                result,
                ts,
                log_lines,
                error_data,
            } => {
                let outcome = RequestOutcome {
                    success,
                    result,
                    ts,
                    log_lines,
                    error_data,
                };
                self.respond(request_id, outcome, out);
            }
            ServerMessage::ActionResponse {
                request_id,
                success,
                result,
                log_lines,
                error_data,
            } => {
                let outcome = RequestOutcome {
                    success,
                    result,
                    ts: None,
                    log_lines,
                    error_data,
                };
                self.respond(request_id, outcome, out);
            }
            ServerMessage::AuthError {
                error,
                auth_update_attempted,
                ..
            } => {
                tracing::warn!(upstream = self.id, %error, "convex refused the token");
                let event = Event::AuthFailed {
                    upstream: self.id,
                    error,
                    expired: auth_update_attempted == Some(false),
                };
                out.events.push((Audience::All, event));
                self.token = None;
            }
            ServerMessage::FatalError { error } => {
                return Err(format!("convex fatal error: {error}"));
            }
            ServerMessage::TransitionChunk { .. } => {
                return Err("a TransitionChunk reached the state unassembled".into());
            }
            ServerMessage::Ping => {}
        }
        Ok(())
    }

    pub(super) fn on_transition(
        &mut self,
        start: StateVersion,
        end: StateVersion,
        modifications: Vec<StateModification>,
        out: &mut Outbox,
    ) -> Result<(), String> {
        if start != self.version {
            return Err(format!(
                "convex sent a transition from {start:?}, expected {:?}",
                self.version
            ));
        }
        self.version = end;
        self.max_observed = self.max_observed.max(end.ts);
        let mut updates = Vec::new();
        for m in modifications {
            let Some((query_id, result)) = into_result(m)? else {
                continue;
            };
            let Some(key) = self.by_query_id.get(&query_id) else {
                continue;
            };
            let Some(sub) = self.subs.get_mut(key) else {
                continue;
            };
            if sub.result.as_ref().is_some_and(|r| r.same_as(&result)) {
                continue;
            }
            let result = Arc::new(result);
            sub.result = Some(result.clone());
            lock(&self.values).insert(key.clone(), result.clone());
            updates.push((key.clone(), result));
        }
        let event = Event::Transition {
            upstream: self.id,
            ts: end.ts,
            updates: Arc::new(updates),
            text: Arc::new(SharedText::default()),
        };
        out.events.push((Audience::All, event));
        Ok(())
    }

    pub(super) fn respond(
        &mut self,
        upstream_id: RequestId,
        outcome: RequestOutcome,
        out: &mut Outbox,
    ) {
        let Some(mut r) = self.requests.remove(&upstream_id) else {
            return;
        };
        if let Some(ticket) = r.ticket.take() {
            out.settled.push((ticket, outcome.clone()));
        }
        if !r.orphaned {
            let event = Event::Response {
                request_id: r.request_id,
                kind: r.kind,
                outcome: Box::new(Ok(outcome)),
                replayed: false,
            };
            out.events.push((Audience::One(r.listener), event));
        }
    }
}

/// A modification as a result to share; `None` for `QueryRemoved` (nothing to pass on).
fn into_result(m: StateModification) -> Result<Option<(QueryId, QueryResult)>, String> {
    let raw = |v: &Value| RawValue::from_string(v.to_string()).map_err(|e| e.to_string());
    Ok(match m {
        StateModification::QueryUpdated {
            query_id,
            value,
            log_lines,
            journal,
        } => Some((
            query_id,
            QueryResult::Value {
                value: raw(&value)?,
                log_lines,
                journal,
            },
        )),
        StateModification::QueryFailed {
            query_id,
            error_message,
            log_lines,
            journal,
            error_data,
        } => Some((
            query_id,
            QueryResult::Failed {
                message: error_message,
                data: error_data.as_ref().map(raw).transpose()?,
                log_lines,
                journal,
            },
        )),
        StateModification::QueryRemoved { .. } => None,
    })
}

//! Mutations and actions: at most `max_pending_requests` in flight per socket (Convex's own
//! cap), forwarded through the main route, answered in the order the upstream queued them
//! (before the transition that reaches a mutation's `ts`, as Convex sends them), and after the
//! transition that reaches the versions the client asked for. A mutation answered with a `ts`
//! the client already holds is followed by a transition that moves nothing (convex-js
//! resolves it only on a transition).
//!
//! Every request is answered exactly once, on this socket, whatever happens in between: each
//! is kept with the identity whose upstream carries it, an identity change keeps the previous
//! upstream attached while it owes answers (as Convex runs and answers on the socket the
//! requests sent before an `Authenticate`), and it is released after its last one. An answer
//! to no request of this socket (a repeat) changes nothing.

use edge_convex::RequestId;
use edge_convex::ServerMessage;
use edge_convex::sync::{RequestKind, one_argument};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{ClientSession, Effect, End, Step};
use crate::identity::IdentityKey;
use crate::upstream::RequestOutcome;

impl ClientSession {
    pub(super) fn request(
        &mut self,
        kind: RequestKind,
        request_id: RequestId,
        udf_path: String,
        args: Vec<Value>,
        out: &mut Vec<Effect>,
    ) -> Step {
        if self.requests.len() >= self.max_in_flight {
            return Err(End::Fatal(format!(
                "more than {} requests in flight",
                self.max_in_flight
            )));
        }
        if self.requests.contains_key(&request_id) {
            return Err(End::Fatal(format!(
                "request {} is already in flight",
                request_id.0
            )));
        }
        let args = one_argument(args).map_err(End::Fatal)?;
        self.requests
            .insert(request_id, super::key_of(self.identity.as_ref()));
        out.push(Effect::Request {
            request_id,
            kind,
            udf_path,
            args,
        });
        Ok(())
    }

    /// Charges a request the driver is about to run upstream to the socket's identity (signed
    /// out: its address), after the mutation journal found no earlier send of it (a repeat
    /// answered from the journal costs the upstream nothing). An error when the owner is at
    /// its most: the driver answers the request with it, as the upstream's own cap answers,
    /// and the socket goes on.
    pub fn charge(&mut self, request_id: RequestId) -> Result<(), String> {
        if !self.requests.contains_key(&request_id) || self.charged.contains(&request_id) {
            return Ok(());
        }
        self.budget.charge_request()?;
        self.charged.insert(request_id);
        Ok(())
    }

    /// A mutation's or action's answer. The upstream queued it before any transition that
    /// reaches its `ts`, so the client sees them in Convex's order; one `replayed` from the
    /// journal (a mutation sent again) comes with no transition, and every route below its
    /// `ts` is asked to advance.
    pub(super) fn respond(
        &mut self,
        request_id: RequestId,
        kind: RequestKind,
        outcome: Result<RequestOutcome, String>,
        replayed: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(carrier) = self.requests.remove(&request_id) else {
            return;
        };
        if self.charged.remove(&request_id) {
            self.budget.release_request();
        }
        self.release_if_done(&carrier, out);
        // convex-js rebuilds its query results from the transitions of the socket at each
        // response: while a version is held back (a reconnect's re-added queries), the answer
        // waits for the transition that reaches it, or every query would read as loading.
        let mutation_ts = match &outcome {
            Ok(o) if o.success && kind == RequestKind::Mutation => o.ts,
            _ => None,
        };
        if let Some(ts) = mutation_ts {
            self.owe_mutation(ts, (!replayed).then_some(&carrier));
        }
        if self.caught_up() {
            out.push(answer(request_id, kind, outcome));
            self.owe_transition(mutation_ts, out);
        } else {
            self.held_responses
                .push((answer(request_id, kind, outcome), mutation_ts));
        }
    }
}

impl ClientSession {
    /// Whether a request of this socket still waits for an answer from `identity`'s upstream.
    pub(super) fn owes_answers(&self, identity: &IdentityKey) -> bool {
        self.requests.values().any(|k| k == identity)
    }

    /// Releases the upstream of `identity` once it owes no answer and no route uses it.
    fn release_if_done(&self, identity: &IdentityKey, out: &mut Vec<Effect>) {
        let main = super::key_of(self.identity.as_ref());
        let shared = self.shared_attached && *identity == IdentityKey::Anonymous;
        if *identity != main && !shared && !self.owes_answers(identity) {
            out.push(Effect::Release(identity.clone()));
        }
    }
}

/// The `MutationResponse` or `ActionResponse` frame for `outcome` (an error: `success: false`
/// with the message as the result, as Convex answers a failed function).
fn answer(
    request_id: RequestId,
    kind: RequestKind,
    outcome: Result<RequestOutcome, String>,
) -> Effect {
    let outcome = outcome.unwrap_or_else(|error| RequestOutcome {
        success: false,
        result: Value::String(error),
        ts: None,
        log_lines: vec![],
        error_data: None,
    });
    let message = match kind {
        RequestKind::Mutation => ServerMessage::MutationResponse {
            request_id,
            success: outcome.success,
            result: outcome.result,
            ts: outcome.ts,
            log_lines: outcome.log_lines,
            error_data: outcome.error_data,
        },
        RequestKind::Action => ServerMessage::ActionResponse {
            request_id,
            success: outcome.success,
            result: outcome.result,
            log_lines: outcome.log_lines,
            error_data: outcome.error_data,
        },
    };
    Effect::Send(Utf8Bytes::from(message.to_text()))
}

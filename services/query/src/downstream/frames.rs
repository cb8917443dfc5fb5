//! The text of what a client socket is sent: transitions that borrow shared results (each value
//! serialised once per fan-out), and the rest of the server messages.

use edge_convex::{QueryId, StateVersion};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::upstream::QueryResult;

/// One change to a client's query results, before it is written.
#[derive(Debug, Clone)]
pub enum Pending {
    Removed(QueryId),
    Result(QueryId, std::sync::Arc<QueryResult>),
}

impl Pending {
    pub fn query_id(&self) -> QueryId {
        match self {
            Pending::Removed(id) | Pending::Result(id, _) => *id,
        }
    }
}

/// A modification borrowing a shared result. The variant names are the wire format's.
#[allow(clippy::enum_variant_names)]
#[derive(Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
enum OutModification<'a> {
    QueryUpdated {
        query_id: QueryId,
        value: &'a RawValue,
        log_lines: &'a [String],
        journal: &'a Option<String>,
    },
    QueryFailed {
        query_id: QueryId,
        error_message: &'a str,
        log_lines: &'a [String],
        journal: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_data: Option<&'a RawValue>,
    },
    QueryRemoved {
        query_id: QueryId,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
enum OutTransition<'a> {
    Transition {
        start_version: StateVersion,
        end_version: StateVersion,
        modifications: Vec<OutModification<'a>>,
    },
}

fn out_modification(p: &Pending) -> OutModification<'_> {
    match p {
        Pending::Removed(query_id) => OutModification::QueryRemoved {
            query_id: *query_id,
        },
        Pending::Result(query_id, result) => match result.as_ref() {
            QueryResult::Value {
                value,
                log_lines,
                journal,
            } => OutModification::QueryUpdated {
                query_id: *query_id,
                value,
                log_lines,
                journal,
            },
            QueryResult::Failed {
                message,
                data,
                log_lines,
                journal,
            } => OutModification::QueryFailed {
                query_id: *query_id,
                error_message: message,
                log_lines,
                journal,
                error_data: data.as_deref(),
            },
        },
    }
}

/// A `Transition` from `start` to `end` with these modifications, as JSON text.
pub fn transition(start: StateVersion, end: StateVersion, pending: &[Pending]) -> String {
    let modifications = pending.iter().map(out_modification).collect();
    serde_json::to_string(&OutTransition::Transition {
        start_version: start,
        end_version: end,
        modifications,
    })
    .expect("transitions serialise")
}

/// What identifies a transition's text among sockets of one fan-out: per modification, the
/// query id and the shared result's address.
pub fn text_ids(pending: &[Pending]) -> Vec<(u32, usize)> {
    pending
        .iter()
        .map(|p| match p {
            Pending::Removed(id) => (id.0, 0),
            Pending::Result(id, result) => (id.0, std::sync::Arc::as_ptr(result) as usize),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_convex::ServerMessage;
    use std::sync::Arc;

    #[test]
    fn a_transition_text_parses_as_the_protocol_message() {
        let value = Arc::new(QueryResult::Value {
            value: RawValue::from_string("{\"$integer\":\"AQAAAAAAAAA=\"}".into()).unwrap(),
            log_lines: vec!["hi".into()],
            journal: Some("j".into()),
        });
        let failed = Arc::new(QueryResult::Failed {
            message: "boom".into(),
            data: Some(RawValue::from_string("{\"code\":1}".into()).unwrap()),
            log_lines: vec![],
            journal: None,
        });
        let pending = [
            Pending::Result(QueryId(1), value),
            Pending::Result(QueryId(2), failed),
            Pending::Removed(QueryId(3)),
        ];
        let text = transition(StateVersion::default(), StateVersion::default(), &pending);
        let parsed: ServerMessage = serde_json::from_str(&text).unwrap();
        let ServerMessage::Transition { modifications, .. } = parsed else {
            panic!("not a transition: {text}");
        };
        let json = serde_json::to_value(&modifications).unwrap();
        assert_eq!(json[0]["value"]["$integer"], "AQAAAAAAAAA=");
        assert_eq!(json[0]["journal"], "j");
        assert_eq!(json[1]["errorData"]["code"], 1);
        assert_eq!(json[2]["type"], "QueryRemoved");
        assert_eq!(text_ids(&pending)[2], (3, 0));
    }
}

//! The sync protocol: JSON text frames tagged by `type`, as Convex's client (`protocol.ts`) and
//! server define them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Declares a protocol number: a `u32` on the wire (serde transparent), its own type in code so
/// that a query id is never taken for a request id or a version.
macro_rules! protocol_number {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

protocol_number!(
    /// A client's id for one query of its query set (`queryId`), chosen by the client.
    QueryId
);
protocol_number!(
    /// A client's id for one mutation or action (`requestId`), echoed in the response.
    RequestId
);
protocol_number!(
    /// The version of a client's query set (`querySet`): moved only by `ModifyQuerySet`.
    QuerySetVersion
);
protocol_number!(
    /// The version of a client's identity (`identity`): moved by one per `Authenticate`.
    IdentityVersion
);

impl QuerySetVersion {
    /// The version after this one; `None` past `u32::MAX`.
    pub fn next(self) -> Option<QuerySetVersion> {
        self.0.checked_add(1).map(QuerySetVersion)
    }
}

impl IdentityVersion {
    /// The version after this one; `None` past `u32::MAX`.
    pub fn next(self) -> Option<IdentityVersion> {
        self.0.checked_add(1).map(IdentityVersion)
    }
}

/// A Convex timestamp: u64 nanoseconds, on the wire base64 (standard, padded) of its
/// little-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn encode(self) -> String {
        STANDARD.encode(self.0.to_le_bytes())
    }

    pub fn decode(s: &str) -> Option<Timestamp> {
        let bytes: [u8; 8] = STANDARD.decode(s).ok()?.try_into().ok()?;
        Some(Timestamp(u64::from_le_bytes(bytes)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::decode(&s).ok_or_else(|| serde::de::Error::custom("invalid timestamp"))
    }
}

/// The version a client holds: query set, identity and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersion {
    pub query_set: QuerySetVersion,
    pub identity: IdentityVersion,
    pub ts: Timestamp,
}

/// A change to a client's query set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum QuerySetModification {
    Add {
        query_id: QueryId,
        udf_path: String,
        args: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        journal: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component_path: Option<String>,
    },
    Remove {
        query_id: QueryId,
    },
}

/// Messages from client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ClientMessage {
    Connect {
        session_id: String,
        #[serde(default)]
        connection_count: u32,
        #[serde(default)]
        last_close_reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_observed_timestamp: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_ts: Option<f64>,
    },
    ModifyQuerySet {
        base_version: QuerySetVersion,
        new_version: QuerySetVersion,
        modifications: Vec<QuerySetModification>,
    },
    Mutation {
        request_id: RequestId,
        udf_path: String,
        args: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component_path: Option<String>,
    },
    Action {
        request_id: RequestId,
        udf_path: String,
        args: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component_path: Option<String>,
    },
    Authenticate {
        base_version: IdentityVersion,
        token_type: TokenType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    Event {
        event_type: String,
        event: Value,
    },
}

/// What a client request runs: the two kinds that answer by `requestId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Mutation,
    Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenType {
    User,
    Admin,
    None,
}

/// One change inside a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum StateModification {
    QueryUpdated {
        query_id: QueryId,
        value: Value,
        log_lines: Vec<String>,
        journal: Option<String>,
    },
    QueryFailed {
        query_id: QueryId,
        error_message: String,
        log_lines: Vec<String>,
        journal: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_data: Option<Value>,
    },
    QueryRemoved {
        query_id: QueryId,
    },
}

/// Messages from server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerMessage {
    Transition {
        start_version: StateVersion,
        end_version: StateVersion,
        modifications: Vec<StateModification>,
        /// Milliseconds the client's clock is ahead of the server's: `Connect.clientTs` minus
        /// the server's Unix time in ms when that `Connect` arrived (Convex's `sync` worker;
        /// convex-js `authentication_manager.ts` subtracts it from `Date.now()`). Per socket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_clock_skew: Option<i64>,
        /// The server's Unix time in nanoseconds when the transition was sent (Convex's
        /// `inject_server_ts`, a JSON number; convex-js divides it by 1e6).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_ts: Option<u64>,
    },
    /// One part of a transition whose JSON text is over [`TRANSITION_CHUNK_BYTES`], for clients
    /// that support it (npm `convex` ≥ 1.28.0, Convex's `MIN_NPM_VERSION_FOR_TRANSITION_CHUNKS`):
    /// the client joins `chunk` of parts `0..totalParts` in order and parses a `Transition`.
    TransitionChunk {
        chunk: String,
        part_number: u32,
        total_parts: u32,
        /// Convex uses the whole text's length in bytes, as a string.
        transition_id: String,
    },
    MutationResponse {
        request_id: RequestId,
        success: bool,
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<Timestamp>,
        log_lines: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_data: Option<Value>,
    },
    ActionResponse {
        request_id: RequestId,
        success: bool,
        result: Value,
        log_lines: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_data: Option<Value>,
    },
    AuthError {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<IdentityVersion>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth_update_attempted: Option<bool>,
    },
    FatalError {
        error: String,
    },
    Ping,
}

/// Convex's limit on one transition frame (`MAX_MESSAGE_SIZE` in `local_backend/src/subs`):
/// larger transitions go as [`ServerMessage::TransitionChunk`]s of at most this many bytes.
pub const TRANSITION_CHUNK_BYTES: usize = 5_000_000;

/// Splits a transition's JSON text into `TransitionChunk` texts of at most `max` bytes each
/// (at UTF-8 boundaries), as Convex does; `None` when it fits in one frame.
pub fn split_transition(text: &str, max: usize) -> Option<Vec<String>> {
    if text.len() <= max || max < 4 {
        return None;
    }
    let mut parts = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + max).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        parts.push(&text[start..end]);
        start = end;
    }
    let total_parts = parts.len() as u32;
    let transition_id = text.len().to_string();
    Some(
        parts
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                ServerMessage::TransitionChunk {
                    chunk: chunk.to_string(),
                    part_number: i as u32,
                    total_parts,
                    transition_id: transition_id.clone(),
                }
                .to_text()
            })
            .collect(),
    )
}

/// Whether a client whose sync path names this version (`/api/{version}/sync`, e.g. `1.49.0`)
/// assembles `TransitionChunk`s: npm `convex` 1.28.0 and later, as Convex decides
/// (`MIN_NPM_VERSION_FOR_TRANSITION_CHUNKS`); `/api/sync` (no version) never.
pub fn supports_transition_chunks(path_version: Option<&str>) -> bool {
    let Some(v) = path_version else { return false };
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 28),
        _ => false,
    }
}

/// Joins `TransitionChunk`s back into the transition's text (the client's
/// `assembleTransition`): parts in order, one transition at a time.
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    parts: Vec<String>,
    total: u32,
    id: String,
}

impl ChunkAssembler {
    /// Whether a transition is half assembled (any other message now is a protocol error).
    pub fn in_progress(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Adds one part; the whole text once the last part is in.
    ///
    /// # Errors
    /// A part out of order, or one of another transition.
    pub fn push(
        &mut self,
        chunk: String,
        part_number: u32,
        total_parts: u32,
        transition_id: String,
    ) -> Result<Option<String>, String> {
        if total_parts == 0
            || part_number >= total_parts
            || (self.in_progress() && (self.total != total_parts || self.id != transition_id))
            || part_number as usize != self.parts.len()
        {
            self.parts.clear();
            return Err(format!(
                "TransitionChunk {part_number}/{total_parts} of {transition_id} out of order"
            ));
        }
        self.total = total_parts;
        self.id = transition_id;
        self.parts.push(chunk);
        if self.parts.len() as u32 == total_parts {
            return Ok(Some(std::mem::take(&mut self.parts).concat()));
        }
        Ok(None)
    }
}

/// The one arguments object of a call: the sync protocol sends arguments as a one-element
/// array (`args: [{…}]`).
///
/// # Errors
/// Any other length, worded for the `FatalError` the session ends with.
pub fn one_argument(args: Vec<Value>) -> Result<Value, String> {
    let [one] = <[Value; 1]>::try_from(args)
        .map_err(|a| format!("expected one arguments object, got {}", a.len()))?;
    Ok(one)
}

/// Checks that a call names the root component (`componentPath` absent or `""`): Convex serves
/// a client only the root component's functions and ends the socket of one that names another
/// (`parse_admin_component_path` in `crates/sync/src/worker.rs`; only admins may).
///
/// # Errors
/// Convex's own words, for the `FatalError` the session ends with.
pub fn root_component(component_path: Option<&str>) -> Result<(), String> {
    match component_path {
        None | Some("") => Ok(()),
        Some(_) => Err(
            "Only admin or system users can call functions on non-root components directly".into(),
        ),
    }
}

impl ServerMessage {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_base64_little_endian() {
        assert_eq!(Timestamp(1).encode(), "AQAAAAAAAAA=");
        assert_eq!(Timestamp::decode("AQAAAAAAAAA="), Some(Timestamp(1)));
        assert_eq!(Timestamp::decode("AQ=="), None);
    }

    #[test]
    fn client_messages_parse_as_the_js_client_sends_them() {
        let m: ClientMessage = serde_json::from_value(json!({
            "type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
            "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "general"}]}]
        }))
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::ModifyQuerySet {
                new_version: QuerySetVersion(1),
                ..
            }
        ));
        let m: ClientMessage = serde_json::from_value(
            json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "None"}),
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Authenticate {
                token_type: TokenType::None,
                value: None,
                ..
            }
        ));
        assert!(serde_json::from_value::<ClientMessage>(json!({"type": "Bogus"})).is_err());
    }

    #[test]
    fn server_messages_serialise_with_camel_case_fields() {
        let t = ServerMessage::Transition {
            start_version: StateVersion::default(),
            end_version: StateVersion {
                query_set: QuerySetVersion(1),
                identity: IdentityVersion(0),
                ts: Timestamp(5),
            },
            modifications: vec![StateModification::QueryRemoved {
                query_id: QueryId(3),
            }],
            client_clock_skew: Some(-3),
            server_ts: Some(1_700_000_000_000_000_000),
        };
        let v: Value = serde_json::from_str(&t.to_text()).unwrap();
        assert_eq!(v["type"], "Transition");
        assert_eq!(v["endVersion"]["querySet"], 1);
        assert_eq!(
            v["modifications"][0],
            json!({"type": "QueryRemoved", "queryId": 3})
        );
        assert_eq!(v["clientClockSkew"], -3);
        assert_eq!(v["serverTs"], 1_700_000_000_000_000_000u64);
        assert_eq!(ServerMessage::Ping.to_text(), r#"{"type":"Ping"}"#);
    }

    #[test]
    fn chunks_are_for_npm_clients_from_1_28() {
        assert!(supports_transition_chunks(Some("1.49.0")));
        assert!(supports_transition_chunks(Some("1.28.0")));
        assert!(!supports_transition_chunks(Some("1.27.5")));
        assert!(!supports_transition_chunks(Some("0.8.0-alpha")));
        assert!(!supports_transition_chunks(None));
    }

    #[test]
    fn transition_chunks_split_at_char_boundaries_and_join_in_order() {
        let text = format!("{{\"x\":\"{}\"}}", "é".repeat(10));
        assert!(split_transition(&text, text.len()).is_none());
        let parts = split_transition(&text, 5).unwrap();
        let mut joined = ChunkAssembler::default();
        let mut out = None;
        for part in &parts {
            let ServerMessage::TransitionChunk {
                chunk,
                part_number,
                total_parts,
                transition_id,
            } = serde_json::from_str(part).unwrap()
            else {
                panic!("not a chunk: {part}");
            };
            assert!(chunk.len() <= 5);
            assert_eq!(transition_id, text.len().to_string());
            out = joined
                .push(chunk, part_number, total_parts, transition_id)
                .unwrap();
        }
        assert_eq!(out.as_deref(), Some(text.as_str()));
        assert!(joined.push("x".into(), 1, 2, "9".into()).is_err());
    }
}

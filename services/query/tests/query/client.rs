//! A minimal sync-protocol client that checks every rule the official client checks: each
//! transition starts at the version it holds; it records what it sees.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// What a client has seen so far.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub version: (u64, u64, u64),
    pub values: BTreeMap<u64, Value>,
    /// Every value any query of this socket was ever given, in order (`values` keeps only the
    /// latest, so a check of it alone cannot see what a client was shown in between).
    pub seen: Vec<(u64, Value)>,
    pub errors: Vec<String>,
    pub violations: Vec<String>,
    pub auth_errors: Vec<String>,
    pub fatal: Option<String>,
    /// requestId → (success, result, ts)
    pub responses: BTreeMap<u64, (bool, Value, u64)>,
    /// For each mutation response: the value of every query at the first transition that
    /// reached its ts.
    pub at_completion: BTreeMap<u64, BTreeMap<u64, Value>>,
    pub closed: bool,
    /// The code and reason of the server's Close frame.
    pub close_frame: Option<(u16, String)>,
    pub transitions: usize,
    /// Sync-protocol `Ping`s received.
    pub pings: usize,
    /// Each transition's `clientClockSkew` and `serverTs` (`None`: absent).
    pub clocks: Vec<(Option<i64>, Option<u64>)>,
    /// Every `AuthError` message, whole.
    pub auth_error_messages: Vec<Value>,
    /// Every `QueryFailed` modification, whole (`errorData`, `logLines`).
    pub failures: Vec<Value>,
    /// The `logLines` of every modification, in order.
    pub log_lines: Vec<String>,
}

pub struct Client {
    out: mpsc::UnboundedSender<String>,
    pub view: watch::Receiver<View>,
    query_set: u32,
    identity: u32,
    next_request: u64,
}

fn ts_of(v: &Value) -> u64 {
    v.as_str()
        .and_then(edge_convex::Timestamp::decode)
        .map(|t| t.0)
        .unwrap_or(0)
}

impl Client {
    pub async fn connect(base: &str) -> Client {
        Self::connect_with_clock(base, 0).await
    }

    /// Connects as a client whose clock is `ahead_ms` ahead of the real one (its
    /// `Connect.clientTs`).
    pub async fn connect_with_clock(base: &str, ahead_ms: i64) -> Client {
        Self::connect_with(base, ahead_ms, None).await
    }

    /// Connects as the client at `address` behind a proxy: the handshake carries
    /// `X-Forwarded-For: <address>`.
    pub async fn connect_as(base: &str, address: &str) -> Client {
        Self::connect_with(base, 0, Some(address)).await
    }

    async fn connect_with(base: &str, ahead_ms: i64, forwarded_for: Option<&str>) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/api/1.48.0/sync", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        if let Some(address) = forwarded_for {
            request
                .headers_mut()
                .insert("x-forwarded-for", address.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connects");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (view_tx, view) = watch::channel(View::default());
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut waiting: BTreeMap<u64, u64> = BTreeMap::new();
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Close(Some(frame)) = &m {
                    let frame = (u16::from(frame.code), frame.reason.to_string());
                    view_tx.send_modify(|view| view.close_frame = Some(frame));
                }
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                view_tx.send_modify(|view| match v["type"].as_str() {
                    Some("Transition") => {
                        let s = &v["startVersion"];
                        let start = (
                            s["querySet"].as_u64().unwrap(),
                            s["identity"].as_u64().unwrap(),
                            ts_of(&s["ts"]),
                        );
                        if start != view.version {
                            view.violations
                                .push(format!("start {start:?} != held {:?}", view.version));
                        }
                        let e = &v["endVersion"];
                        view.version = (
                            e["querySet"].as_u64().unwrap(),
                            e["identity"].as_u64().unwrap(),
                            ts_of(&e["ts"]),
                        );
                        for m in v["modifications"].as_array().unwrap() {
                            let id = m["queryId"].as_u64().unwrap();
                            for line in m["logLines"].as_array().into_iter().flatten() {
                                view.log_lines.push(line.as_str().unwrap_or("").to_owned());
                            }
                            if m["type"] == "QueryFailed" {
                                view.failures.push(m.clone());
                            }
                            match m["type"].as_str().unwrap() {
                                "QueryUpdated" => {
                                    view.values.insert(id, m["value"].clone());
                                    view.seen.push((id, m["value"].clone()));
                                }
                                "QueryFailed" => view
                                    .errors
                                    .push(m["errorMessage"].as_str().unwrap().to_owned()),
                                _ => {
                                    view.values.remove(&id);
                                }
                            }
                        }
                        view.transitions += 1;
                        view.clocks
                            .push((v["clientClockSkew"].as_i64(), v["serverTs"].as_u64()));
                        let ts = view.version.2;
                        let done: Vec<u64> = waiting
                            .iter()
                            .filter(|(_, t)| **t <= ts)
                            .map(|(r, _)| *r)
                            .collect();
                        for r in done {
                            waiting.remove(&r);
                            view.at_completion.insert(r, view.values.clone());
                        }
                    }
                    Some("MutationResponse") | Some("ActionResponse") => {
                        let id = v["requestId"].as_u64().unwrap();
                        let ts = ts_of(&v["ts"]);
                        if v["type"] == "MutationResponse" && v["success"] == true {
                            if ts <= view.version.2 {
                                view.at_completion.insert(id, view.values.clone());
                            } else {
                                waiting.insert(id, ts);
                            }
                        }
                        view.responses.insert(
                            id,
                            (v["success"].as_bool().unwrap(), v["result"].clone(), ts),
                        );
                    }
                    Some("AuthError") => {
                        view.auth_errors
                            .push(v["error"].as_str().unwrap_or("").to_owned());
                        view.auth_error_messages.push(v.clone());
                    }
                    Some("FatalError") => {
                        view.fatal = Some(v["error"].as_str().unwrap_or("").to_owned())
                    }
                    Some("Ping") => view.pings += 1,
                    _ => {}
                });
            }
            view_tx.send_modify(|view| view.closed = true);
        });
        let client = Client {
            out,
            view,
            query_set: 0,
            identity: 0,
            next_request: 0,
        };
        let client_ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            + ahead_ms;
        client.send(json!({"type": "Connect", "sessionId": edge_keys::generate_id(), "connectionCount": 0, "lastCloseReason": null, "clientTs": client_ts}));
        client
    }

    pub fn send(&self, v: Value) {
        let _ = self.out.send(v.to_string());
    }

    pub fn send_raw(&self, text: String) {
        let _ = self.out.send(text);
    }

    pub fn subscribe(&mut self, query_id: u32, path: &str, args: Value) {
        self.modify(json!([{"type": "Add", "queryId": query_id, "udfPath": path, "args": [args]}]));
    }

    pub fn unsubscribe(&mut self, query_id: u32) {
        self.modify(json!([{"type": "Remove", "queryId": query_id}]));
    }

    fn modify(&mut self, modifications: Value) {
        let base = self.query_set;
        self.query_set += 1;
        self.send(json!({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1, "modifications": modifications}));
    }

    pub fn authenticate(&mut self, token: &str) {
        let base = self.identity;
        self.identity += 1;
        self.send(json!({"type": "Authenticate", "baseVersion": base, "tokenType": "User", "value": token}));
    }

    /// Signs out: `Authenticate` with no token (`tokenType: "None"`), as convex-js's
    /// `clearAuth` sends it.
    pub fn sign_out(&mut self) {
        let base = self.identity;
        self.identity += 1;
        self.send(json!({"type": "Authenticate", "baseVersion": base, "tokenType": "None"}));
    }

    /// Sends a mutation; returns its request id.
    pub fn mutation(&mut self, path: &str, args: Value) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.send(json!({"type": "Mutation", "requestId": id, "udfPath": path, "args": [args]}));
        id
    }

    pub fn action(&mut self, path: &str, args: Value) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.send(json!({"type": "Action", "requestId": id, "udfPath": path, "args": [args]}));
        id
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Waits until the view satisfies `check`.
    pub async fn until(&mut self, what: &str, check: impl Fn(&View) -> bool) -> View {
        let result =
            tokio::time::timeout(Duration::from_secs(20), self.view.wait_for(|v| check(v)))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|v| v.clone());
        result.unwrap_or_else(|| panic!("timed out waiting for {what}: {:?}", self.view.borrow()))
    }
}

/// The bodies of a messages:list value.
pub fn bodies(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

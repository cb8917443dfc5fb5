//! The upstream state's invariants, checked after every step by the unit and property tests
//! and, in debug builds, by the driver: refcounts equal what listeners hold, every key has
//! its query id on the current connection, only live keys have a published value, and a
//! request is sent exactly while connected, and one whose listener left is orphaned (and
//! already sent: a waiting one leaves with its listener), unless it is a journaled mutation
//! Convex may have run (it waits for the next connection).

use std::collections::HashMap;

use super::UpstreamState;
use crate::key::QueryKey;
use crate::upstream::lock;

impl UpstreamState {
    /// Checks the invariants; `Err` names the first one broken.
    pub fn validate(&self) -> Result<(), String> {
        let mut counts: HashMap<&QueryKey, usize> = HashMap::new();
        for keys in self.listeners.values() {
            for (key, n) in keys {
                if *n == 0 {
                    return Err(format!("a listener holds {key:?} zero times"));
                }
                *counts.entry(key).or_default() += n;
            }
        }
        if counts.len() != self.subs.len() {
            return Err(format!(
                "{} keys held by listeners, {} subscribed upstream",
                counts.len(),
                self.subs.len()
            ));
        }
        for (key, sub) in &self.subs {
            if counts.get(key) != Some(&sub.refcount) {
                return Err(format!(
                    "{key:?} has refcount {} but listeners hold it {:?} times",
                    sub.refcount,
                    counts.get(key)
                ));
            }
            match (self.is_connected(), sub.query_id) {
                (true, Some(id)) if self.by_query_id.get(&id) == Some(key) => {}
                (false, None) => {}
                (connected, id) => {
                    return Err(format!(
                        "{key:?} has query id {id:?} (connected: {connected})"
                    ));
                }
            }
        }
        if self.by_query_id.len() != self.subs.len() && self.is_connected() {
            return Err("query ids left for keys no longer subscribed".into());
        }
        for r in self.requests.values() {
            if r.sent != self.is_connected() {
                return Err(format!(
                    "request {} of listener {} sent: {} (connected: {})",
                    r.request_id,
                    r.listener,
                    r.sent,
                    self.is_connected()
                ));
            }
            if !r.orphaned && !self.listeners.contains_key(&r.listener) {
                return Err(format!(
                    "request {} belongs to listener {}, which left",
                    r.request_id, r.listener
                ));
            }
            if r.orphaned && !r.sent && !(r.went && r.ticket.is_some()) {
                return Err(format!("request {} waits with no listener", r.request_id));
            }
        }
        let values = lock(&self.values);
        for key in values.keys() {
            if !self.subs.contains_key(key) {
                return Err(format!("a published value for {key:?}, not subscribed"));
            }
        }
        Ok(())
    }
}

//! The client session's invariants, checked after every step by the unit and property tests
//! and, in debug builds, by the driver: the route index matches the queries, non-shared
//! functions only ever on the main route, the held `ts` never beyond what an upstream sent.

use super::{ClientSession, Route};

impl ClientSession {
    /// Checks the invariants; `Err` names the first one broken.
    // Release builds run no check (the driver calls it in debug builds only).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn validate(&self) -> Result<(), String> {
        let bytes: usize = self
            .queries
            .values()
            .filter_map(|q| q.key.as_ref())
            .map(crate::key::QueryKey::bytes)
            .sum();
        if bytes != self.query_bytes {
            return Err(format!(
                "queries hold {bytes} bytes, {} counted",
                self.query_bytes
            ));
        }
        if self.queries.len() > self.limits.max_queries || bytes > self.limits.max_socket_bytes {
            return Err(format!(
                "{} queries of {bytes} bytes over the limits {:?}",
                self.queries.len(),
                self.limits
            ));
        }
        for (id, q) in &self.queries {
            let Some(key) = &q.key else { continue };
            let indexed = self
                .by_key
                .get(&q.route)
                .and_then(|keys| keys.get(key))
                .is_some_and(|ids| ids.contains(id));
            if !indexed {
                return Err(format!("query {id} is missing from its route's index"));
            }
            match (q.route, self.is_shared(key), self.identity.is_some()) {
                (Route::Shared, true, true)
                | (Route::Main, false, _)
                | (Route::Main, true, false) => {}
                (route, shared, signed_in) => {
                    return Err(format!(
                        "query {id} on {route:?} (shared function: {shared}, signed in: {signed_in})"
                    ));
                }
            }
        }
        for (route, keys) in &self.by_key {
            if *route == Route::Shared && !self.shared_attached {
                return Err("queries on the shared route without its upstream".into());
            }
            for (key, ids) in keys {
                if ids.is_empty() {
                    return Err(format!("an empty index entry for {key:?}"));
                }
                for id in ids {
                    let q = self.queries.get(id);
                    if q.is_none_or(|q| q.route != *route || q.key.as_ref() != Some(key)) {
                        return Err(format!("index entry {id} does not match its query"));
                    }
                }
            }
        }
        let held = self.version.held().ts;
        if held > self.newest_ts {
            return Err(format!(
                "held ts {held:?} is beyond every upstream's ({:?})",
                self.newest_ts
            ));
        }
        if self.requests.len() > self.max_in_flight {
            return Err(format!("{} requests in flight", self.requests.len()));
        }
        if let Some(id) = self
            .charged
            .iter()
            .find(|id| !self.requests.contains_key(id))
        {
            return Err(format!("request {} still charged after its answer", id.0));
        }
        Ok(())
    }
}

//! The client's query set: `ModifyQuerySet` adds and removes query ids; each query is routed
//! (main route, or the shared route for a shared function while signed in), an upstream key is
//! subscribed once per socket however many query ids use it, and results reach every query id
//! on that route and key whose last result differs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use edge_convex::sync::{QuerySetModification, one_argument};
use edge_convex::{IdentityVersion, QueryId, QuerySetVersion};

use super::{ClientQuery, ClientSession, Effect, End, Route, Step};
use crate::downstream::frames::Pending;
use crate::key::QueryKey;
use crate::upstream::QueryResult;

impl ClientSession {
    /// Applies a result to every client query on (route, key) whose last result differs.
    pub(super) fn apply(
        &mut self,
        route: Route,
        key: &QueryKey,
        result: &Arc<QueryResult>,
        pending: &mut Vec<Pending>,
    ) {
        let Some(ids) = self.by_key.get(&route).and_then(|keys| keys.get(key)) else {
            return;
        };
        for id in ids {
            let Some(q) = self.queries.get_mut(id) else {
                continue;
            };
            if q.last
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, result) || last.same_as(result))
            {
                continue;
            }
            q.last = Some(result.clone());
            pending.push(Pending::Result(*id, result.clone()));
        }
    }

    /// Routes a query and subscribes its key if it is the first on it. `added_in`: the
    /// query-set version that added it. A query on a key another query of the socket already
    /// has a result for gets that result into `pending` at once (no upstream sends it again).
    pub(super) fn subscribe(
        &mut self,
        query_id: QueryId,
        key: QueryKey,
        added_in: QuerySetVersion,
        pending: &mut Vec<Pending>,
        out: &mut Vec<Effect>,
    ) {
        let route = if self.identity.is_some() && self.is_shared(&key) {
            Route::Shared
        } else {
            Route::Main
        };
        if route == Route::Shared && !self.shared_attached {
            self.shared_attached = true;
            self.asked.remove(&Route::Shared);
            out.push(Effect::AttachShared);
        }
        let ids = self
            .by_key
            .entry(route)
            .or_default()
            .entry(key.clone())
            .or_default();
        let first = ids.is_empty();
        let known = ids
            .iter()
            .find_map(|id| self.queries.get(id).and_then(|q| q.last.clone()));
        ids.insert(query_id);
        if let Some(result) = &known {
            pending.push(Pending::Result(query_id, result.clone()));
        }
        let query = ClientQuery {
            key: Some(key.clone()),
            route,
            last: known,
            added_in,
            owed_identity: self.version.identity(),
        };
        self.queries.insert(query_id, query);
        self.query_bytes += key.bytes();
        if first {
            out.push(Effect::Subscribe(route, key));
        }
    }

    /// Removes a query; `false` if it was not in the set.
    pub(super) fn unsubscribe(&mut self, query_id: QueryId, out: &mut Vec<Effect>) -> bool {
        let Some(q) = self.queries.remove(&query_id) else {
            return false;
        };
        let Some(key) = q.key else { return true };
        self.query_bytes = self.query_bytes.saturating_sub(key.bytes());
        let keys = self.by_key.entry(q.route).or_default();
        let now_empty = keys.get_mut(&key).is_some_and(|ids| {
            ids.remove(&query_id);
            ids.is_empty()
        });
        if now_empty {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_key.remove(&q.route);
            }
            out.push(Effect::Unsubscribe(q.route, key));
        }
        true
    }

    pub(super) fn modify_query_set(
        &mut self,
        base: QuerySetVersion,
        new: QuerySetVersion,
        modifications: Vec<QuerySetModification>,
        out: &mut Vec<Effect>,
    ) -> Step {
        self.version
            .accept_query_set(base, new)
            .map_err(|e| End::Fatal(e.to_string()))?;
        let mut pending = Vec::new();
        for m in modifications {
            match m {
                QuerySetModification::Add {
                    query_id,
                    udf_path,
                    args,
                    journal,
                    component_path,
                } => {
                    super::root_component(component_path.as_deref())?;
                    if self.queries.contains_key(&query_id) {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is already in the query set"
                        )));
                    }
                    if self.queries.len() >= self.limits.max_queries {
                        return Err(End::Fatal(format!(
                            "too many queries on this connection: the limit is {}",
                            self.limits.max_queries
                        )));
                    }
                    let args = one_argument(args).map_err(End::Fatal)?;
                    let key = QueryKey::new(&udf_path, &args, journal).and_then(|key| {
                        let size = key.bytes();
                        if size > self.limits.max_query_bytes {
                            return Err(format!(
                                "query {} is too large: {size} bytes of arguments and journal, \
                                 the limit is {}",
                                edge_convex::udf_path::excerpt(key.path.as_str()),
                                self.limits.max_query_bytes
                            ));
                        }
                        Ok(key)
                    });
                    match key {
                        Ok(key) => {
                            let total = self.query_bytes + key.bytes();
                            if total > self.limits.max_socket_bytes {
                                return Err(End::Fatal(format!(
                                    "the queries on this connection are too large: {total} \
                                     bytes, the limit is {}",
                                    self.limits.max_socket_bytes
                                )));
                            }
                            // The identity's (or address's) sockets together.
                            self.budget.charge(key.bytes()).map_err(End::Fatal)?;
                            self.subscribe(query_id, key, new, &mut pending, out)
                        }
                        Err(message) => {
                            let failed = Arc::new(QueryResult::Failed {
                                message,
                                data: None,
                                log_lines: vec![],
                                journal: None,
                            });
                            let query = ClientQuery {
                                key: None,
                                route: Route::Main,
                                last: Some(failed.clone()),
                                added_in: new,
                                owed_identity: self.version.identity(),
                            };
                            self.queries.insert(query_id, query);
                            pending.push(Pending::Result(query_id, failed));
                        }
                    }
                    self.stats
                        .downstream_subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
                QuerySetModification::Remove { query_id } => {
                    let charged = self
                        .queries
                        .get(&query_id)
                        .and_then(|q| q.key.as_ref())
                        .map(QueryKey::bytes);
                    // Its results are not sent any more: a transition may end where it is
                    // still in the set only with the result the client holds.
                    let held = self.version.held();
                    if let Some(q) = self.queries.get(&query_id)
                        && q.key.is_some()
                    {
                        let held_below = (q.added_in <= held.query_set).then(|| {
                            if q.owed_identity > held.identity {
                                q.owed_identity
                            } else {
                                IdentityVersion(u32::MAX)
                            }
                        });
                        self.gaps.push(super::Gap {
                            added: q.added_in,
                            removed: new,
                            route: q.route,
                            held_below,
                        });
                    }
                    if let Some(bytes) = charged {
                        self.budget.release(bytes);
                    }
                    if !self.unsubscribe(query_id, out) {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is not in the query set"
                        )));
                    }
                    pending.retain(|p| p.query_id() != query_id);
                    self.deferred
                        .retain(|p| !matches!(p, Pending::Result(id, _) if *id == query_id));
                    self.removed_in.insert(query_id, new);
                    pending.push(Pending::Removed(query_id));
                    self.stats
                        .downstream_subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.transition(pending, None, out)
    }
}

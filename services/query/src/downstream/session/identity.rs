//! `Authenticate`: the identity version moves by one per accepted message (checked before the
//! token is looked at); when the identity changes, the main route's queries move to the new
//! identity's upstream while shared ones stay on the anonymous one, and signing out makes the
//! anonymous upstream already attached for shared queries the main route.

use edge_convex::{IdentityVersion, QueryId, QuerySetVersion};

use super::{ClientSession, Effect, End, Route, Step, key_of};
use crate::downstream::frames::Pending;
use crate::identity::VerifiedUser;
use crate::key::QueryKey;

impl ClientSession {
    /// The identity of an accepted `Authenticate` (`None`: anonymous): moves the socket's
    /// queries to that identity's upstream if it changed, then confirms with a transition.
    pub fn authenticated(
        &mut self,
        base: IdentityVersion,
        user: Option<VerifiedUser>,
        out: &mut Vec<Effect>,
    ) -> Step {
        self.version
            .accept_identity(base)
            .map_err(|e| End::Fatal(e.to_string()))?;
        if key_of(user.as_ref()) != key_of(self.identity.as_ref()) {
            // The socket's queries count for its new identity from now on.
            self.budget
                .move_to(user.as_ref().map(|u| u.key.clone()))
                .map_err(End::Fatal)?;
            self.switch_identity(user.clone(), out);
        }
        if let Some(u) = &user {
            out.push(Effect::Token(u.clone()));
        }
        self.identity = user;
        self.transition(Vec::new(), None, out)?;
        self.advance_lagging(out);
        Ok(())
    }

    /// Moves the main route's queries to the new identity's upstream; shared ones stay.
    pub(super) fn switch_identity(&mut self, user: Option<VerifiedUser>, out: &mut Vec<Effect>) {
        let moving: Vec<(QueryId, QueryKey, QuerySetVersion)> = self
            .queries
            .iter()
            .filter(|(_, q)| q.route == Route::Main)
            .filter_map(|(id, q)| q.key.clone().map(|k| (*id, k, q.added_in)))
            .collect();
        for (id, _, _) in &moving {
            self.unsubscribe(*id, out);
            // The old identity's result, not sent yet, is no longer the query's.
            self.deferred
                .retain(|p| !matches!(p, Pending::Result(q, _) if q == id));
        }
        // Removed queries the client still holds would have moved too: their results are
        // right only below this identity.
        let moved_to = self.version.identity();
        for gap in self.gaps.iter_mut().filter(|gap| gap.route == Route::Main) {
            gap.held_below = gap.held_below.map(|below| below.min(moved_to));
        }
        // Signing out: the anonymous upstream, already attached for shared queries, is main.
        let reuse_shared = user.is_none() && self.shared_attached;
        let keep_previous = self.owes_answers(&key_of(self.identity.as_ref()));
        out.push(Effect::SwitchMain {
            user: user.clone(),
            reuse_shared,
            keep_previous,
        });
        if reuse_shared {
            self.shared_attached = false;
            if let Some(keys) = self.by_key.remove(&Route::Shared) {
                self.by_key.insert(Route::Main, keys);
            }
            for q in self.queries.values_mut() {
                q.route = Route::Main;
            }
            for gap in &mut self.gaps {
                gap.route = Route::Main;
            }
            match self.upstream_ts.remove(&Route::Shared) {
                Some(ts) => self.upstream_ts.insert(Route::Main, ts),
                None => self.upstream_ts.remove(&Route::Main),
            };
            self.asked.remove(&Route::Main);
            if self.asked.remove(&Route::Shared) {
                self.asked.insert(Route::Main);
            }
        } else {
            // A new upstream: its `ts` is unknown until it sends.
            self.upstream_ts.remove(&Route::Main);
            self.asked.remove(&Route::Main);
        }
        self.identity = user;
        // Their keys are new on this route, so nothing is known for them yet.
        let mut known = Vec::new();
        for (id, key, added_in) in moving {
            self.subscribe(id, key, added_in, &mut known, out);
        }
        self.deferred.extend(known);
    }
}

//! The sync protocol's version rules, kept by a server for one client socket.
//!
//! Convex's client (`remote_query_set.ts`, `authentication_manager.ts` in get-convex/convex-js)
//! throws unless each `Transition.startVersion` equals the previous `endVersion` exactly; the
//! server side of that contract is here, once, for devconvex and the query service alike:
//!
//! - `ModifyQuerySet {baseVersion, newVersion}`: `baseVersion` is the last query-set version the
//!   server accepted and `newVersion` is one more; the query-set version moves only this way.
//! - `Authenticate {baseVersion}`: `baseVersion` is the last identity version accepted; each
//!   accepted `Authenticate` moves the identity version by exactly one.
//! - A transition starts at what the client holds and ends at the accepted versions; its `ts`
//!   never goes backwards.
//! - A mutation completes for the client when a transition reaches its `ts`
//!   ([`ClientVersion::completes`]).

use std::fmt;

use crate::sync::{IdentityVersion, QuerySetVersion, StateVersion, Timestamp};

/// A client message whose versions break the rules; the session ends with `FatalError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    QuerySet {
        base: QuerySetVersion,
        new: QuerySetVersion,
        accepted: QuerySetVersion,
    },
    Identity {
        base: IdentityVersion,
        accepted: IdentityVersion,
    },
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::QuerySet {
                base,
                new,
                accepted,
            } => write!(
                f,
                "ModifyQuerySet from version {base} to {new}, but the query set is at version {accepted}"
            ),
            VersionError::Identity { base, accepted } => write!(
                f,
                "Authenticate with base version {base}, but the identity is at version {accepted}"
            ),
        }
    }
}

impl std::error::Error for VersionError {}

/// One transition's versions: from what the client holds to where the server moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub start: StateVersion,
    pub end: StateVersion,
}

impl Step {
    /// Whether the versions do not move (a transition is then only worth sending with
    /// modifications).
    pub fn is_still(&self) -> bool {
        self.start == self.end
    }
}

/// The versions of one client socket, as its server keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientVersion {
    /// What the client holds: the end of the last transition sent.
    held: StateVersion,
    /// The last query-set version accepted from the client.
    query_set: QuerySetVersion,
    /// The last identity version accepted from the client.
    identity: IdentityVersion,
}

impl ClientVersion {
    /// What the client holds.
    pub fn held(&self) -> StateVersion {
        self.held
    }

    /// The query-set version of the last `ModifyQuerySet` accepted (0 before any).
    pub fn query_set(&self) -> QuerySetVersion {
        self.query_set
    }

    /// The identity version of the last `Authenticate` accepted (0 before any).
    pub fn identity(&self) -> IdentityVersion {
        self.identity
    }

    /// Accepts a `ModifyQuerySet` from `base` to `new`, or says which rule it breaks.
    pub fn accept_query_set(
        &mut self,
        base: QuerySetVersion,
        new: QuerySetVersion,
    ) -> Result<(), VersionError> {
        if base != self.query_set || base.next() != Some(new) {
            return Err(VersionError::QuerySet {
                base,
                new,
                accepted: self.query_set,
            });
        }
        self.query_set = new;
        Ok(())
    }

    /// Accepts an `Authenticate` based on `base`; returns the identity version it moves to.
    pub fn accept_identity(
        &mut self,
        base: IdentityVersion,
    ) -> Result<IdentityVersion, VersionError> {
        let error = VersionError::Identity {
            base,
            accepted: self.identity,
        };
        if base != self.identity {
            return Err(error);
        }
        self.identity = base.next().ok_or(error)?;
        Ok(self.identity)
    }

    /// The next transition: from what the client holds to the accepted versions, at `ts` or at
    /// the held `ts` if `ts` is older (it never goes backwards).
    pub fn step(&self, ts: Timestamp) -> Step {
        Step {
            start: self.held,
            end: StateVersion {
                query_set: self.query_set,
                identity: self.identity,
                ts: ts.max(self.held.ts),
            },
        }
    }

    /// Records that `step` was sent; the client now holds its end.
    ///
    /// # Panics
    /// If `step` does not start at what the client holds (a step made from another state).
    pub fn sent(&mut self, step: Step) {
        assert_eq!(
            step.start, self.held,
            "a transition starts at the held version"
        );
        self.held = step.end;
    }

    /// Whether a mutation committed at `ts` has completed for the client: it holds a
    /// transition whose `ts` reached it.
    pub fn completes(&self, ts: Timestamp) -> bool {
        self.held.ts >= ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qs(v: u32) -> QuerySetVersion {
        QuerySetVersion(v)
    }

    #[test]
    fn query_set_moves_by_one_from_the_accepted_version() {
        let mut v = ClientVersion::default();
        v.accept_query_set(qs(0), qs(1)).unwrap();
        v.accept_query_set(qs(1), qs(2)).unwrap();
        let error = v.accept_query_set(qs(1), qs(2)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ModifyQuerySet from version 1 to 2, but the query set is at version 2"
        );
        assert!(v.accept_query_set(qs(2), qs(4)).is_err());
        assert!(v.accept_query_set(qs(2), qs(2)).is_err());
        assert_eq!(v.step(Timestamp(0)).end.query_set, qs(2));
    }

    #[test]
    fn identity_moves_by_one_per_authenticate() {
        let mut v = ClientVersion::default();
        assert_eq!(
            v.accept_identity(IdentityVersion(0)),
            Ok(IdentityVersion(1))
        );
        assert!(v.accept_identity(IdentityVersion(0)).is_err());
        assert_eq!(
            v.accept_identity(IdentityVersion(1)),
            Ok(IdentityVersion(2))
        );
        assert_eq!(v.identity(), IdentityVersion(2));
    }

    #[test]
    fn versions_at_the_top_of_u32_are_refused_not_wrapped() {
        let mut v = ClientVersion {
            query_set: QuerySetVersion(u32::MAX),
            identity: IdentityVersion(u32::MAX),
            ..ClientVersion::default()
        };
        assert!(v.accept_query_set(qs(u32::MAX), qs(0)).is_err());
        assert!(v.accept_identity(IdentityVersion(u32::MAX)).is_err());
    }

    #[test]
    fn steps_start_at_the_held_version_and_ts_never_goes_back() {
        let mut v = ClientVersion::default();
        let step = v.step(Timestamp(10));
        assert_eq!(step.start, StateVersion::default());
        v.sent(step);
        let back = v.step(Timestamp(4));
        assert_eq!(back.end.ts, Timestamp(10));
        assert!(back.is_still());
        v.accept_query_set(qs(0), qs(1)).unwrap();
        let step = v.step(Timestamp(12));
        assert_eq!(step.start.ts, Timestamp(10));
        assert_eq!(step.end.query_set, qs(1));
        v.sent(step);
        assert_eq!(v.held(), step.end);
    }

    #[test]
    #[should_panic(expected = "a transition starts at the held version")]
    fn a_stale_step_cannot_be_sent() {
        let mut v = ClientVersion::default();
        let stale = v.step(Timestamp(1));
        v.sent(v.step(Timestamp(2)));
        v.sent(stale);
    }

    #[test]
    fn a_mutation_completes_once_the_held_ts_reaches_it() {
        let mut v = ClientVersion::default();
        assert!(!v.completes(Timestamp(5)));
        v.sent(v.step(Timestamp(5)));
        assert!(v.completes(Timestamp(5)));
        assert!(!v.completes(Timestamp(6)));
    }
}

//! What one identity holds across all its client sockets, so that opening more sockets does
//! not multiply what it can make the query service and its upstream hold.
//!
//! Every client socket charges its queries (count and [`QueryKey::bytes`]) to its *owner*: the
//! identity it is signed in as (the same key as its upstream's), or, signed out, the client's
//! address (the anonymous identity is shared by everyone, so a budget on it would let one
//! client use up everyone's; an address is one client, or one network behind a NAT). An `Add`
//! that would take the owner past its limits ends that socket with `FatalError`; signing in
//! moves the socket's whole charge to the new owner, or ends the socket if it does not fit.
//! Charges are given back when queries are removed and when the socket closes.
//!
//! Every owner's query bytes together are bounded too (`max_total_bytes`,
//! `QUERY_MAX_TOTAL_QUERY_BYTES`), so that many owners, each within its own limits (a handful
//! of client addresses, or of accounts), cannot take the service past its memory: the `Add`
//! that would go past it ends its socket with `FatalError` as an owner's limit does, whoever
//! the owner, and what the others hold is untouched. One owner's share of it is its own
//! `max_bytes`, a fraction of the total (see [`OwnerLimits::check`]).
//!
//! Mutations and actions in flight are charged the same way, and limited for a signed-out
//! owner (a client address) only: every signed-out client shares the anonymous upstream and
//! its 1,000 slots per kind (Convex's cap per WebSocket), so one address may hold at most
//! `max_address_requests` of them; the request beyond it fails alone (`try again`), as the
//! upstream's own cap answers. A signed-in identity has its own upstream and its whole cap.
//!
//! [`QueryKey::bytes`]: crate::key::QueryKey::bytes

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::identity::IdentityKey;

/// Who a socket's queries are charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A signed-in socket: its identity (the token's claims without `iat`/`exp`/`nbf`/`jti`).
    Identity(IdentityKey),
    /// A signed-out socket: the client's address (after `QUERY_TRUSTED_PROXIES`).
    Address(IpAddr),
}

impl Owner {
    fn describe(&self) -> &'static str {
        match self {
            Owner::Identity(_) => "this identity",
            Owner::Address(_) => "this client address",
        }
    }
}

/// What one owner may hold over all its sockets (`QUERY_MAX_QUERIES_PER_IDENTITY`,
/// `QUERY_MAX_IDENTITY_QUERY_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerLimits {
    /// Queries, every socket's together.
    pub max_queries: usize,
    /// Bytes of path, canonical arguments and journal, every socket's together.
    pub max_bytes: usize,
    /// Mutations and actions a signed-out client address may have in flight, every socket's
    /// together (`QUERY_MAX_REQUESTS_PER_ADDRESS`).
    pub max_address_requests: usize,
    /// Bytes of every owner's queries together, the whole service's
    /// (`QUERY_MAX_TOTAL_QUERY_BYTES`).
    pub max_total_bytes: usize,
}

/// Default of [`OwnerLimits::max_total_bytes`]: 256 MiB, a quarter of the query Deployment's
/// 1 GiB memory limit (`deploy/k8s/base/query.yaml`). With the keys shared across sockets and
/// upstreams, resident memory grows by about 1.4 bytes per byte of queries held
/// (`edge-bench query-memory`, README "Limits under abuse (query)"), so a full budget stays
/// near 400 MiB and leaves the rest for results, send queues and sockets.
pub const DEFAULT_MAX_TOTAL_QUERY_BYTES: usize = 256 * 1024 * 1024;

impl Default for OwnerLimits {
    /// Four sockets at their own limits (`QUERY_MAX_QUERIES_PER_SOCKET` 4,096 and
    /// `QUERY_MAX_SOCKET_QUERY_BYTES` 8 MiB); one owner at most an eighth of the total.
    fn default() -> Self {
        OwnerLimits {
            max_queries: 16 * 1024,
            max_bytes: 32 * 1024 * 1024,
            max_address_requests: 100,
            max_total_bytes: DEFAULT_MAX_TOTAL_QUERY_BYTES,
        }
    }
}

impl OwnerLimits {
    /// The limits hold together: one owner's bytes are at most half the service's, so no
    /// single identity or address can hold the whole total and shut everyone else out.
    ///
    /// # Errors
    /// A message naming both settings.
    pub fn check(&self) -> Result<(), String> {
        if self.max_bytes > self.max_total_bytes / 2 {
            return Err(format!(
                "QUERY_MAX_IDENTITY_QUERY_BYTES ({}) must be at most half of \
                 QUERY_MAX_TOTAL_QUERY_BYTES ({}): one identity must not be able to hold the \
                 whole service's budget",
                self.max_bytes, self.max_total_bytes
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    queries: usize,
    bytes: usize,
    /// Mutations and actions in flight.
    requests: usize,
}

impl Usage {
    fn is_empty(&self) -> bool {
        self.queries == 0 && self.bytes == 0 && self.requests == 0
    }
}

/// Every owner's usage; an owner with nothing charged is not kept.
#[derive(Debug, Default)]
struct Ledger {
    owners: HashMap<Owner, Usage>,
    /// Every owner's bytes, summed.
    total_bytes: usize,
}

/// Every owner's usage, and their bytes together.
#[derive(Debug)]
pub struct Owners {
    limits: OwnerLimits,
    ledger: Mutex<Ledger>,
}

/// Whether a charge brings new queries to the service or moves queries it already counts from
/// one owner to another (a socket signing in or out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    New,
    Moved,
}

impl Owners {
    pub fn new(limits: OwnerLimits) -> Arc<Owners> {
        Arc::new(Owners {
            limits,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// Bytes of every owner's queries together now (tests and metrics).
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes
    }

    /// A new socket's budget, charged to `address` until it signs in.
    pub fn budget(self: &Arc<Self>, address: IpAddr) -> Budget {
        Budget {
            owners: self.clone(),
            address,
            owner: Owner::Address(address),
            charged: Usage::default(),
        }
    }

    /// Queries charged to `owner` now (tests and metrics).
    pub fn queries_of(&self, owner: &Owner) -> usize {
        self.lock().owners.get(owner).map_or(0, |u| u.queries)
    }

    /// Owners with anything charged.
    pub fn len(&self) -> usize {
        self.lock().owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `add` to `owner` if it stays within the limits; a [`Charge::New`] one also within
    /// the service's total.
    fn try_add(&self, owner: &Owner, add: Usage, charge: Charge) -> Result<(), String> {
        let mut ledger = self.lock();
        let usage = ledger.owners.get(owner).copied().unwrap_or_default();
        let queries = usage.queries + add.queries;
        let bytes = usage.bytes + add.bytes;
        let requests = usage.requests + add.requests;
        if add.requests > 0
            && matches!(owner, Owner::Address(_))
            && requests > self.limits.max_address_requests
        {
            return Err(format!(
                "too many mutations and actions in flight from {}: the limit is {}; try again",
                owner.describe(),
                self.limits.max_address_requests
            ));
        }
        if queries > self.limits.max_queries {
            return Err(format!(
                "too many queries for {} across its connections: the limit is {}",
                owner.describe(),
                self.limits.max_queries
            ));
        }
        if bytes > self.limits.max_bytes {
            return Err(format!(
                "the queries of {} across its connections are too large: {bytes} bytes, the \
                 limit is {}",
                owner.describe(),
                self.limits.max_bytes
            ));
        }
        let total_bytes = match charge {
            Charge::New => ledger.total_bytes + add.bytes,
            Charge::Moved => ledger.total_bytes,
        };
        if charge == Charge::New && add.bytes > 0 && total_bytes > self.limits.max_total_bytes {
            return Err(format!(
                "the query service holds too many queries: {total_bytes} bytes across all \
                 clients, the limit is {}; try again later",
                self.limits.max_total_bytes
            ));
        }
        ledger.owners.insert(
            owner.clone(),
            Usage {
                queries,
                bytes,
                requests,
            },
        );
        ledger.total_bytes = total_bytes;
        Ok(())
    }

    /// Adds `requests` in flight to `owner` whatever its limit.
    fn add_requests(&self, owner: &Owner, requests: usize) {
        if requests > 0 {
            self.lock()
                .owners
                .entry(owner.clone())
                .or_default()
                .requests += requests;
        }
    }

    /// Takes `sub` off `owner`; with [`Charge::New`] its bytes leave the service's total too.
    fn remove(&self, owner: &Owner, sub: Usage, charge: Charge) {
        let mut ledger = self.lock();
        let Some(usage) = ledger.owners.get_mut(owner) else {
            return;
        };
        let bytes = sub.bytes.min(usage.bytes);
        usage.queries = usage.queries.saturating_sub(sub.queries);
        usage.bytes -= bytes;
        usage.requests = usage.requests.saturating_sub(sub.requests);
        if usage.is_empty() {
            ledger.owners.remove(owner);
        }
        if charge == Charge::New {
            ledger.total_bytes = ledger.total_bytes.saturating_sub(bytes);
        }
    }
}

/// One socket's charge to its owner; given back when dropped.
#[derive(Debug)]
pub struct Budget {
    owners: Arc<Owners>,
    /// The client's address: the owner whenever the socket is signed out.
    address: IpAddr,
    owner: Owner,
    charged: Usage,
}

impl Budget {
    /// Charges one query of `bytes`; an error (naming the limit) when the owner is full, with
    /// nothing charged.
    pub fn charge(&mut self, bytes: usize) -> Result<(), String> {
        let add = Usage {
            queries: 1,
            bytes,
            requests: 0,
        };
        self.owners.try_add(&self.owner, add, Charge::New)?;
        self.charged.queries += 1;
        self.charged.bytes += bytes;
        Ok(())
    }

    /// Gives back one query of `bytes`.
    pub fn release(&mut self, bytes: usize) {
        let sub = Usage {
            queries: 1,
            bytes,
            requests: 0,
        };
        self.owners.remove(&self.owner, sub, Charge::New);
        self.charged.queries = self.charged.queries.saturating_sub(1);
        self.charged.bytes = self.charged.bytes.saturating_sub(bytes);
    }

    /// Charges one mutation or action in flight; an error (naming the limit) when a signed-out
    /// owner already has its most, with nothing charged.
    pub fn charge_request(&mut self) -> Result<(), String> {
        let add = Usage {
            requests: 1,
            ..Usage::default()
        };
        self.owners.try_add(&self.owner, add, Charge::New)?;
        self.charged.requests += 1;
        Ok(())
    }

    /// Gives back one mutation or action (answered, or failed).
    pub fn release_request(&mut self) {
        if self.charged.requests == 0 {
            return;
        }
        let sub = Usage {
            requests: 1,
            ..Usage::default()
        };
        self.owners.remove(&self.owner, sub, Charge::New);
        self.charged.requests -= 1;
    }

    /// Moves the whole charge to the socket's new identity (`None`: signed out, its address).
    /// An error when it does not fit there; the charge then stays where it was.
    pub fn move_to(&mut self, identity: Option<IdentityKey>) -> Result<(), String> {
        let owner = identity.map_or(Owner::Address(self.address), Owner::Identity);
        if owner == self.owner {
            return Ok(());
        }
        // Requests already in flight go along unchecked: they were admitted, and a sign-out
        // must not end the socket for them.
        let queries = Usage {
            requests: 0,
            ..self.charged
        };
        self.owners.try_add(&owner, queries, Charge::Moved)?;
        self.owners.add_requests(&owner, self.charged.requests);
        self.owners.remove(&self.owner, self.charged, Charge::Moved);
        self.owner = owner;
        Ok(())
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.owners.remove(&self.owner, self.charged, Charge::New);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(max_queries: usize, max_bytes: usize) -> Arc<Owners> {
        Owners::new(OwnerLimits {
            max_queries,
            max_bytes,
            max_address_requests: 2,
            max_total_bytes: usize::MAX,
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn sockets_of_one_address_share_its_budget_and_others_have_their_own() {
        let owners = owners(3, 1000);
        let (mut one, mut two, mut other) = (owners.budget(A), owners.budget(A), owners.budget(B));
        one.charge(10).unwrap();
        two.charge(10).unwrap();
        one.charge(10).unwrap();
        let error = two.charge(10).unwrap_err();
        assert!(error.contains("too many queries"), "{error}");
        for _ in 0..3 {
            other.charge(10).unwrap();
        }
        assert_eq!(owners.queries_of(&Owner::Address(A)), 3);
        one.release(10);
        two.charge(10).unwrap();
        drop((one, two, other));
        assert!(owners.is_empty());
    }

    #[test]
    fn a_signed_out_address_holds_few_requests_and_an_identity_its_upstreams_cap() {
        let owners = owners(100, 1000);
        let (mut one, mut two, mut other) = (owners.budget(A), owners.budget(A), owners.budget(B));
        one.charge_request().unwrap();
        two.charge_request().unwrap();
        let error = one.charge_request().unwrap_err();
        assert!(
            error.contains("in flight from this client address"),
            "{error}"
        );
        other.charge_request().unwrap();
        two.release_request();
        one.charge_request().unwrap();
        // Signed in, the same socket is not limited here (its upstream caps the identity);
        // signing out with more in flight than an address may hold does not end it.
        let user = IdentityKey::User("{\"sub\":\"u\"}".into());
        one.move_to(Some(user)).unwrap();
        for _ in 0..5 {
            one.charge_request().unwrap();
        }
        one.move_to(None).unwrap();
        assert!(one.charge_request().is_err());
        for _ in 0..7 {
            one.release_request();
        }
        one.release_request();
        drop((one, two, other));
        assert!(owners.is_empty());
    }

    #[test]
    fn bytes_are_bounded_and_a_refused_charge_changes_nothing() {
        let owners = owners(100, 100);
        let mut b = owners.budget(A);
        b.charge(60).unwrap();
        let error = b.charge(41).unwrap_err();
        assert!(error.contains("too large"), "{error}");
        b.charge(40).unwrap();
        assert_eq!(owners.queries_of(&Owner::Address(A)), 2);
    }

    #[test]
    fn signing_in_moves_the_charge_or_refuses_it_whole() {
        let owners = owners(3, 1000);
        let user = IdentityKey::User("{\"sub\":\"u\"}".into());
        let mut signed_in = owners.budget(B);
        signed_in.move_to(Some(user.clone())).unwrap();
        signed_in.charge(1).unwrap();
        signed_in.charge(1).unwrap();
        let mut b = owners.budget(A);
        b.charge(1).unwrap();
        b.charge(1).unwrap();
        let error = b.move_to(Some(user.clone())).unwrap_err();
        assert!(error.contains("this identity"), "{error}");
        assert_eq!(owners.queries_of(&Owner::Address(A)), 2);
        b.release(1);
        b.move_to(Some(user.clone())).unwrap();
        assert_eq!(owners.queries_of(&Owner::Address(A)), 0);
        assert_eq!(owners.queries_of(&Owner::Identity(user.clone())), 3);
        b.move_to(None).unwrap();
        assert_eq!(owners.queries_of(&Owner::Address(A)), 1);
        assert_eq!(owners.queries_of(&Owner::Identity(user)), 2);
    }

    #[test]
    fn every_owner_together_stays_within_the_total_and_moves_do_not_count_twice() {
        let owners = Owners::new(OwnerLimits {
            max_queries: 100,
            max_bytes: 50,
            max_address_requests: 2,
            max_total_bytes: 100,
        });
        let user = IdentityKey::User("{\"sub\":\"u\"}".into());
        let (mut a, mut b) = (owners.budget(A), owners.budget(B));
        a.charge(50).unwrap();
        b.charge(40).unwrap();
        let mut c = owners.budget(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3)));
        let error = c.charge(20).unwrap_err();
        assert!(
            error.contains("the query service holds too many queries"),
            "{error}"
        );
        assert_eq!(owners.total_bytes(), 90);
        c.charge(10).unwrap();
        // Signing in moves bytes the service already holds: the full total does not refuse it.
        b.move_to(Some(user.clone())).unwrap();
        assert_eq!(owners.total_bytes(), 100);
        // Requests are not bytes: a full total does not refuse them.
        c.charge_request().unwrap();
        a.release(50);
        assert_eq!(owners.total_bytes(), 50);
        c.charge(20).unwrap();
        drop((a, b, c));
        assert_eq!(owners.total_bytes(), 0);
        assert!(owners.is_empty());
    }

    #[test]
    fn one_owner_may_hold_at_most_half_the_total() {
        let mut limits = OwnerLimits::default();
        limits.check().unwrap();
        limits.max_total_bytes = limits.max_bytes * 2 - 1;
        let error = limits.check().unwrap_err();
        assert!(error.contains("at most half"), "{error}");
    }
}

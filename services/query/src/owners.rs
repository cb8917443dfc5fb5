//! What one identity holds across all its client sockets, so that opening more sockets does
//! not multiply what it can make the query service and its upstream hold.
//!
//! Every client socket charges its queries (count and [`key_bytes`]) to its *owner*: the
//! identity it is signed in as (the same key as its upstream's), or, signed out, the client's
//! address (the anonymous identity is shared by everyone, so a budget on it would let one
//! client use up everyone's; an address is one client, or one network behind a NAT). An `Add`
//! that would take the owner past its limits ends that socket with `FatalError`; signing in
//! moves the socket's whole charge to the new owner, or ends the socket if it does not fit.
//! Charges are given back when queries are removed and when the socket closes.
//!
//! Mutations and actions in flight are charged the same way, and limited for a signed-out
//! owner (a client address) only: every signed-out client shares the anonymous upstream and
//! its 1,000 slots per kind (Convex's cap per WebSocket), so one address may hold at most
//! `max_address_requests` of them; the request beyond it fails alone (`try again`), as the
//! upstream's own cap answers. A signed-in identity has its own upstream and its whole cap.
//!
//! [`key_bytes`]: crate::downstream::session::key_bytes

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
}

impl Default for OwnerLimits {
    /// Four sockets at their own limits (`QUERY_MAX_QUERIES_PER_SOCKET` 4,096 and
    /// `QUERY_MAX_SOCKET_QUERY_BYTES` 8 MiB).
    fn default() -> Self {
        OwnerLimits {
            max_queries: 16 * 1024,
            max_bytes: 32 * 1024 * 1024,
            max_address_requests: 100,
        }
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
#[derive(Debug)]
pub struct Owners {
    limits: OwnerLimits,
    usage: Mutex<HashMap<Owner, Usage>>,
}

impl Owners {
    pub fn new(limits: OwnerLimits) -> Arc<Owners> {
        Arc::new(Owners {
            limits,
            usage: Mutex::new(HashMap::new()),
        })
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
        self.lock().get(owner).map_or(0, |u| u.queries)
    }

    /// Owners with anything charged.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Owner, Usage>> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `add` to `owner` if it stays within the limits.
    fn try_add(&self, owner: &Owner, add: Usage) -> Result<(), String> {
        let mut map = self.lock();
        let usage = map.get(owner).copied().unwrap_or_default();
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
        map.insert(
            owner.clone(),
            Usage {
                queries,
                bytes,
                requests,
            },
        );
        Ok(())
    }

    /// Adds `requests` in flight to `owner` whatever its limit.
    fn add_requests(&self, owner: &Owner, requests: usize) {
        if requests > 0 {
            self.lock().entry(owner.clone()).or_default().requests += requests;
        }
    }

    fn remove(&self, owner: &Owner, sub: Usage) {
        let mut map = self.lock();
        if let Some(usage) = map.get_mut(owner) {
            usage.queries = usage.queries.saturating_sub(sub.queries);
            usage.bytes = usage.bytes.saturating_sub(sub.bytes);
            usage.requests = usage.requests.saturating_sub(sub.requests);
            if usage.is_empty() {
                map.remove(owner);
            }
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
        self.owners.try_add(&self.owner, add)?;
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
        self.owners.remove(&self.owner, sub);
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
        self.owners.try_add(&self.owner, add)?;
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
        self.owners.remove(&self.owner, sub);
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
        self.owners.try_add(&owner, queries)?;
        self.owners.add_requests(&owner, self.charged.requests);
        self.owners.remove(&self.owner, self.charged);
        self.owner = owner;
        Ok(())
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.owners.remove(&self.owner, self.charged);
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
}

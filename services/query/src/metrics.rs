//! The query service's metrics (names fixed by DESIGN section 7), per instance so that several
//! services in one test process each report their own.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub downstream_connections: AtomicI64,
    pub downstream_subscriptions: AtomicI64,
    pub upstream_connections: AtomicI64,
    pub upstream_subscriptions: AtomicI64,
    pub upstream_queries: AtomicU64,
    pub upstream_mutations: AtomicU64,
    pub upstream_actions: AtomicU64,
    /// `/api/function` and `/api/run/…`: Convex decides the kind.
    pub upstream_functions: AtomicU64,
    pub served_from_subscription: AtomicU64,
    /// The gateway's page watches (gRPC `Watch` streams) open.
    pub watches: AtomicI64,
    /// Bytes of results queued for client sockets, all together.
    pub downstream_queued_bytes: AtomicI64,
    /// The most bytes one client socket's queue ever held (bounded by
    /// `QUERY_SOCKET_QUEUE_BYTES` plus one event).
    pub downstream_queue_peak_bytes: AtomicI64,
}

/// What an HTTP call to Convex runs, as far as the route says: the `kind` label of
/// `edge_query_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Query,
    Mutation,
    Action,
    /// `/api/function` and `/api/run/…`: any kind, decided by Convex.
    Function,
}

impl CallKind {
    pub fn label(self) -> &'static str {
        match self {
            CallKind::Query => "query",
            CallKind::Mutation => "mutation",
            CallKind::Action => "action",
            CallKind::Function => "function",
        }
    }
}

impl Stats {
    /// Counts an HTTP call to Convex of `kind`.
    pub fn upstream_request(&self, kind: CallKind) {
        let counter = match kind {
            CallKind::Query => &self.upstream_queries,
            CallKind::Mutation => &self.upstream_mutations,
            CallKind::Action => &self.upstream_actions,
            CallKind::Function => &self.upstream_functions,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauges = [
            (
                "edge_query_downstream_connections",
                "client WebSocket connections",
                &self.downstream_connections,
            ),
            (
                "edge_query_downstream_subscriptions",
                "client subscriptions",
                &self.downstream_subscriptions,
            ),
            (
                "edge_query_upstream_connections",
                "WebSocket connections to Convex",
                &self.upstream_connections,
            ),
            (
                "edge_query_upstream_subscriptions",
                "subscriptions held with Convex",
                &self.upstream_subscriptions,
            ),
            (
                "edge_query_downstream_queued_bytes",
                "bytes of results queued for client sockets",
                &self.downstream_queued_bytes,
            ),
            (
                "edge_query_downstream_queue_peak_bytes",
                "the most bytes of results one client socket's queue ever held",
                &self.downstream_queue_peak_bytes,
            ),
            (
                "edge_query_watches",
                "gRPC Watch streams the gateways hold open for page data",
                &self.watches,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "edge_query_upstream_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP calls to Convex\n# TYPE {name} counter"
        );
        for (kind, value) in [
            (CallKind::Query, &self.upstream_queries),
            (CallKind::Mutation, &self.upstream_mutations),
            (CallKind::Action, &self.upstream_actions),
            (CallKind::Function, &self.upstream_functions),
        ] {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{}\"}} {}",
                kind.label(),
                value.load(Ordering::Relaxed)
            );
        }
        let name = "edge_query_served_from_subscription_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP and gRPC queries answered from a live subscription\n# TYPE {name} counter\n{name} {}",
            self.served_from_subscription.load(Ordering::Relaxed)
        );
        out
    }
}

//! The one reconnect backoff every long-lived connection loop uses (the query service's
//! upstreams to Convex, the gateway's revocation stream): exponential from 50 ms, doubling, at
//! most 2 s, with jitter so that many sockets cut at once do not reconnect in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The first delay after a failure.
pub const FIRST: Duration = Duration::from_millis(50);
/// The longest delay between two attempts (before jitter, which adds up to as much again).
pub const MAX: Duration = Duration::from_secs(2);

/// Delays between reconnect attempts, without end: start a new one after a success.
pub fn reconnect() -> impl Iterator<Item = Duration> + Send + 'static {
    ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_never_end() {
        let delays: Vec<Duration> = reconnect().take(40).collect();
        assert_eq!(delays.len(), 40);
        assert!(
            delays[0] >= FIRST && delays[0] <= FIRST * 2,
            "{:?}",
            delays[0]
        );
        assert!(delays.iter().all(|d| *d <= MAX * 2), "{delays:?}");
        assert!(
            delays[39] >= MAX,
            "capped delays stay at the cap: {delays:?}"
        );
        let again: Vec<Duration> = reconnect().take(40).collect();
        assert_ne!(delays, again, "jitter makes two sequences differ");
    }
}

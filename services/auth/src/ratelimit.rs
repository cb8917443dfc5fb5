//! Fixed-window rate limits for sign-in, per account and per client address (in memory: a
//! limit per replica, as Better Auth's default memory storage is).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    /// Counts one attempt under `key`; `Err(retry_after)` once more than `max` fell in `window`.
    pub fn check(&self, key: &str, max: u32, window: Duration) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > max {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let limiter = RateLimiter::default();
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("a", 3, w).is_ok());
        }
        assert!(limiter.check("a", 3, w).is_err());
        assert!(limiter.check("b", 3, w).is_ok());
    }
}

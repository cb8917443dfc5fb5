//! devconvex's metrics (names fixed by DESIGN section 7), kept per instance so that several
//! backends in one test process each report their own.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    executions: Mutex<BTreeMap<String, u64>>,
    subscriptions: AtomicI64,
}

impl Stats {
    pub fn executed(&self, path: &str) {
        *self
            .executions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_owned())
            .or_default() += 1;
    }

    pub fn executions(&self, path: &str) -> u64 {
        self.executions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn add_subscriptions(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn subscriptions(&self) -> i64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP devconvex_function_executions_total function runs in devconvex\n# TYPE devconvex_function_executions_total counter\n",
        );
        for (path, n) in self
            .executions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "devconvex_function_executions_total{{path=\"{path}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP devconvex_subscriptions live subscriptions in devconvex\n# TYPE devconvex_subscriptions gauge\n");
        out.push_str(&format!(
            "devconvex_subscriptions {}\n",
            self.subscriptions()
        ));
        out
    }
}

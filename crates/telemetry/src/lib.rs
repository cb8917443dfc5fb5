//! What every service shares at its edges: one tracing subscriber, one Prometheus registry, the
//! configuration error type, and the reconnect [`backoff`].
//!
//! Metric names are part of the external contract (DESIGN section 7); each service declares its
//! own through [`counter`], [`int_gauge`] and [`histogram`], which register them here once.

pub mod backoff;

use std::sync::OnceLock;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

pub use prometheus;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object a line, for containers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `pretty` or `json`, got `{other}`")),
        }
    }
}

/// Libraries that log whole messages at `trace` (tungstenite: every frame, so a sync
/// protocol `Authenticate` with its JWT; its client handshake request with its headers):
/// capped at `debug` whatever `RUST_LOG` says, so no token reaches a log at any level.
pub const CAPPED_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// `RUST_LOG` (default `info`) with [`CAPPED_TARGETS`] capped at `debug` (or below, as the
/// rest of `RUST_LOG` asks): whatever `RUST_LOG`
/// says about those crates (`tungstenite=trace`, `tungstenite::protocol=trace`) is dropped.
pub fn env_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let rust_log = rust_log.unwrap_or("info");
    // Directives naming a capped crate (or a module in it, which would outrank the cap) are
    // left out; the caps replace them.
    let kept: Vec<&str> = rust_log
        .split(',')
        .filter(|d| {
            let target = d.split(['=', '[']).next().unwrap_or("");
            !CAPPED_TARGETS
                .iter()
                .any(|t| target == *t || target.starts_with(&format!("{t}::")))
        })
        .collect();
    let mut filter = EnvFilter::try_new(kept.join(",")).unwrap_or_else(|_| EnvFilter::new("info"));
    // At most `debug`, and never above what `RUST_LOG` asks of anything.
    let hint =
        <EnvFilter as tracing_subscriber::Layer<tracing_subscriber::Registry>>::max_level_hint(
            &filter,
        );
    let cap = hint.map_or(tracing::level_filters::LevelFilter::DEBUG, |h| {
        h.min(tracing::level_filters::LevelFilter::DEBUG)
    });
    for target in CAPPED_TARGETS {
        if let Ok(directive) = format!("{target}={cap}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global tracing subscriber; `RUST_LOG` filters (default `info`, see
/// [`env_filter`]). A second call is a no-op, so tests and `dev` can call it freely.
pub fn init_tracing(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = env_filter(rust_log.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn registry() -> &'static prometheus::Registry {
    static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
    REGISTRY.get_or_init(prometheus::Registry::new)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    // Registration fails only for duplicate names, which is a programming error caught by tests.
    registry()
        .register(Box::new(collector.clone()))
        .unwrap_or_else(|e| panic!("metric registration failed: {e}"));
    collector
}

/// Registers a counter.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

/// Registers a counter with labels.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// Registers a gauge.
pub fn int_gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

/// Registers a histogram with labels and latency buckets from 5 µs to 5 s.
///
/// A cache hit is answered in tens of microseconds, so the buckets start at 5 µs and no two
/// neighbours below 10 ms are more than 2x apart: a quantile read from them (and a ratio of two)
/// is known within that factor, not guessed inside a bucket ten times wider.
pub fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.000005, 0.00001, 0.000015, 0.00002, 0.00003, 0.00004, 0.00005, 0.000075, 0.0001, 0.00015,
        0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
        0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(HistogramVec::new(opts, labels).expect("valid metric"))
}

/// Every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = encoder.encode(&registry().gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// An invalid environment variable. Every service reports configuration errors this way; the
/// CLI prints it as one line and exits with code 64.
#[derive(Debug)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            var,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::env_filter;

    /// Everything a subscriber with `env_filter(rust_log)` writes for one event per target.
    fn logged(rust_log: &str) -> String {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(env_filter(Some(rust_log)))
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::protocol", "frame eyJhbGciOi-secret");
            tracing::trace!(target: "tokio_tungstenite", "frame eyJhbGciOi-secret");
            tracing::debug!(target: "tungstenite::protocol", "close frame");
            tracing::trace!(target: "edge_query", "own trace");
        });
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn websocket_frames_never_reach_the_log_at_any_level() {
        for rust_log in [
            "trace",
            "tungstenite=trace,trace",
            "tungstenite::protocol=trace,trace",
            "tokio_tungstenite[x]=trace,trace",
        ] {
            let log = logged(rust_log);
            assert!(!log.contains("secret"), "{rust_log}: {log}");
            assert!(log.contains("own trace"), "{rust_log}: {log}");
            assert!(log.contains("close frame"), "{rust_log}: {log}");
        }
        let info = logged("info");
        assert!(
            !info.contains("own trace") && !info.contains("close frame"),
            "{info}"
        );
    }
}

//! The gateway's metrics (names fixed by DESIGN section 7).

use std::sync::LazyLock;

use edge_telemetry::prometheus::HistogramVec;

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    edge_telemetry::histogram(
        "edge_gateway_request_duration_seconds",
        "server-side latency to the first response byte",
        &["route"],
    )
});

pub fn init() {
    LazyLock::force(&REQUEST_DURATION);
}

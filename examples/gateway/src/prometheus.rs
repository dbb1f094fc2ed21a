//! The Prometheus exporter behind `/metrics`: one recorder per process, with the GenAI
//! metrics' bucket boundaries that tower-sse publishes, and an upkeep thread.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_sse::metrics::{buckets, names};

use crate::{REQUESTS, UPSTREAM_STREAMS};

/// The process-wide Prometheus recorder (one per process; tests may start several gateways).
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::CLIENT_OPERATION_DURATION.into()),
                    buckets::OPERATION_DURATION,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TIME_TO_FIRST_CHUNK.into()),
                        buckets::OPERATION_DURATION,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TIME_PER_OUTPUT_CHUNK.into()),
                        buckets::OPERATION_DURATION,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TOKEN_USAGE.into()),
                        buckets::TOKEN_USAGE,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::SERVER_TIME_TO_FIRST_TOKEN.into()),
                        buckets::SERVER_TIME_TO_FIRST_TOKEN,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::SERVER_TIME_PER_OUTPUT_TOKEN.into()),
                        buckets::SERVER_TIME_PER_OUTPUT_TOKEN,
                    )
                })
                .expect("bucket lists are not empty");
            let handle = builder
                .install_recorder()
                .expect("no other recorder in this process");
            tower_sse::metrics::describe();
            metrics::describe_counter!(REQUESTS, "Requests that reached the stream stack");
            metrics::describe_counter!(UPSTREAM_STREAMS, "Upstream answers that started a stream");
            metrics::describe_counter!(
                crate::log_writer::LOG_LINES_DROPPED,
                "Log lines dropped because stdout was too far behind"
            );
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Drain histogram samples into their buckets every second, so memory stays flat when
/// nobody scrapes `/metrics` (rendering drains them too). Samples wait in blocks until then,
/// one per event (the inter-token gaps): at 20,000 events a second, 5 s of them were about
/// 0.8 MB, 400 bytes per open stream of the side-by-side load.
fn spawn_upkeep(handle: PrometheusHandle) {
    let upkeep = move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            handle.run_upkeep();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("prometheus-upkeep".into())
        .spawn(upkeep)
    {
        eprintln!("gateway: no metrics upkeep thread: {e}");
    }
}

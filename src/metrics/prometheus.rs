//! The advised bucket boundaries on a Prometheus exporter (feature `prometheus`).
//!
//! The `metrics` facade carries no boundaries, and `metrics-exporter-prometheus` renders
//! histograms as summaries unless it is given buckets. [`with_buckets`] gives a
//! [`PrometheusBuilder`] the boundaries of [`buckets::ALL`]: one call
//! instead of one `set_buckets_for_metric` per histogram.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use super::buckets;

/// Set the bucket boundaries the conventions advise for every histogram of this crate
/// ([`buckets::ALL`]), by exact metric name. Other metrics, and other
/// settings of the builder, are left as they are.
///
/// Fails only as `set_buckets_for_metric` does: for an empty list of boundaries, which this
/// crate's lists never are.
///
/// ```
/// use metrics_exporter_prometheus::PrometheusBuilder;
/// use tower_sse::metrics::names;
///
/// let recorder = tower_sse::metrics::prometheus::with_buckets(PrometheusBuilder::new())
///     .expect("the lists are not empty")
///     .build_recorder();
/// // In a server: `install_recorder()` instead, then `tower_sse::metrics::describe()`.
/// metrics::with_local_recorder(&recorder, || {
///     metrics::histogram!(names::CLIENT_OPERATION_DURATION).record(0.3);
/// });
/// let text = recorder.handle().render();
/// assert!(text.contains(r#"gen_ai_client_operation_duration_bucket{le="0.32"} 1"#));
/// assert!(text.contains(r#"gen_ai_client_operation_duration_bucket{le="0.16"} 0"#));
/// ```
pub fn with_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    buckets::ALL
        .iter()
        .try_fold(builder, |builder, (name, bounds)| {
            builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_renders_with_its_buckets() {
        let recorder = with_buckets(PrometheusBuilder::new())
            .unwrap()
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            for (name, _) in buckets::ALL {
                metrics::histogram!(*name).record(1.0);
            }
        });
        let text = recorder.handle().render();
        for (name, bounds) in buckets::ALL {
            let rendered = name.replace('.', "_");
            for bound in *bounds {
                let below = u8::from(*bound >= 1.0);
                let line = format!("{rendered}_bucket{{le=\"{bound}\"}} {below}\n");
                assert!(text.contains(&line), "{line:?} not in\n{text}");
            }
            assert!(text.contains(&format!("{rendered}_bucket{{le=\"+Inf\"}} 1\n")));
        }
        assert!(
            !text.contains("quantile"),
            "histograms, not summaries:\n{text}"
        );
    }
}

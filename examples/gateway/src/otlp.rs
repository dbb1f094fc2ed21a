//! `--otlp-endpoint URL`: one span per stream ([`tower_sse::span`]), exported over OTLP/HTTP
//! with protobuf by a batch task that never blocks a stream.
//!
//! The URL is the collector's base (as `OTEL_EXPORTER_OTLP_ENDPOINT`): spans go to
//! `URL/v1/traces`, unless the URL already has a path. `http://` or `https://` (with the
//! default-on `tls` feature: the upstream's rustls client, with the roots `--tls-roots`
//! names). The standard environment is honoured:
//! `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, `..._TIMEOUT`,
//! `..._COMPRESSION` (by the OTLP exporter), `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
//! (by the SDK), `OTEL_SEMCONV_STABILITY_OPT_IN` (by tower-sse), and the batch settings
//! `OTEL_BSP_MAX_QUEUE_SIZE` (2048), `OTEL_BSP_SCHEDULE_DELAY` (5000 ms),
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512).
//!
//! Why a batch processor of the gateway's own and not the SDK's: the SDK's runs a thread
//! that blocks on each export (so its HTTP client must be a blocking one: reqwest's, with a
//! runtime of its own), and counts the spans it drops only in a log line at shutdown. This
//! one is a task on the gateway's runtime that sends with the gateway's hyper-util client,
//! and counts what it drops in `gateway.otlp.spans.dropped_total` as it drops them. A
//! stream's end only `try_send`s into a bounded queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tower_sse::span::SpanLayer;

use crate::connector::{self, Connector, TlsRoots, UpstreamVersion};

/// Spans dropped because the export queue was full (or the exporter gone).
pub(crate) const SPANS_DROPPED: &str = "gateway.otlp.spans.dropped_total";
/// Spans sent to the collector.
pub(crate) const SPANS_EXPORTED: &str = "gateway.otlp.spans.exported_total";
/// Batches the collector did not take (an error answer, a timeout, no connection).
pub(crate) const EXPORT_FAILURES: &str = "gateway.otlp.export.failures_total";

/// The largest answer read from the collector.
const MAX_ANSWER: usize = 64 * 1024;

/// The span layer and the provider behind it (kept to flush at shutdown).
#[derive(Clone, Debug)]
pub(crate) struct Otlp {
    pub(crate) layer: SpanLayer,
    provider: SdkTracerProvider,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

/// The batch settings, from the `OTEL_BSP_*` environment.
#[derive(Debug, Clone, Copy)]
struct Batch {
    queue: usize,
    delay: Duration,
    max_batch: usize,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s).
    timeout: Duration,
}

impl Batch {
    fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        let queue = var("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize;
        Self {
            queue,
            delay: Duration::from_millis(var("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            max_batch: (var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize).min(queue),
            timeout: Duration::from_millis(var(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                var("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000),
            )),
        }
    }
}

/// `URL/v1/traces` for a base URL without a path; the URL itself otherwise.
fn traces_url(endpoint: &Uri) -> String {
    let url = endpoint.to_string();
    match endpoint.path() {
        "" | "/" => format!("{}/v1/traces", url.trim_end_matches('/')),
        _ => url,
    }
}

impl Otlp {
    /// The exporter to `endpoint`, its batch task (started with the first span, on the
    /// runtime that ends it) and the span layer.
    pub(crate) fn new(endpoint: &Uri, roots: TlsRoots) -> std::io::Result<Self> {
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err(std::io::Error::other(format!(
                "--otlp-endpoint {endpoint}: only http:// and https:// collectors are supported"
            )));
        }
        // The upstream's connector: `https://` with rustls (feature `tls`), an error without.
        let connector = connector::connector(endpoint, roots, UpstreamVersion::Http1)
            .map_err(|e| std::io::Error::other(format!("--otlp-endpoint: {e}")))?;
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .with_http_client(HyperClient::new(connector))
            .build()
            .map_err(|e| std::io::Error::other(format!("--otlp-endpoint: {e}")))?;
        let batch = Batch::from_env();
        let (spans, queue) = mpsc::channel(batch.queue);
        let (flush, flushes) = mpsc::channel(4);
        let processor = BatchTask {
            spans,
            waiting: Mutex::new(Some(Waiting {
                exporter,
                queue,
                flushes,
                batch,
            })),
            started: AtomicBool::new(false),
        };
        let resource = Resource::builder()
            .with_service_name("tower-sse-gateway")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let layer = SpanLayer::with_tracer(provider.tracer("example-gateway"));
        Ok(Self {
            layer,
            provider,
            flush,
        })
    }

    /// Sends what is queued, waiting up to `limit` (at shutdown).
    pub(crate) async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.flush.try_send(done).is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
        let _ = &self.provider;
    }
}

/// What the batch task needs, kept until the first span starts it.
struct Waiting {
    exporter: SpanExporter,
    queue: mpsc::Receiver<SpanData>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    batch: Batch,
}

/// The span processor: a bounded queue in front of a task that exports in batches.
struct BatchTask {
    spans: mpsc::Sender<SpanData>,
    waiting: Mutex<Option<Waiting>>,
    started: AtomicBool,
}

impl std::fmt::Debug for BatchTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchTask").finish_non_exhaustive()
    }
}

impl BatchTask {
    /// Starts the task on the current runtime (the first span's end runs on one).
    fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        if let Some(waiting) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            runtime.spawn(run(waiting));
        }
    }
}

impl SpanProcessor for BatchTask {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        self.start();
        if self.spans.try_send(span).is_err() {
            metrics::counter!(SPANS_DROPPED).increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        use opentelemetry_sdk::trace::SpanExporter as _;
        if let Some(waiting) = self.waiting.get_mut().unwrap_or_else(|e| e.into_inner()) {
            waiting.exporter.set_resource(resource);
        }
    }
}

/// The batch task: exports when a batch is full, every `delay`, and when asked to flush.
async fn run(waiting: Waiting) {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let Waiting {
        exporter,
        mut queue,
        mut flushes,
        batch,
    } = waiting;
    let mut tick = tokio::time::interval(batch.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spans = Vec::with_capacity(batch.max_batch);
    let mut done = Vec::new();
    loop {
        let mut closed = false;
        let room = batch.max_batch - spans.len();
        tokio::select! {
            _ = tick.tick() => {}
            received = queue.recv_many(&mut spans, room) => {
                closed = received == 0;
                if !closed && spans.len() < batch.max_batch {
                    continue;
                }
            }
            Some(waiter) = flushes.recv() => done.push(waiter),
        }
        // Everything queued now, in batches.
        loop {
            while spans.len() < batch.max_batch {
                match queue.try_recv() {
                    Ok(span) => spans.push(span),
                    Err(_) => break,
                }
            }
            if spans.is_empty() {
                break;
            }
            let count = spans.len() as u64;
            let sent = std::mem::replace(&mut spans, Vec::with_capacity(batch.max_batch));
            let exported = tokio::time::timeout(batch.timeout, exporter.export(sent)).await;
            match exported.unwrap_or(Err(OTelSdkError::Timeout(batch.timeout))) {
                Ok(()) => metrics::counter!(SPANS_EXPORTED).increment(count),
                Err(error) => {
                    metrics::counter!(EXPORT_FAILURES).increment(1);
                    tracing::warn!(target: "gateway", %error, spans = count, "OTLP export failed");
                }
            }
        }
        for waiter in done.drain(..) {
            let _ = waiter.send(());
        }
        if closed {
            return;
        }
    }
}

/// The exporter's HTTP client: the gateway's hyper-util client, with the upstream's
/// connector (`http://`, and `https://` with the `tls` feature), with a bound on the
/// answer's size.
#[derive(Debug, Clone)]
struct HyperClient {
    client: Client<Connector, Full<Bytes>>,
}

impl HyperClient {
    fn new(connector: Connector) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpClient for HyperClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let response = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_base_url_only() {
        let url = |s: &str| traces_url(&s.parse().unwrap());
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            url("http://c:4318/otlp/v1/traces"),
            "http://c:4318/otlp/v1/traces"
        );
    }
}

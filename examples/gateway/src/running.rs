//! The gateway's life: building the [`Shared`] state, serving it, the handles a caller keeps
//! ([`Gateway`]), and the graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
#[cfg(feature = "redis")]
use tower_sse::budget::RedisBudgets;
use tower_sse::budget::{BudgetConfig, BudgetLayer, Charge, MemoryBudgets};
use tower_sse::cost::CostObserver;
use tower_sse::limit::OpenStreams;
use tower_sse::metrics::ModelLabels;
use tower_sse::resume::MemoryStore;
#[cfg(feature = "redis")]
use tower_sse::resume::RedisStore;
use tower_sse::stream::Shutdown;
use tower_sse::{DigestRegistry, KeepAliveConfig, ResumeLayer, StreamLimitLayer, StreamReport};

use crate::{GatewayConfig, Shared, connector, os, prometheus, serve, serve_until};

impl Shared {
    /// Serve [`router`](Self::router) on `listener` under the configured connection limits,
    /// on the current runtime, forever.
    pub async fn serve(&self, listener: TcpListener) {
        serve_until(
            listener,
            self.router(),
            self.config.connections.clone(),
            self.stop.subscribe(),
        )
        .await
    }

    /// Shut down gracefully: stop accepting (new connections are refused), let the open
    /// streams run to their end for up to `grace`, then end the rest with an error event
    /// (`server_shutdown`; each is reported). Returns how many streams the grace did not
    /// see to their end.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop.send_replace(true);
        let permits = self.limit.counter();
        // Every connection this process serves: streams (permits), and readers of resumable
        // streams, those of streams produced on another replica included (they hold no
        // permit).
        let readers = self.resume.open_readers();
        let open = || permits.get() + readers.get();
        let cut = if wait_for_streams(&open, grace).await {
            0
        } else {
            let cut = open();
            self.streams_end.end_streams();
            // They end at once; the bound only guards against a stream nobody polls.
            wait_for_streams(&open, Duration::from_secs(5)).await;
            cut
        };
        // The metrics and reports of the last streams are recorded by now: the log lines
        // are written, and the metrics listener answered until here.
        if let Some(otlp) = &self.otlp {
            otlp.flush(Duration::from_secs(5)).await;
        }
        cut
    }

    /// Build the shared state. Each finished stream's report also goes to `reports` when
    /// given (the demo prints them). Fails when the TLS roots cannot be loaded.
    pub fn new(
        config: GatewayConfig,
        reports: Option<mpsc::UnboundedSender<StreamReport>>,
    ) -> std::io::Result<Self> {
        // Read the fd limit now, while a descriptor is free to read it with.
        let _ = os::fd_limit();
        let resume_store = MemoryStore::new();
        let streams_end = Shutdown::new();
        let resume = ResumeLayer::new()
            .enabled(config.resumable)
            .shutdown(streams_end.clone());
        let registry = DigestRegistry::builder();
        let (mut resume, registry) = match &config.redis {
            // This replica's own streams and records are still served from memory; Redis
            // serves the other replicas.
            #[cfg(feature = "redis")]
            Some(url) => {
                let redis = RedisStore::builder(url)
                    .map_err(|e| std::io::Error::other(format!("--redis: {e}")))?
                    .local(resume_store.clone())
                    .build();
                (resume.store(redis.clone()), registry.shared(redis))
            }
            #[cfg(not(feature = "redis"))]
            Some(url) => {
                return Err(std::io::Error::other(format!(
                    "--redis {url}: this gateway was built without Redis support \
                     (cargo feature `redis` of example-gateway)"
                )));
            }
            None => (resume.store(resume_store.clone()), registry),
        };
        let budgets = budgets(&config)?;
        if let Some(interval) = config.keep_alive {
            // Each client connection gets its own keep-alives (the SseLayer's stay inside).
            resume = resume.keep_alive(KeepAliveConfig::new().interval(interval));
        }
        let mut otlp = config
            .otlp_endpoint
            .as_ref()
            .map(|endpoint| crate::otlp::Otlp::new(endpoint, config.tls_roots))
            .transpose()?;
        if let Some(otlp) = &mut otlp {
            // The stream's cost, labelled with the price table's currency.
            if let Some(currency) = config.prices.as_ref().and_then(|p| p.currency()) {
                otlp.layer = otlp.layer.clone().currency(currency);
            }
            // A short span per resumed connection, linked to the stream's.
            resume = resume.spans(&otlp.layer);
        }
        for fallback in &config.fallback_upstreams {
            // The same checks as the first upstream's (an `https://` one without TLS).
            connector::connector(fallback, config.tls_roots, config.upstream_version)?;
        }
        Ok(Self {
            resume_store,
            resume,
            connector: connector::connector(
                &config.upstream,
                config.tls_roots,
                config.upstream_version,
            )?,
            registry: registry.build(),
            limit: StreamLimitLayer::new(config.max_streams),
            metrics: prometheus::prometheus(),
            stop: Arc::new(watch::channel(false).0),
            streams_end,
            models: ModelLabels::first_seen(config.max_model_labels),
            costs: CostObserver::new(config.prices.clone().unwrap_or_default()),
            otlp,
            config,
            reports,
            budgets,
        })
    }

    /// The handles a caller keeps, for a gateway listening on `addr`.
    pub fn gateway(&self, addr: SocketAddr, metrics_addr: Option<SocketAddr>) -> Gateway {
        Gateway {
            addr,
            metrics_addr,
            registry: self.registry.clone(),
            open_streams: self.limit.counter(),
            metrics: self.metrics.clone(),
            shared: self.clone(),
        }
    }
}

/// A budgets file: TOML when its name ends in `.toml`, else JSON; the same document and
/// checks either way, and errors that say where (TOML's line and column, or the limit's
/// place such as `default[1]`).
fn read_budgets(path: &std::path::Path, text: &str) -> Result<BudgetConfig, String> {
    let toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let config = if toml {
        let document = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        BudgetConfig::from_deserializer(document)
    } else {
        BudgetConfig::from_json(text)
    };
    config.map_err(|e| e.to_string())
}

/// An answer that is not a stream makes no report, so no `stream ended` line: its budget
/// charge gets a line of its own, `answer charged`, with the stream line's field names.
fn log_answer(charge: &Charge) {
    tracing::info!(
        budget_key = charge.key.as_str(),
        budget_reservation = charge.id.as_str(),
        charged_input_tokens = charge.charged.input_tokens,
        charged_output_tokens = charge.charged.output_tokens,
        charged_cost_micros = charge.charged.cost_micros,
        charge_estimated = charge.estimated,
        "answer charged"
    );
}

/// The budget layer of `--budgets FILE` (none: a layer without limits, which passes every
/// request through unread): on the `--redis` server when there is one, so that replicas
/// share the budgets, else in process. Money limits are priced with `--prices`.
fn budgets(config: &GatewayConfig) -> std::io::Result<BudgetLayer> {
    let Some(path) = &config.budgets else {
        return Ok(BudgetLayer::in_memory());
    };
    let fail = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("--budgets {}: {e}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let budgets = read_budgets(path, &text).map_err(|e| fail(&e))?;
    // The label is only broken out of with the `redis` feature.
    #[cfg_attr(not(feature = "redis"), allow(unused_labels))]
    let layer = 'store: {
        #[cfg(feature = "redis")]
        if let Some(url) = &config.redis {
            let store = RedisBudgets::new(url).map_err(|e| fail(&e))?;
            break 'store budgets.layer(store);
        }
        budgets.layer(MemoryBudgets::new())
    };
    let layer = layer.on_answer(log_answer);
    // Money limits are priced by `--prices`, the table that prices the reports.
    Ok(match &config.prices {
        Some(prices) => layer.pricing(prices.clone()),
        None => layer,
    })
}

/// A running gateway.
pub struct Gateway {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its metrics listener, when `/metrics` has one of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Digests by tenant and response id.
    pub registry: DigestRegistry,
    /// How many streams hold a permit of the stream limit.
    pub open_streams: OpenStreams,
    /// The Prometheus recorder.
    pub metrics: PrometheusHandle,
    shared: Shared,
}

impl Gateway {
    /// Shut down gracefully (see [`Shared::shutdown`]).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.shared.shutdown(grace).await
    }
}

/// Wait until no stream holds a permit, for up to `limit`; whether they all ended.
async fn wait_for_streams(open: &impl Fn() -> usize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// Start the gateway on `listener`, on the current runtime, and its metrics listener when
/// the config has one. Each finished stream's report also goes to `reports` when given (the
/// demo prints them).
pub async fn start(
    listener: TcpListener,
    config: GatewayConfig,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
) -> std::io::Result<Gateway> {
    let addr = listener.local_addr()?;
    let shared = Shared::new(config, reports)?;
    let metrics_addr = start_metrics(&shared).await?;
    let serving = shared.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    Ok(shared.gateway(addr, metrics_addr))
}

/// Bind the metrics listener, if the config has one, and serve it on the current runtime;
/// returns its address.
pub async fn start_metrics(shared: &Shared) -> std::io::Result<Option<SocketAddr>> {
    let Some(listen) = shared.config.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} for metrics: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(
        listener,
        shared.metrics_router(),
        shared.config.connections.clone(),
    ));
    Ok(Some(addr))
}

//! [`CostObserver`]: the cost of each stream, and its tenant, into the report.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cost::PriceTable;
use crate::observe::Observer;
use crate::report::StreamReport;
use crate::request::{RequestModel, Tenant, TenantKey};

/// The counter of streams whose usage could not be priced (feature `metrics`): the model
/// is not in the table, or no model was named.
#[cfg(feature = "metrics")]
pub const UNPRICED_TOTAL: &str = "tower_sse.cost.unpriced_total";

/// Prices each stream's usage with a [`PriceTable`] into
/// [`StreamReport::cost`], and names its tenant in [`StreamReport::tenant`].
///
/// Put it **after** [`UsageObserver`](crate::UsageObserver) in the observer tuple: it reads
/// the final usage in `on_end`. The model priced is the one that answered
/// ([`StreamReport::model`]), else the one the request named
/// ([`RequestModel`], left by [`IncludeUsageLayer`](crate::IncludeUsageLayer)). A stream
/// with usage but no price (an unknown model, or none named) has no cost and is counted:
/// [`unpriced`](Self::unpriced), and the metric `tower_sse.cost.unpriced_total` under feature
/// `metrics`. A stream without usage has no cost and is not counted. With an empty table
/// nothing is priced nor counted: the observer then only names the tenant.
///
/// The tenant is the [`Tenant`] a layer before this one put in the request's extensions
/// (a budget layer, your authentication), else the one its [`TenantKey`] finds (by default
/// from the request's credentials).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::cost::{CostObserver, PriceTable};
/// use tower_sse::request::Tenant;
/// use tower_sse::{SseLayer, StreamReport, UsageObserver};
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let prices = PriceTable::from_json(r#"{"models": {"gpt-4o*": {"input": 2.5, "output": 10}}}"#)?;
/// let costs = CostObserver::new(prices);
/// let (reports, received) = std::sync::mpsc::channel();
/// let layer = SseLayer::new()
///     .observer((UsageObserver::new(), costs.clone()))
///     .on_end(move |report: StreamReport| reports.send(report).unwrap());
///
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let stream = concat!(
///         "data: {\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
///         "data: {\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],",
///         "\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":100,\"total_tokens\":1100}}\n\n",
///         "data: [DONE]\n\n",
///     );
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(stream.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let request = Request::post("/v1/chat/completions")
///     .header("authorization", "Bearer sk-alice")
///     .body(Empty::<Bytes>::new())?;
/// let response = layer.layer(upstream).oneshot(request).await?;
/// response.into_body().collect().await.unwrap();
///
/// let report = received.recv()?;
/// let cost = report.cost.expect("a priced model");
/// assert_eq!(cost.total_micros, 2_500 + 1_000); // 1000 × 2.5 + 100 × 10 per million
/// assert_eq!(report.tenant, Some(Tenant::from_key("sk-alice")));
/// assert_eq!(costs.unpriced(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct CostObserver {
    table: Arc<PriceTable>,
    unpriced: Arc<AtomicU64>,
    tenant_key: TenantKey,
    /// Of the current request.
    tenant: Tenant,
    request_model: Option<String>,
}

impl CostObserver {
    /// Price with this table; tenants from the requests' credentials.
    pub fn new(table: impl Into<Arc<PriceTable>>) -> Self {
        Self {
            table: table.into(),
            unpriced: Arc::default(),
            tenant_key: TenantKey::credentials(),
            tenant: Tenant::anonymous(),
            request_model: None,
        }
    }

    /// Find the tenant of requests that carry no [`Tenant`] extension with this key.
    pub fn tenant_key(mut self, key: TenantKey) -> Self {
        self.tenant_key = key;
        self
    }

    /// The price table.
    pub fn table(&self) -> &PriceTable {
        &self.table
    }

    /// Streams with usage that could not be priced, by this observer and its clones.
    pub fn unpriced(&self) -> u64 {
        self.unpriced.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for CostObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CostObserver")
            .field("table", &self.table)
            .field("unpriced", &self.unpriced())
            .field("tenant_key", &self.tenant_key)
            .finish_non_exhaustive()
    }
}

impl Observer for CostObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.tenant = match request.extensions.get::<Tenant>() {
            Some(tenant) => *tenant,
            None => self.tenant_key.tenant(request),
        };
        self.request_model = request
            .extensions
            .get::<RequestModel>()
            .map(|model| model.0.clone());
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        if report.tenant.is_none() {
            report.tenant = Some(self.tenant);
        }
        let Some(usage) = report.usage else { return };
        let model = report.model.as_deref().or(self.request_model.as_deref());
        report.cost = model.and_then(|model| self.table.cost(model, &usage));
        // An empty table prices nothing: the observer only names the tenant.
        if report.cost.is_none() && !self.table.is_empty() {
            self.unpriced.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!(UNPRICED_TOTAL).increment(1);
        }
    }
}

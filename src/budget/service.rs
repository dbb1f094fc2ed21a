//! [`Budget`], the service: read and estimate the request, admit it against its key's
//! limits, then call the inner service with the reservation in the request's extensions.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::{BudgetBody, BudgetRequestBody, Refusal, Watch, refusal, retry_after_secs};
use super::estimate::RequestEstimate;
use super::layer::{OnStoreError, Shared};
use super::metrics::{BudgetCounts, Reason};
use super::settle::Reservation;
use super::stop::Allowance;
use super::store::{Admit, Decision};
use super::{Amounts, Limit};
use crate::BoxFuture;
use crate::provider::Provider;
use crate::request::{ReadUpTo, read_up_to};

/// The service of [`BudgetLayer`](super::BudgetLayer).
pub struct Budget<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S> Budget<S> {
    /// The layer's counts so far (shared by every service of one layer).
    pub fn counts(&self) -> BudgetCounts {
        self.shared.counts()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Budget<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Budget<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Budget<S>
where
    S: Service<Request<BudgetRequestBody<B>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<BudgetBody<ResBody>>;
    type Error = S::Error;
    /// Boxed: the admission awaits the request body and the store before the inner call.
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service made ready goes with this call; its clone serves the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(admit_then_call(inner, shared, request))
    }
}

async fn admit_then_call<S, B, ResBody>(
    mut inner: S,
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<BudgetBody<ResBody>>, S::Error>
where
    S: Service<Request<BudgetRequestBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
{
    let (mut parts, body) = request.into_parts();
    crate::request::Arrival::stamp(&mut parts.extensions);
    let path = parts.uri.path().to_owned();
    let refuse = |kind, message: &str, reason| {
        shared.metrics.rejected(reason);
        Ok(refusal(&path, kind, message))
    };

    // No limits at all (a gateway started without budgets): nothing to read or reserve.
    if shared.default_limits.is_empty() && shared.per_key.is_empty() {
        let request = Request::from_parts(parts, BudgetRequestBody::original(body));
        return call(&mut inner, request).await;
    }
    // Read the body: its bytes are the input estimate, its fields the output cap.
    let reads = !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE);
    let (bytes, trailers, body) = if reads {
        let read = tokio::time::timeout(shared.upload_timeout, read_body(body, shared.max_body));
        match read.await {
            Err(_) => {
                return refuse(
                    Refusal::UploadTimeout,
                    "the request body did not arrive in time",
                    Reason::BadRequest,
                );
            }
            Ok(Err(ReadError::TooLarge)) => {
                return refuse(
                    Refusal::TooLarge,
                    "the request body is too large",
                    Reason::BadRequest,
                );
            }
            Ok(Err(ReadError::Failed)) => {
                return refuse(
                    Refusal::BadBody,
                    "the request body could not be read",
                    Reason::BadRequest,
                );
            }
            Ok(Ok((bytes, trailers))) => (bytes, trailers, None),
        }
    } else {
        (Bytes::new(), None, Some(body))
    };
    let estimate = RequestEstimate::of(
        &path,
        &bytes,
        shared.bytes_per_token,
        shared.default_output_tokens,
    );
    let body = match body {
        Some(body) => BudgetRequestBody::original(body),
        None => BudgetRequestBody::kept(bytes, trailers),
    };

    let key = shared.key.key(&parts, estimate.model.as_deref());
    let limits = shared.limits_of(&key);
    if limits.is_empty() {
        return call(&mut inner, Request::from_parts(parts, body)).await;
    }
    let mut amounts = Amounts {
        requests: 1,
        input_tokens: estimate.input_tokens,
        output_tokens: estimate.output_tokens,
        cost_micros: 0,
    };
    if let Some(pricing) = &shared.pricing {
        let usage = crate::Usage {
            input_tokens: Some(amounts.input_tokens),
            output_tokens: Some(amounts.output_tokens),
            ..crate::Usage::default()
        };
        amounts.cost_micros = pricing
            .cost_micros(estimate.model.as_deref(), &usage)
            .unwrap_or(0);
    }
    let now = (shared.clock)();
    let admit = Admit {
        key: &key,
        limits: &limits,
        amounts,
        now,
    };
    let mut decision = tokio::time::timeout(shared.store_timeout, shared.store.admit(admit)).await;
    let answered = matches!(decision, Ok(Ok(_)));
    let local = !answered && shared.on_store_error == OnStoreError::FailOpen;
    if answered {
        // The store answers: debts run up while it was away can be settled now.
        shared.reconcile();
        #[cfg(not(any(feature = "drain", feature = "registry", feature = "resume")))]
        shared.reconcile_one().await;
    } else if local {
        // Fail open: admitted against the same limits in process, settled into the store
        // later (`budget/reconcile.rs`).
        decision = Ok(shared.local.admit(admit).await);
    }
    match decision {
        Ok(Ok(Decision::Admitted)) => {
            if local {
                shared.metrics.passed_unreserved();
            }
            shared.metrics.admitted();
            if shared.enforce_mid_stream
                && let Some(allowance) =
                    allowance(&shared, local, &key, &limits, amounts, &estimate, now).await
            {
                parts.extensions.insert(allowance);
            }
            let reservation = Reservation::new(
                reservation_id(local),
                key,
                limits,
                amounts,
                estimate,
                now,
                shared.clone(),
            );
            parts.extensions.insert(reservation.clone());
            let response = inner.call(Request::from_parts(parts, body)).await?;
            Ok(answer(response, reservation, &path, &shared))
        }
        Ok(Ok(Decision::Rejected(rejection))) => match rejection.retry_after {
            Some(wait) => {
                let message = format!(
                    "budget exceeded: {}; retry in {} s",
                    rejection.limit.describe(),
                    retry_after_secs(wait)
                );
                refuse(Refusal::OverLimit(wait), &message, Reason::OverLimit)
            }
            None => refuse(
                Refusal::NeverFits,
                &never_fits_message(&rejection.limit, &amounts),
                Reason::NeverFits,
            ),
        },
        // Fail closed (fail open admitted locally above).
        Ok(Err(_)) | Err(_) => refuse(
            Refusal::StoreUnavailable,
            "the budget store is unavailable, retry later",
            Reason::StoreUnavailable,
        ),
    }
}

/// What an admitted stream may use before [`BudgetStop`](super::BudgetStop) ends it: its
/// key's status after the reservation, within the store timeout. `None` when no limit counts
/// output, or the store does not answer (the stream then runs unchecked, and is settled as
/// any other).
async fn allowance(
    shared: &Shared,
    local: bool,
    key: &str,
    limits: &[Limit],
    amounts: Amounts,
    estimate: &RequestEstimate,
    now: u64,
) -> Option<Allowance> {
    let status = if local {
        shared.local.budgets.status_now(key, limits, now)
    } else {
        let status =
            tokio::time::timeout(shared.store_timeout, shared.store.status(key, limits, now));
        let Ok(Ok(status)) = status.await else {
            return None;
        };
        status
    };
    Allowance::new(
        limits,
        &status,
        amounts,
        estimate.model.clone(),
        shared.pricing.clone(),
        shared.bytes_per_token,
    )
}

fn never_fits_message(limit: &Limit, amounts: &Amounts) -> String {
    format!(
        "this request can never fit its budget: it needs {} {} and the limit {} allows at most {} at once; lower max_tokens or shorten the input",
        limit.measure.of(amounts),
        limit.measure.as_str(),
        limit.describe(),
        limit.capacity()
    )
}

async fn call<S, B, ResBody>(
    inner: &mut S,
    request: Request<BudgetRequestBody<B>>,
) -> Result<Response<BudgetBody<ResBody>>, S::Error>
where
    S: Service<Request<BudgetRequestBody<B>>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    Ok(response.map(BudgetBody::inner))
}

/// The response of an admitted request. A stream is settled by its report (the layer lets
/// go of its clone of the reservation); an answer that is not a stream is watched, and
/// settled at its end from its status and the usage it reports (see
/// [`Reservation`](super::Reservation#exit-paths)).
fn answer<ResBody>(
    response: Response<ResBody>,
    reservation: Reservation,
    path: &str,
    shared: &Shared,
) -> Response<BudgetBody<ResBody>> {
    let headers = response.headers();
    if reservation.is_settled() || crate::framing::detect(headers, true).is_some() {
        return response.map(BudgetBody::inner);
    }
    // A length announced over the bound: nothing to keep.
    let fits = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_none_or(|len| len <= shared.max_answer as u64);
    // A compressed answer's bytes are not JSON until decompressed: not read.
    let readable = fits && !crate::framing::is_encoded(headers);
    let (parts, body) = response.into_parts();
    let failed = super::settle::failed_attempts_tokens(
        parts.extensions.get::<crate::failover::FailoverReport>(),
    );
    let watch = Watch::new(
        reservation,
        parts.status,
        Provider::from_path(path),
        failed,
        shared.max_answer,
        readable,
    );
    Response::from_parts(parts, BudgetBody::watched(body, watch))
}

enum ReadError {
    TooLarge,
    Failed,
}

/// The whole body, up to `max` bytes, and its trailers.
async fn read_body<B: Body<Data = Bytes>>(
    body: B,
    max: usize,
) -> Result<(Bytes, Option<HeaderMap>), ReadError> {
    match read_up_to(std::pin::pin!(body), max).await {
        Ok(ReadUpTo::Whole(bytes, trailers)) => Ok((bytes, trailers)),
        Ok(ReadUpTo::Over(_)) => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Failed),
    }
}

/// A reservation id unique across processes: a per-process random prefix and a counter;
/// `local:` first for one admitted in process while the store was away.
fn reservation_id(local: bool) -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let local = if local { super::reconcile::LOCAL } else { "" };
    format!("{local}{prefix:016x}-{n:x}")
}

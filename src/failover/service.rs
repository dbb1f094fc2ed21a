//! [`Failover`]: the service, its settings, and the attempts in order.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, DATE, HeaderMap, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::BoxError;
use crate::framing::{Framing, detect};
use crate::provider::Provider;

use super::body::{self, FailoverBody, Read, ReplayBody};
use super::gate::{Verdict, gate};
use super::health::{CircuitBreaker, Health};
use super::report::{Attempt, AttemptError, AttemptOutcome, Commit, FailoverError, FailoverReport};
use super::weights::Weights;

/// The default [`Failover::max_replay_body`]: 4 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 4 * 1024 * 1024;
/// The default [`Failover::commit_deadline`]: 30 s.
pub const DEFAULT_COMMIT_DEADLINE: Duration = Duration::from_secs(30);
/// The default [`Failover::max_held_bytes`]: 256 KiB.
pub const DEFAULT_MAX_HELD_BYTES: usize = 256 * 1024;
/// The default [`Failover::backoff`]: 25 ms.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// The default [`Failover::max_retry_after`]: 2 s.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

#[cfg(feature = "metrics")]
pub(crate) use crate::metrics::names::{
    FAILOVER_ATTEMPTS as ATTEMPTS, FAILOVER_SKIPPED as SKIPPED,
};

/// The statuses retried by default: `408`, `429` and every `5xx` (`529` overloaded, a
/// gateway's `502` for an upstream it could not reach).
///
/// ```
/// use http::StatusCode;
/// use tower_sse::failover::default_retry_status;
///
/// assert!(default_retry_status(StatusCode::TOO_MANY_REQUESTS));
/// assert!(default_retry_status(StatusCode::from_u16(529).unwrap()));
/// assert!(!default_retry_status(StatusCode::BAD_REQUEST));
/// assert!(!default_retry_status(StatusCode::OK));
/// ```
pub fn default_retry_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

#[derive(Clone)]
struct Config {
    max_replay_body: usize,
    commit_deadline: Duration,
    max_held_bytes: usize,
    backoff: Duration,
    max_retry_after: Duration,
    retry_status: fn(StatusCode) -> bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            commit_deadline: DEFAULT_COMMIT_DEADLINE,
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
            backoff: DEFAULT_BACKOFF,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            retry_status: default_retry_status,
        }
    }
}

struct Upstream<S> {
    service: S,
    name: Option<Arc<str>>,
    /// The metrics label: the name, or the index.
    label: Arc<str>,
}

/// A service that sends each request to a list of upstream services in order of
/// preference, failing over before the commit point and never after it (see the
/// [module docs](crate::failover)).
///
/// Every upstream takes the same request (`Request<ReplayBody<ReqBody>>`) and answers the
/// same response type; the answer is `Response<FailoverBody<ResBody>>`, with a
/// [`FailoverReport`] in its extensions. `poll_ready` is always ready: each attempt waits
/// for its own upstream's readiness (on a clone of it, as tower's `oneshot` does). The
/// client's body must be `Unpin` (hyper's and axum's are).
///
/// Settings, each with a safe default: [`max_replay_body`](Self::max_replay_body),
/// [`commit_deadline`](Self::commit_deadline), [`max_held_bytes`](Self::max_held_bytes),
/// [`backoff`](Self::backoff), [`max_retry_after`](Self::max_retry_after),
/// [`retry_status`](Self::retry_status), [`circuit_breaker`](Self::circuit_breaker).
pub struct Failover<S> {
    upstreams: Arc<[Upstream<S>]>,
    config: Arc<Config>,
    health: Arc<Health>,
    /// `None`: the first attempt follows the list's order.
    weights: Option<Arc<Weights>>,
}

impl<S> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Self {
            upstreams: self.upstreams.clone(),
            config: self.config.clone(),
            health: self.health.clone(),
            weights: self.weights.clone(),
        }
    }
}

impl<S> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field(
                "upstreams",
                &self.upstreams.iter().map(|u| &u.label).collect::<Vec<_>>(),
            )
            .field("max_replay_body", &self.config.max_replay_body)
            .field("commit_deadline", &self.config.commit_deadline)
            .field("max_held_bytes", &self.config.max_held_bytes)
            .field("backoff", &self.config.backoff)
            .field("max_retry_after", &self.config.max_retry_after)
            .field("health", &self.health)
            .field("weights", &self.weights)
            .finish()
    }
}

impl<S> Failover<S> {
    /// Fail over across `upstreams`, in this order of preference (named by their index in
    /// reports and metrics).
    pub fn new(upstreams: impl IntoIterator<Item = S>) -> Self {
        Self::build(
            upstreams
                .into_iter()
                .enumerate()
                .map(|(i, service)| Upstream {
                    service,
                    name: None,
                    label: i.to_string().into(),
                })
                .collect(),
        )
    }

    /// Fail over across named upstreams, in this order of preference. The names appear in
    /// reports and as the `upstream` label of the metrics: keep them few and short (they are
    /// yours, never a client's).
    pub fn named(upstreams: impl IntoIterator<Item = (impl Into<Arc<str>>, S)>) -> Self {
        Self::build(
            upstreams
                .into_iter()
                .map(|(name, service)| {
                    let name: Arc<str> = name.into();
                    Upstream {
                        service,
                        label: name.clone(),
                        name: Some(name),
                    }
                })
                .collect(),
        )
    }

    fn build(upstreams: Arc<[Upstream<S>]>) -> Self {
        let health = Arc::new(Health::new(
            Some(CircuitBreaker::default()),
            upstreams.len(),
        ));
        Self {
            upstreams,
            config: Arc::new(Config::default()),
            health,
            weights: None,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The largest request body kept to be sent again (default
    /// [`DEFAULT_MAX_REPLAY_BODY`], 4 MiB). A larger body is sent once, to the first
    /// available upstream, without failover
    /// ([`FailoverReport::replayable`] is then `false`).
    #[must_use]
    pub fn max_replay_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_replay_body = bytes)
    }

    /// How long after the call the head may be held waiting for the first content event
    /// (default [`DEFAULT_COMMIT_DEADLINE`], 30 s). When it passes, the answer being read is
    /// served as it is (commit by deadline), and an attempt that starts after it is not held.
    #[must_use]
    pub fn commit_deadline(self, deadline: Duration) -> Self {
        self.with(|c| c.commit_deadline = deadline)
    }

    /// The most bytes held before the commit (default [`DEFAULT_MAX_HELD_BYTES`], 256
    /// KiB): a stream that sent that much without content is served as it is.
    #[must_use]
    pub fn max_held_bytes(self, bytes: usize) -> Self {
        self.with(|c| c.max_held_bytes = bytes)
    }

    /// The wait before the next attempt, when the failed one named no `Retry-After`
    /// (default [`DEFAULT_BACKOFF`], 25 ms).
    #[must_use]
    pub fn backoff(self, backoff: Duration) -> Self {
        self.with(|c| c.backoff = backoff)
    }

    /// The longest wait a `Retry-After` (seconds, or an HTTP date read against the answer's
    /// own `Date`) or `retry-after-ms` of a failed attempt makes before the next attempt
    /// (default [`DEFAULT_MAX_RETRY_AFTER`], 2 s): a longer one waits this long.
    #[must_use]
    pub fn max_retry_after(self, max: Duration) -> Self {
        self.with(|c| c.max_retry_after = max)
    }

    /// Which response statuses fail an attempt (default [`default_retry_status`]). Other
    /// answers are served as they came.
    #[must_use]
    pub fn retry_status(self, retry: fn(StatusCode) -> bool) -> Self {
        self.with(|c| c.retry_status = retry)
    }

    /// The circuit breaker (default [`CircuitBreaker::default`]: 5 failures in a row, 30 s
    /// cool-down), or `None` to try every upstream every time. Resets the upstreams' health.
    #[must_use]
    pub fn circuit_breaker(mut self, breaker: Option<CircuitBreaker>) -> Self {
        self.health = Arc::new(Health::new(breaker, self.upstreams.len()));
        self
    }

    /// Spread the first attempts by weight: one weight per upstream, in list order (missing
    /// ones weigh 0, extra ones are ignored). Each request tries first the upstream that
    /// smooth weighted round-robin (nginx's) picks among those its circuit breaker lets
    /// through, so that over any run of requests each is tried first in proportion to its
    /// weight, evenly spread and with no randomness; after a failure the others follow in the
    /// list's order. An upstream of weight 0 is only a fallback. Without weights (the
    /// default), the list's order is the order of every request.
    ///
    /// ```
    /// use tower_sse::failover::Failover;
    /// # let (primary, secondary, backup) = ((), (), ());
    ///
    /// // Three requests in four go first to `primary`, one to `secondary`; `backup` is tried
    /// // only when they fail.
    /// let failover = Failover::new([primary, secondary, backup]).weights([3, 1, 0]);
    /// # let _ = failover;
    /// ```
    #[must_use]
    pub fn weights(mut self, weights: impl IntoIterator<Item = u32>) -> Self {
        self.weights = Some(Arc::new(Weights::new(weights, self.upstreams.len())));
        self
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// Whether the list is empty (every call then fails).
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }
}

/// The response future of [`Failover`].
pub type FailoverFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<FailoverBody<B>>, BoxError>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Failover<S>
where
    S: Service<Request<ReplayBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    type Response = Response<FailoverBody<ResBody>>;
    type Error = BoxError;
    type Future = FailoverFuture<ResBody>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.run(request).await })
    }
}

/// The parts of the client's request each attempt copies.
struct Template {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl Template {
    fn request<B>(&self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }
}

impl<S> Failover<S> {
    async fn run<ReqBody, ResBody>(
        self,
        request: Request<ReqBody>,
    ) -> Result<Response<FailoverBody<ResBody>>, BoxError>
    where
        S: Service<Request<ReplayBody<ReqBody>>, Response = Response<ResBody>> + Clone,
        S::Error: Into<BoxError>,
        ReqBody: Body<Data = Bytes> + Unpin,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: fmt::Display,
    {
        let started = Instant::now();
        let deadline = started + self.config.commit_deadline;
        let (parts, body) = request.into_parts();
        let hint = Provider::from_path(parts.uri.path());
        let template = Template {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        };
        let mut report = FailoverReport::default();
        let (order, skipped) = self.order(started);
        report.skipped = skipped;
        let read: Result<_, BoxError> = body::read(body, self.config.max_replay_body)
            .await
            .map_err(Into::into);
        let mut once = match read? {
            Read::Kept(data, trailers) => {
                report.replayable = true;
                Err((data, trailers))
            }
            Read::TooLarge(body) => Ok(body),
        };
        let mut last_error = None;
        for (k, &index) in order.iter().enumerate() {
            let request_body = match once {
                Ok(body) => {
                    // Sent once: no later attempt is made (see the call's failure below).
                    once = Err((Bytes::new(), None));
                    body
                }
                Err((ref data, ref trailers)) => ReplayBody::kept(data.clone(), trailers.clone()),
            };
            // The last try is not held: whatever it answers is the answer.
            let held = report.replayable && k + 1 < order.len() && Instant::now() < deadline;
            let upstream = &self.upstreams[index];
            let at = Instant::now();
            let mut attempt = Attempt {
                upstream: index,
                name: upstream.name.clone(),
                status: None,
                duration: Duration::ZERO,
                usage: None,
                provider_error: None,
                outcome: AttemptOutcome::Failed(AttemptError::NoContent),
            };
            let mut service = upstream.service.clone();
            let ready: Result<(), BoxError> = poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into);
            let called: Result<_, BoxError> = match ready {
                Ok(()) => service
                    .call(template.request(request_body))
                    .await
                    .map_err(Into::into),
                Err(e) => Err(e),
            };
            let response = match called {
                Ok(response) => response,
                Err(e) => {
                    attempt.outcome = AttemptOutcome::Failed(AttemptError::Call(e.to_string()));
                    self.settle(&mut report, attempt, at);
                    last_error = Some(e);
                    if !report.replayable {
                        // The body went with this attempt: there is nothing to send again.
                        break;
                    }
                    if held {
                        self.pause(None).await;
                    }
                    continue;
                }
            };
            attempt.status = Some(response.status());
            if !held {
                // Judged by its head only, for the metrics and the breaker.
                let status = response.status();
                attempt.outcome = AttemptOutcome::Served(Commit::Unchecked);
                let failed = (self.config.retry_status)(status);
                return Ok(self.serve(report, attempt, at, response, failed));
            }
            let status = response.status();
            if (self.config.retry_status)(status) {
                let wait = retry_after(response.headers());
                drop(response);
                attempt.outcome = AttemptOutcome::Failed(AttemptError::Status(status));
                self.settle(&mut report, attempt, at);
                self.pause(wait).await;
                continue;
            }
            if !is_event_stream(response.headers()) {
                attempt.outcome = AttemptOutcome::Served(Commit::NotAStream);
                return Ok(self.serve(report, attempt, at, response, false));
            }
            let (head, body) = response.into_parts();
            let gated = gate(body, hint, deadline, self.config.max_held_bytes).await;
            attempt.usage = gated.usage.usage();
            attempt.provider_error = gated.provider_error;
            match gated.verdict {
                Verdict::Commit(commit) => {
                    attempt.outcome = AttemptOutcome::Served(commit);
                    let response =
                        Response::from_parts(head, FailoverBody::new(gated.held, gated.rest));
                    return Ok(self.serve_ready(report, attempt, at, response, false));
                }
                Verdict::Fail(error) => {
                    attempt.outcome = AttemptOutcome::Failed(error);
                    self.settle(&mut report, attempt, at);
                    self.pause(None).await;
                }
            }
        }
        let error = last_error.unwrap_or_else(|| "the failover layer has no upstream".into());
        Err(Box::new(FailoverError::new(report, error)))
    }

    /// The upstreams to try, in order, and those the breaker skips (unless it would skip
    /// them all). With weights, the weighted pick goes first.
    fn order(&self, now: Instant) -> (Vec<usize>, Vec<usize>) {
        let (mut open, skipped): (Vec<usize>, Vec<usize>) =
            (0..self.upstreams.len()).partition(|&i| self.health.is_available(i, now));
        if open.is_empty() {
            let mut all = skipped;
            self.weigh(&mut all);
            return (all, Vec::new());
        }
        self.weigh(&mut open);
        #[cfg(feature = "metrics")]
        for &i in &skipped {
            metrics::counter!(SKIPPED, "upstream" => self.upstreams[i].label.to_string())
                .increment(1);
        }
        (open, skipped)
    }

    /// Move the weighted pick among `order` to its front (the rest keep their order).
    fn weigh(&self, order: &mut [usize]) {
        if let Some(weights) = &self.weights
            && let Some(first) = weights.pick(order)
            && let Some(at) = order.iter().position(|&i| i == first)
        {
            order[..=at].rotate_right(1);
        }
    }

    /// Wait before the next attempt: the failed one's `Retry-After`, bounded, or the
    /// backoff.
    async fn pause(&self, retry_after: Option<Duration>) {
        let wait = retry_after.map_or(self.config.backoff, |wait| {
            wait.min(self.config.max_retry_after)
        });
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Record a failed attempt.
    fn settle(&self, report: &mut FailoverReport, mut attempt: Attempt, at: Instant) {
        attempt.duration = at.elapsed();
        let label = &self.upstreams[attempt.upstream].label;
        self.health.failure(attempt.upstream, Instant::now(), label);
        record_metric(label, &attempt.outcome);
        report.attempts.push(attempt);
    }

    fn serve<B>(
        &self,
        report: FailoverReport,
        attempt: Attempt,
        at: Instant,
        response: Response<B>,
        failed: bool,
    ) -> Response<FailoverBody<B>> {
        let response =
            response.map(|body| FailoverBody::new(Default::default(), Some(Box::pin(body))));
        self.serve_ready(report, attempt, at, response, failed)
    }

    /// Hand out the answer of the attempt that serves.
    fn serve_ready<B>(
        &self,
        mut report: FailoverReport,
        mut attempt: Attempt,
        at: Instant,
        mut response: Response<FailoverBody<B>>,
        failed: bool,
    ) -> Response<FailoverBody<B>> {
        attempt.duration = at.elapsed();
        let label = &self.upstreams[attempt.upstream].label;
        if failed {
            self.health.failure(attempt.upstream, Instant::now(), label);
        } else {
            self.health.success(attempt.upstream, label);
        }
        record_metric(label, &attempt.outcome);
        report.served = Some(report.attempts.len());
        report.attempts.push(attempt);
        response.extensions_mut().insert(report);
        response
    }
}

#[cfg(feature = "metrics")]
fn record_metric(label: &Arc<str>, outcome: &AttemptOutcome) {
    let result = match outcome {
        AttemptOutcome::Served(_) => "served",
        AttemptOutcome::Failed(error) => error.as_str(),
    };
    metrics::counter!(ATTEMPTS, "upstream" => label.to_string(), "result" => result).increment(1);
}

#[cfg(not(feature = "metrics"))]
fn record_metric(_: &Arc<str>, _: &AttemptOutcome) {}

/// Whether the head announces an event stream whose events the gate can read (SSE, not
/// compressed).
fn is_event_stream(headers: &HeaderMap) -> bool {
    detect(headers, false) == Some(Framing::Sse)
        && headers
            .get(CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The wait a failed answer asks for: `retry-after-ms` (OpenAI's), or `Retry-After` in
/// seconds or as an HTTP date (RFC 9110 §10.2.3). A date is read against the answer's own
/// `Date` header when it has a valid one (the server's clock on both sides: no skew with
/// ours), else against this machine's clock; a date already past asks for no wait. A value
/// that is neither is ignored (the backoff applies). The caller bounds the result by
/// [`Failover::max_retry_after`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| -> Option<&str> { Some(headers.get(name)?.to_str().ok()?.trim()) };
    let number = |name: &str| -> Option<u64> { text(name)?.parse::<u64>().ok() };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_millis(ms));
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let now = text(DATE.as_str())
        .and_then(|date| httpdate::parse_http_date(date).ok())
        .unwrap_or_else(SystemTime::now);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_milliseconds_or_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        headers.clear();
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "neither a number nor a date");
        headers.insert(RETRY_AFTER, "-3".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn retry_after_as_an_http_date_against_the_answers_date() {
        let mut headers = HeaderMap::new();
        headers.insert(DATE, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:07 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        // The two obsolete formats RFC 9110 asks recipients to accept.
        headers.insert(
            RETRY_AFTER,
            "Wednesday, 21-Oct-15 07:29:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(60)));
        headers.insert(RETRY_AFTER, "Wed Oct 21 07:28:02 2015".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        // A date already past: retry now.
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:27:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date_without_a_date_header_uses_this_clock() {
        let mut headers = HeaderMap::new();
        // Long past: no wait.
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        // An hour ahead of this clock: about an hour.
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(ahead).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
        // A Date header that is not a date: this clock again.
        headers.insert(DATE, "yesterday".parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
    }
}

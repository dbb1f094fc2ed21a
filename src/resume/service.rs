//! [`Resume`]: tells resumes from new streams, answers resumes from the log, starts
//! a producer for each new stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;
use crate::BoxFuture;
use crate::framing::Framing;
use crate::request::Tenant;
use crate::resume::ResumeBody;
use crate::resume::body::Reader;
use crate::resume::id::{EventId, MAX_EVENT_ID_LEN, StreamId};
use crate::resume::layer::Config;
use crate::resume::producer::produce;
use crate::resume::producers::ResumableStream;
use crate::resume::shared::{Handoff, Shared};
use crate::resume::store::{NewStream, Read, StreamEnd, StreamLog};
use crate::resume::traced::Traced;

/// The response header that carries a resumable stream's id.
pub const STREAM_ID_HEADER: HeaderName = HeaderName::from_static("sse-stream-id");
/// The response header of a `204` to a resume whose position was trimmed or lost (`gone`),
/// or that the store could not answer (`unavailable`: the stream may go on, the client may
/// retry) or whose stream ended without completing (`cancelled`, `failed`: the client has
/// all there is), and of a stream that could not be made resumable (`off`).
pub const RESUME_HEADER: HeaderName = HeaderName::from_static("sse-resume");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The service of [`ResumeLayer`](crate::ResumeLayer).
pub struct Resume<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for Resume<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Resume<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resume")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Resume<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pin_project! {
    /// The response future of [`Resume`]: the inner service's future, unboxed, when the
    /// request is passed through (resumption disabled) or until its answer turns out to be
    /// an event stream; a boxed one for resumes and for the start of a resumable stream.
    pub struct ResumeFuture<F, B, E> {
        #[pin]
        kind: FutureKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, B, E> {
        PassThrough { #[pin] future: F },
        // A new request: the inner service's answer decides (a stream is made resumable,
        // anything else passes through with nothing boxed).
        Starting { #[pin] future: F, start: Option<Start> },
        Boxed { future: BoxFuture<'static, Result<Response<ResumeBody<B>>, E>> },
    }
}

/// What a new request's answer needs to become a resumable stream.
struct Start {
    config: Arc<Config>,
    id: StreamId,
    tenant: Tenant,
}

impl<F, B, E> ResumeFuture<F, B, E> {
    fn pass_through(future: F) -> Self {
        Self {
            kind: FutureKind::PassThrough { future },
        }
    }

    fn starting(future: F, start: Start) -> Self {
        Self {
            kind: FutureKind::Starting {
                future,
                start: Some(start),
            },
        }
    }

    fn boxed(future: BoxFuture<'static, Result<Response<ResumeBody<B>>, E>>) -> Self {
        Self {
            kind: FutureKind::Boxed { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResumeFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResumeFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResumeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let starting = match kind.as_mut().project() {
                FutureProj::PassThrough { future } => {
                    return future.poll(cx).map(|result| {
                        result.map(|response| response.map(ResumeBody::pass_through))
                    });
                }
                FutureProj::Boxed { future } => return future.as_mut().poll(cx),
                FutureProj::Starting { future, start: new } => {
                    let response = match std::task::ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let new = new.take().filter(|_| is_event_stream(&response));
                    let Some(Start { config, id, tenant }) = new else {
                        let mut response = response;
                        // Made by the `SseLayer` for a producer, which this answer does not get.
                        response.extensions_mut().remove::<Arc<Handoff>>();
                        return Poll::Ready(Ok(response.map(ResumeBody::pass_through)));
                    };
                    Box::pin(async move { Ok(start(config, response, id, tenant).await) })
                }
            };
            kind.set(FutureKind::Boxed { future: starting });
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Resume<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResumeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResumeFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = self.config.clone();
        if !config.enabled {
            return ResumeFuture::pass_through(self.inner.call(request));
        }
        let (mut parts, body) = request.into_parts();
        let tenant = config.tenant_key.tenant(&parts);
        if let Some(last_event_id) = last_event_id(&parts) {
            // A resume: never forwarded, whatever it says.
            let id = EventId::parse_bytes(&last_event_id);
            let traced = Traced::open(&config, &parts.headers);
            return ResumeFuture::boxed(Box::pin(async move {
                Ok(resume(config, id, tenant, traced).await)
            }));
        }
        let Some(id) = StreamId::random() else {
            return ResumeFuture::pass_through(self.inner.call(Request::from_parts(parts, body)));
        };
        // No allocation of its own but the extension: the stream's shared state is made
        // only if the answer is a stream.
        parts.extensions.insert(ResumableStream {
            id,
            producers: config.producers.clone(),
        });
        let future = self.inner.call(Request::from_parts(parts, body));
        ResumeFuture::starting(future, Start { config, id, tenant })
    }
}

/// The `Last-Event-ID` of a request: the header, else `?last_event_id=`. `Some` (possibly
/// not an id) means a resume.
fn last_event_id(parts: &http::request::Parts) -> Option<Vec<u8>> {
    if let Some(value) = parts.headers.get(LAST_EVENT_ID) {
        return Some(
            value
                .as_bytes()
                .iter()
                .take(MAX_EVENT_ID_LEN + 1)
                .copied()
                .collect(),
        );
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("last_event_id=")?;
        Some(value.bytes().take(MAX_EVENT_ID_LEN + 1).collect())
    })
}

fn is_event_stream<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::OK
        && crate::framing::detect(response.headers(), false) == Some(Framing::Sse)
}

/// The inner service answered a new request with an event stream: make it resumable.
async fn start<B>(
    config: Arc<Config>,
    response: Response<B>,
    id: StreamId,
    tenant: Tenant,
) -> Response<ResumeBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return not_resumable(response);
    };
    let shared = Arc::new(Shared::new(id));
    let (mut parts, body) = response.into_parts();
    // The stream's span, from the `SpanLayer` inside: its readers' spans link to it, here
    // through `shared`, anywhere through the log.
    #[cfg(feature = "otel")]
    let trace_parent = parts
        .extensions
        .remove::<crate::span::reader::ProducerSpan>()
        .and_then(|span| {
            let trace_parent = span.trace_parent();
            shared.set_span(span.0);
            trace_parent
        });
    #[cfg(not(feature = "otel"))]
    let trace_parent = None;
    let new = NewStream::new(id, tenant).with_trace_parent(trace_parent);
    let log = match config.store.create(new).await {
        Ok(log) => log,
        Err(_) => return not_resumable(Response::from_parts(parts, body)),
    };
    let mut wake = log.wake_ups();
    wake.borrow_and_update();
    let first = crate::resume::store::Batch::new(0, Vec::new(), 0, None);
    let attach = shared.attach(false);
    config.producers.insert(id, shared.clone());
    // The `SseLayer` inside marks the frames that are whole events here (when it is there).
    let handoff = parts.extensions.remove::<Arc<Handoff>>();
    runtime.spawn(produce(
        Box::pin(body),
        log.clone(),
        shared,
        config.clone(),
        handoff,
    ));
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(STREAM_ID_HEADER, header_value(id));
    let reader = Reader::new(log, config, wake, first, false, attach, true);
    Response::from_parts(parts, ResumeBody::reader(reader))
}

/// Count a resume answer (feature `metrics`).
fn count(answer: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::resume_answer(answer);
    let _ = answer;
}

fn not_resumable<B>(response: Response<B>) -> Response<ResumeBody<B>> {
    count("not_resumable");
    let mut response = response.map(ResumeBody::pass_through);
    response
        .headers_mut()
        .insert(RESUME_HEADER, HeaderValue::from_static("off"));
    response
}

fn header_value(id: StreamId) -> HeaderValue {
    // Base64url is a valid header value.
    HeaderValue::from_str(&id.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Answer a resume: `200` with the replay and the tail, or `204`; its span (if any) goes to
/// the reader, or ends with the `204`.
async fn resume<B>(
    config: Arc<Config>,
    id: Option<EventId>,
    tenant: Tenant,
    mut traced: Traced,
) -> Response<ResumeBody<B>> {
    let response = answer(config, id, tenant, &mut traced).await;
    let reason = response
        .headers()
        .get(RESUME_HEADER)
        .and_then(|value| value.to_str().ok());
    traced.answered(response.status(), reason);
    response
}

async fn answer<B>(
    config: Arc<Config>,
    id: Option<EventId>,
    tenant: Tenant,
    traced: &mut Traced,
) -> Response<ResumeBody<B>> {
    let Some(id) = id else {
        count("not_found");
        return no_content(None);
    };
    let log: Arc<dyn StreamLog> = match config.store.open(id.stream, tenant).await {
        Ok(Some(log)) => log,
        Ok(None) => {
            count("not_found");
            return no_content(None);
        }
        Err(_) => {
            count("unavailable");
            return no_content(Some("unavailable"));
        }
    };
    let mut wake = log.wake_ups();
    wake.borrow_and_update();
    let batch = match log.read_after(id.seq, config.read_limits).await {
        Ok(Read::Events(batch)) => batch,
        Ok(Read::Gone) => {
            count("gone");
            return no_content(Some("gone"));
        }
        Ok(_) => {
            count("not_found");
            return no_content(None);
        }
        Err(_) => {
            count("unavailable");
            return no_content(Some("unavailable"));
        }
    };
    if let (true, Some(end)) = (batch.events.is_empty(), batch.end) {
        // The client has everything: 204 keeps an EventSource from reconnecting forever. A
        // stream that did not complete says how it ended.
        count("finished");
        return no_content(match end {
            StreamEnd::Completed => None,
            end => Some(end.as_str()),
        });
    }
    count("replayed");
    let produced_here = config.producers.get(id.stream);
    let here = produced_here.is_some();
    traced.resumed(
        id.stream,
        id.seq,
        produced_here.as_deref(),
        log.trace_parent(),
    );
    let attach = match (produced_here, log.presence()) {
        (Some(shared), _) => shared.attach(true),
        // Produced in another process: this reader counts as attached there, through the
        // store, while it reads.
        (None, Some(every)) => {
            let (attach, made) = config.followers.attach_or_insert(id.stream);
            if made {
                let shared = attach.shared().clone();
                tokio::spawn(keep_present(shared, log.clone(), every, config.clone()));
            }
            attach
        }
        (None, None) => Arc::new(Shared::new(id.stream)).attach(true),
    };
    let reader = Reader::new(log, config, wake, batch, true, attach, here).traced(traced.take());
    let mut response = Response::new(ResumeBody::reader(reader));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(STREAM_ID_HEADER, header_value(id.stream));
    response
}

fn no_content<B>(resume: Option<&'static str>) -> Response<ResumeBody<B>> {
    let mut response = Response::new(ResumeBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Some(resume) = resume {
        response
            .headers_mut()
            .insert(RESUME_HEADER, HeaderValue::from_static(resume));
    }
    response
}

/// While clients of this process read a stream produced in another, say so to the store
/// every `every` (and what they did: connections, resumes, replayed events), so that the
/// producer keeps its upstream and counts them; stop once the last of them left.
async fn keep_present(
    shared: Arc<Shared>,
    log: Arc<dyn StreamLog>,
    every: std::time::Duration,
    config: Arc<Config>,
) {
    // Names this run of readers in the store, which keeps its totals (not increments).
    let session = crate::resume::keyed_ids::fresh().map_or(0, |id| {
        u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
    });
    let mut sent = crate::resume::store::ReaderCounts::default();
    let mut readers = shared.readers();
    loop {
        let now = shared.counts();
        let changed = (now != sent).then_some(now);
        let gone = shared.attached() == 0 && config.followers.remove_if_unread(shared.id);
        if (!gone || changed.is_some()) && log.keep_present(session, changed).await.is_ok() {
            sent = now;
        }
        if gone {
            return;
        }
        // The next refresh: after `every`, or at once when another client attaches here,
        // so that the producer counts it before the stream may end.
        let mut nap = std::pin::pin!(tokio::time::sleep(every));
        loop {
            let attached = {
                let mut changed = std::pin::pin!(readers.changed());
                std::future::poll_fn(|cx| {
                    if nap.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    // The sender lives in `shared`, held here: never closed.
                    changed.as_mut().poll(cx).map(|r| r.is_ok())
                })
                .await
            };
            if !attached || shared.counts().connections > sent.connections {
                break;
            }
        }
    }
}

//! [`Sse`]: classifies each request, answers early or waits for the response head.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use sync_wrapper::SyncWrapper;
use tower_service::Service;

use crate::BoxError;
use crate::observe::Observer;
use crate::provider::Provider;
use crate::report::OnEnd;
use crate::request::{Arrival, UploadBody, UploadTimedOut, UploadWatch};
use crate::stream::SseBody;
use crate::stream::body::{Phase, UpstreamFuture};
use crate::stream::config::Config;
use crate::stream::deadline::{after, head_deadline};
use crate::stream::engine::Engine;
use crate::stream::future::{Disconnect, Setup, SseFuture, offer_permits, upload_timeout};
use crate::stream::local::{AnyThread, Local};

/// The service of [`SseLayer`](crate::SseLayer). `M` is where it runs: [`AnyThread`] (the
/// default), or [`Local`] for a stack that is not `Send` (see
/// [`SseLayer::local`](crate::SseLayer::local)).
pub struct Sse<S, O = (), E = (), M = AnyThread> {
    inner: S,
    config: Arc<Config>,
    /// The observer each stream starts from (cloned per request).
    ///
    /// Shared, not held by value: the service itself is cloned several times a request
    /// (axum clones a route's service at every layer of a router), and a metering stack's
    /// observers are about a kilobyte that each clone copied and later dropped. Behind a
    /// lock, not a bare `Arc`: `Arc<O>` is `Send` only when `O` is `Sync`, and an observer
    /// with a `Cell` would make the service `!Send`, which hyper-util and tonic on a
    /// multi-thread runtime reject (issue 33); `Mutex<O>` is `Send` and `Sync` whenever `O`
    /// is `Send`. The lock is held only to clone the observer, once per stream.
    observer: Arc<Mutex<O>>,
    /// The report sink each stream starts from (cloned per request).
    on_end: E,
    /// A marker only (`fn() -> M`: always `Send` and `Sync`).
    threads: PhantomData<fn() -> M>,
}

impl<S: Clone, O, E: Clone, M> Clone for Sse<S, O, E, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
            threads: PhantomData,
        }
    }
}

impl<S: fmt::Debug, O, E, M> fmt::Debug for Sse<S, O, E, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, O, E, M> Sse<S, O, E, M> {
    pub(crate) fn new(inner: S, config: Arc<Config>, observer: O, on_end: E) -> Self {
        Self {
            inner,
            config,
            observer: Arc::new(Mutex::new(observer)),
            on_end,
            threads: PhantomData,
        }
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

/// A request, classified: its upload timed out (answered at once, `408`), or it was
/// passed to the inner service.
enum Begun<F, O, E> {
    UploadTimedOut(Setup<O, E>),
    Called {
        future: F,
        setup: Setup<O, E>,
        streaming: bool,
        early: bool,
        /// Whether the body timed out before the answer (`None`: it cannot).
        upload: Option<UploadWatch>,
    },
}

impl<S, O, E, M> Sse<S, O, E, M> {
    /// What both kinds of stack do first: classify the request, tell the observer, and
    /// call the inner service (unless the upload timed out) with the body held to the
    /// upload deadline. A body held to an upload deadline outside
    /// ([`UploadDeadlineLayer`](crate::request::UploadDeadlineLayer),
    /// [`IncludeUsageLayer`](crate::IncludeUsageLayer)) left its watch in the extensions:
    /// that one is kept, and no second deadline is added.
    fn begin<ReqBody, ResBody>(&mut self, request: Request<ReqBody>) -> Begun<S::Future, O, E>
    where
        S: Service<Request<UploadBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        O: Observer + Clone,
        E: OnEnd + Clone,
    {
        let (mut parts, body) = request.into_parts();
        let started_at = Arrival::stamp(&mut parts.extensions);
        // A clone that panicked left nothing half-made in the prototype: poisoning is moot.
        let mut observer = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        observer.on_request(&parts);
        // A `HEAD` request's answer has no body: never a stream the layer takes.
        let head_request = parts.method == http::Method::HEAD;
        let streaming = !head_request && self.config.is_streaming_request(&parts);
        // A client that asked for NDJSON gets it as NDJSON: never answered early in SSE.
        let keep_lines = self.config.json_lines && crate::framing::wants_json_lines(&parts.headers);
        let early = streaming && !keep_lines && self.config.answers_early(&parts);
        let hint = Provider::from_path(parts.uri.path());
        let setup = Setup {
            engine: Box::new(Engine::new(self.config.clone(), observer, started_at, hint)),
            config: self.config.clone(),
            on_end: self.on_end.clone(),
            started_at,
            head_request,
            keep_lines,
            #[cfg(feature = "resume")]
            resumable: parts
                .extensions
                .get::<crate::resume::ResumableStream>()
                .is_some(),
        };
        if parts.extensions.get::<UploadTimedOut>().is_some() {
            // The body is incomplete: the inner service never sees the request.
            return Begun::UploadTimedOut(setup);
        }
        let (body, upload) = match parts.extensions.get::<UploadWatch>() {
            // Held outside: a plain wrapper, no timer and no second watch.
            Some(outer) => (UploadBody::until(body, None), Some(outer.clone())),
            None => {
                let deadline = self.config.upload_timeout.map(|t| after(started_at, t));
                UploadBody::watched(body, deadline)
            }
        };
        let future = self.inner.call(Request::from_parts(parts, body));
        Begun::Called {
            future,
            setup,
            streaming,
            early,
            upload,
        }
    }

    /// Wait for the response head. While waiting for the head of a streaming request, the
    /// first-event and total timeouts already run.
    fn wait<F, B>(
        &self,
        future: F,
        setup: Setup<O, E>,
        streaming: bool,
        disconnect: Disconnect<B, O, E>,
        upload: Option<UploadWatch>,
    ) -> SseFuture<F, B, O, E>
    where
        O: Observer,
        E: OnEnd,
    {
        let started_at = setup.started_at;
        let deadline = streaming
            .then(|| head_deadline(&self.config, started_at))
            .flatten();
        SseFuture::waiting(future, setup, streaming, deadline, disconnect, upload)
    }
}

impl<S, ReqBody, ResBody, O, E> Service<Request<ReqBody>> for Sse<S, O, E, AnyThread>
where
    S: Service<Request<UploadBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    type Response = Response<SseBody<ResBody, O, E>>;
    type Error = S::Error;
    type Future = SseFuture<S::Future, ResBody, O, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (future, setup, streaming, early, upload) = match self.begin(request) {
            Begun::UploadTimedOut(setup) => return SseFuture::ready(upload_timeout(setup)),
            Begun::Called {
                future,
                setup,
                streaming,
                early,
                upload,
            } => (future, setup, streaming, early, upload),
        };
        let disconnect = Disconnect::for_config(&self.config);
        if early {
            // Answered at once: the body stays held to its deadline (a stalled upload fails
            // the upstream, and the stream ends with an error).
            drop(upload);
            let started_at = setup.started_at;
            let upstream: UpstreamFuture<ResBody> =
                Box::pin(async move { future.await.map_err(Into::into) });
            let state = setup.into_state(
                Phase::AwaitingHead(SyncWrapper::new(upstream)),
                started_at,
                disconnect,
            );
            let mut response = Response::new(());
            offer_permits(&state, response.extensions_mut());
            let mut response = response.map(|()| SseBody::stream(state));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            self.config.add_sse_headers(headers);
            return SseFuture::ready(response);
        }
        self.wait(future, setup, streaming, disconnect, upload)
    }
}

/// A stack on one thread ([`SseLayer::local`](crate::SseLayer::local)): nothing boxed as
/// `Send`, nothing spawned, so nothing asked to be `Send` or `'static` (but the inner
/// service's error, read for the attempts of a [`Failover`](crate::failover::Failover) when
/// it fails).
impl<S, ReqBody, ResBody, O, E> Service<Request<ReqBody>> for Sse<S, O, E, Local>
where
    S: Service<Request<UploadBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    S::Error: 'static,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
    O: Observer + Clone,
    E: OnEnd + Clone,
{
    type Response = Response<SseBody<ResBody, O, E>>;
    type Error = S::Error;
    type Future = SseFuture<S::Future, ResBody, O, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.begin(request) {
            Begun::UploadTimedOut(setup) => SseFuture::ready(upload_timeout(setup)),
            // Never early: the streaming request waits for its head.
            Begun::Called {
                future,
                setup,
                streaming,
                early: _,
                upload,
            } => self.wait(future, setup, streaming, Disconnect::report(), upload),
        }
    }
}

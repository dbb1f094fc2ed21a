//! [`Sse`]: classifies each request, answers early or waits for the response head.

use std::fmt;
use std::sync::Arc;
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
use crate::request::{Arrival, UploadTimedOut};
use crate::stream::SseBody;
use crate::stream::body::{Phase, UpstreamFuture};
use crate::stream::config::Config;
use crate::stream::deadline::head_deadline;
use crate::stream::future::{Setup, SseFuture, offer_permits, upload_timeout};

/// The service of [`SseLayer`](crate::SseLayer).
pub struct Sse<S, O = (), E = ()> {
    inner: S,
    config: Arc<Config>,
    /// The observer each stream starts from (cloned per request).
    ///
    /// Held by value, not behind an `Arc`: an `Arc` would make the service `Send` only when
    /// the observer and sink are `Sync`, and an observer with a `Cell` would make it
    /// `!Send`, which hyper-util and tonic on a multi-thread runtime reject (issue 33).
    observer: O,
    /// The report sink each stream starts from (cloned per request).
    on_end: E,
}

impl<S: Clone, O: Clone, E: Clone> Clone for Sse<S, O, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
        }
    }
}

impl<S: fmt::Debug, O, E> fmt::Debug for Sse<S, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, O, E> Sse<S, O, E> {
    pub(crate) fn new(inner: S, config: Arc<Config>, observer: O, on_end: E) -> Self {
        Self {
            inner,
            config,
            observer,
            on_end,
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

impl<S, ReqBody, ResBody, O, E> Service<Request<ReqBody>> for Sse<S, O, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
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
        let (mut parts, body) = request.into_parts();
        let started_at = Arrival::stamp(&mut parts.extensions);
        let mut observer = self.observer.clone();
        observer.on_request(&parts);
        // A `HEAD` request's answer has no body: never a stream the layer takes.
        let head_request = parts.method == http::Method::HEAD;
        let streaming = !head_request && self.config.is_streaming_request(&parts);
        // A client that asked for NDJSON gets it as NDJSON: never answered early in SSE.
        let keep_lines = self.config.json_lines && crate::framing::wants_json_lines(&parts.headers);
        let early = streaming && !keep_lines && self.config.answers_early(&parts);
        let hint = Provider::from_path(parts.uri.path());
        let setup = Setup {
            config: self.config.clone(),
            observer,
            on_end: self.on_end.clone(),
            started_at,
            hint,
            head_request,
            keep_lines,
        };
        if parts.extensions.get::<UploadTimedOut>().is_some() {
            // The body is incomplete: the inner service never sees the request.
            return SseFuture::ready(upload_timeout(setup));
        }
        let future = self.inner.call(Request::from_parts(parts, body));

        if early {
            let upstream: UpstreamFuture<ResBody> =
                Box::pin(async move { future.await.map_err(Into::into) });
            let state =
                setup.into_state(Phase::AwaitingHead(SyncWrapper::new(upstream)), started_at);
            let mut response = Response::new(());
            offer_permits(&state, response.extensions_mut());
            let mut response = response.map(|()| SseBody::stream(state));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            self.config.add_sse_headers(headers);
            return SseFuture::ready(response);
        }

        // While waiting for the head of a streaming request, the first-event and total
        // timeouts already run.
        let deadline = streaming
            .then(|| head_deadline(&self.config, started_at))
            .flatten();
        SseFuture::waiting(future, setup, streaming, deadline)
    }
}

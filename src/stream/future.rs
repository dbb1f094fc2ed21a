//! [`SseFuture`]: waits for the response head (bounded by the deadlines that already run),
//! then passes the response through or starts the stream; reports streaming requests that end
//! before their head.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::BoxError;
use crate::framing::Framing;
use crate::limit::DrainPermits;
use crate::observe::Observer;
use crate::report::{OnEnd, Outcome};
use crate::request::UploadWatch;
use crate::stream::SseBody;
use crate::stream::body::{AnswerReport, Live, Phase, StreamState, report_disconnect};
use crate::stream::config::Config;
use crate::stream::deadline::Deadlines;
use crate::stream::engine::Engine;
use crate::stream::shutdown::ShutdownWatch;

/// The setup of a request still waiting for its response head. When it is dropped there (the
/// client left) or the inner service fails, a streaming request still gets its report.
struct Pending<O, E> {
    setup: Option<Setup<O, E>>,
    /// Set for streaming requests, where the bounds that `Drop` cannot name are known.
    report: Option<fn(Setup<O, E>, Outcome, Option<String>, u64)>,
}

impl<O, E> Pending<O, E> {
    fn take(&mut self) -> Option<Setup<O, E>> {
        self.setup.take()
    }
}

impl<O, E> Drop for Pending<O, E> {
    fn drop(&mut self) {
        if let (Some(setup), Some(report)) = (self.setup.take(), self.report) {
            report(setup, Outcome::ClientDisconnected, None, 0);
        }
    }
}

/// Report a streaming request that ended before any stream: the observers see the end, the
/// sink gets the report. `bytes_out` is what the client was sent instead (a 504 body).
fn report_before_head<O: Observer, E: OnEnd>(
    setup: Setup<O, E>,
    outcome: Outcome,
    error: Option<String>,
    bytes_out: u64,
) {
    report_failover_before_head(setup, outcome, error, bytes_out, None);
}

/// [`report_before_head`], with the attempts of a [`Failover`](crate::failover::Failover)
/// inside whose every attempt failed (carried by its error).
fn report_failover_before_head<O: Observer, E: OnEnd>(
    setup: Setup<O, E>,
    outcome: Outcome,
    error: Option<String>,
    bytes_out: u64,
    failover: Option<Box<crate::failover::FailoverReport>>,
) {
    let Setup { engine, on_end, .. } = setup;
    // The engine's report is still as it was made: the request's start and provider.
    let (mut observer, mut report) = engine.into_parts();
    report.outcome = outcome;
    report.error = error;
    report.bytes_out = bytes_out;
    report.failover = failover;
    report.ended_at = Instant::now();
    observer.on_end(&mut report);
    on_end.on_end(report);
}

/// What a stream needs from the service to start.
pub(crate) struct Setup<O, E> {
    pub(crate) config: Arc<Config>,
    /// The stream's engine, observer included, made when the request came: boxed once and
    /// never moved again, so that the futures of the layers around (boxed by some, while
    /// they wait for the response head) do not carry the observers' kilobyte, and the
    /// body that the server boxes does not copy it.
    pub(crate) engine: Box<Engine<O>>,
    pub(crate) on_end: E,
    pub(crate) started_at: Instant,
    /// A `HEAD` request: its answer has no body, so it is never a stream.
    pub(crate) head_request: bool,
    /// The client asked for NDJSON, not SSE: an NDJSON stream stays NDJSON.
    pub(crate) keep_lines: bool,
    /// The stream is resumable: its producer is told which frames are whole events.
    #[cfg(feature = "resume")]
    pub(crate) resumable: bool,
}

impl<O: Observer, E: OnEnd> Setup<O, E> {
    /// The state of a stream body whose upstream is in `phase`; nothing went to the client
    /// before `last_output_at`; `disconnect` says what its drop before the end does.
    pub(crate) fn into_state<B>(
        self,
        phase: Phase<B>,
        last_output_at: Instant,
        disconnect: Disconnect<B, O, E>,
    ) -> StreamState<B, O, E>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let on_drop = disconnect.on_drop;
        let permits = disconnect.permits();
        let shutdown = self.config.shutdown.as_ref().map(|s| s.watch());
        #[cfg_attr(not(feature = "resume"), allow(unused_mut))]
        let mut engine = self.engine;
        #[cfg(feature = "resume")]
        if self.resumable {
            engine.hand_off_to(Arc::default());
        }
        StreamState {
            phase,
            live: Some(Live {
                engine,
                on_end: self.on_end,
                permits,
            }),
            deadlines: Deadlines::new(self.started_at, last_output_at),
            timer: None,
            shutdown,
            on_drop,
        }
    }
}

impl<O: Observer, E: OnEnd> Setup<O, E> {
    /// What reports an answer that is not a stream.
    fn into_answer(self, parts: &http::response::Parts) -> Live<O, E> {
        let mut engine = self.engine;
        engine.head(parts, None, Instant::now());
        // An answer is never drained: the limits' permits are theirs to release.
        Live {
            engine,
            on_end: self.on_end,
            permits: DrainPermits::none(),
        }
    }
}

/// What a stream body does when it is dropped before its end: report the disconnect, or
/// keep draining the upstream (which spawns a task, so it is chosen where the `Send` bounds
/// are known: never for a [`Local`](crate::stream::Local) stack).
pub(crate) struct Disconnect<B, O, E> {
    on_drop: fn(Live<O, E>, Phase<B>),
    drains: bool,
}

impl<B, O, E> Clone for Disconnect<B, O, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B, O, E> Copy for Disconnect<B, O, E> {}

impl<B, O: Observer, E: OnEnd> Disconnect<B, O, E> {
    /// Cancel the upstream and report the disconnect.
    pub(crate) fn report() -> Self {
        Self {
            on_drop: report_disconnect::<B, O, E>,
            drains: false,
        }
    }
}

impl<B, O, E> Disconnect<B, O, E>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    O: Observer + Send + 'static,
    E: OnEnd + Send + 'static,
{
    /// Drain when configured (and the feature is on), else report.
    pub(crate) fn for_config(config: &Config) -> Self {
        #[cfg(feature = "drain")]
        if config.drain.is_some() {
            return Self {
                on_drop: crate::stream::drain::drain_after_disconnect::<B, O, E>,
                drains: true,
            };
        }
        let _ = config;
        Self::report()
    }
}

impl<B, O, E> Disconnect<B, O, E> {
    /// A stream that may drain after a disconnect takes on the permits of the
    /// [`StreamLimitLayer`](crate::StreamLimitLayer)s outside when its client leaves, and
    /// holds them until the drain ends, so that the limit still bounds the upstreams being
    /// read (see [`DrainPermits`]). Other streams leave them to the limit.
    fn permits(&self) -> DrainPermits {
        #[cfg(feature = "drain")]
        if self.drains {
            return DrainPermits::new();
        }
        let _ = self.drains;
        DrainPermits::none()
    }
}

/// Offer the limits outside to hand their permits to a stream that may drain, and a
/// resumable stream's producer its hand-off.
pub(crate) fn offer_permits<B, O, E>(
    state: &StreamState<B, O, E>,
    extensions: &mut http::Extensions,
) {
    if let Some(live) = &state.live
        && live.permits.is_some()
    {
        extensions.insert(live.permits.clone());
    }
    // A resumable stream: its producer (the `ResumeLayer` outside) takes the hand-off.
    #[cfg(feature = "resume")]
    if let Some(handoff) = state.live.as_ref().and_then(|live| live.engine.handoff()) {
        extensions.insert(handoff);
    }
}

pin_project! {
    /// The response future of [`Sse`].
    pub struct SseFuture<F, B, O, E> {
        #[pin]
        kind: FutureKind<F, B, O, E>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, B, O, E> {
        Waiting {
            #[pin]
            future: F,
            #[pin]
            deadline: Option<Sleep>,
            timeout_outcome: Outcome,
            shutdown: Option<ShutdownWatch>,
            setup: Pending<O, E>,
            disconnect: Disconnect<B, O, E>,
            upload: Option<UploadWatch>,
        },
        Ready { response: Option<Response<SseBody<B, O, E>>> },
        // The response went out: polling again is a caller's bug.
        Done,
    }
}

impl<F, B, O, E> SseFuture<F, B, O, E> {
    /// A response the service made itself (early response).
    pub(crate) fn ready(response: Response<SseBody<B, O, E>>) -> Self {
        Self {
            kind: FutureKind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, O, E> SseFuture<F, B, O, E>
where
    O: Observer,
    E: OnEnd,
{
    /// Wait for the inner service's response. A streaming request is reported even when it
    /// ends before its head, and its head is awaited until `deadline` at most.
    pub(crate) fn waiting(
        future: F,
        setup: Setup<O, E>,
        streaming: bool,
        deadline: Option<(Instant, Outcome)>,
        disconnect: Disconnect<B, O, E>,
        upload: Option<UploadWatch>,
    ) -> Self {
        let shutdown = match &setup.config.shutdown {
            Some(shutdown) if streaming => Some(shutdown.watch()),
            _ => None,
        };
        Self {
            kind: FutureKind::Waiting {
                future,
                deadline: deadline.map(|(at, _)| sleep_until(at)),
                timeout_outcome: deadline.map_or(Outcome::FirstEventTimeout, |(_, o)| o),
                shutdown,
                setup: Pending {
                    setup: Some(setup),
                    report: streaming.then_some(report_before_head::<O, E> as fn(_, _, _, _)),
                },
                disconnect,
                upload,
            },
        }
    }
}

impl<F, B, O, E> fmt::Debug for SseFuture<F, B, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseFuture").finish_non_exhaustive()
    }
}

impl<F, B, Er, O, E> Future for SseFuture<F, B, O, E>
where
    F: Future<Output = Result<Response<B>, Er>>,
    Er: 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: Observer,
    E: OnEnd,
{
    type Output = Result<Response<SseBody<B, O, E>>, Er>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let output = match kind.as_mut().project() {
            FutureProj::Ready { response } => match response.take() {
                Some(response) => Ok(response),
                None => unreachable!("taken only on completion"),
            },
            FutureProj::Waiting {
                future,
                deadline,
                timeout_outcome,
                shutdown,
                setup,
                disconnect,
                upload,
            } => match poll_waiting(
                future,
                deadline,
                *timeout_outcome,
                shutdown,
                setup,
                *disconnect,
                upload.as_ref(),
                cx,
            ) {
                Poll::Ready(output) => output,
                Poll::Pending => return Poll::Pending,
            },
            FutureProj::Done => panic!("`SseFuture` polled after completion"),
        };
        kind.set(FutureKind::Done);
        Poll::Ready(output)
    }
}

/// Wait for the response head, its deadline or the server's shutdown. A request whose body
/// timed out before the answer (`upload`) is answered `408`, whatever the inner service said.
#[allow(clippy::too_many_arguments)]
fn poll_waiting<F, B, Er, O, E>(
    future: Pin<&mut F>,
    deadline: Pin<&mut Option<Sleep>>,
    timeout_outcome: Outcome,
    shutdown: &mut Option<ShutdownWatch>,
    setup: &mut Pending<O, E>,
    disconnect: Disconnect<B, O, E>,
    upload: Option<&UploadWatch>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<SseBody<B, O, E>>, Er>>
where
    F: Future<Output = Result<Response<B>, Er>>,
    Er: 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: Observer,
    E: OnEnd,
{
    if let Poll::Ready(result) = future.poll(cx) {
        let streaming = setup.report.is_some();
        let Some(taken) = setup.take() else {
            unreachable!("taken only on completion");
        };
        if upload.is_some_and(UploadWatch::answered) {
            // The answer to a failed upload (or an error): the client was late, not the
            // upstream. Dropping it releases what it holds.
            drop(result);
            return Poll::Ready(Ok(upload_timeout(taken)));
        }
        return Poll::Ready(match result {
            Ok(response) => Ok(start_stream(taken, response, streaming, disconnect)),
            Err(error) => {
                if streaming {
                    let message = Some("the inner service failed before answering".to_string());
                    let failover = crate::failover::carried_report(&error);
                    report_failover_before_head(
                        taken,
                        Outcome::UpstreamError,
                        message,
                        0,
                        failover,
                    );
                }
                Err(error)
            }
        });
    }
    if let Some(deadline) = deadline.as_pin_mut()
        && deadline.poll(cx).is_ready()
        && let Some(setup) = setup.take()
    {
        if upload.is_some_and(UploadWatch::answered) {
            return Poll::Ready(Ok(upload_timeout(setup)));
        }
        return Poll::Ready(Ok(head_timeout(setup, timeout_outcome)));
    }
    if let Some(watch) = shutdown
        && watch.poll_ended(cx).is_ready()
        && let Some(setup) = setup.take()
    {
        return Poll::Ready(Ok(answer_before_head(
            setup,
            Outcome::ServerShutdown,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )));
    }
    Poll::Pending
}

/// The response head arrived: pass it through, or start a stream. A streaming request
/// answered with something else (`streaming`) is passed through too, and reported.
fn start_stream<B, O, E>(
    setup: Setup<O, E>,
    response: Response<B>,
    streaming: bool,
    disconnect: Disconnect<B, O, E>,
) -> Response<SseBody<B, O, E>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: Observer,
    E: OnEnd,
{
    let (mut parts, body) = response.into_parts();
    let bodiless = setup.head_request || has_no_body(parts.status);
    let framing = if bodiless {
        None
    } else {
        setup.config.framing(&parts)
    };
    let Some(framing) = framing else {
        if !streaming {
            return Response::from_parts(parts, SseBody::pass_through(body));
        }
        let live = setup.into_answer(&parts);
        let mut report = AnswerReport::new(live);
        if bodiless {
            // Complete with its head: nobody polls a body that cannot have bytes.
            report.end(true);
        }
        return Response::from_parts(parts, SseBody::answer(body, report));
    };
    let keep_lines = setup.keep_lines && framing == Framing::JsonLines;
    let now = Instant::now();
    let mut state = setup.into_state(Phase::Streaming(Box::pin(body)), now, disconnect);
    offer_permits(&state, &mut parts.extensions);
    if let Some(live) = state.live.as_mut() {
        if keep_lines {
            // A keep-alive comment is not a JSON line.
            live.engine.keep_lines();
            state.deadlines.no_keep_alive();
        }
        live.engine.head(&parts, Some(framing), now);
        if framing == Framing::Encoded {
            // Its bytes pass as they come: nothing may be added to them.
            live.engine.pass_bytes();
            state.deadlines.no_keep_alive();
        }
        state.deadlines.on_head(live.engine.config(), now);
    }
    // The body changes length (keep-alives, error events), and NDJSON becomes SSE unless
    // the client asked for NDJSON.
    parts.headers.remove(CONTENT_LENGTH);
    if let Some(live) = state.live.as_ref() {
        live.engine.config().add_sse_headers(&mut parts.headers);
    }
    if framing == Framing::JsonLines && !keep_lines {
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    Response::from_parts(parts, SseBody::stream(state))
}

/// `1xx`, `204 No Content` and `304 Not Modified` answers have no body whatever their
/// headers say (RFC 9110): never a stream, and over as soon as their head arrived.
fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A streaming request whose response head did not come in time: `504 Gateway Timeout`.
fn head_timeout<B, O, E>(setup: Setup<O, E>, outcome: Outcome) -> Response<SseBody<B, O, E>>
where
    O: Observer,
    E: OnEnd,
{
    answer_before_head(
        setup,
        outcome,
        StatusCode::GATEWAY_TIMEOUT,
        "the upstream did not answer in time",
    )
}

/// A request whose body did not arrive in time ([`UploadTimedOut`](crate::request::UploadTimedOut)):
/// `408 Request Timeout`, reported.
pub(crate) fn upload_timeout<B, O, E>(setup: Setup<O, E>) -> Response<SseBody<B, O, E>>
where
    O: Observer,
    E: OnEnd,
{
    answer_before_head(
        setup,
        Outcome::RequestTimeout,
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive in time",
    )
}

/// Answer a streaming request whose response head never came with a JSON error, and
/// report it.
fn answer_before_head<B, O, E>(
    setup: Setup<O, E>,
    outcome: Outcome,
    status: StatusCode,
    message: &str,
) -> Response<SseBody<B, O, E>>
where
    O: Observer,
    E: OnEnd,
{
    let body = format!(
        r#"{{"error":{{"type":"{}","message":"{message}"}}}}"#,
        outcome.as_str()
    );
    report_before_head(setup, outcome, Some(message.to_string()), body.len() as u64);
    let mut response = Response::new(SseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

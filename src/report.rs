//! The end-of-stream report, how a stream ended, where the report goes, and the value types
//! observers fill in: [`Usage`], [`Timing`], [`Latencies`], [`Sha256Digest`].

use std::fmt;
use std::time::Duration;

use http::{Extensions, StatusCode};
use tokio::time::Instant;

use sha2::Digest as _;
use sha2::Sha256;

use crate::framing::Framing;
use crate::provider::{Provider, ProviderError};

/// How a stream ended. Exactly one outcome per stream.
///
/// The enum is `#[non_exhaustive]`: a `match` needs a catch-all arm.
///
/// ```
/// use tower_sse::Outcome;
///
/// /// How a billing system might treat each stream.
/// fn bill(outcome: Outcome) -> &'static str {
///     match outcome {
///         Outcome::Completed => "bill in full",
///         // The client left: bill what was generated (see `SseLayer::drain_on_disconnect`).
///         Outcome::ClientDisconnected => "bill the usage reported",
///         // Deadlines, upstream failures, oversized or truncated events.
///         _ => "do not bill",
///     }
/// }
///
/// assert_eq!(bill(Outcome::Completed), "bill in full");
/// assert_eq!(bill(Outcome::IdleTimeout), "do not bill");
/// assert!(!Outcome::IdleTimeout.is_success());
/// // The name in error events and in the `error.type` metric attribute:
/// assert_eq!(Outcome::IdleTimeout.as_str(), "idle_timeout");
/// assert_eq!(Outcome::FirstEventTimeout.to_string(), "first_event_timeout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream ended normally and the client received everything.
    Completed,
    /// The upstream body failed (or, in early-response mode, the upstream call failed or
    /// answered with something that is not a stream).
    UpstreamError,
    /// The client went away (the body was dropped) before the stream ended.
    ClientDisconnected,
    /// No event arrived within the first-event timeout.
    FirstEventTimeout,
    /// No complete upstream event (or comment) for longer than the idle timeout: the
    /// upstream went silent, or one event took that long to arrive in full.
    IdleTimeout,
    /// The stream ran past its total timeout.
    DeadlineExceeded,
    /// One upstream event was larger than `max_event_size`.
    EventTooLarge,
    /// The upstream ended in the middle of an event.
    UpstreamTruncated,
    /// The request body did not arrive in time (an upload that stalled): answered
    /// `408 Request Timeout` ([`UploadTimedOut`](crate::request::UploadTimedOut)).
    RequestTimeout,
    /// The server shut down before the stream ended
    /// ([`Shutdown`](crate::stream::Shutdown)).
    ServerShutdown,
    /// The provider reported an error inside its stream (Anthropic's `error` event, an
    /// OpenAI chunk with an `error` object, a Responses `response.failed`, a Gemini or
    /// Ollama error object), and the stream then ended without another failure: it would
    /// have been [`Completed`](Self::Completed) or
    /// [`UpstreamTruncated`](Self::UpstreamTruncated). The client got the provider's own
    /// error event, unchanged (the layer adds none), and
    /// [`StreamReport::provider_error`] has its type and message. A timeout, a client that
    /// left or a failed body keep their own outcome (the error is in the report all the
    /// same).
    ProviderError,
    /// The store of a resumable stream failed while the stream ran (an append the log could
    /// not take): the stream's producer ended it, and cancelled the upstream, though its
    /// client may have stayed (`ResumeLayer`, feature `resume`; its readers' connections
    /// fail, so that clients reconnect).
    StoreFailed,
    /// A [`Policy`](crate::policy::Policy) stopped the stream: the client got the provider's
    /// own end (a `content_filter` finish, a `refusal` stop…) and
    /// [`PolicyReport::stopped_by`](crate::policy::PolicyReport::stopped_by) says why.
    PolicyStopped,
    /// The stream's budget ran out while it ran (mid-stream enforcement,
    /// [`BudgetStop`](crate::budget::BudgetStop)): the client got an error in the provider's
    /// shape (`budget_exceeded`), and what the upstream generated up to then is charged.
    BudgetExceeded,
}

impl Outcome {
    /// Whether the stream completed.
    pub fn is_success(self) -> bool {
        self == Self::Completed
    }

    /// A short, stable, snake_case name: the `type` of the error event, and the value of
    /// the `error.type` metric attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::UpstreamError => "upstream_error",
            Self::ClientDisconnected => "client_disconnected",
            Self::FirstEventTimeout => "first_event_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::EventTooLarge => "event_too_large",
            Self::UpstreamTruncated => "upstream_truncated",
            Self::ServerShutdown => "server_shutdown",
            Self::RequestTimeout => "request_timeout",
            Self::ProviderError => "provider_error",
            Self::StoreFailed => "store_failed",
            Self::PolicyStopped => "policy_stopped",
            Self::BudgetExceeded => "budget_exceeded",
        }
    }
}

impl Outcome {
    /// How many outcomes there are (for tables indexed by [`index`](Self::index)).
    #[cfg(feature = "metrics")]
    pub(crate) const COUNT: usize = 14;

    /// This outcome's place in `0..COUNT`.
    #[cfg(feature = "metrics")]
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Completed => 0,
            Self::UpstreamError => 1,
            Self::ClientDisconnected => 2,
            Self::FirstEventTimeout => 3,
            Self::IdleTimeout => 4,
            Self::DeadlineExceeded => 5,
            Self::EventTooLarge => 6,
            Self::UpstreamTruncated => 7,
            Self::ServerShutdown => 8,
            Self::RequestTimeout => 9,
            Self::ProviderError => 10,
            Self::StoreFailed => 11,
            Self::PolicyStopped => 12,
            Self::BudgetExceeded => 13,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Everything known about one stream when it ended, delivered once to the
/// [`OnEnd`] sink.
///
/// The layer fills in the counts and instants; observers add their findings (timing, usage,
/// response id, digest) in their [`on_end`](crate::Observer::on_end) hook, or in
/// [`extensions`](Self::extensions) for types of your own.
///
/// Payloads are never part of the report.
///
/// Reading a report in the [`OnEnd`] sink (here sent to a Tokio channel, to be logged or
/// billed elsewhere):
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::provider::Provider;
/// use tower_sse::{Outcome, SseLayer, StreamReport, TimingObserver, UsageObserver};
/// # use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (reports, mut received) = tokio::sync::mpsc::unbounded_channel::<StreamReport>();
/// let layer = SseLayer::new()
///     .observer((UsageObserver::new(), TimingObserver::new()))
///     .on_end(move |report: StreamReport| {
///         let _ = reports.send(report);
///     });
///
/// // An OpenAI Chat upstream: one content chunk, the finish reason, the usage, `[DONE]`.
/// # let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
/// #     let stream = concat!(
/// #         "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",",
/// #         "\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
/// #         "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",",
/// #         "\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
/// #         "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",",
/// #         "\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
/// #         "data: [DONE]\n\n",
/// #     );
/// #     let response = Response::builder()
/// #         .header("content-type", "text/event-stream")
/// #         .body(Full::new(Bytes::from_static(stream.as_bytes())))
/// #         .unwrap();
/// #     Ok::<_, std::convert::Infallible>(response)
/// # });
/// let request = Request::post("/v1/chat/completions").body(Empty::<Bytes>::new()).unwrap();
/// let response = layer.layer(upstream).oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
///
/// let report = received.recv().await.expect("one report per stream");
/// assert_eq!(report.outcome, Outcome::Completed);
/// assert!(report.error.is_none());
/// assert_eq!(report.status, Some(StatusCode::OK));
/// assert_eq!(report.provider, Provider::OpenAiChat);
/// assert_eq!(report.response_id.as_deref(), Some("chatcmpl-1"));
/// assert_eq!(report.model.as_deref(), Some("gpt-4o"));
/// assert_eq!(report.finish_reason.as_deref(), Some("stop"));
/// assert_eq!((report.events, report.content_events), (4, 1));
/// assert_eq!(report.bytes_out, report.bytes_in); // forwarded byte for byte
///
/// let usage = report.usage.expect("the usage observer is on");
/// assert_eq!((usage.input_tokens, usage.output_tokens), (Some(5), Some(1)));
/// let timing = report.timing.expect("the timing observer is on");
/// assert!(timing.time_to_first_token.is_some());
/// assert!(report.time_to_first_byte() <= timing.time_to_first_token);
/// assert!(report.duration() >= timing.time_to_first_token.unwrap());
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamReport {
    /// How the stream ended.
    pub outcome: Outcome,
    /// A short description of what went wrong, when something did (never a payload).
    pub error: Option<String>,
    /// The upstream's status code, when it answered (`None` when it did not: a `504` from the
    /// layer's own header timeout, or a client that left first).
    pub status: Option<StatusCode>,
    /// How the upstream framed the stream.
    pub framing: Framing,
    /// The provider format detected from the request path and the events.
    pub provider: Provider,

    /// Events received from the upstream (dispatched SSE events, or JSON lines).
    pub events: u64,
    /// Of those, the events that carried content (text, reasoning or tool-call deltas).
    pub content_events: u64,
    /// Comment lines received from the upstream (pings).
    pub comments: u64,
    /// Keep-alive comments this layer sent.
    pub keep_alives: u64,
    /// Body bytes received from the upstream.
    pub bytes_in: u64,
    /// Body bytes handed to the client (upstream bytes, keep-alives and error events).
    pub bytes_out: u64,

    /// When the request reached the layer: time to first byte and to first token are
    /// measured from here.
    pub started_at: Instant,
    /// When the upstream's response head arrived.
    pub response_at: Option<Instant>,
    /// When the first body byte arrived from the upstream.
    pub first_byte_at: Option<Instant>,
    /// When the stream ended (the report was made).
    pub ended_at: Instant,

    /// The response id (`chatcmpl-…`, `msg_…`, `resp_…`), from the first event that
    /// carries it (filled by the layer itself, before observers see the event).
    pub response_id: Option<String>,
    /// The model that answered, from the first event that names it (filled by the layer).
    pub model: Option<String>,
    /// The finish or stop reason, when an observer found it.
    pub finish_reason: Option<String>,
    /// The error the provider reported inside its stream, if it did (filled by the layer,
    /// whatever the observers): the first one, when it reported several. The stream's
    /// outcome is then [`Outcome::ProviderError`], unless it ended otherwise first (a
    /// timeout, a disconnect, a failed body). Events after the error are forwarded and
    /// counted as usual.
    pub provider_error: Option<ProviderError>,
    /// Token usage, when the usage observer is on.
    pub usage: Option<Usage>,
    /// Latencies, when the timing observer is on.
    pub timing: Option<Timing>,
    /// SHA-256 of the bytes the client received (keep-alives excluded), when the digest
    /// observer is on.
    pub digest: Option<Sha256Digest>,
    /// SHA-256 of the request body, when the request digest layer is on.
    pub request_digest: Option<Sha256Digest>,

    /// Findings of observers, keyed by type (see [`Extensions`]).
    pub extensions: Extensions,
    /// Who the stream was for, when an observer or layer named it
    /// ([`CostObserver`](crate::cost::CostObserver) does).
    pub tenant: Option<crate::request::Tenant>,
    /// What the stream cost, when [`CostObserver`](crate::cost::CostObserver) priced its usage.
    pub cost: Option<crate::cost::Cost>,
    /// What the stream's policy did (passed, replaced, dropped, held events; a stop):
    /// all zero without one.
    pub policy: crate::policy::PolicyReport,
    /// Each upstream attempt and which one served, when a
    /// [`Failover`](crate::failover::Failover) is inside the layer (filled by the layer from
    /// the response's extensions, or from the [`FailoverError`](crate::failover::FailoverError)
    /// when no upstream answered).
    pub failover: Option<Box<crate::failover::FailoverReport>>,
}

impl StreamReport {
    /// An empty report of a stream that started at `started_at`, for driving observers by
    /// hand (with [`EventContext::new`](crate::EventContext::new)) in tests and benches.
    pub fn new(started_at: Instant) -> Self {
        Self {
            outcome: Outcome::Completed,
            error: None,
            status: None,
            framing: Framing::Sse,
            provider: Provider::Unknown,
            events: 0,
            content_events: 0,
            comments: 0,
            keep_alives: 0,
            bytes_in: 0,
            bytes_out: 0,
            started_at,
            response_at: None,
            first_byte_at: None,
            ended_at: started_at,
            response_id: None,
            model: None,
            finish_reason: None,
            provider_error: None,
            usage: None,
            timing: None,
            digest: None,
            request_digest: None,
            extensions: Extensions::new(),
            tenant: None,
            cost: None,
            policy: crate::policy::PolicyReport::default(),
            failover: None,
        }
    }

    /// Time from the request's arrival at the layer to the end of the stream.
    pub fn duration(&self) -> Duration {
        self.ended_at.saturating_duration_since(self.started_at)
    }

    /// Time from the request's arrival to the first upstream body byte.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte_at
            .map(|at| at.saturating_duration_since(self.started_at))
    }
}

/// Where the report of each stream goes: called exactly once per stream, from the body's
/// `poll_frame` or from its `Drop`.
///
/// It runs inline, on whatever thread polls or drops the body: it must not block and must
/// not panic. Send the report to a channel or record metrics; do I/O elsewhere.
///
/// Implemented for closures taking a [`StreamReport`] and for `()` (no sink). The layer
/// clones the sink for every request, so it must be `Clone` (a closure is when what it
/// captures is): capture a channel's sender, an `Arc`, or a metrics handle.
///
/// A closure sending each report to a channel:
///
/// ```
/// use std::sync::mpsc;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::{Outcome, SseLayer, StreamReport};
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (reports, received) = mpsc::channel::<StreamReport>();
/// let layer = SseLayer::new().on_end(move |report: StreamReport| {
///     // Never blocks: an unbounded channel. Do the I/O on the receiving side.
///     let _ = reports.send(report);
/// });
///
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(b"data: hello\n\ndata: world\n\n")))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(&body[..], b"data: hello\n\ndata: world\n\n");
///
/// let report = received.recv().unwrap();
/// assert_eq!(report.outcome, Outcome::Completed);
/// assert_eq!(report.events, 2);
/// assert!(received.try_recv().is_err(), "exactly one report per stream");
/// # }
/// ```
///
/// A sink of your own type, to keep the layer's type nameable (a closure's is not):
///
/// ```
/// use tokio::sync::mpsc::UnboundedSender;
/// use tower_sse::{OnEnd, SseLayer, StreamReport, UsageObserver};
///
/// /// Sends the token counts of each stream to a billing task.
/// #[derive(Clone)]
/// struct Billing(UnboundedSender<(Option<String>, u64)>);
///
/// impl OnEnd for Billing {
///     fn on_end(self, report: StreamReport) {
///         let output = report.usage.and_then(|u| u.output_tokens).unwrap_or(0);
///         let _ = self.0.send((report.response_id, output));
///     }
/// }
///
/// let (billing, _received) = tokio::sync::mpsc::unbounded_channel();
/// let layer: SseLayer<UsageObserver, Billing> =
///     SseLayer::new().observer(UsageObserver::new()).on_end(Billing(billing));
/// # let _ = layer;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an end-of-stream sink",
    label = "not a `tower_sse::OnEnd`",
    note = "pass a closure taking the report, `|report: tower_sse::StreamReport| ...` (annotate its argument), or implement `tower_sse::OnEnd`"
)]
pub trait OnEnd {
    /// Take the report.
    fn on_end(self, report: StreamReport);
}

impl<F> OnEnd for F
where
    F: FnOnce(StreamReport),
{
    fn on_end(self, report: StreamReport) {
        self(report);
    }
}

impl OnEnd for () {
    #[inline]
    fn on_end(self, _: StreamReport) {}
}

/// Where the numbers of a [`Usage`] come from.
///
/// Bill reported counts as they are, and treat estimated ones as you choose:
///
/// ```
/// use tower_sse::{Usage, UsageSource};
///
/// /// Output tokens to bill: estimates get a 10% margin.
/// fn billable_output(usage: &Usage) -> Option<u64> {
///     let output = usage.output_tokens?;
///     Some(match usage.source {
///         UsageSource::Reported => output,
///         UsageSource::Estimated => output + output / 10,
///         _ => output,
///     })
/// }
///
/// let mut usage = Usage::default();
/// assert_eq!(usage.source, UsageSource::Reported);
/// assert_eq!(billable_output(&usage), None);
/// usage.output_tokens = Some(100);
/// assert_eq!(billable_output(&usage), Some(100));
/// usage.source = UsageSource::Estimated;
/// assert_eq!(billable_output(&usage), Some(110));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum UsageSource {
    /// The provider reported them in the stream (possibly a running total, when the stream
    /// was cut before its final usage).
    #[default]
    Reported,
    /// The output count was estimated from the content delivered, because the provider
    /// reported none before the stream ended (a client disconnect, a deadline, an upstream
    /// error, an Anthropic stream that ended before `message_delta`).
    ///
    /// Only [`output_tokens`](Usage::output_tokens) is estimated, and
    /// [`input_tokens`](Usage::input_tokens) when the provider never reported it and
    /// [`InputEstimateLayer`](crate::usage::InputEstimateLayer) kept the request: the other
    /// counts, when known, are the provider's own (Anthropic's input and cache counts from
    /// `message_start`, a running total's input), so a usage can mix reported input with
    /// estimated output.
    Estimated,
}

/// Token counts of one stream. Unknown is `None`, never 0.
///
/// [`UsageObserver`](crate::UsageObserver) reads them from the provider's events into
/// [`StreamReport::usage`]:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::{SseLayer, StreamReport, UsageObserver, UsageSource};
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (reports, received) = std::sync::mpsc::channel();
/// let layer = SseLayer::new()
///     .observer(UsageObserver::new())
///     .on_end(move |report: StreamReport| reports.send(report).unwrap());
///
/// // An OpenAI Chat stream that ends with its usage chunk.
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let stream = concat!(
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],",
///         "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13}}\n\n",
///         "data: [DONE]\n\n",
///     );
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(stream.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// response.into_body().collect().await.unwrap();
///
/// let usage = received.recv().unwrap().usage.expect("the provider reported usage");
/// assert_eq!(usage.input_tokens, Some(12));
/// assert_eq!(usage.output_tokens, Some(1));
/// assert_eq!(usage.total_tokens, Some(13));
/// assert_eq!(usage.source, UsageSource::Reported);
/// assert!(usage.is_known());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens, as the provider counts them (OpenAI includes cached tokens in it;
    /// Anthropic excludes cache reads).
    pub input_tokens: Option<u64>,
    /// Completion tokens (reasoning tokens included where the provider includes them).
    pub output_tokens: Option<u64>,
    /// The provider's total, when it sends one.
    pub total_tokens: Option<u64>,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
    /// Whether the numbers were reported or estimated.
    pub source: UsageSource,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, OpenRouter's `prompt_tokens_details.cache_write_tokens`),
    /// counted in [`input_tokens`](Self::input_tokens) or not as [`style`](Self::style) says.
    pub cache_write_tokens: Option<u64>,
    /// How the provider counts: whether its input includes the cache counts and its output
    /// the reasoning tokens. [`Usage::normalized`] uses it to give the same meaning to every
    /// provider's counts (see [`UsageStyle`](crate::usage::UsageStyle)).
    pub style: crate::usage::UsageStyle,
}

impl Usage {
    /// Whether any count is known.
    pub fn is_known(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some() || self.total_tokens.is_some()
    }

    /// Whether any count at all is known (cache or reasoning counts included).
    pub(crate) fn has_counts(&self) -> bool {
        self.is_known()
            || self.cached_input_tokens.is_some()
            || self.reasoning_tokens.is_some()
            || self.cache_write_tokens.is_some()
    }
}

/// [`StreamReport::timing`], filled by [`TimingObserver`](crate::TimingObserver).
///
/// ```
/// use tower_sse::{SseLayer, StreamReport, TimingObserver, UsageObserver};
///
/// let layer = SseLayer::new()
///     // Usage first, so that timing knows the output tokens (time per output token).
///     .observer((UsageObserver::new(), TimingObserver::new()))
///     .on_end(|report: StreamReport| {
///         let Some(timing) = report.timing else { return };
///         if let Some(ttft) = timing.time_to_first_token {
///             println!("time to first token: {ttft:?}");
///         }
///         if let Some(p99) = timing.inter_token.p99 {
///             println!("inter-token p99 over {} gaps: {p99:?}", timing.inter_token.count);
///         }
///         if let Some(rate) = timing.output_tokens_per_second {
///             println!("{rate:.1} tokens/s");
///         }
///     });
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Timing {
    /// Request arrival to the first upstream body byte.
    pub time_to_first_byte: Option<Duration>,
    /// Request arrival to the first content event delivered to the client.
    pub time_to_first_token: Option<Duration>,
    /// Gaps between consecutive content events delivered to the client.
    pub inter_token: Latencies,
    /// First to last content event.
    pub decode_time: Option<Duration>,
    /// `decode_time / (output tokens - 1)`, to the nearest nanosecond and never 0, when the
    /// output tokens are known (put the usage observer before this one). `None` when it is
    /// undefined: one output token, or no decode time (every content event in one frame).
    pub time_per_output_token: Option<Duration>,
    /// Decode speed: output tokens after the first, per second of decode time
    /// (`1 / time_per_output_token`, computed from the decode time itself, so not rounded).
    /// Finite whenever it is `Some`.
    pub output_tokens_per_second: Option<f64>,
}

/// A summary of latency samples. Count, mean and max are exact; percentiles are nearest-rank
/// estimates from a fixed-size log histogram that adapts its resolution to the samples' spread:
/// exact for constant gaps and for the three largest, within a few percent otherwise (see
/// [`TimingObserver`'s accuracy](crate::TimingObserver#accuracy)).
///
/// Unknown is `None`: a stream with fewer than two content events has no inter-token gaps.
///
/// ```
/// use std::time::Duration;
///
/// use tower_sse::Latencies;
///
/// /// Whether a stream's inter-token latency met an objective.
/// fn smooth(latencies: &Latencies, objective: Duration) -> Option<bool> {
///     latencies.p99.map(|p99| p99 <= objective)
/// }
///
/// let none = Latencies::default();
/// assert_eq!(none.count, 0);
/// assert_eq!(smooth(&none, Duration::from_millis(100)), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Latencies {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Option<Duration>,
    /// Median.
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Largest sample.
    pub max: Option<Duration>,
}

/// A SHA-256 digest.
///
/// Displays (and serializes) as 64 lowercase hex digits.
///
/// ```
/// use tower_sse::Sha256Digest;
///
/// let digest = Sha256Digest::of(b"abc");
/// assert_eq!(
///     digest.to_hex(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The SHA-256 of these bytes.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut out = [0; 64];
        crate::digits::hex(&self.0, &mut out).to_owned()
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// The digest [`to_hex`](Self::to_hex) wrote.
    #[cfg(feature = "redis")]
    pub(crate) fn from_hex(text: &str) -> Option<Self> {
        crate::digits::hex_bytes(text).map(Self)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::Outcome;

    /// Every outcome has its own place in the metrics observer's tables. The list is checked
    /// to be complete: a new outcome does not compile here until it is added.
    #[test]
    fn each_outcome_has_its_own_index_below_count() {
        let all = [
            Outcome::Completed,
            Outcome::UpstreamError,
            Outcome::ClientDisconnected,
            Outcome::FirstEventTimeout,
            Outcome::IdleTimeout,
            Outcome::DeadlineExceeded,
            Outcome::EventTooLarge,
            Outcome::UpstreamTruncated,
            Outcome::ServerShutdown,
            Outcome::RequestTimeout,
            Outcome::ProviderError,
            Outcome::StoreFailed,
            Outcome::PolicyStopped,
            Outcome::BudgetExceeded,
        ];
        for outcome in all {
            // Exhaustive: names every variant, so that one added is one listed above.
            match outcome {
                Outcome::Completed
                | Outcome::UpstreamError
                | Outcome::ClientDisconnected
                | Outcome::FirstEventTimeout
                | Outcome::IdleTimeout
                | Outcome::DeadlineExceeded
                | Outcome::EventTooLarge
                | Outcome::UpstreamTruncated
                | Outcome::ServerShutdown
                | Outcome::RequestTimeout
                | Outcome::ProviderError
                | Outcome::StoreFailed
                | Outcome::PolicyStopped
                | Outcome::BudgetExceeded => {}
            }
        }
        assert_eq!(all.len(), Outcome::COUNT);
        let mut seen = [false; Outcome::COUNT];
        for outcome in all {
            assert!(
                !std::mem::replace(&mut seen[outcome.index()], true),
                "{outcome}"
            );
        }
    }
}

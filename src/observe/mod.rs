//! What runs for each stream, event by event: the [`Observer`] trait.
//!
//! Observers are how the crate is extended: timing, usage and digests are observers, and so
//! can yours be. They compose with tuples (`(A, B, C)` runs `A`, then `B`, then `C`), are
//! optional with `Option<O>`, and can be boxed as a [`BoxObserver`] (chosen at run time,
//! cloned per request). Dispatch is static, so an observer that does nothing costs nothing.
//!
//! # When the hooks run
//!
//! | hook | when | how often |
//! |---|---|---|
//! | [`on_request`](Observer::on_request) | the request reaches the layer | once |
//! | [`on_response`](Observer::on_response) | the upstream's response head arrives and it is a stream | once |
//! | [`on_event`](Observer::on_event) | an upstream event is complete, before it is forwarded | per event |
//! | [`on_data`](Observer::on_data) | bytes are about to be handed to the client (not keep-alives) | per frame |
//! | [`on_end`](Observer::on_end) | the stream ended, just before the report goes to the sink | once |
//!
//! Hooks run inline in the body's `poll_frame` (and `on_end` possibly in its `Drop`): they
//! must be cheap, must not block and must not panic. Parse only the events you need.

use std::fmt;

use tokio::time::Instant;

use crate::provider::Provider;
use crate::report::StreamReport;
use crate::sse::EventRef;

/// Watches one stream, event by event.
///
/// The layer clones the observer you give it for every request, so each stream starts from
/// that state. Every hook has an empty default: implement the ones you need. Findings of
/// your own go into [`StreamReport::extensions`] in [`on_end`](Self::on_end), keyed by
/// their type, where the [`OnEnd`](crate::OnEnd) sink finds them.
///
/// An observer that counts the content events of each stream and the bytes of their text:
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::sse::EventRef;
/// use tower_sse::{EventContext, Observer, SseLayer, StreamReport};
/// use tower_sse::request::UploadBody;
///
/// /// What `ContentCounter` found in one stream.
/// #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// struct ContentStats {
///     events: u64,
///     text_bytes: usize,
/// }
///
/// /// Counts content events and the bytes of their text.
/// #[derive(Clone, Default)]
/// struct ContentCounter(ContentStats);
///
/// impl Observer for ContentCounter {
///     fn on_event(&mut self, _event: &EventRef<'_>, cx: &mut EventContext<'_>) {
///         // Content is decided by the provider format (here OpenAI Chat): the role-only
///         // chunk and `[DONE]` are not content.
///         if cx.is_content() {
///             self.0.events += 1;
///             self.0.text_bytes += cx.content_text().map_or(0, <[u8]>::len);
///         }
///     }
///
///     fn on_end(&mut self, report: &mut StreamReport) {
///         report.extensions.insert(self.0);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seen: Arc<Mutex<Option<ContentStats>>> = Arc::default();
/// let sink = seen.clone();
/// let layer = SseLayer::new()
///     .observer(ContentCounter::default())
///     .on_end(move |report: StreamReport| {
///         *sink.lock().unwrap() = report.extensions.get::<ContentStats>().copied();
///     });
///
/// // An upstream answering with an OpenAI Chat stream.
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let stream = concat!(
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
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
/// let stats = seen.lock().unwrap().expect("the observer wrote its findings");
/// assert_eq!(stats, ContentStats { events: 2, text_bytes: 5 });
/// # }
/// ```
///
/// Compose observers with a tuple, in the order their findings depend on each other:
/// `(UsageObserver::new(), TimingObserver::new(), ContentCounter::default())`. Tuples of up
/// to 16 observers are observers, and tuples nest (`((a, b), c)` is `(a, b, c)`), so any
/// number compose. [`SseLayer::observer`](crate::SseLayer::observer) takes one observer:
/// calling it again replaces the first, so give it the whole tuple.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tower-sse observer",
    label = "not a `tower_sse::Observer`",
    note = "implement `tower_sse::Observer` for it, or combine observers in a tuple of up to 16 (tuples nest: `((a, b), c)`)"
)]
pub trait Observer {
    /// The request reached the layer.
    #[inline]
    fn on_request(&mut self, request: &http::request::Parts) {
        let _ = request;
    }

    /// The upstream's response head arrived and the layer handles it as a stream.
    #[inline]
    fn on_response(&mut self, response: &http::response::Parts, report: &mut StreamReport) {
        let _ = (response, report);
    }

    /// An upstream event is complete and about to be forwarded.
    #[inline]
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        let _ = (event, cx);
    }

    /// These bytes are about to be handed to the client: upstream events, blocks and
    /// comments as forwarded, and error events this layer adds; never its keep-alives.
    #[inline]
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        let _ = (data, report);
    }

    /// The stream ended: write findings into the report.
    #[inline]
    fn on_end(&mut self, report: &mut StreamReport) {
        let _ = report;
    }
}

/// What an observer knows about the event it is looking at, and what it may do with it.
///
/// The layer makes one for each upstream event and hands it to
/// [`Observer::on_event`]: when the event's frame arrived, whether it carries content (and
/// its text), whether it reaches a client, the provider format, and the report so far. An
/// observer may also keep the event from the client with [`drop_event`](Self::drop_event).
///
/// [`EventContext::new`] drives an observer by hand, as in a unit test of your own observer:
///
/// ```
/// use tokio::time::Instant;
/// use tower_sse::provider::Provider;
/// use tower_sse::sse::EventRef;
/// use tower_sse::{EventContext, Observer, StreamReport};
///
/// /// Keeps the upstream's `event: ping` events from clients.
/// #[derive(Clone, Default)]
/// struct DropPings;
///
/// impl Observer for DropPings {
///     fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
///         if !cx.is_content() && event.event() == "ping" {
///             cx.drop_event();
///         }
///     }
/// }
///
/// let mut report = StreamReport::new(Instant::now());
/// let ping = EventRef::new(b"ping", b"{}", b"event: ping\ndata: {}\n\n");
/// let mut cx = EventContext::new(Instant::now(), false, Provider::Anthropic, &mut report);
/// DropPings.on_event(&ping, &mut cx);
/// assert!(!cx.is_forwarded());
/// assert_eq!(cx.provider(), Provider::Anthropic);
///
/// let delta = EventRef::new(b"content_block_delta", b"{}", b"event: content_block_delta\ndata: {}\n\n");
/// let mut cx = EventContext::new(Instant::now(), true, Provider::Anthropic, &mut report);
/// DropPings.on_event(&delta, &mut cx);
/// assert!(cx.is_forwarded());
/// ```
pub struct EventContext<'a> {
    pub(crate) at: Instant,
    pub(crate) content: bool,
    pub(crate) text: Option<&'a [u8]>,
    pub(crate) delivered: bool,
    pub(crate) forward: bool,
    pub(crate) provider: Provider,
    /// Whether `provider` was recognised from the stream's own events (read by the digest
    /// registry's terminal check).
    #[cfg_attr(not(feature = "registry"), allow(dead_code))]
    pub(crate) recognised: bool,
    pub(crate) report: &'a mut StreamReport,
}

impl<'a> EventContext<'a> {
    /// A context for driving an observer by hand (in tests, or outside the layer).
    pub fn new(
        at: Instant,
        content: bool,
        provider: Provider,
        report: &'a mut StreamReport,
    ) -> Self {
        Self {
            at,
            content,
            text: None,
            delivered: true,
            forward: true,
            provider,
            recognised: false,
            report,
        }
    }

    /// When the upstream frame that completed this event arrived (one clock read per
    /// frame, shared by the events in it).
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Whether the event carries content (text, reasoning or a tool-call delta), as decided
    /// by the provider format or the layer's content predicate.
    pub fn is_content(&self) -> bool {
        self.content
    }

    /// The text of a content event (its delta, as sent: JSON escapes not decoded), when the
    /// provider format puts it in one string value, as OpenAI Chat, Completions, Gemini and
    /// Ollama do. Found while deciding that the event is content, so reading it costs nothing.
    pub fn content_text(&self) -> Option<&'a [u8]> {
        self.text
    }

    /// Whether the event goes to a client. `false` while the upstream is drained after the
    /// client went away: count usage, but do not measure latency.
    pub fn is_delivered(&self) -> bool {
        self.delivered
    }

    /// The provider format of the stream.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Keep this event from the client. Later observers still see it, and the report still
    /// counts it.
    pub fn drop_event(&mut self) {
        self.forward = false;
    }

    /// Whether the event will be forwarded.
    pub fn is_forwarded(&self) -> bool {
        self.forward
    }

    /// The report being built: what the layer and earlier observers found so far.
    pub fn report(&mut self) -> &mut StreamReport {
        self.report
    }
}

impl fmt::Debug for EventContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("at", &self.at)
            .field("content", &self.content)
            .field("delivered", &self.delivered)
            .field("forward", &self.forward)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Observer for () {}

impl<O: Observer> Observer for Option<O> {
    fn on_request(&mut self, request: &http::request::Parts) {
        if let Some(o) = self {
            o.on_request(request);
        }
    }
    fn on_response(&mut self, response: &http::response::Parts, report: &mut StreamReport) {
        if let Some(o) = self {
            o.on_response(response, report);
        }
    }
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if let Some(o) = self {
            o.on_event(event, cx);
        }
    }
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        if let Some(o) = self {
            o.on_data(data, report);
        }
    }
    fn on_end(&mut self, report: &mut StreamReport) {
        if let Some(o) = self {
            o.on_end(report);
        }
    }
}

impl<O: Observer + ?Sized> Observer for Box<O> {
    fn on_request(&mut self, request: &http::request::Parts) {
        (**self).on_request(request);
    }
    fn on_response(&mut self, response: &http::response::Parts, report: &mut StreamReport) {
        (**self).on_response(response, report);
    }
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        (**self).on_event(event, cx);
    }
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        (**self).on_data(data, report);
    }
    fn on_end(&mut self, report: &mut StreamReport) {
        (**self).on_end(report);
    }
}

/// An observer of any type, boxed: for observers chosen at run time.
///
/// The layer clones its observer for every request, so a plain `Box<dyn Observer + Send>` is
/// not enough (it cannot be cloned); a `BoxObserver` clones the observer it holds. It is
/// `Send`, not `Sync` (the layer's service keeps its observer behind a lock, so the service
/// is `Send` and `Sync` all the same), and costs one allocation and a dynamic call per hook.
///
/// ```
/// use tower_sse::observe::BoxObserver;
/// use tower_sse::{SseLayer, TimingObserver, UsageObserver};
///
/// let detailed = std::env::var_os("DETAILED").is_some();
/// let observer = if detailed {
///     BoxObserver::new((UsageObserver::new(), TimingObserver::new()))
/// } else {
///     BoxObserver::new(UsageObserver::new())
/// };
/// let layer = SseLayer::new().observer(observer);
/// # let _ = layer;
/// ```
pub struct BoxObserver(Box<dyn CloneObserver>);

impl BoxObserver {
    /// Box `observer`.
    pub fn new<O: Observer + Clone + Send + 'static>(observer: O) -> Self {
        Self(Box::new(observer))
    }
}

/// An observer that clones itself into a box.
trait CloneObserver: Observer + Send {
    fn clone_box(&self) -> Box<dyn CloneObserver>;
}

impl<O: Observer + Clone + Send + 'static> CloneObserver for O {
    fn clone_box(&self) -> Box<dyn CloneObserver> {
        Box::new(self.clone())
    }
}

impl Clone for BoxObserver {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl fmt::Debug for BoxObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxObserver").finish_non_exhaustive()
    }
}

impl Observer for BoxObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.0.on_request(request);
    }
    fn on_response(&mut self, response: &http::response::Parts, report: &mut StreamReport) {
        self.0.on_response(response, report);
    }
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        self.0.on_event(event, cx);
    }
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        self.0.on_data(data, report);
    }
    fn on_end(&mut self, report: &mut StreamReport) {
        self.0.on_end(report);
    }
}

macro_rules! tuple_observer {
    ($($name:ident),+) => {
        #[allow(non_snake_case)]
        impl<$($name: Observer),+> Observer for ($($name,)+) {
            fn on_request(&mut self, request: &http::request::Parts) {
                let ($($name,)+) = self;
                $($name.on_request(request);)+
            }
            fn on_response(&mut self, response: &http::response::Parts, report: &mut StreamReport) {
                let ($($name,)+) = self;
                $($name.on_response(response, report);)+
            }
            #[inline]
            fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
                let ($($name,)+) = self;
                $($name.on_event(event, cx);)+
            }
            #[inline]
            fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
                let ($($name,)+) = self;
                $($name.on_data(data, report);)+
            }
            fn on_end(&mut self, report: &mut StreamReport) {
                let ($($name,)+) = self;
                $($name.on_end(report);)+
            }
        }
    };
}

tuple_observer!(A);
tuple_observer!(A, B);
tuple_observer!(A, B, C);
tuple_observer!(A, B, C, D);
tuple_observer!(A, B, C, D, E);
tuple_observer!(A, B, C, D, E, F);
tuple_observer!(A, B, C, D, E, F, G);
tuple_observer!(A, B, C, D, E, F, G, H);
tuple_observer!(A, B, C, D, E, F, G, H, I);
tuple_observer!(A, B, C, D, E, F, G, H, I, J);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K, L);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K, L, M);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K, L, M, N);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, P);
tuple_observer!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, P, Q);

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends its number to the report's log at each hook, to check the order.
    #[derive(Clone)]
    struct Nth(u8);

    #[derive(Clone, Default)]
    struct Log(Vec<u8>);

    impl Observer for Nth {
        fn on_end(&mut self, report: &mut StreamReport) {
            let mut log = report.extensions.remove::<Log>().unwrap_or_default();
            log.0.push(self.0);
            report.extensions.insert(log);
        }
    }

    fn run(mut observer: impl Observer) -> Vec<u8> {
        let mut report = StreamReport::new(Instant::now());
        observer.on_end(&mut report);
        report
            .extensions
            .get::<Log>()
            .map(|log| log.0.clone())
            .unwrap_or_default()
    }

    #[test]
    fn tuples_of_up_to_sixteen_observers_run_in_order() {
        let nine = (
            Nth(1),
            Nth(2),
            Nth(3),
            Nth(4),
            Nth(5),
            Nth(6),
            Nth(7),
            Nth(8),
            Nth(9),
        );
        assert_eq!(run(nine), (1..=9).collect::<Vec<_>>());
        let sixteen = (
            Nth(1),
            Nth(2),
            Nth(3),
            Nth(4),
            Nth(5),
            Nth(6),
            Nth(7),
            Nth(8),
            Nth(9),
            Nth(10),
            Nth(11),
            Nth(12),
            Nth(13),
            Nth(14),
            Nth(15),
            Nth(16),
        );
        assert_eq!(run(sixteen), (1..=16).collect::<Vec<_>>());
        // Nested tuples compose any number.
        let nested = (
            (Nth(1), Nth(2)),
            (Nth(3), (Nth(4), None::<Nth>, Some(Nth(5)))),
        );
        assert_eq!(run(nested), vec![1, 2, 3, 4, 5]);
    }
}

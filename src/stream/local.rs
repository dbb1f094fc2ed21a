//! Where a stack runs: on any thread ([`AnyThread`], the default), or on one thread only
//! ([`Local`], a `LocalSet` or a current-thread runtime), with no `Send` asked.

/// The default of [`SseLayer`](crate::SseLayer) and [`Sse`](crate::stream::Sse): the stack
/// may run on any thread. Early responses and drains after a disconnect are available; the
/// inner future, the response body, the observer and the sink are asked `Send + 'static`
/// (an early response boxes the upstream call into the body as a `Send` future, and a
/// drain spawns a task).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyThread;

/// A stack that runs on one thread, such as a `tokio::task::LocalSet` (see
/// [`SseLayer::local`](crate::SseLayer::local)): nothing is asked to be `Send` or
/// `'static`, as with tower-http's `TimeoutLayer`. In exchange it never answers early
/// ([`early_response`](crate::SseLayer::early_response): a streaming request waits for its
/// head, as without it) and never drains after a disconnect
/// (`SseLayer::drain_on_disconnect`, feature `drain`: the upstream is
/// cancelled and the disconnect reported): both need a `Send` future or a spawned task.
///
/// Without it, a service that is not `Send` is refused:
///
/// ```compile_fail
/// use std::rc::Rc;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::SseLayer;
///
/// let rc = Rc::new(());
/// let upstream = service_fn(move |_: Request<tower_sse::request::UploadBody<Full<bytes::Bytes>>>| {
///     let rc = rc.clone();
///     async move {
///         let _held = rc;
///         Ok::<_, std::convert::Infallible>(Response::new(Full::<bytes::Bytes>::default()))
///     }
/// });
/// // The future of `upstream` holds an `Rc`: `SseLayer::new()` asks for `Send`.
/// let _ = SseLayer::new().layer(upstream).oneshot(Request::new(Full::default()));
/// ```
///
/// and with it, accepted:
///
/// ```
/// use std::rc::Rc;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::SseLayer;
///
/// let rc = Rc::new(());
/// let upstream = service_fn(move |_: Request<tower_sse::request::UploadBody<Full<bytes::Bytes>>>| {
///     let rc = rc.clone();
///     async move {
///         let _held = rc;
///         Ok::<_, std::convert::Infallible>(Response::new(Full::<bytes::Bytes>::default()))
///     }
/// });
/// let _ = SseLayer::new().local().layer(upstream).oneshot(Request::new(Full::default()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

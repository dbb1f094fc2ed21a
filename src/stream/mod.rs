//! The stream layer: [`SseLayer`], its service, future and body, and the
//! settings it takes.
//!
//! | file | role |
//! |---|---|
//! | `layer.rs` | [`SseLayer`]: the builder of settings |
//! | `service.rs` | [`Sse`]: classifies the request, answers early or waits for the head |
//! | `future.rs` | [`SseFuture`]: the response head, its deadline, the report of requests that end before it |
//! | `body.rs` | [`SseBody`]: the poll loop: upstream frames, the one timer, the end |
//! | `engine.rs` | decode once, classify, observe, queue whole events (no I/O, no timers) |
//! | `deadline.rs` | every timer rule, once |
//! | `drain.rs` | reading on after a client disconnect (feature `drain`) |
//! | `shutdown.rs` | [`Shutdown`]: ending every open stream when the server shuts down |
//! | `config.rs` | [`KeepAliveConfig`](crate::KeepAliveConfig), [`ErrorEvent`](crate::ErrorEvent), the other settings |
//!
//! # What the layers ask of the types around them
//!
//! | layer | asks | why |
//! |---|---|---|
//! | [`SseLayer`] | observer `O: Observer + Clone + Send + 'static`, sink `E: OnEnd + Clone + Send + 'static` | cloned for every request; held by value, so never `Sync` |
//! | [`SseLayer`] | inner future and response body `Send + 'static` | an early response boxes the upstream call into the body, and a drain after a disconnect spawns a task with the upstream body, the observer and the sink: both are settings chosen at run time, so the bounds hold on every path |
//! | [`SseLayer`] | request body `B: Body`; the inner service takes `Request<UploadBody<B>>` ([`UploadBody`](crate::request::UploadBody)) | every body is held to the upload deadline ([`SseLayer::upload_timeout`]), so that a stalled upload is answered `408` and frees its permit; `Send`/`Unpin` when `B` is |
//! | [`SseLayer::local`] | no `Send`, no `'static`: observer and sink `Clone`, response body `Body<Data = Bytes>` | for a stack on one thread (a `LocalSet`): it never answers early nor drains, the only paths that box a `Send` future or spawn |
//! | [`StreamLimitLayer`](crate::StreamLimitLayer) | `ResBody: Body<Data = Bytes>`, a `Clone` stream predicate | nothing is boxed or spawned: no `Send` asked |
//! | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | inner service `Clone + Send + 'static` and its future `Send + 'static`; request body `Send + 'static` (not `Unpin`) | the future is boxed; it holds a clone of the inner service, made ready again once the body is read (no `Buffer` slot or `ConcurrencyLimit` permit is held through an upload) |
//! | `ResumeLayer` (feature `resume`) | inner future, error and response body `Send + 'static` | a resumable stream's body is read by a spawned producer task; a disabled layer passes the inner future through unboxed, and an enabled one boxes only resumes and the start of a stream (an answer that is not a stream costs one request extension) |
//!
//! And what they give:
//!
//! - Services are `Send` when their inner service, observer and sink are (an observer with a
//!   `Cell` is fine), and `Sync` when those are `Sync`: hyper-util, tonic and axum take them
//!   on a multi-thread runtime.
//! - Bodies are `Send` when their parts are, and `Sync` when their parts are `Sync`
//!   ([`SseBody`] keeps its pending upstream call in a `SyncWrapper`), so they box into
//!   http-body-util's `BoxBody`.
//! - A boxed observer chosen at run time is a [`BoxObserver`](crate::observe::BoxObserver) (the layer
//!   clones its observer, so `Box<dyn Observer>` alone is not enough).
//! - Response futures panic when polled after completion, as tower-http's do.
//!
//! A stack that is not `Send` (one run on a `LocalSet`) is refused by a plain [`SseLayer`]
//! even when it never answers early nor drains: its bounds are those of its `Service`
//! implementation, the same for every request (moving them onto the boxing paths alone
//! would make the pending upstream call a type parameter of [`SseBody`], a breaking
//! change). [`SseLayer::local`] gives the other implementation, chosen by type
//! ([`Local`]): the same service, future and body, without the two paths that need `Send`.
//! [`SseBody`] is also `Default` (empty), so tower-http's `TimeoutLayer` wraps the layer.

pub(crate) mod body;
pub(crate) mod config;
pub(crate) mod deadline;
#[cfg(feature = "drain")]
pub(crate) mod drain;
pub(crate) mod engine;
pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod local;
pub(crate) mod service;
pub(crate) mod shutdown;

pub use self::body::SseBody;
pub use self::config::UpstreamErrorPolicy;
pub use self::future::SseFuture;
pub use self::layer::SseLayer;
pub use self::local::{AnyThread, Local};
pub use self::service::Sse;

/// Renamed to [`Sse`] (a service `Foo` with its layer `FooLayer`, as in tower-http).
#[deprecated(note = "renamed to `Sse`")]
pub type SseService<S, O = (), E = ()> = Sse<S, O, E>;
pub use self::shutdown::Shutdown;

/// Moved to [`tower_sse::framing::Framing`](crate::framing::Framing).
#[deprecated(note = "moved to `tower_sse::framing::Framing`")]
pub type Framing = crate::framing::Framing;

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

pub(crate) mod body;
pub(crate) mod config;
pub(crate) mod deadline;
#[cfg(feature = "drain")]
pub(crate) mod drain;
pub(crate) mod engine;
pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod service;
pub(crate) mod shutdown;

pub use self::body::SseBody;
pub use self::config::UpstreamErrorPolicy;
pub use self::future::SseFuture;
pub use self::layer::SseLayer;
pub use self::service::Sse;

/// Renamed to [`Sse`] (a service `Foo` with its layer `FooLayer`, as in tower-http).
#[deprecated(note = "renamed to `Sse`")]
pub type SseService<S, O = (), E = ()> = Sse<S, O, E>;
pub use self::shutdown::Shutdown;

/// Moved to [`tower_sse::framing::Framing`](crate::framing::Framing).
#[deprecated(note = "moved to `tower_sse::framing::Framing`")]
pub type Framing = crate::framing::Framing;

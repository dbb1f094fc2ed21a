//! Latency of a stream, event by event: time to first byte, time to first token,
//! inter-token latency.
//!
//! "Token" means a **content event** delivered to the client: a text, reasoning or tool-call
//! delta, as the provider format (or the layer's
//! [`content_predicate`](crate::SseLayer::content_predicate)) decides. A role-only first
//! chunk, `message_start`, `response.created`, pings and comments do not stop the clock —
//! gateways that let them report a time to first token that is far too short.
//!
//! Times are stamped with the one clock read the layer makes per upstream frame, as the frame
//! is decoded (its events go to the client in the same poll), and measured from the request's
//! arrival at the layer. Events drained after a client went away are not counted.
//!
//! # Differences from tower-http's `TraceLayer`
//!
//! `TraceLayer` sees body chunks; a chunk can hold half an event or ten of them. This
//! observer sees whole events, and only the ones that carry content.

mod histogram;
mod observer;

pub use self::observer::TimingObserver;

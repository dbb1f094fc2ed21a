//! Tower middleware for Server-Sent Events and other streaming HTTP responses.
//!
//! The wire-format core lives in [`sse`]: an incremental, spec-exact, zero-copy and bounded
//! [`Decoder`](sse::Decoder), and an [`Event`](sse::Event) encoder.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings, rust_2018_idioms), allow(dead_code))
))]

mod body;
mod config;
#[cfg(feature = "drain")]
mod drain;
mod engine;
pub mod include_usage;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
mod provider;
mod reframe;
mod report;
#[cfg(feature = "tracing")]
mod trace;
pub mod sse;

pub use body::SseBody;
pub use config::{ErrorEvent, KeepAlive, StreamingRequest, UpstreamErrorPolicy};
pub use include_usage::{IncludeUsage, IncludeUsageLayer, UsageInjected};
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use trace::TraceObserver;
pub use layer::{Sse, SseFuture, SseLayer};
pub use observe::digest::Digest;
pub use observe::timing::{Latencies, Timing, TimingObserver};
pub use observe::usage::{Usage, UsageSource};
pub use observe::{EventContext, Observer};
pub use provider::Provider;
pub use report::{Framing, OnEnd, Outcome, StreamReport};

// --- usage (observe/usage): exports added here ---
pub use observe::usage::{
    BuiltinExtractor, CacheCreationInputTokens, HeuristicCounter, TokenCounter, UsageExtractor,
    UsageObserver, UsageState,
};
// --- end usage ---

// --- digest, registry, limit: modules and exports added here ---
pub mod limit;
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub mod registry;
pub mod request_digest;

pub use limit::{
    ContentTypeIsStream, OpenStreams, StreamLimit, StreamLimitBody, StreamLimitFuture,
    StreamLimitLayer, StreamPredicate, WhenFull,
};
pub use observe::digest::DigestObserver;
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use registry::{DigestRecord, DigestRegistration, DigestRegistry, DigestRegistryBuilder};
pub use request_digest::{
    RequestDigest, RequestDigestBody, RequestDigestHandle, RequestDigestLayer,
};
// --- end digest, registry, limit ---

/// The error type of bodies that add failure modes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;

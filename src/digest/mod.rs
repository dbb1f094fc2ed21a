//! Digests: SHA-256 of what the client received ([`DigestObserver`]),
//! of what it sent ([`RequestDigestLayer`]), and a registry to look
//! them up by tenant and response id ([`DigestRegistry`], feature
//! `registry`).
//!
//! # The response digest
//!
//! SHA-256 of exactly what the client received: the [`DigestObserver`].
//!
//! ## When to use it
//!
//! To prove later what a client was sent (audits, disputes, "did the model really say
//! that?"), or to let a client check that it read the whole stream: the client hashes what it
//! read and compares with [`StreamReport::digest`](crate::StreamReport::digest), or with the
//! record a `DigestRegistry` keeps under the response id (feature `registry`).
//!
//! ## What is hashed
//!
//! Every byte handed to the client, in order, as the [`on_data`](crate::Observer::on_data)
//! hook sees it: upstream events, blocks and comments as forwarded, and the error events the
//! layer adds. Never the layer's own keep-alive comments, which depend on timing. Since the
//! layer forwards whole events byte for byte, the digest is the same for the same upstream
//! content whatever its chunking or timing. Slices are hashed as they pass: nothing is
//! buffered and nothing is allocated per event (SHA-256 runs at the hardware's speed;
//! `sha2` uses the SHA extensions when the CPU has them).
//!
//! ## Under a `ResumeLayer`
//!
//! With a `ResumeLayer` outside (feature `resume`), the client does
//! not read the `SseLayer`'s output: it reads the stream's log, each event stamped with an
//! `id: <stream>.<seq>` line (an event with an `id` of its own re-encoded with ours), the
//! upstream's comments left out, and its own connection's keep-alives added. The digest is
//! of that stamped stream (the observer re-cuts and stamps the events as the producer does),
//! so it is what a client that read the whole stream in one connection received, without
//! its keep-alive comments. How a client checks it across resumes is in the `resume` module
//! docs, section "The digest across resumes".
//!
//! How it differs from hashing the upstream body yourself (in a tower-http
//! `MapResponseBody`, say): that hashes what the upstream sent, chunk by chunk, including
//! events the layer held back or cut short; this hashes what the client got.
//!
//! ## When the hooks write
//!
//! | hook | what it does |
//! |---|---|
//! | `on_request` | picks up the [`RequestDigestHandle`] that [`RequestDigestLayer`] put into the request extensions, if any |
//! | `on_event` | with a registry: notes a terminal event (see below) |
//! | `on_data` | hashes the frame; with a registry, right after the frame holding a terminal event, inserts the record |
//! | `on_end` | writes [`digest`](crate::StreamReport::digest) and [`request_digest`](crate::StreamReport::request_digest); with a registry, inserts or updates the record and adds a `DigestRegistration` to the report's extensions |
//!
//! `report.request_digest` is `Some` only when the request went through a
//! [`RequestDigestLayer`] placed *outside* the
//! [`SseLayer`](crate::SseLayer) and its body was read to its end by the time the stream
//! ended; it is `None` when the request body was not read to its end, failed, or was dropped.
//!
//! ## Registry timing (feature `registry`)
//!
//! A client that reads the end of its stream and at once asks for the digest must find it.
//! So the record is inserted *before* the frame holding the stream's terminal event is
//! released to the client: `data: [DONE]` (OpenAI and compatibles), Anthropic
//! `message_stop`, Responses `response.completed` / `response.incomplete` /
//! `response.failed`, and Ollama's `"done": true` line: the terminal event of the format the
//! stream's events showed, or, while the format is only guessed from the request path, any
//! format's that cannot be mistaken for another's. Streams without a terminal event
//! (Gemini, custom formats) are inserted when they end, which is before the client sees the
//! end of the body. If bytes follow the terminal event (a trailing comment, an error event),
//! the record is updated when the stream ends, so the record always ends up with the digest
//! of everything the client received.
//!
//! There is no record without a response id (see
//! [`StreamReport::response_id`](crate::StreamReport::response_id)); the report then says
//! why in its extensions. A response id seen again for the same tenant (a replayed or buggy
//! upstream) replaces that tenant's earlier record: last writer wins, within a tenant only.
//!
//! # The request digest
//!
//! SHA-256 of the request body, as the service reads it: [`RequestDigestLayer`].
//!
//! ## When to use it
//!
//! With a [`DigestObserver`], to put the digest of what the client
//! asked next to the digest of what it received, in
//! [`StreamReport::request_digest`](crate::StreamReport::request_digest) and in the
//! `DigestRegistry` record (feature `registry`). Or on its own: a handler reads the
//! [`RequestDigestHandle`] from the request extensions once it has consumed the body.
//!
//! ## How
//!
//! The layer wraps the request body in a [`RequestDigestBody`] that hashes every data frame
//! as the inner service polls it: nothing is buffered, the body is not read ahead and its
//! hints (`size_hint`, `is_end_stream`) are passed on. It also inserts a
//! [`RequestDigestHandle`], a shared slot, into the request extensions. The slot is filled
//! once, when the body has been read to its end:
//!
//! - the body returned `None`, sent trailers, or said `is_end_stream()` after a frame;
//! - or it was already at its end when the request arrived (an empty body: the digest is
//!   the SHA-256 of nothing, even if nobody polls it).
//!
//! It stays empty (`None`) when the body failed, was dropped before its end, or was not
//! (yet) read to its end.
//!
//! Place it **outside** the [`SseLayer`](crate::SseLayer) (earlier in a `ServiceBuilder`),
//! so that the observer finds the handle when the request passes the stream layer:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_sse::{DigestObserver, RequestDigestLayer, SseLayer};
//!
//! let layers = ServiceBuilder::new()
//!     .layer(RequestDigestLayer::new())
//!     .layer(SseLayer::new().observer(DigestObserver::new()));
//! # let _ = layers;
//! ```
//!
//! How it differs from buffering the body in a middleware (e.g. `axum::body::to_bytes`
//! followed by a hash): the body still streams to the upstream, and memory does not grow
//! with its size.
//!
//! # The registry
//!
//! Digests by tenant and response id, for a client that asks after its stream:
//! [`DigestRegistry`].
//!
//! ## When to use it
//!
//! When clients (or auditors) need to fetch the digest of a stream they received, e.g. with
//! `GET /v1/digests/{response_id}`, to check that they read every byte the server sent. A
//! [`DigestObserver`] built
//! [`with_registry`][with_registry] records every stream that carries
//! a response id; a handler looks records up with [`DigestRegistry::get`][registry_get] and answers with
//! [`DigestRecord::to_json`] (or any serde format).
//!
//! ## Tenants
//!
//! Response ids are not secrets and not unique: Ollama's OpenAI-compatible ids are
//! `chatcmpl-` and a number below 1000, and any upstream can repeat one. So every record
//! carries the [`Tenant`] that made the request, and the registry is keyed by (tenant,
//! response id): a client finds only its own records, and its streams never replace another
//! client's. A record holds the SHA-256 of the request, which confirms a guessed prompt: it
//! must not be readable by others.
//!
//! The tenant is found by the registry's [`TenantKey`]
//! ([`DigestRegistryBuilder::tenant_key`]): by default the first 16 bytes of the SHA-256 of
//! the request's first credential (bearer token, `x-api-key`, `x-goog-api-key`, the `key`
//! query parameter, `api-key`: [`Tenant`](crate::request::Tenant) has the order), never the
//! credential itself, and anonymous without one
//! (every client without credentials shares that tenant). A lookup handler asks the
//! registry for the tenant of the lookup request, and answers `404` both for no record and
//! for another tenant's, so that nobody learns that an id exists (see
//! [`DigestRegistry::tenant_of`][registry_tenant_of] for such a handler).
//!
//! How it differs from reading [`StreamReport::digest`](crate::StreamReport::digest) in the
//! `on_end` sink: the record is there *before* the client reads the terminal event, so a
//! client that asks right after the end always finds it (a race that production gateways
//! have shipped, by recording in the end-of-stream callback).
//!
//! ## Bounds
//!
//! - At most [`max_capacity`][builder_max_capacity] records (default
//!   10 000), least recently used evicted first. The bound is kept by moka's maintenance,
//!   which runs inline on inserts and lookups (every 64 writes, or once 300 ms passed): in
//!   between, a few hundred extra records may briefly be held.
//! - Each record lives for [`time_to_live`][builder_time_to_live] after its
//!   last insert (default 10 minutes). [`get`][registry_get] measures the age with
//!   Tokio's clock (so paused time in tests applies); moka frees the memory by its own
//!   clock after the same time.
//! - Response ids and model names longer than
//!   [`max_id_len`][builder_max_id_len] bytes (default 256) are not stored
//!   (the record is skipped, or the model left out), so an upstream cannot make one record
//!   large. With the defaults a full registry holds about 6 MiB of typical records (about
//!   600 bytes each, cache bookkeeping included, as measured), and more with every id and
//!   model name at the limit.
//!
//! Inserting takes a short lock-free path on the polling thread (moka's sync cache, no
//! runtime needed). A response id seen again for the same tenant replaces its earlier
//! record. Streams that end
//! badly (an upstream error, a deadline, a client that left) are recorded too: the record
//! holds the digest of what the client did receive.
//!
// The registry's items exist with feature `registry` only: without it (a per-feature docs
// build), the links lead to the crate's feature table instead.
#![cfg_attr(
    feature = "registry",
    doc = "
[`DigestRegistry`]: crate::DigestRegistry
[with_registry]: crate::DigestObserver::with_registry
[registry_get]: crate::DigestRegistry::get
[registry_tenant_of]: crate::DigestRegistry::tenant_of
[`DigestRecord::to_json`]: crate::digest::DigestRecord::to_json
[`DigestRegistryBuilder::tenant_key`]: crate::digest::DigestRegistryBuilder::tenant_key
[builder_max_capacity]: crate::digest::DigestRegistryBuilder::max_capacity
[builder_time_to_live]: crate::digest::DigestRegistryBuilder::time_to_live
[builder_max_id_len]: crate::digest::DigestRegistryBuilder::max_id_len"
)]
#![cfg_attr(
    not(feature = "registry"),
    doc = "
[`DigestRegistry`]: crate#feature-flags
[with_registry]: crate#feature-flags
[registry_get]: crate#feature-flags
[registry_tenant_of]: crate#feature-flags
[`DigestRecord::to_json`]: crate#feature-flags
[`DigestRegistryBuilder::tenant_key`]: crate#feature-flags
[builder_max_capacity]: crate#feature-flags
[builder_time_to_live]: crate#feature-flags
[builder_max_id_len]: crate#feature-flags"
)]

pub(crate) mod observer;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "registry")]
pub(crate) mod registry;
pub(crate) mod request;
#[cfg(feature = "registry")]
pub(crate) mod shared;
#[cfg(feature = "resume")]
mod stamped;

pub use self::observer::DigestObserver;
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use self::registry::{DigestRecord, DigestRegistration, DigestRegistry, DigestRegistryBuilder};
pub use self::request::{
    RequestDigest, RequestDigestBody, RequestDigestHandle, RequestDigestLayer,
};
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use self::shared::SharedDigests;

/// Renamed to [`BoxFuture<'static, T>`](crate::BoxFuture): the crate has one boxed-future alias.
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
#[deprecated(note = "use `tower_sse::BoxFuture<'static, T>`")]
pub type SharedFuture<T> = crate::BoxFuture<'static, T>;

/// Moved to [`tower_sse::request::Tenant`](crate::request::Tenant), its one public path.
#[deprecated(note = "use `tower_sse::request::Tenant`")]
pub type Tenant = crate::request::Tenant;

/// Moved to [`tower_sse::request::TenantKey`](crate::request::TenantKey), its one public path.
#[deprecated(note = "use `tower_sse::request::TenantKey`")]
pub type TenantKey = crate::request::TenantKey;

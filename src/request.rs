//! Request markers that layers leave in a request's extensions for the layers and observers
//! further in.
//!
//! | marker | set by | read by |
//! |---|---|---|
//! | [`StreamingRequest`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) (a JSON body with `"stream": true`), or you | [`SseLayer`](crate::SseLayer): deadlines before the head, early response |
//! | [`UsageInjected`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`UsageObserver`](crate::UsageObserver): hides the usage-only chunk |
//! | [`Arrival`] | the outermost tower-sse layer | every tower-sse layer: deadlines and latencies count from it |
//! | [`UploadTimedOut`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) (the body did not arrive in time); also the error of an [`UploadBody`] past its deadline | [`SseLayer`](crate::SseLayer): answers `408` and reports |
//! | (an upload watch, private) | [`UploadDeadlineLayer`], [`IncludeUsageLayer`](crate::IncludeUsageLayer) (a body handed on as it comes) | [`SseLayer`](crate::SseLayer): keeps that deadline (adds none), answers `408` when the body timed out before the answer |
//! | [`RequestModel`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`MetricsObserver`][MetricsObserver]: `gen_ai.request.model` |
//!
//! A request body a layer read before its inner service, whole or up to a bound, is handed
//! on as a [`KeptBody`].
//!
//! # Upload deadlines
//!
//! [`SseLayer`](crate::SseLayer) hands its inner service every request body as an
//! [`UploadBody`], held to [`SseLayer::upload_timeout`](crate::SseLayer::upload_timeout)
//! (default [`DEFAULT_UPLOAD_TIMEOUT`], 60 s) counted from the request's [`Arrival`], with or
//! without `Accept: text/event-stream`, on every path. A body still incomplete at the
//! deadline fails with [`UploadTimedOut`]; if the inner service had not answered by then,
//! the client gets `408 Request Timeout` whatever the inner service answered, the report
//! says [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout), and a
//! [`StreamLimitLayer`](crate::StreamLimitLayer) outside gets its permit back. A plain
//! `SseLayer` (no other layer) is protected this way: a service under it that names its
//! body type takes `Request<UploadBody<B>>`; one generic over the body (axum's `Router`,
//! tonic, tower-http, hyper clients) needs no change.
//!
//! [`UploadDeadlineLayer`] (and [`IncludeUsageLayer`](crate::IncludeUsageLayer), for the
//! requests it sees) sets the deadline further out: an `SseLayer` inside keeps that one and
//! adds none.
//!
//! And who a request is from: its [`Tenant`], found by a [`TenantKey`] (by default from its
//! credentials: bearer token, `x-api-key`, `x-goog-api-key`, `?key=`, `api-key`), under
//! which the data kept about its stream is stored and looked up.
//!
// Without feature `metrics` (a per-feature docs build), the link leads to the feature table.
#![cfg_attr(
    feature = "metrics",
    doc = "\n[MetricsObserver]: crate::MetricsObserver"
)]
#![cfg_attr(
    not(feature = "metrics"),
    doc = "\n[MetricsObserver]: crate#feature-flags"
)]

mod kept;
mod upload;

use std::fmt;
use std::sync::Arc;

use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderMap, HeaderName};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

pub use self::kept::KeptBody;
pub(crate) use self::kept::{ReadUpTo, read_up_to};
pub(crate) use self::upload::UploadWatch;
pub use self::upload::{DEFAULT_UPLOAD_TIMEOUT, UploadBody, UploadDeadline, UploadDeadlineLayer};

/// When the request reached the outermost tower-sse layer: the stream's deadlines (first
/// event, total) and its latencies count from here, so that they also cover the time spent
/// reading the request body in an outer layer (a stalled upload cannot hold a stream's permit
/// past them).
///
/// Each tower-sse layer inserts it when it is not there yet; insert it yourself in an outer
/// layer to count from earlier still:
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_sse::request::Arrival;
/// use tower_sse::{SseLayer, StreamLimitLayer};
///
/// let stack = ServiceBuilder::new()
///     // Outermost: the deadlines also cover the time spent in the layers below.
///     .map_request(|mut request: http::Request<String>| {
///         request.extensions_mut().insert(Arrival(tokio::time::Instant::now()));
///         request
///     })
///     .layer(StreamLimitLayer::new(64))
///     .layer(SseLayer::new());
/// # let _ = stack;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival(pub Instant);

impl Arrival {
    /// The arrival of this request: the one an outer layer stamped, or now (stamped).
    pub(crate) fn stamp(extensions: &mut http::Extensions) -> Instant {
        if let Some(arrival) = extensions.get::<Arrival>() {
            return arrival.0;
        }
        let now = Instant::now();
        extensions.insert(Arrival(now));
        now
    }
}

/// A request body did not arrive before its upload deadline: both a request marker and
/// the error of the body.
///
/// - As a marker, set on a request by [`IncludeUsageLayer`](crate::IncludeUsageLayer) when
///   the body it reads did not arrive in time: the body the inner service gets fails at once
///   (it is incomplete). [`SseLayer`](crate::SseLayer) answers such a request `408 Request
///   Timeout` without calling its inner service.
/// - As an error, the error of an [`UploadBody`] (and of the bodies `IncludeUsageLayer`
///   hands on) read past its deadline: downcast the [`BoxError`](crate::BoxError) to
///   find it. `SseLayer` answers `408` too when such a body timed out before the inner
///   service answered, whatever that answer was.
///
/// Either way the request is reported with
/// [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout).
///
/// ```
/// use tower_sse::BoxError;
/// use tower_sse::request::UploadTimedOut;
///
/// let error: BoxError = Box::new(UploadTimedOut);
/// assert!(error.is::<UploadTimedOut>());
/// assert_eq!(error.to_string(), "the request body did not arrive in time");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadTimedOut;

impl fmt::Display for UploadTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for UploadTimedOut {}

/// Marks a request as a streaming one, for layers further in.
///
/// [`IncludeUsageLayer`](crate::IncludeUsageLayer) inserts it into the request extensions
/// when the JSON body says `"stream": true`; insert it yourself from any layer that knows.
/// [`SseLayer`](crate::SseLayer) treats such requests (and those that accept
/// `text/event-stream`) as streams before their response arrives.
///
/// ```
/// use tower_sse::request::StreamingRequest;
///
/// // A route that always streams, whatever its body says.
/// let mut request = http::Request::post("/v1/agents/run").body(()).unwrap();
/// request.extensions_mut().insert(StreamingRequest);
/// assert!(request.extensions().get::<StreamingRequest>().is_some());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamingRequest;

/// Whether a request surely wants a stream: it carries [`StreamingRequest`], or every media
/// range its `Accept` lists is `text/event-stream`. Only then may a layer answer with a stream
/// before the upstream did: an MCP Streamable-HTTP client accepts `application/json,
/// text/event-stream`, and a JSON answer to it must reach it as JSON.
pub(crate) fn surely_streams(request: &http::request::Parts) -> bool {
    if request.extensions.get::<StreamingRequest>().is_some() {
        return true;
    }
    let mut ranges = request
        .headers
        .get_all(ACCEPT)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|range| {
            let media = range.split(|&b| b == b';').next().unwrap_or_default();
            media.trim_ascii()
        })
        .filter(|media| !media.is_empty())
        .peekable();
    ranges.peek().is_some() && ranges.all(|media| media.eq_ignore_ascii_case(b"text/event-stream"))
}

/// The default "is this a streaming request?" test: marked, accepting `text/event-stream`,
/// or to a path that streams whatever the body says (Gemini's `:streamGenerateContent`), so
/// that the deadlines before the head protect a plain `SseLayer` there too.
pub(crate) fn is_streaming_request(request: &http::request::Parts) -> bool {
    request.extensions.get::<StreamingRequest>().is_some()
        || request.uri.path().contains(":streamGenerateContent")
        || request.headers.get_all(ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
}

/// Set on a request by [`IncludeUsageLayer`](crate::IncludeUsageLayer) when it added `stream_options.include_usage`
/// that the client did not ask for. The usage observer then keeps the upstream's usage-only
/// chunk from the client while still reading its usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageInjected;

/// The model the request asked for (`"model"` of the JSON body), set on streaming requests
/// by [`IncludeUsageLayer`](crate::IncludeUsageLayer); the metrics observer reports it as `gen_ai.request.model`.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::IncludeUsageLayer;
/// use tower_sse::include_usage::UsageRequestBody;
/// use tower_sse::request::{RequestModel, StreamingRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|request: Request<UsageRequestBody<Full<Bytes>>>| async move {
///     // What the layer found in the body, for the layers and observers further in.
///     assert_eq!(request.extensions().get::<RequestModel>(), Some(&RequestModel("gpt-4o".into())));
///     assert!(request.extensions().get::<StreamingRequest>().is_some());
///     Ok::<_, std::convert::Infallible>(Response::new(()))
/// });
/// let body = Full::new(Bytes::from_static(br#"{"model":"gpt-4o","stream":true}"#));
/// let request = Request::post("/v1/chat/completions").body(body).unwrap();
/// IncludeUsageLayer::new().layer(inner).oneshot(request).await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel(pub String);

/// Who a request is from: the key under which what is kept about its stream (the digest
/// record in a [`DigestRegistry`][DigestRegistry]) is stored and looked up, so that
/// one client can neither read nor overwrite another's.
///
/// A tenant is the first 16 bytes of the SHA-256 of a key — a bearer token, an API key, an
/// organisation id — never the key itself; or it is anonymous. It is `Copy`, 17 bytes, and
/// shows (in `Display`, `Debug` and serialized) as 32 lowercase hex digits, or `anonymous`
/// (`null` when serialized). An operator can compute a client's tenant from its token with
/// `printf %s "$TOKEN" | sha256sum | cut -c1-32`.
///
/// [`TenantKey`] says how a request's tenant is found. By default it is
/// [`Tenant::from_request`]: the first credential found, in this order,
///
/// 1. the bearer token of `Authorization` (OpenAI's and most others'; its whole value for
///    other schemes),
/// 2. the `x-api-key` header (Anthropic's),
/// 3. the `x-goog-api-key` header (Gemini's),
/// 4. the `key` query parameter (Gemini's, percent-decoded),
/// 5. the `api-key` header (Azure OpenAI's),
///
/// else anonymous. The same key sent in any of these places is the same tenant. All requests
/// without credentials share the anonymous tenant: a deployment without authentication has
/// one tenant.
///
/// ```
/// use http::Request;
/// use tower_sse::request::Tenant;
///
/// let alice = Request::get("/").header("authorization", "Bearer sk-alice").body(()).unwrap();
/// let bob = Request::get("/").header("authorization", "Bearer sk-bob").body(()).unwrap();
/// let nobody = Request::get("/").body(()).unwrap();
///
/// let tenant = Tenant::from_credentials(alice.headers());
/// assert_eq!(tenant, Tenant::from_key("sk-alice"));
/// assert_ne!(tenant, Tenant::from_credentials(bob.headers()));
/// assert!(Tenant::from_credentials(nobody.headers()).is_anonymous());
/// // Never the token itself:
/// assert!(!tenant.to_string().contains("alice"));
/// assert_eq!(tenant.to_string().len(), 32);
/// ```
#[cfg_attr(
    feature = "registry",
    doc = "\n[DigestRegistry]: crate::DigestRegistry"
)]
#[cfg_attr(
    not(feature = "registry"),
    doc = "\n[DigestRegistry]: crate#feature-flags"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tenant(Option<[u8; Tenant::LEN]>);

impl Tenant {
    /// Bytes of SHA-256 kept: 128 bits, far from any collision among tenants.
    const LEN: usize = 16;

    /// The tenant of requests without credentials.
    pub const fn anonymous() -> Self {
        Self(None)
    }

    /// The tenant of this key (a token, an organisation id, ...): the first 16 bytes of its
    /// SHA-256. The key itself is not kept.
    pub fn from_key(key: impl AsRef<[u8]>) -> Self {
        let hash = Sha256::digest(key.as_ref());
        let mut id = [0; Self::LEN];
        id.copy_from_slice(&hash[..Self::LEN]);
        Self(Some(id))
    }

    /// The tenant of a request's credential headers: the token of `Authorization: Bearer
    /// <token>` (the scheme in any case), the whole `Authorization` value for other schemes,
    /// else the `x-api-key` header, else `x-goog-api-key`, else `api-key`; anonymous when
    /// there is none (or it is empty). The same key sent in any of them is the same tenant.
    ///
    /// Headers only: [`Tenant::from_request`] (the default [`TenantKey`]) also reads the
    /// `key` query parameter.
    pub fn from_credentials(headers: &HeaderMap) -> Self {
        Self::from_head(headers, None)
    }

    /// The tenant of a request: [`Tenant::from_credentials`] with Gemini's `key` query
    /// parameter between `x-goog-api-key` and `api-key` (see the order on [`Tenant`]).
    ///
    /// ```
    /// use http::Request;
    /// use tower_sse::request::Tenant;
    ///
    /// let gemini = |uri: &str| Request::post(uri).body(()).unwrap().into_parts().0;
    /// let header = Request::post("/v1beta/models/m:streamGenerateContent")
    ///     .header("x-goog-api-key", "AIza-alice")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts()
    ///     .0;
    /// let alice = Tenant::from_key("AIza-alice");
    /// assert_eq!(Tenant::from_request(&header), alice);
    /// assert_eq!(Tenant::from_request(&gemini("/v1beta/models/m:streamGenerateContent?alt=sse&key=AIza-alice")), alice);
    /// assert_ne!(Tenant::from_request(&gemini("/v1beta/models/m:streamGenerateContent?key=AIza-bob")), alice);
    /// ```
    pub fn from_request(request: &http::request::Parts) -> Self {
        Self::from_head(&request.headers, request.uri.query())
    }

    fn from_head(headers: &HeaderMap, query: Option<&str>) -> Self {
        let credential = |name| {
            headers
                .get(name)
                .map(|value| value.as_bytes().trim_ascii())
                .filter(|value| !value.is_empty())
        };
        if let Some(value) = credential(AUTHORIZATION) {
            let token = match value.split_at_checked(6) {
                Some((scheme, token))
                    if scheme.eq_ignore_ascii_case(b"bearer")
                        && token.first().is_none_or(u8::is_ascii_whitespace) =>
                {
                    token.trim_ascii()
                }
                _ => value,
            };
            if !token.is_empty() {
                return Self::from_key(token);
            }
        }
        if let Some(key) = credential(X_API_KEY).or_else(|| credential(X_GOOG_API_KEY)) {
            return Self::from_key(key);
        }
        if let Some(key) = query.and_then(query_key) {
            return Self::from_key(key);
        }
        match credential(API_KEY) {
            Some(key) => Self::from_key(key),
            None => Self::anonymous(),
        }
    }

    /// Whether this is the tenant of requests without credentials.
    pub const fn is_anonymous(&self) -> bool {
        self.0.is_none()
    }

    /// The tenant's 16 bytes; `None` for the anonymous tenant.
    pub const fn as_bytes(&self) -> Option<&[u8; 16]> {
        self.0.as_ref()
    }

    /// The tenant [`Display`](fmt::Display) wrote: 32 hex digits, or `anonymous`.
    #[cfg(feature = "redis")]
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text == "anonymous" {
            return Some(Self::anonymous());
        }
        crate::digits::hex_bytes(text).map(|bytes| Self(Some(bytes)))
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// The first non-empty `key` parameter of a query, percent-decoded (a `%` not followed by
/// two hex digits is kept as it is, `+` too: API keys hold neither).
fn query_key(query: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("key="))
        .map(|value| percent_decode(value.as_bytes()))
        .find(|key| !key.trim_ascii().is_empty())
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("anonymous"),
            Some(id) => f.write_str(crate::digits::hex(id, &mut [0; 32])),
        }
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({self})")
    }
}

impl serde::Serialize for Tenant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => serializer.serialize_none(),
            Some(_) => serializer.collect_str(self),
        }
    }
}

/// How a request's [`Tenant`] is found: [`Tenant::from_request`] by default, or a
/// function of yours over the request's head.
///
/// Give the same key to everything that keeps data per tenant (the
/// [`DigestRegistry`][DigestRegistry] with
/// [`DigestRegistryBuilder::tenant_key`][tenant_key]),
/// and look records up with the tenant it finds for the asking request. Cheap to clone (one
/// reference count, or none for the default).
///
/// Behind an authenticating layer that knows the caller's organisation, key by the
/// organisation rather than by the token (tokens rotate; an organisation's records should
/// not vanish with them):
///
/// ```
/// use tower_sse::request::{Tenant, TenantKey};
///
/// /// Put into the request extensions by your authentication layer.
/// #[derive(Clone)]
/// struct Org(String);
///
/// let key = TenantKey::from_fn(|request: &http::request::Parts| {
///     match request.extensions.get::<Org>() {
///         Some(org) => Tenant::from_key(&org.0),
///         None => Tenant::anonymous(),
///     }
/// });
/// let (mut parts, ()) = http::Request::new(()).into_parts();
/// parts.extensions.insert(Org("acme".into()));
/// assert_eq!(key.tenant(&parts), Tenant::from_key("acme"));
/// ```
#[cfg_attr(
    feature = "registry",
    doc = "\n[DigestRegistry]: crate::DigestRegistry"
)]
#[cfg_attr(
    not(feature = "registry"),
    doc = "\n[DigestRegistry]: crate#feature-flags"
)]
#[cfg_attr(
    feature = "registry",
    doc = "[tenant_key]: crate::digest::DigestRegistryBuilder::tenant_key"
)]
#[cfg_attr(not(feature = "registry"), doc = "[tenant_key]: crate#feature-flags")]
#[derive(Clone, Default)]
pub struct TenantKey {
    custom: Option<Arc<dyn Fn(&http::request::Parts) -> Tenant + Send + Sync>>,
}

impl TenantKey {
    /// The default: [`Tenant::from_request`], the first of the request's credentials in
    /// the order documented on [`Tenant`].
    pub fn credentials() -> Self {
        Self::default()
    }

    /// Your own function of the request's head.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Tenant + Send + Sync + 'static,
    {
        Self {
            custom: Some(Arc::new(f)),
        }
    }

    /// The tenant of this request.
    pub fn tenant(&self, request: &http::request::Parts) -> Tenant {
        match &self.custom {
            None => Tenant::from_request(request),
            Some(f) => f(request),
        }
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.custom {
            None => "TenantKey::credentials()",
            Some(_) => "TenantKey::from_fn(..)",
        })
    }
}

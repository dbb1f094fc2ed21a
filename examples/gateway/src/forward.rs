//! The innermost service: forward a request to the upstream with a pooled hyper-util client
//! (`http://`, or `https://` with the `tls` feature), minus the hop-by-hop headers; answer `502` when the
//! upstream cannot be reached, and log why (never a header, a query string or a body).
//!
//! Versions: the request is sent in the upstream's version ([`UpstreamVersion`]: HTTP/1.1,
//! or HTTP/2), never in the client's, which describes the client's connection only (the
//! pooled client refuses an HTTP/2 request on an HTTP/1.1 connection). The headers follow
//! the version sent:
//!
//! - hop-by-hop headers (`connection` and the ones it lists, `keep-alive`, `te`,
//!   `transfer-encoding`, `upgrade`, ...) are dropped both ways, whatever the versions: they
//!   describe one connection. HTTP/2 forbids them, and allows `te` only as `trailers`, which
//!   the gateway does not ask for;
//! - HTTP/1.1 upstream: `host` is the upstream's authority (an HTTP/2 client sent
//!   `:authority` instead, which is the gateway's);
//! - HTTP/2 upstream: no `host`; `:authority` (and `:scheme`) come from the upstream URL.
//!
//! Upgrades (`Connection: upgrade`, WebSocket): see `upgrade.rs`.
//!
//! The path of the upstream URL is a base path: the request's path follows it
//! ([`upstream_path`]).
//!
//! Encodings: behind the tower-sse stack, every request asks the upstream for
//! `Accept-Encoding: identity`, whatever the client accepts. A compressed event stream cannot
//! be read by the layers (no usage, events or content deadlines; they pass it as a
//! `Framing::Encoded` stream), and a streaming request cannot always be told from its head
//! (Ollama streams unless told not to), so the gateway asks every upstream answer to come
//! uncompressed; it does not compress answers itself. The bare pass-through forwards the
//! client's `Accept-Encoding`.
//!
//! The response keeps the upstream's version, for the log line and the report's
//! [`Versions`](crate::Versions); the server answers the client in the client's own version
//! whatever the response says.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::LengthLimitError;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use tower_sse::digest::RequestDigestBody;
use tower_sse::failover::{Failover, FailoverBody};
use tower_sse::include_usage::UsageRequestBody;

use crate::UPSTREAM_STREAMS;
use crate::connector::{Connector, UpstreamVersion};
use crate::os::{Warning, fd_limit_text, io_source, is_fd_exhaustion};

/// The request body the upstream client sends: the client's bytes, hashed as they go
/// (`RequestDigestLayer`), possibly rewritten to ask for usage (`IncludeUsageLayer`), and
/// held to the upload deadline (`SseLayer`).
pub(crate) type UpstreamRequestBody = tower_sse::request::UploadBody<
    UsageRequestBody<RequestDigestBody<tower_sse::budget::BudgetRequestBody<AxumBody>>>,
>;
/// The upstream's body, or the gateway's own error answer.
pub(crate) type UpstreamResponseBody = Either<Incoming, Full<Bytes>>;

/// Forwards a request to the upstream with a pooled client; answers `502` when it cannot.
///
/// Any request body is sent: [`UpstreamRequestBody`] behind the tower-sse stack (in a
/// `ReplayBody` with fallback upstreams), the client's own body in the bare pass-through
/// (`--stack bare`). It is boxed on the way in (an `axum::body::Body`, 16 bytes; the client's
/// own body is taken as it is), because hyper's client queues requests to each connection in
/// a channel whose first block holds 32 of them, allocated with the connection: with the
/// stack's body by value (488 bytes a request against 192) that block took 15.4 KB per
/// upstream connection instead of 6.9 KB (massif, 500 open streams; BENCHMARKS.md).
///
/// Its settings are behind one `Arc`: the layers above clone the service below them for
/// each request (tower's clone-and-swap for readiness), about seven times a request in the
/// full stack, and a pooled client with its URI cost a copy of a few hundred bytes and
/// several reference counts each time.
#[derive(Debug, Clone)]
pub(crate) struct Forward(Arc<Target>);

#[derive(Debug)]
struct Target {
    client: Client<Connector, AxumBody>,
    upstream: Uri,
    /// The version requests are sent in (the client's pool speaks it).
    version: UpstreamVersion,
    /// Ask the upstream for `Accept-Encoding: identity` (the tower-sse stack), or forward
    /// the client's (the bare pass-through).
    identity: bool,
}

impl Forward {
    /// Requests to `upstream` through `client`, in `version`; `identity`: ask the upstream
    /// for `Accept-Encoding: identity` (the tower-sse stack) rather than forward the
    /// client's (the bare pass-through).
    pub(crate) fn new(
        client: Client<Connector, AxumBody>,
        upstream: Uri,
        version: UpstreamVersion,
        identity: bool,
    ) -> Self {
        Self(Arc::new(Target {
            client,
            upstream,
            version,
            identity,
        }))
    }
}

/// The path and query sent upstream: the path of `--upstream` is a base path, which the
/// request's path follows (`http://h/prefix/v1` and `/chat/completions` give
/// `/prefix/v1/chat/completions`; one slash where they meet); a query in `--upstream`
/// (`?api-version=1`) comes first, then the request's.
fn upstream_path(base: &Uri, request: &Uri) -> String {
    let prefix = base.path().trim_end_matches('/');
    let path = request.path();
    let mut joined = String::with_capacity(prefix.len() + path.len() + 16);
    joined.push_str(prefix);
    if !path.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(path);
    let queries: Vec<&str> = [base.query(), request.query()]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        joined.push('?');
        joined.push_str(&queries.join("&"));
    }
    joined
}

impl<B> tower::Service<Request<B>> for Forward
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<UpstreamResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut request = request.map(AxumBody::new);
        let target = self.0.clone();
        let path = upstream_path(&target.upstream, request.uri());
        let mut parts = target.upstream.clone().into_parts();
        parts.path_and_query = path.parse().ok();
        let uri = Uri::from_parts(parts);
        if target.identity {
            // A compressed stream could not be read, so not metered (see the module's text).
            set_header(
                request.headers_mut(),
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let version = target.version.version();
        // Taken before the hop-by-hop headers go: an upgrade (WebSocket) is proxied.
        let upgrade = crate::upgrade::requested(&mut request);
        Box::pin(async move {
            let Ok(uri) = uri else {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "bad request path",
                ));
            };
            to_version(&mut request, &uri, version);
            if let Some(upgrade) = &upgrade {
                if version != Version::HTTP_11 {
                    return Ok(error_response(
                        StatusCode::NOT_IMPLEMENTED,
                        "upgrade_not_supported",
                        "protocol upgrades need an HTTP/1.1 upstream (--upstream-version 1.1)",
                    ));
                }
                upgrade.ask(request.headers_mut());
            }
            let method = request.method().clone();
            *request.uri_mut() = uri.clone();
            match target.client.request(request).await {
                Ok(mut response) => {
                    if let Some(upgrade) = upgrade
                        && response.status() == StatusCode::SWITCHING_PROTOCOLS
                    {
                        return Ok(upgrade
                            .switch(&mut response)
                            .map(|()| Either::Right(Full::default())));
                    }
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    fit_response_headers(&mut parts.headers);
                    // The crate's one framing rule: SSE, or NDJSON (the gateway reframes it).
                    if tower_sse::framing::detect(&parts.headers, true).is_some() {
                        metrics::counter!(UPSTREAM_STREAMS).increment(1);
                    }
                    Ok(Response::from_parts(parts, Either::Left(body)))
                }
                Err(e) if caused_by::<LengthLimitError>(&e) => Ok(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "the request body is larger than the gateway accepts",
                )),
                Err(e) => Ok(upstream_unreachable(&method, &uri, &e)),
            }
        })
    }
}

/// Make `request` one of `version` to `uri`: that version, no hop-by-hop header, and `host`
/// as that version wants it (see the module's text).
fn to_version<B>(request: &mut Request<B>, uri: &Uri, version: Version) {
    *request.version_mut() = version;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    if version == Version::HTTP_2 {
        // `:authority`, from the URI, says it.
        headers.remove(HOST);
    } else if let Some(authority) = uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        set_header(headers, HOST, host);
    }
}

/// Set `name` to `value`: in place when the request has exactly one, so that the map never
/// grows for it. `HeaderMap::insert` makes room for one more entry before it looks for the
/// name, and a map that is full (the client's headers and the gateway's own, six here) would
/// double for a value that replaces another: 0.6 KB more that hyper's client keeps for the
/// connection's life.
fn set_header(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let mut values = headers.get_all(&name).iter();
    if values.next().is_some()
        && values.next().is_none()
        && let Some(slot) = headers.get_mut(&name)
    {
        *slot = value;
        return;
    }
    headers.insert(name, value);
}

/// Room left in a fitted response map for the headers the layers above add
/// (`x-accel-buffering`, a resumable stream's id, ...), so that they do not grow it again.
const RESPONSE_HEADER_ROOM: usize = 2;

/// Give the response a header map no larger than it needs (plus [`RESPONSE_HEADER_ROOM`]).
///
/// hyper's client parses the response head into the map the request went out in, and hyper's
/// server keeps the map it wrote a response head from until the connection's next request:
/// so the request's map, sized for the client's headers and the gateway's own (and doubled by
/// the client's `entry(transfer-encoding)` when full), was held for the stream's whole life
/// for a response of four or five headers: 1.2 KB for a client that sends three headers, 2.5 KB
/// for an SDK that sends ten. A map at least twice the size it needs is moved into a fitted one
/// (the names and values move, nothing is copied but the entries).
fn fit_response_headers(headers: &mut HeaderMap) {
    let wanted = headers.len() + RESPONSE_HEADER_ROOM;
    if headers.capacity() < 2 * wanted {
        return;
    }
    let mut fitted = HeaderMap::with_capacity(wanted);
    fitted.extend(std::mem::take(headers));
    *headers = fitted;
}

/// Hop-by-hop headers: they describe one connection and are never forwarded. Names, not
/// strings: a string is parsed into a name again for every removal (twice per request).
static HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<UpstreamResponseBody> {
    let body = format!(r#"{{"error":{{"type":"{kind}","message":"{message}"}}}}"#);
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer when the failover layer failed before any upstream answered: the client's
/// body could not be read (`413` past the body limit, else `400`). Its `Forward`s answer
/// every upstream failure themselves (`502`), so nothing else fails it.
pub(crate) fn failover_failed(
    e: &(dyn std::error::Error + 'static),
) -> Response<UpstreamResponseBody> {
    if caused_by::<LengthLimitError>(e) {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "the request body is larger than the gateway accepts",
        );
    }
    error_response(
        StatusCode::BAD_REQUEST,
        "request_body_failed",
        "the request body could not be read",
    )
}

/// The failover layer over one [`Forward`] per upstream, its one failure answered with
/// [`failover_failed`], so that it never fails, as [`Forward`] never does.
#[derive(Clone)]
pub(crate) struct AnsweredFailover(pub(crate) Failover<Forward>);

impl tower::Service<Request<UpstreamRequestBody>> for AnsweredFailover {
    type Response = Response<FailoverBody<UpstreamResponseBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The failover layer is always ready (each attempt waits for its own upstream).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<UpstreamRequestBody>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            Ok(answer
                .await
                .unwrap_or_else(|e| failover_failed(&*e).map(FailoverBody::passing)))
        })
    }
}

/// Whether an error, or one of its sources, is an `E`.
pub(crate) fn caused_by<E: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// An error and its sources, `: `-separated (hyper's top-level messages alone, such as
/// "client error (Connect)", do not say what went wrong).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// `502`, with the reason logged (at most every few seconds, with a count of the others): the
/// method, scheme, host, port and path, never the query, a header or the body.
fn upstream_unreachable(
    method: &http::Method,
    uri: &Uri,
    e: &hyper_util::client::legacy::Error,
) -> Response<UpstreamResponseBody> {
    static OUT_OF_FDS: Warning = Warning::new();
    static FAILED: Warning = Warning::new();
    FAILED.check(|skipped| {
        tracing::warn!(
            upstream = %format_args!(
                "{}://{}:{}",
                uri.scheme_str().unwrap_or("http"),
                uri.host().unwrap_or_default(),
                uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 }),
            ),
            method = %method,
            path = uri.path(),
            error = %error_chain(e),
            failures_not_logged = skipped,
            "upstream request failed"
        );
    });
    if let Some(io) = io_source(e)
        && is_fd_exhaustion(io)
    {
        OUT_OF_FDS.emit(|| {
            format!(
                "gateway: connecting to the upstream failed: {io}: out of file descriptors \
                 (limit {}); raise it with `ulimit -n` before starting the gateway",
                fd_limit_text()
            )
        });
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        "the upstream could not be reached",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(base: &str, request: &str) -> String {
        upstream_path(&base.parse().unwrap(), &request.parse().unwrap())
    }

    #[test]
    fn the_upstream_path_is_a_base_path() {
        assert_eq!(joined("http://h:1", "/v1/chat"), "/v1/chat");
        assert_eq!(joined("http://h:1/", "/v1/chat?a=1"), "/v1/chat?a=1");
        assert_eq!(
            joined("http://h/prefix/v1", "/chat/completions"),
            "/prefix/v1/chat/completions"
        );
        assert_eq!(
            joined("http://h/prefix/v1/", "/chat/completions?x=1"),
            "/prefix/v1/chat/completions?x=1"
        );
        assert_eq!(joined("http://h/p?k=v", "/a?b=c"), "/p/a?k=v&b=c");
        assert_eq!(joined("http://h/p?k=v", "/"), "/p/?k=v");
    }

    #[test]
    fn a_response_keeps_a_map_its_own_size_with_every_value_in_order() {
        // The map a request with many headers went out in, holding a response of four.
        let mut headers = HeaderMap::with_capacity(24);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        let before: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        assert!(headers.capacity() >= 24);

        fit_response_headers(&mut headers);
        assert!(headers.capacity() < 24, "refitted: {}", headers.capacity());
        assert!(headers.capacity() >= headers.len() + RESPONSE_HEADER_ROOM);
        let after: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        assert_eq!(after, before);

        // A map about its size is left as it is.
        let capacity = headers.capacity();
        fit_response_headers(&mut headers);
        assert_eq!(headers.capacity(), capacity);
    }

    #[test]
    fn a_full_map_does_not_grow_for_a_header_it_has() {
        // Six entries: what a map parsed for three headers holds after growing once.
        let mut headers = HeaderMap::with_capacity(3);
        for (name, value) in [
            ("content-type", "application/json"),
            ("host", "gateway:8080"),
            ("content-length", "100"),
            ("x-request-id", "1"),
            ("x-forwarded-for", "127.0.0.1"),
            ("accept-encoding", "gzip"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        assert_eq!(headers.len(), headers.capacity(), "the map is full");
        let capacity = headers.capacity();
        set_header(&mut headers, HOST, HeaderValue::from_static("upstream:1"));
        set_header(
            &mut headers,
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(headers.capacity(), capacity);
        assert_eq!(headers[HOST], "upstream:1");
        assert_eq!(headers[http::header::ACCEPT_ENCODING], "identity");

        // Two values (or none): replaced by the one, as `insert` does.
        headers.append(HOST, HeaderValue::from_static("other"));
        set_header(&mut headers, HOST, HeaderValue::from_static("upstream:2"));
        assert_eq!(headers.get_all(HOST).iter().count(), 1);
        assert_eq!(headers[HOST], "upstream:2");
        set_header(
            &mut headers,
            HeaderName::from_static("x-new"),
            HeaderValue::from_static("1"),
        );
        assert_eq!(headers["x-new"], "1");
    }
}

//! How the gateway connects to its upstream: plain TCP for `http://`, and with the `tls`
//! feature (on by default) rustls for `https://`; HTTP/1.1 by default, HTTP/2 with
//! `--upstream-version 2` ([`UpstreamVersion`]).

use hyper_util::client::legacy::connect::HttpConnector;

/// Which certificate authorities an `https://` upstream is checked against (`--tls-roots`).
/// Accepted without the `tls` feature too (the command line is the same in every build),
/// where it has no effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's roots, built into the binary (works in a container without a CA store).
    #[default]
    Webpki,
    /// The operating system's store (for private CAs installed there).
    Native,
}

/// The HTTP version the gateway speaks to its upstream (`--upstream-version`), whatever the
/// client speaks to the gateway.
///
/// - [`Http1`](Self::Http1) (the default): HTTP/1.1. The pool keeps several connections to
///   the upstream, one per stream in flight (reused once a stream has ended, closed after 30
///   idle seconds). An `https://` upstream is offered only `http/1.1` by ALPN.
/// - [`Http2`](Self::Http2): HTTP/2 only. `http://` upstreams are spoken to with prior
///   knowledge (h2c: no `Upgrade`), `https://` ones are offered only `h2` by ALPN (an upstream
///   that cannot speak it fails the handshake: `502 upstream_unreachable`). The pool keeps
///   one connection per runtime (with `--runtime per-core`, one per core) and multiplexes
///   every stream on it; beyond the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` requests wait
///   for a stream to end.
///
/// Requests are sent in this version, never in the client's: an HTTP/2 client in front of an
/// HTTP/1.1 upstream works, and so does the reverse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamVersion {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2: prior knowledge for `http://`, ALPN `h2` for `https://`.
    Http2,
}

impl UpstreamVersion {
    /// The version requests are sent upstream in.
    pub fn version(self) -> http::Version {
        match self {
            Self::Http1 => http::Version::HTTP_11,
            Self::Http2 => http::Version::HTTP_2,
        }
    }
}

/// The upstream connector: rustls (aws-lc-rs, no OpenSSL) for `https://`, plain TCP for
/// `http://`.
#[cfg(feature = "tls")]
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
/// The upstream connector: plain TCP (`http://` only; built without the `tls` feature).
#[cfg(not(feature = "tls"))]
pub(crate) type Connector = HttpConnector;

/// Build the connector once for `upstream`; `Native` fails when the system store has no
/// usable root.
#[cfg(feature = "tls")]
pub(crate) fn connector(
    _upstream: &http::Uri,
    roots: TlsRoots,
    version: UpstreamVersion,
) -> std::io::Result<Connector> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let failed = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("TLS setup for the upstream failed: {e}"))
    };
    let builder = match roots {
        TlsRoots::Webpki => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| failed(&e))?,
        TlsRoots::Native => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| failed(&e))?,
    };
    // Upstream connections keep Nagle on (hyper's default): with TCP_NODELAY the gateway's
    // TTFB p99 under 2,000 new streams a second was worse in every one of three alternating
    // runs (BENCHMARKS.md, "Against the proxies users would pick"); the client side has it.
    // ALPN offers the one version the client speaks (hyper-rustls: `http/1.1`, or `h2`).
    let builder = builder.https_or_http();
    Ok(match version {
        UpstreamVersion::Http1 => builder.enable_http1().build(),
        UpstreamVersion::Http2 => builder.enable_http2().build(),
    })
}

/// Build the connector once for `upstream`: refused when it is `https://`, which this build
/// cannot speak (rather than a `502` for every request later).
#[cfg(not(feature = "tls"))]
pub(crate) fn connector(
    upstream: &http::Uri,
    _roots: TlsRoots,
    _version: UpstreamVersion,
) -> std::io::Result<Connector> {
    if upstream.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "the upstream {upstream} is https://, but this gateway was built without TLS \
                 support (cargo feature `tls` of example-gateway)"
            ),
        ));
    }
    // Nagle stays on for upstream connections, as with TLS (see above).
    Ok(HttpConnector::new())
}

#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[test]
    fn an_https_upstream_is_refused_without_tls() {
        let upstream: http::Uri = "https://api.example.com".parse().unwrap();
        let error = connector(&upstream, TlsRoots::Webpki, UpstreamVersion::Http1).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("`tls`"), "{error}");
        assert!(
            connector(
                &"http://127.0.0.1:9000".parse().unwrap(),
                TlsRoots::Native,
                UpstreamVersion::Http2
            )
            .is_ok()
        );
    }
}

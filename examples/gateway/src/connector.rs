//! How the gateway connects to its upstream: plain TCP for `http://`, and with the `tls`
//! feature (on by default) rustls for `https://`, HTTP/1.1 either way.

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
pub(crate) fn connector(_upstream: &http::Uri, roots: TlsRoots) -> std::io::Result<Connector> {
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
    Ok(builder.https_or_http().enable_http1().build())
}

/// Build the connector once for `upstream`: refused when it is `https://`, which this build
/// cannot speak (rather than a `502` for every request later).
#[cfg(not(feature = "tls"))]
pub(crate) fn connector(upstream: &http::Uri, _roots: TlsRoots) -> std::io::Result<Connector> {
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
        let error = connector(&upstream, TlsRoots::Webpki).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("`tls`"), "{error}");
        assert!(connector(&"http://127.0.0.1:9000".parse().unwrap(), TlsRoots::Native).is_ok());
    }
}

//! Protocol upgrades (WebSocket, `Connection: upgrade` with `Upgrade: ...`) proxied: the
//! request goes upstream with its `Upgrade` header (HTTP/1.1 upstreams only; an HTTP/2
//! upstream answers `501`), and when the upstream switches protocols (`101`), the client gets
//! the `101` with the upstream's `Upgrade` header, and the two upgraded connections are joined
//! byte for byte until either side closes. An upstream that does not switch answers as usual
//! (the `Upgrade` request header is then a hop-by-hop header it ignored).
//!
//! Upgraded connections are not streams: no layer meters or limits them, and the graceful
//! shutdown does not wait for them.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::forward::strip_hop_by_hop;

/// A client's request to switch protocols.
pub(crate) struct Upgrade {
    /// The protocols asked for (`websocket`).
    protocols: HeaderValue,
    /// The client's side, once the `101` went out.
    client: OnUpgrade,
}

/// The upgrade `request` asks for, if any: `Connection` lists `upgrade` and `Upgrade` is set.
pub(crate) fn requested<B>(request: &mut Request<B>) -> Option<Upgrade> {
    let asks = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocols = request.headers().get(UPGRADE)?.clone();
    if !asks {
        return None;
    }
    Some(Upgrade {
        protocols,
        client: hyper::upgrade::on(request),
    })
}

impl Upgrade {
    /// Ask the upstream for the same upgrade (after the hop-by-hop headers were dropped).
    pub(crate) fn ask(&self, headers: &mut HeaderMap) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, self.protocols.clone());
    }

    /// The upstream switched: join the two connections (in a task of their own) and make the
    /// client's `101`.
    pub(crate) fn switch<B>(self, upstream: &mut Response<B>) -> Response<()> {
        let upstream_io = hyper::upgrade::on(&mut *upstream);
        let mut headers = upstream.headers().clone();
        let protocols = headers
            .get(UPGRADE)
            .cloned()
            .unwrap_or_else(|| self.protocols.clone());
        strip_hop_by_hop(&mut headers);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocols);
        let client_io = self.client;
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_io.await, upstream_io.await) else {
                tracing::debug!("an upgraded connection ended before it was joined");
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = headers;
        response
    }
}

//! The crate docs' recipe "A gateway" (`src/lib.rs`), served by axum to real clients: an
//! HTTP/2 (h2c) client and an HTTP/1.1 one, in front of the mock upstream (HTTP/1.1). The
//! module `recipe` keeps the doc's code, verbatim (a test checks that it still is): change
//! both together.

use std::time::Duration;

use http::Version;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_sse::{Outcome, StreamReport};
use tower_sse_mock::MockConfig;

/// The recipe's code, copied from the crate docs ("A gateway") line for line.
#[rustfmt::skip]
#[allow(unused_imports)]
mod recipe {
    // --- the recipe, from here
    use std::convert::Infallible;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::error_handling::HandleErrorLayer;
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use http::header::{ACCEPT_ENCODING, HOST};
    use http::uri::PathAndQuery;
    use http::{HeaderValue, StatusCode, Uri, Version};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tokio::sync::mpsc::UnboundedSender;
    use tower::util::BoxCloneSyncService;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_sse::request::UploadBody;
    use tower_sse::{
        IncludeUsageLayer, KeepAliveConfig, SseLayer, StreamLimitLayer, StreamReport,
        TimingObserver, UsageObserver,
    };

    /// The whole stack as one service of the kind axum serves: a cloneable service of
    /// `Request<Body>` whose error is `Infallible`.
    type Gateway = BoxCloneSyncService<Request, Response, Infallible>;

    fn build_gateway(upstream: Uri, reports: UnboundedSender<StreamReport>) -> Gateway {
        // One pooled client. It sends `axum::body::Body` requests, held to the upload
        // deadline by `SseLayer` (`UploadBody<Body>`; the body type of a client is fixed
        // when it is built).
        let client: Client<HttpConnector, UploadBody<Body>> =
            Client::builder(TokioExecutor::new()).build_http();
        let stack = ServiceBuilder::new()
            // axum needs `Infallible` errors: a failed upstream call becomes a 502. Handled
            // here, outside `SseLayer`, so that the layer still reports the failure
            // (`Outcome::UpstreamError`) of a streaming request.
            .layer(HandleErrorLayer::new(bad_gateway))
            .map_request(move |request| to_upstream(&upstream, request))
            .layer(StreamLimitLayer::new(512))
            // The client takes `Body`, not the layer's `UsageRequestBody<Body>`.
            .layer(IncludeUsageLayer::new().map_request_body(Body::new))
            .layer(
                SseLayer::new()
                    .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
                    .first_event_timeout(Duration::from_secs(120))
                    .idle_timeout(Duration::from_secs(30))
                    // `Cache-Control: no-cache`, `X-Accel-Buffering: no`: a proxy in front
                    // (nginx) passes each event at once.
                    .sse_headers(true)
                    .observer((UsageObserver::new(), TimingObserver::new()))
                    .on_end(move |report: StreamReport| {
                        let _ = reports.send(report);
                    }),
            )
            .service(client);
        BoxCloneSyncService::new(stack)
    }

    /// Point a request at the upstream: same path and query, the upstream's host, in the
    /// version the pooled client speaks, without the headers of the client's connection.
    fn to_upstream(upstream: &Uri, mut request: Request) -> Request {
        let mut uri = upstream.clone().into_parts();
        uri.path_and_query = Some(
            request.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/")),
        );
        *request.uri_mut() = Uri::from_parts(uri).expect("an absolute upstream URI");
        // The client's version is its connection's (HTTP/2 when it spoke h2 to axum), and the
        // pooled client refuses an HTTP/2 request on its HTTP/1.1 connections. Built with
        // `.http2_only(true)` (an upstream speaking HTTP/2), it sends HTTP/2 whatever this says.
        *request.version_mut() = Version::HTTP_11;
        // HTTP/1.1: the client sets the upstream's `host`. HTTP/2: `:authority`, from the URI.
        request.headers_mut().remove(HOST);
        // Hop-by-hop headers describe the client's connection (HTTP/2 forbids them, and `te`
        // but for `trailers`). The example gateway also drops the ones `connection` names.
        for name in [
            "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
        ] {
            request.headers_mut().remove(name);
        }
        // A compressed stream passes through unread (`Framing::Encoded`: limited and
        // reported, but no usage, events or content deadlines): ask for it uncompressed.
        request
            .headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        // The example gateway also appends `X-Forwarded-For` and keeps or makes `X-Request-Id`.
        request
    }

    /// The client's error (no connection to the upstream, a broken one) as a response.
    async fn bad_gateway(error: hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
        let _ = error; // log it
        (StatusCode::BAD_GATEWAY, "the upstream could not be reached")
    }

    /// From a handler: do what you need first, then hand the request on.
    async fn chat(State(gateway): State<Gateway>, request: Request) -> Response {
        let Ok(response) = gateway.oneshot(request).await;
        response
    }
    // --- to here

    /// The router of the docs' example, around the recipe's stack.
    pub(crate) fn app(upstream: Uri, reports: UnboundedSender<StreamReport>) -> Router {
        let gateway = build_gateway(upstream, reports);
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .fallback_service(gateway.clone())
            .with_state(gateway)
    }
}

#[test]
fn the_recipe_is_the_docs_code() {
    let docs: Vec<&str> = include_str!("../src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    let docs = docs.join("\n");
    let this = include_str!("gateway_recipe.rs");
    let from = this.find("    // --- the recipe, from here\n").unwrap();
    let to = this.find("    // --- to here").unwrap();
    let copy: Vec<&str> = this[from..to]
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect();
    let copy = copy.join("\n");
    assert!(
        docs.contains(copy.trim_end()),
        "tests/gateway_recipe.rs no longer has the docs' recipe: copy it again"
    );
}

fn chat(tokens: u32) -> String {
    serde_json::json!({
        "model": "gpt-mock",
        "stream": true,
        "messages": [],
        "mock": {"tokens": tokens},
    })
    .to_string()
}

/// The content of an OpenAI Chat stream, and whether it ended with `[DONE]`; panics on a
/// cut or broken event.
fn content(body: &str) -> (String, bool) {
    assert!(body.ends_with("\n\n"), "a cut event: {body:?}");
    let (mut text, mut done) = (String::new(), false);
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).expect("a whole event");
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(delta);
        }
    }
    (text, done)
}

#[tokio::test]
async fn the_recipe_serves_h2c_and_http1_clients() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let (reports, mut received) = mpsc::unbounded_channel::<StreamReport>();
    // As in the docs: a route through a handler, the fallback straight to the stack.
    let app = recipe::app(format!("http://{upstream}").parse().unwrap(), reports);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    for (client, version, path) in [
        (&h2c, Version::HTTP_2, "/v1/chat/completions"),
        (&http1, Version::HTTP_11, "/v1/chat/completions"),
        // The fallback: the stack without the handler (the mock answers its Responses API).
        (&h2c, Version::HTTP_2, "/v1/responses"),
    ] {
        // Ten at once: on one HTTP/2 connection for the h2c client.
        let requests: Vec<_> = (0..10u32)
            .map(|i| {
                client
                    .post(format!("http://{addr}{path}"))
                    .header("content-type", "application/json")
                    .body(chat(3 + i))
                    .send()
            })
            .collect();
        for (i, request) in requests.into_iter().enumerate() {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200, "{version:?} {path}");
            assert_eq!(response.version(), version);
            let body = response.text().await.unwrap();
            let tokens = 3 + i as u32;
            if path == "/v1/chat/completions" {
                let (text, done) = content(&body);
                assert!(done, "{body:?}");
                assert_eq!(text, tower_sse_mock::content(0, tokens));
                // The client did not ask for usage: the report has it, the client does not.
                assert!(!body.contains("\"usage\":{"), "{body:?}");
            } else {
                assert!(body.ends_with("\n\n") && body.contains("response.completed"));
            }
        }
        let mut tokens: Vec<u64> = Vec::new();
        for _ in 0..10 {
            let report = tokio::time::timeout(Duration::from_secs(30), received.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(report.outcome, Outcome::Completed, "{version:?} {path}");
            tokens.push(report.usage.unwrap().output_tokens.unwrap());
        }
        tokens.sort_unstable();
        assert_eq!(tokens, (3..13).collect::<Vec<u64>>(), "{version:?} {path}");
    }
}

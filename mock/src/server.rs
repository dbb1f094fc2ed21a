//! The axum router, its handlers, and a connection loop that owns its connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::Api;
use crate::config::MockConfig;
use crate::format::Reply;
use crate::format::gemini::Framing;
use crate::format::ollama::Endpoint;
use crate::request::Call;
use crate::stats::MockStats;

#[derive(Debug, Clone)]
struct AppState {
    config: Arc<MockConfig>,
    stats: MockStats,
}

/// The mock as an axum [`Router`], to mount in-process (for example with
/// `tower::ServiceExt::oneshot`).
pub fn router(config: MockConfig) -> Router {
    router_with_stats(config).0
}

/// [`router`], plus the counters of the requests it serves.
pub fn router_with_stats(config: MockConfig) -> (Router, MockStats) {
    let stats = MockStats::default();
    let state = AppState {
        config: Arc::new(config),
        stats: stats.clone(),
    };
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        // Gemini paths end in `:method`, which axum path patterns cannot express.
        .fallback(gemini_or_not_found)
        .with_state(state);
    (router, stats)
}

async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&state, Api::Chat, &headers, &body, None).await
}

async fn responses(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&state, Api::Responses, &headers, &body, None).await
}

async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&state, Api::Anthropic, &headers, &body, None).await
}

async fn ollama_chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&state, Api::Ollama(Endpoint::Chat), &headers, &body, None).await
}

async fn ollama_generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        &state,
        Api::Ollama(Endpoint::Generate),
        &headers,
        &body,
        None,
    )
    .await
}

async fn gemini_or_not_found(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, api)) = gemini_route(&uri) else {
        let message = format!("no mock route for {}", uri.path());
        return error_response(Api::Chat, StatusCode::NOT_FOUND, &message);
    };
    if method != Method::POST {
        return error_response(api, StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    answer(&state, api, &headers, &body, Some(model)).await
}

/// `/v1beta/models/{model}:streamGenerateContent` (SSE with `alt=sse`, else a JSON array) or
/// `…:generateContent`; `/v1/models/…` too.
fn gemini_route(uri: &Uri) -> Option<(&str, Api)> {
    let path = uri.path();
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    let sse = uri
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "alt=sse"));
    let api = match method {
        "streamGenerateContent" if sse => Api::Gemini(Some(Framing::Sse)),
        "streamGenerateContent" => Api::Gemini(Some(Framing::JsonArray)),
        "generateContent" => Api::Gemini(None),
        _ => return None,
    };
    Some((model, api))
}

/// Resolve the request, wait, and answer: an error status, a stream or one JSON object.
async fn answer(
    state: &AppState,
    api: Api,
    headers: &HeaderMap,
    body: &[u8],
    path_model: Option<&str>,
) -> Response {
    state.stats.count_request();
    let mut call = match Call::parse(&state.config, headers, body) {
        Ok(call) => call,
        Err(message) => return error_response(api, StatusCode::BAD_REQUEST, &message),
    };
    if let Some(model) = path_model {
        call.model = model.to_owned();
    }
    sleep(call.controls.headers_delay).await;
    let status = call
        .controls
        .status
        .and_then(|code| StatusCode::from_u16(code).ok());
    if let Some(status) = status
        && !status.is_success()
    {
        let message = format!("mock status {}", status.as_u16());
        return error_response(api, status, &message);
    }
    let reply = Reply::new(&call, state.stats.next_response(), state.config.created);
    let request_id = HeaderValue::from_str(&format!("req_mock_{}", reply.number)).expect("ASCII");
    let mut response = if api.streams(&call) {
        let open = state.stats.open_stream();
        let mut response = Response::new(api.stream(reply, &call.controls, open));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(api.stream_content_type()),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        // Not streaming: the whole generation time passes before the answer.
        sleep(call.controls.delay * call.controls.tokens).await;
        json_response(StatusCode::OK, api.complete(&reply))
    };
    response.headers_mut().insert("x-request-id", request_id);
    if let Some(status) = status {
        *response.status_mut() = status;
    }
    response
}

async fn sleep(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(api: Api, status: StatusCode, message: &str) -> Response {
    let mut response = json_response(status, api.error_body(status.as_u16(), message));
    if matches!(status.as_u16(), 429 | 503 | 529) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Serve the mock on `listener` (HTTP/1.1 and HTTP/2 cleartext) until this future is
/// dropped, which also closes every connection it opened. Accept errors (a full file table
/// during a load run, say) are waited out and retried, so in practice it never returns.
pub async fn serve(listener: TcpListener, config: MockConfig) -> io::Result<()> {
    serve_router(listener, router(config), None).await
}

/// [`serve`], with at most `max_streams` concurrent streams on each HTTP/2 connection
/// (hyper's default is 200): a load run can then put more streams on one multiplexed
/// connection than a real upstream may allow, or fewer, to see what a client does at the
/// limit.
pub async fn serve_with_h2_max_streams(
    listener: TcpListener,
    config: MockConfig,
    max_streams: u32,
) -> io::Result<()> {
    serve_router(listener, router(config), Some(max_streams)).await
}

async fn serve_router(
    listener: TcpListener,
    app: Router,
    h2_max_streams: Option<u32>,
) -> io::Result<()> {
    // Owning the connection tasks means dropping this future closes them all, stalled
    // streams included: `axum::serve` would leave them running.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        // Small frames must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        if let Some(max_streams) = h2_max_streams {
            builder.http2().max_concurrent_streams(max_streams);
        }
        connections.spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A mock server running in a tokio task. Dropping this handle leaves the server running
/// (so `let (addr, _) = spawn(..)` works); [`shutdown`](Self::shutdown) stops it.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    stats: MockStats,
    task: JoinHandle<()>,
}

impl MockServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's counters.
    pub fn stats(&self) -> &MockStats {
        &self.stats
    }

    /// Stop accepting and close every connection, stalled streams included.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Bind `127.0.0.1:0` and serve the mock in a tokio task.
///
/// # Panics
///
/// If the loopback address cannot be bound.
pub async fn spawn(config: MockConfig) -> (SocketAddr, MockServer) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0 for the mock upstream");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let (app, stats) = router_with_stats(config);
    let task = tokio::spawn(async move {
        let _ = serve_router(listener, app, None).await;
    });
    (addr, MockServer { addr, stats, task })
}

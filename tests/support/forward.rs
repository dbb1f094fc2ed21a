//! A gateway's two ends for tests over loopback: an axum app served on `127.0.0.1:0`, and
//! the innermost service of a budget stack, which forwards each request to an upstream with
//! a pooled hyper client.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::Service;
use tower_sse::budget::BudgetRequestBody;
use tower_sse::request::UploadBody;

/// The request body under `BudgetLayer` → `SseLayer`.
pub type BudgetedBody = UploadBody<BudgetRequestBody<Body>>;

/// Serve `app` on a free loopback port, on a task; its address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Forward each request (its path and query) to `upstream`; `502` when it cannot be reached.
pub fn to_upstream(
    upstream: SocketAddr,
) -> impl Service<
    Request<BudgetedBody>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    tower::service_fn(move |request: Request<BudgetedBody>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = Uri::try_from(format!("http://{upstream}{path}")).unwrap();
            let answer = match client
                .request(Request::from_parts(parts, Body::new(body)))
                .await
            {
                Ok(response) => response.map(Body::new),
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::empty())
                    .unwrap(),
            };
            Ok::<_, Infallible>(answer)
        }
    })
}

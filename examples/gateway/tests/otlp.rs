//! `--otlp-endpoint`: the gateway binary sends one span per stream over OTLP/HTTP (protobuf)
//! to a receiver that decodes the real wire format (`opentelemetry-proto`), after the stream
//! ended, in the caller's trace, with the GenAI attributes.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

#[path = "support/binary.rs"]
mod binary;
mod support;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The gateway binary with these arguments and environment ([`binary::spawn`], off the
/// runtime's threads): the process and its base URL.
async fn gateway(command: Command) -> (support::Process, String) {
    tokio::task::spawn_blocking(move || binary::spawn(command))
        .await
        .unwrap()
}

/// A collector on 127.0.0.1: each `POST /v1/traces` decoded, its spans sent on (with the
/// resource's `service.name`).
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    receiver_on(None).await
}

/// [`receiver`], behind TLS with this acceptor (`https://`) when given one.
async fn receiver_on(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            let tx = tx.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let export =
                            ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    Value::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    let _ = tx.send((service.clone(), span));
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
            tokio::spawn(async move {
                let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = server.serve_connection(TokioIo::new(stream), service).await;
                    }
                    // A handshake the client refused ends here.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = server.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    });
    (format!("{scheme}://{addr}"), rx)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_span_reaches_the_collector_after_the_stream_ended() {
    let (collector, mut spans) = receiver().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args(["--otlp-endpoint", &collector])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("OTEL_SEMCONV_STABILITY_OPT_IN");
    let (_running, base) = gateway(command).await;

    // Tokens 300 ms apart: after the first one the stream surely runs on.
    let mut response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[],"mock":{"tokens":4,"delay_ms":300}}"#)
        .send()
        .await
        .unwrap();
    let mut body = String::new();
    while !body.contains("\"content\"") {
        let chunk = response.chunk().await.unwrap().expect("a content event");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        spans.try_recv().is_err(),
        "nothing exported while the stream runs"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

    // A guard against hanging, not a timing assertion.
    let (service, span) = tokio::time::timeout(Duration::from_secs(30), spans.recv())
        .await
        .expect("a span within 30 s")
        .unwrap();
    assert_eq!(service, "tower-sse-gateway");
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(span.name, "chat gpt-mock");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let string = |key| match attribute(&span, key) {
        Some(Value::StringValue(s)) => Some(s.as_str()),
        _ => None,
    };
    let int = |key| match attribute(&span, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    };
    assert_eq!(string("gen_ai.operation.name"), Some("chat"));
    assert_eq!(string("gen_ai.system"), Some("openai"));
    assert_eq!(string("gen_ai.request.model"), Some("gpt-mock"));
    assert_eq!(string("tower_sse.outcome"), Some("completed"));
    assert!(string("gen_ai.response.id").is_some_and(|id| body.contains(id)));
    assert!(int("gen_ai.usage.output_tokens").is_some_and(|n| n > 0));
    assert_eq!(int("http.response.status_code"), Some(200));
    assert!(attribute(&span, "error.type").is_none());
    assert!(int("tower_sse.bytes").is_some_and(|n| n as usize == body.len()));

    // Exactly one span for the one stream: once the gateway counts it exported, nothing else
    // came. (Polled: a guard against hanging, not a timing assertion.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("gateway_otlp_spans_exported_total 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spans.try_recv().is_err(), "one span per stream");
}

/// An `https://` collector whose certificate a private CA signed: the exporter completes the
/// TLS handshake with the roots `--tls-roots native` reads (`SSL_CERT_FILE`, the CA here) and
/// the span arrives; with Mozilla's roots (`--tls-roots webpki`) the same collector is refused.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_gets_the_spans_with_the_roots_the_gateway_was_given() {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "tower-sse-otlp-tls-test-{}.pem",
        std::process::id()
    ));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    for (roots, trusted) in [("native", true), ("webpki", false)] {
        let (collector, mut spans) = receiver_on(Some(acceptor.clone())).await;
        assert!(collector.starts_with("https://"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(["--otlp-endpoint", &collector])
            .args(["--tls-roots", roots])
            .env("SSL_CERT_FILE", &ca_file)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50");
        let (_running, base) = gateway(command).await;
        let body = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

        // The gateway counts each batch as exported or failed. (Polled: a guard against
        // hanging, not a timing assertion.)
        let counted = if trusted {
            "gateway_otlp_spans_exported_total 1"
        } else {
            "gateway_otlp_export_failures_total"
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metrics.contains(counted) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{roots}: {metrics}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if trusted {
            let (service, span) = spans.try_recv().expect("the span, over TLS");
            assert_eq!(service, "tower-sse-gateway");
            assert_eq!(span.name, "chat gpt-mock");
        } else {
            assert!(
                spans.try_recv().is_err(),
                "nothing past a refused handshake"
            );
        }
    }
    let _ = std::fs::remove_file(&ca_file);
}

/// Two gateway processes on one `redis-server` (`--resumable --redis URL --otlp-endpoint`),
/// each exporting to a collector of its own: a stream produced by A, cut, and resumed on B
/// by a caller in another trace. B exports the resumed connection's span (`resume`), in that
/// caller's trace, linked to the span A exported for the stream: B knows it only from Redis.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_replica_exports_a_span_linked_to_the_streams() {
    let Some((_redis, url)) = support::redis() else {
        return;
    };
    let replica = |collector: String| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(["--resumable", "--redis", &url])
            .args(["--otlp-endpoint", &collector])
            .env("OTEL_BSP_SCHEDULE_DELAY", "50");
        gateway(command)
    };
    let ((collector_a, mut spans_a), (collector_b, mut spans_b)) =
        (receiver().await, receiver().await);
    let (_a, a) = replica(collector_a).await;
    let (_b, b) = replica(collector_b).await;
    let client = reqwest::Client::new();

    // On A: 20 content events 50 ms apart; the client reads three and goes away.
    let mut response = client
        .post(format!("{a}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("x-mock-tokens", "20")
        .header("x-mock-delay-ms", "50")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("sse-stream-id"));
    let mut first = String::new();
    while first
        .lines()
        .filter(|line| line.starts_with("id: "))
        .count()
        < 3
        || !first.ends_with("\n\n")
    {
        let chunk = response.chunk().await.unwrap().expect("more of the stream");
        first.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(response);
    let last_id = first
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("events carry ids")
        .to_owned();

    // On B, by a caller in another trace: the rest, to the end.
    const OTHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const OTHER_PARENT: &str = "b7ad6b7169203331";
    let resumed = client
        .get(format!("{b}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("last-event-id", &last_id)
        .header("traceparent", format!("00-{OTHER_TRACE}-{OTHER_PARENT}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = tokio::time::timeout(Duration::from_secs(30), resumed.text())
        .await
        .expect("the resumed stream ends")
        .unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");

    // Guards against hanging, not timing assertions.
    let (_, producer) = tokio::time::timeout(Duration::from_secs(30), spans_a.recv())
        .await
        .expect("A's span within 30 s")
        .unwrap();
    assert_eq!(producer.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(hex(&producer.trace_id), TRACE);
    let (_, reader) = tokio::time::timeout(Duration::from_secs(30), spans_b.recv())
        .await
        .expect("B's span within 30 s")
        .unwrap();
    assert_eq!(reader.name, "resume");
    assert_eq!(reader.kind, 1, "SPAN_KIND_INTERNAL");
    assert_eq!(hex(&reader.trace_id), OTHER_TRACE);
    assert_eq!(hex(&reader.parent_span_id), OTHER_PARENT);
    assert_eq!(reader.links.len(), 1, "{reader:#?}");
    let link = &reader.links[0];
    assert_eq!(link.trace_id, producer.trace_id);
    assert_eq!(link.span_id, producer.span_id);
    let stream = last_id.split('.').next().unwrap();
    assert!(matches!(
        attribute(&reader, "tower_sse.resume.stream"),
        Some(Value::StringValue(s)) if s == stream
    ));
    assert!(matches!(
        attribute(&producer, "tower_sse.resume.stream"),
        Some(Value::StringValue(s)) if s == stream
    ));
}

//! An `https://` upstream: the gateway binary completes a real TLS handshake (rustls, aws-lc-rs)
//! with a local upstream whose certificate a private CA signed, checks it against the roots
//! it was told to use, and streams through it.
//!
//! The upstream is the mock (`tower_sse_mock::router`) behind tokio-rustls on 127.0.0.1, its
//! certificate made with rcgen for the address `127.0.0.1`. `--tls-roots native` reads the
//! system store, which `SSL_CERT_FILE` points at the private CA here; `--tls-roots webpki`
//! (Mozilla's roots) must refuse the same upstream.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};
use tower_sse_mock::MockConfig;

/// A private CA, and an upstream serving the mock over TLS with a certificate it signed.
struct TlsUpstream {
    addr: SocketAddr,
    ca_file: PathBuf,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

async fn tls_upstream() -> TlsUpstream {
    tls_upstream_with_alpn(&[]).await
}

/// [`tls_upstream`], offering these ALPN protocols (`h2`, `http/1.1`); none: no ALPN.
async fn tls_upstream_with_alpn(alpn: &[&str]) -> TlsUpstream {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();

    let ca_file = std::env::temp_dir().join(format!(
        "tower-sse-tls-test-{}-{}.pem",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tower_sse_mock::router(MockConfig::new().tokens(3));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                // A handshake the client refused ends here, as it should.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream { addr, ca_file }
}

/// A few bytes that differ between the tests of one process.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway binary and its log lines.
struct Gateway {
    _process: Running,
    base: String,
    log: std::sync::mpsc::Receiver<String>,
}

/// Start the binary against `upstream` with these roots, `SSL_CERT_FILE` at `ca_file`, and
/// wait for its `listening on http://ADDR` line.
fn gateway(upstream: SocketAddr, roots: &str, ca_file: &Path) -> Gateway {
    gateway_with(upstream, roots, ca_file, &[])
}

/// [`gateway`], with more flags.
fn gateway_with(upstream: SocketAddr, roots: &str, ca_file: &Path, flags: &[&str]) -> Gateway {
    let mut process = Running(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--tls-roots",
                roots,
                "--upstream",
            ])
            .arg(format!("https://{upstream}"))
            .args(flags)
            .env("SSL_CERT_FILE", ca_file)
            .env_remove("SSL_CERT_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts"),
    );
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the gateway exited before printing its address");
        if let Some(addr) = line.trim_end().strip_prefix("listening on http://") {
            let base = format!("http://{addr}");
            // Keep reading its log, so that it never blocks on a full pipe.
            let (lines, log) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            });
            return Gateway {
                _process: process,
                base,
                log,
            };
        }
    }
}

impl Gateway {
    /// The first log line that says `what`.
    fn log_line(&self, what: &str) -> String {
        self.log
            .iter()
            .find(|line| line.contains(what))
            .unwrap_or_else(|| panic!("a log line saying {what:?}"))
    }
}

async fn chat(base: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_goes_through_an_https_upstream_signed_by_a_ca_the_gateway_trusts() {
    let upstream = tls_upstream().await;
    let gateway = gateway(upstream.addr, "native", &upstream.ca_file);
    let (status, body) = chat(&gateway.base).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // The whole stack ran: usage was asked for upstream (and withheld from this client,
    // which did not ask), read back, and reported in the stream's log line.
    assert!(!body.contains("\"usage\":{"), "{body}");
    let line = gateway.log_line("stream ended");
    assert!(line.contains("outcome=completed"), "{line}");
    assert!(line.contains("output_tokens=3"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_outside_the_roots_is_refused_with_a_502() {
    let upstream = tls_upstream().await;
    // Mozilla's roots do not hold the private CA.
    let gateway = gateway(upstream.addr, "webpki", &upstream.ca_file);
    let (status, body) = chat(&gateway.base).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("chat.completion.chunk"), "{body}");
    // Refused for its certificate, not for anything else.
    let line = gateway.log_line("upstream request failed");
    assert!(line.contains("certificate"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upstream_version_2_alpn_picks_h2_and_an_http1_only_upstream_is_a_502() {
    // An upstream offering both: HTTP/1.1 by default, HTTP/2 with `--upstream-version 2`.
    let upstream = tls_upstream_with_alpn(&["h2", "http/1.1"]).await;
    for (flags, version) in [
        (&[][..], "HTTP/1.1"),
        (&["--upstream-version", "2"][..], "HTTP/2.0"),
    ] {
        let gateway = gateway_with(upstream.addr, "native", &upstream.ca_file, flags);
        let (status, body) = chat(&gateway.base).await;
        assert_eq!(status, 200, "{flags:?}: {body}");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        let line = gateway.log_line("stream ended");
        assert!(line.contains("outcome=completed"), "{line}");
        assert!(
            line.contains(&format!("upstream_version={version}")),
            "{line}"
        );
        assert!(line.contains("client_version=HTTP/1.1"), "{line}");
    }

    // An upstream that only speaks HTTP/1.1: the handshake finds no protocol in common.
    let upstream = tls_upstream_with_alpn(&["http/1.1"]).await;
    let gateway = gateway_with(
        upstream.addr,
        "native",
        &upstream.ca_file,
        &["--upstream-version", "2"],
    );
    let (status, body) = chat(&gateway.base).await;
    assert_eq!(status, 502, "{body}");
    let line = gateway.log_line("upstream request failed");
    assert!(line.contains("Connect"), "{line}");
}

//! The HTTP versions of a stream, on both sides, in its report and its log line.

use http::Version;
use tower_sse::resume::ResumeSummary;
use tower_sse::{Observer, StreamReport, TraceObserver};

/// The HTTP versions of one stream, in [`StreamReport::extensions`]: the client's request
/// (HTTP/1.1 or HTTP/2 to the gateway) and the upstream's response (the version the gateway
/// spoke to the upstream: `--upstream-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// The version of the client's request.
    pub client: Version,
    /// The version of the upstream's response, when it answered with a stream.
    pub upstream: Option<Version>,
}

/// In [`StreamReport::extensions`] when the request body had a `Content-Encoding` (gzip, ...):
/// the `IncludeUsageLayer` does not read an encoded body, so `stream_options.include_usage`
/// was not added and the usage comes only if the client asked for it. The log line says
/// `include_usage_not_applied=<encoding>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeUsageNotApplied {
    /// The request body's `Content-Encoding`.
    pub encoding: String,
}

/// [`TraceObserver`]'s line, with the stream's [`Versions`]: the line is logged in a span
/// `stream` whose fields are `client_version` and `upstream_version` (`HTTP/1.1`,
/// `HTTP/2.0`) and `request_id` (the `x-request-id` the gateway set or kept; the text format
/// prints them after the line's own fields, JSON in `span`). With `--resumable` the span
/// also holds the stream's [`ResumeSummary`]: `stream_id`, `connections`, `resumes` and
/// `replayed_events`, counted wherever they were served (its other replicas included).
/// The versions also go into the report's extensions.
#[derive(Debug, Clone)]
pub(crate) struct VersionedTrace {
    client: Version,
    upstream: Option<Version>,
    /// The request's `x-request-id` (the gateway sets one on every request), for the span.
    request_id: Option<http::HeaderValue>,
    /// The request body's `Content-Encoding`, when it had one other than `identity`.
    request_encoding: Option<String>,
}

impl Default for VersionedTrace {
    fn default() -> Self {
        Self {
            client: Version::HTTP_11,
            upstream: None,
            request_id: None,
            request_encoding: None,
        }
    }
}

impl Observer for VersionedTrace {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.client = request.version;
        self.request_id = request.headers.get("x-request-id").cloned();
        self.request_encoding = request
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().eq_ignore_ascii_case("identity"))
            .map(str::to_owned);
    }

    fn on_response(&mut self, response: &http::response::Parts, _: &mut StreamReport) {
        // `Forward` leaves the upstream's version on the response (the server answers the
        // client in the client's version whatever it says).
        self.upstream = Some(response.version);
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        report.extensions.insert(Versions {
            client: self.client,
            upstream: self.upstream,
        });
        let resume = report.extensions.get::<ResumeSummary>();
        // WARN: enabled whenever the line is (INFO for completed streams, WARN otherwise).
        let span = tracing::span!(
            tracing::Level::WARN,
            "stream",
            client_version = ?self.client,
            upstream_version = self.upstream.map(tracing::field::debug),
            request_id = self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            include_usage_not_applied = self.request_encoding.as_deref(),
            stream_id = resume.map(|r| tracing::field::display(r.stream)),
            connections = resume.map(|r| r.connections),
            resumes = resume.map(|r| r.resumes),
            replayed_events = resume.map(|r| r.replayed_events),
        );
        if let Some(encoding) = &self.request_encoding {
            report.extensions.insert(IncludeUsageNotApplied {
                encoding: encoding.clone(),
            });
        }
        let _entered = span.enter();
        TraceObserver.on_end(report);
    }
}

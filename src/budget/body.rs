//! [`BudgetRequestBody`] (the request as the inner service reads it), [`BudgetBody`] (the
//! response, or a refusal) and the refusals in each provider's error shape.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::settle::Reservation;
use crate::provider::{ErrorAnswer, Provider};

/// The request body handed to the inner service: the bytes the layer read (to estimate
/// the request), or the original body when the layer did not read it. It is
/// [`KeptBody`](crate::request::KeptBody), the body every tower-sse layer that reads a
/// request hands on; this name stays for the budget layer's signatures.
pub type BudgetRequestBody<B> = crate::request::KeptBody<B>;

pin_project! {
    /// The response body of [`Budget`](super::Budget): the inner service's, untouched (an
    /// answer that is not a stream is watched as it passes, to settle its reservation: see
    /// [`Reservation`](super::Reservation#exit-paths)), or the JSON of a refusal.
    pub struct BudgetBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Watched { #[pin] body: B, watch: Watch },
        Refused { data: Option<Bytes> },
    }
}

impl<B> BudgetBody<B> {
    pub(super) fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    /// An answer that is not a stream, whose end settles its reservation.
    pub(super) fn watched(body: B, watch: Watch) -> Self {
        Self {
            kind: ResponseKind::Watched { body, watch },
        }
    }
}

/// What settles an answer that is not a stream: its status, its provider, and clones of its
/// data frames up to a bound, read once at its end.
pub(super) struct Watch {
    reservation: Reservation,
    status: StatusCode,
    provider: Provider,
    /// Input and output tokens of a failover's failed attempts before this answer.
    failed: (u64, u64),
    frames: Vec<Bytes>,
    /// Bytes kept so far.
    len: usize,
    /// The most bytes kept; past it (or for a compressed body, `readable` false) the answer
    /// is not read.
    max: usize,
    readable: bool,
    /// Settled, or handed to a report: nothing more to do.
    done: bool,
}

impl Watch {
    pub(super) fn new(
        reservation: Reservation,
        status: StatusCode,
        provider: Provider,
        failed: (u64, u64),
        max: usize,
        readable: bool,
    ) -> Self {
        Self {
            reservation,
            status,
            provider,
            failed,
            frames: Vec::new(),
            len: 0,
            max,
            readable,
            done: false,
        }
    }

    /// A data frame passed: keep a clone while it fits.
    fn keep(&mut self, data: &Bytes) {
        if self.done || !self.readable || data.is_empty() {
            return;
        }
        if self.reservation.is_settled() {
            // A report settled it (a streaming request answered without a stream).
            self.stop();
            return;
        }
        match self.len.checked_add(data.len()) {
            Some(len) if len <= self.max => {
                self.len = len;
                self.frames.push(data.clone());
            }
            // Larger than the bound: not read, and nothing more kept.
            _ => {
                self.readable = false;
                self.frames = Vec::new();
            }
        }
    }

    /// The body ended whole: read its usage, and settle.
    fn finish(&mut self) {
        if self.done {
            return;
        }
        let usage = if self.readable && !self.reservation.is_settled() {
            match self.frames.as_slice() {
                [] => None,
                [one] => self.provider.answer_usage(one),
                frames => {
                    let mut whole = Vec::with_capacity(self.len);
                    for frame in frames {
                        whole.extend_from_slice(frame);
                    }
                    self.provider.answer_usage(&whole)
                }
            }
        } else {
            None
        };
        self.settle(usage);
    }

    /// The body failed, or went away before its end: nothing was read.
    fn settle_unread(&mut self) {
        if !self.done {
            self.settle(None);
        }
    }

    fn settle(&mut self, usage: Option<crate::Usage>) {
        self.stop();
        self.reservation
            .settle_answer(self.status, usage, self.failed);
    }

    fn stop(&mut self) {
        self.done = true;
        self.frames = Vec::new();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        self.settle_unread();
    }
}

impl<B: Body<Data = Bytes>> Body for BudgetBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx),
            ResponseKindProj::Watched { mut body, watch } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            watch.keep(data);
                        }
                        // A body that knows its end (a `Content-Length`) may not be polled
                        // again.
                        if body.is_end_stream() {
                            watch.finish();
                        }
                    }
                    Poll::Ready(None) => watch.finish(),
                    Poll::Ready(Some(Err(_))) => watch.settle_unread(),
                    Poll::Pending => {}
                }
                polled
            }
            ResponseKindProj::Refused { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } | ResponseKind::Watched { body, .. } => {
                body.is_end_stream()
            }
            ResponseKind::Refused { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } | ResponseKind::Watched { body, .. } => body.size_hint(),
            ResponseKind::Refused { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for BudgetBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetBody").finish_non_exhaustive()
    }
}

/// What kind of refusal, for its status and the provider's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Over a limit now: `429` with `Retry-After`.
    OverLimit(Duration),
    /// Larger than a limit's capacity: `400`, never "retry later".
    NeverFits,
    /// The store failed or was late (fail-closed): `503`, `Retry-After: 1`.
    StoreUnavailable,
    /// The request body could not be read: `400`.
    BadBody,
    /// The request body is larger than the layer reads: `413`.
    TooLarge,
    /// The request body did not arrive in time: `408`.
    UploadTimeout,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Self::OverLimit(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NeverFits | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UploadTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// The refusal's response, in the error shape of the provider of `path` (the formats in
/// `provider/` know each shape): OpenAI's for Chat, Completions, Responses and unknown
/// paths, Anthropic's, Gemini's (`code` is the status), Ollama's (a message only).
pub(super) fn refusal<B>(path: &str, refusal: Refusal, message: &str) -> Response<BudgetBody<B>> {
    let status = refusal.status();
    let (openai_type, code, anthropic_type, google_status) = match refusal {
        Refusal::OverLimit(_) => (
            "budget_exceeded",
            "rate_limit_exceeded",
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
        ),
        Refusal::NeverFits => (
            "invalid_request_error",
            "budget_exceeded",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
        Refusal::StoreUnavailable => (
            "server_error",
            "budget_unavailable",
            "api_error",
            "UNAVAILABLE",
        ),
        Refusal::BadBody | Refusal::TooLarge | Refusal::UploadTimeout => (
            "invalid_request_error",
            "invalid_request_body",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
    };
    let json = Provider::from_path(path).error_body(&ErrorAnswer {
        status,
        message,
        openai_type,
        openai_code: code,
        anthropic_type,
        google_status,
    });
    let mut response = Response::new(BudgetBody {
        kind: ResponseKind::Refused {
            data: Some(Bytes::from(json.to_string())),
        },
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let retry_after = match refusal {
        Refusal::OverLimit(wait) => Some(retry_after_secs(wait)),
        Refusal::StoreUnavailable => Some(1),
        _ => None,
    };
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Whole seconds to wait, rounded up (at least 1: `Retry-After: 0` invites a busy loop).
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};

    use super::*;

    /// Every refusal in every provider's shape: status, headers and body, byte for byte.
    #[tokio::test]
    async fn each_refusal_in_each_providers_shape() {
        let paths = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/messages",
            "/v1beta/models/m:streamGenerateContent",
            "/api/chat",
            "/other",
        ];
        let refusals = [
            Refusal::OverLimit(Duration::from_millis(1_500)),
            Refusal::NeverFits,
            Refusal::StoreUnavailable,
            Refusal::BadBody,
            Refusal::TooLarge,
            Refusal::UploadTimeout,
        ];
        let mut all = String::new();
        for path in paths {
            for refusal in refusals {
                let response = super::refusal::<Empty<Bytes>>(path, refusal, "why \"quoted\"");
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let headers: Vec<String> = parts
                    .headers
                    .iter()
                    .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                    .collect();
                all.push_str(&format!(
                    "{path} {} [{}] {}\n",
                    parts.status.as_u16(),
                    headers.join(", "),
                    std::str::from_utf8(&body).unwrap()
                ));
            }
        }
        assert_eq!(
            all,
            r#"/v1/chat/completions 429 [content-type: application/json, retry-after: 2] {"error":{"code":"rate_limit_exceeded","message":"why \"quoted\"","param":null,"type":"budget_exceeded"}}
/v1/chat/completions 400 [content-type: application/json] {"error":{"code":"budget_exceeded","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/chat/completions 503 [content-type: application/json, retry-after: 1] {"error":{"code":"budget_unavailable","message":"why \"quoted\"","param":null,"type":"server_error"}}
/v1/chat/completions 400 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/chat/completions 413 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/chat/completions 408 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/completions 429 [content-type: application/json, retry-after: 2] {"error":{"code":"rate_limit_exceeded","message":"why \"quoted\"","param":null,"type":"budget_exceeded"}}
/v1/completions 400 [content-type: application/json] {"error":{"code":"budget_exceeded","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/completions 503 [content-type: application/json, retry-after: 1] {"error":{"code":"budget_unavailable","message":"why \"quoted\"","param":null,"type":"server_error"}}
/v1/completions 400 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/completions 413 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/completions 408 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/responses 429 [content-type: application/json, retry-after: 2] {"error":{"code":"rate_limit_exceeded","message":"why \"quoted\"","param":null,"type":"budget_exceeded"}}
/v1/responses 400 [content-type: application/json] {"error":{"code":"budget_exceeded","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/responses 503 [content-type: application/json, retry-after: 1] {"error":{"code":"budget_unavailable","message":"why \"quoted\"","param":null,"type":"server_error"}}
/v1/responses 400 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/responses 413 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/responses 408 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/v1/messages 429 [content-type: application/json, retry-after: 2] {"error":{"message":"why \"quoted\"","type":"rate_limit_error"},"type":"error"}
/v1/messages 400 [content-type: application/json] {"error":{"message":"why \"quoted\"","type":"invalid_request_error"},"type":"error"}
/v1/messages 503 [content-type: application/json, retry-after: 1] {"error":{"message":"why \"quoted\"","type":"api_error"},"type":"error"}
/v1/messages 400 [content-type: application/json] {"error":{"message":"why \"quoted\"","type":"invalid_request_error"},"type":"error"}
/v1/messages 413 [content-type: application/json] {"error":{"message":"why \"quoted\"","type":"invalid_request_error"},"type":"error"}
/v1/messages 408 [content-type: application/json] {"error":{"message":"why \"quoted\"","type":"invalid_request_error"},"type":"error"}
/v1beta/models/m:streamGenerateContent 429 [content-type: application/json, retry-after: 2] {"error":{"code":429,"message":"why \"quoted\"","status":"RESOURCE_EXHAUSTED"}}
/v1beta/models/m:streamGenerateContent 400 [content-type: application/json] {"error":{"code":400,"message":"why \"quoted\"","status":"INVALID_ARGUMENT"}}
/v1beta/models/m:streamGenerateContent 503 [content-type: application/json, retry-after: 1] {"error":{"code":503,"message":"why \"quoted\"","status":"UNAVAILABLE"}}
/v1beta/models/m:streamGenerateContent 400 [content-type: application/json] {"error":{"code":400,"message":"why \"quoted\"","status":"INVALID_ARGUMENT"}}
/v1beta/models/m:streamGenerateContent 413 [content-type: application/json] {"error":{"code":413,"message":"why \"quoted\"","status":"INVALID_ARGUMENT"}}
/v1beta/models/m:streamGenerateContent 408 [content-type: application/json] {"error":{"code":408,"message":"why \"quoted\"","status":"INVALID_ARGUMENT"}}
/api/chat 429 [content-type: application/json, retry-after: 2] {"error":"why \"quoted\""}
/api/chat 400 [content-type: application/json] {"error":"why \"quoted\""}
/api/chat 503 [content-type: application/json, retry-after: 1] {"error":"why \"quoted\""}
/api/chat 400 [content-type: application/json] {"error":"why \"quoted\""}
/api/chat 413 [content-type: application/json] {"error":"why \"quoted\""}
/api/chat 408 [content-type: application/json] {"error":"why \"quoted\""}
/other 429 [content-type: application/json, retry-after: 2] {"error":{"code":"rate_limit_exceeded","message":"why \"quoted\"","param":null,"type":"budget_exceeded"}}
/other 400 [content-type: application/json] {"error":{"code":"budget_exceeded","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/other 503 [content-type: application/json, retry-after: 1] {"error":{"code":"budget_unavailable","message":"why \"quoted\"","param":null,"type":"server_error"}}
/other 400 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/other 413 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
/other 408 [content-type: application/json] {"error":{"code":"invalid_request_body","message":"why \"quoted\"","param":null,"type":"invalid_request_error"}}
"#
        );
    }
}

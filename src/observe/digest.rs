//! SHA-256 of exactly what the client received: the [`DigestObserver`].
//!
//! # When to use it
//!
//! To prove later what a client was sent (audits, disputes, "did the model really say
//! that?"), or to let a client check that it read the whole stream: the client hashes what it
//! read and compares with [`StreamReport::digest`](crate::StreamReport::digest), or with the
//! record a `DigestRegistry` keeps under the response id (feature `registry`).
//!
//! # What is hashed
//!
//! Every byte handed to the client, in order, as the [`on_data`](crate::Observer::on_data)
//! hook sees it: upstream events, blocks and comments as forwarded, and the error events the
//! layer adds. Never the layer's own keep-alive comments, which depend on timing. Since the
//! layer forwards whole events byte for byte, the digest is the same for the same upstream
//! content whatever its chunking or timing. Slices are hashed as they pass: nothing is
//! buffered and nothing is allocated per event (SHA-256 runs at the hardware's speed;
//! `sha2` uses the SHA extensions when the CPU has them).
//!
//! How it differs from hashing the upstream body yourself (in a tower-http
//! `MapResponseBody`, say): that hashes what the upstream sent, chunk by chunk, including
//! events the layer held back or cut short; this hashes what the client got.
//!
//! # When the hooks write
//!
//! | hook | what it does |
//! |---|---|
//! | `on_request` | picks up the [`RequestDigestHandle`] that [`RequestDigestLayer`](crate::RequestDigestLayer) put into the request extensions, if any |
//! | `on_event` | with a registry: notes a terminal event (see below) |
//! | `on_data` | hashes the frame; with a registry, right after the frame holding a terminal event, inserts the record |
//! | `on_end` | writes [`digest`](crate::StreamReport::digest) and [`request_digest`](crate::StreamReport::request_digest); with a registry, inserts or updates the record and adds a `DigestRegistration` to the report's extensions |
//!
//! `report.request_digest` is `Some` only when the request went through a
//! [`RequestDigestLayer`](crate::RequestDigestLayer) placed *outside* the
//! [`SseLayer`](crate::SseLayer) and its body was read to its end by the time the stream
//! ended; it is `None` when the request body was not read to its end, failed, or was dropped.
//!
//! # Registry timing (feature `registry`)
//!
//! A client that reads the end of its stream and at once asks for the digest must find it.
//! So the record is inserted *before* the frame holding the stream's terminal event is
//! released to the client: `data: [DONE]` (OpenAI and compatibles), Anthropic
//! `message_stop`, Responses `response.completed` / `response.incomplete` /
//! `response.failed`, and Ollama's `"done": true` line. Streams without a terminal event
//! (Gemini, custom formats) are inserted when they end, which is before the client sees the
//! end of the body. If bytes follow the terminal event (a trailing comment, an error event),
//! the record is updated when the stream ends, so the record always ends up with the digest
//! of everything the client received.
//!
//! There is no record without a response id (see
//! [`StreamReport::response_id`](crate::StreamReport::response_id)); the report then says
//! why in its extensions. A response id seen again (a replayed or buggy upstream) replaces
//! the earlier record: last writer wins.

use std::fmt;

use sha2::Digest as _;
use sha2::Sha256;

use crate::observe::{EventContext, Observer};
use crate::provider::Provider;
use crate::report::StreamReport;
use crate::request_digest::RequestDigestHandle;
use crate::sse::EventRef;

#[cfg(feature = "registry")]
use crate::registry::{DigestRecord, DigestRegistration, DigestRegistry};

/// A SHA-256 digest.
///
/// Displays (and serializes) as 64 lowercase hex digits.
///
/// ```
/// use tower_sse::Digest;
///
/// let digest = Digest::of(b"abc");
/// assert_eq!(
///     digest.to_hex(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of these bytes.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xF)]));
        }
        out
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

/// Hashes what the client receives with SHA-256; see the [module docs](self).
///
/// Cheap to clone (the layer clones it for every request): a fresh hasher state and, with a
/// registry, one reference count.
///
/// ```
/// use tower_sse::{DigestObserver, SseLayer, StreamReport};
///
/// let layer = SseLayer::new()
///     .observer(DigestObserver::new())
///     .on_end(|report: StreamReport| {
///         if let Some(digest) = report.digest {
///             println!("sent {} bytes, sha256 {digest}", report.bytes_out);
///         }
///     });
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
pub struct DigestObserver {
    hasher: Sha256,
    request: Option<RequestDigestHandle>,
    #[cfg(feature = "registry")]
    registration: Registration,
}

impl DigestObserver {
    /// An observer that writes [`StreamReport::digest`](crate::StreamReport::digest) (and
    /// `request_digest`, with a [`RequestDigestLayer`](crate::RequestDigestLayer) outside).
    pub fn new() -> Self {
        Self::default()
    }

    /// An observer that also records each stream's digests in `registry`, under the
    /// response id, before the terminal event reaches the client. See the
    /// [module docs](self#registry-timing-feature-registry).
    ///
    /// ```
    /// use tower_sse::{DigestObserver, DigestRegistry, SseLayer};
    ///
    /// let registry = DigestRegistry::new();
    /// let layer = SseLayer::new().observer(DigestObserver::with_registry(registry.clone()));
    /// // In a handler for `GET /v1/digests/{id}`:
    /// let record = registry.get("chatcmpl-123");
    /// assert!(record.is_none());
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "registry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
    pub fn with_registry(registry: DigestRegistry) -> Self {
        Self {
            registration: Registration {
                registry: Some(registry),
                ..Registration::default()
            },
            ..Self::default()
        }
    }
}

impl fmt::Debug for DigestObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DigestObserver");
        d.field("request_digest", &self.request.is_some());
        #[cfg(feature = "registry")]
        d.field("registry", &self.registration.registry.is_some());
        d.finish_non_exhaustive()
    }
}

impl Observer for DigestObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.request = request.extensions.get::<RequestDigestHandle>().cloned();
    }

    #[inline]
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        #[cfg(feature = "registry")]
        if self.registration.registry.is_some()
            && cx.is_delivered()
            && is_terminal(event, cx.provider())
        {
            self.registration.arm(event.raw());
        }
        #[cfg(not(feature = "registry"))]
        let _ = (event, cx);
    }

    #[inline]
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        self.hasher.update(data);
        #[cfg(feature = "registry")]
        if self.registration.armed.is_some() {
            self.registration
                .after_terminal_frame(data, &self.hasher, &self.request, report);
        }
        #[cfg(not(feature = "registry"))]
        let _ = report;
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        let digest = Digest::from_hasher(std::mem::take(&mut self.hasher));
        report.digest = Some(digest);
        report.request_digest = self.request.as_ref().and_then(RequestDigestHandle::digest);
        #[cfg(feature = "registry")]
        self.registration.on_end(digest, report);
    }
}

/// Whether this event ends its stream in its format (see the module docs).
#[cfg_attr(not(feature = "registry"), allow(dead_code))]
#[inline]
fn is_terminal(event: &EventRef<'_>, provider: Provider) -> bool {
    let data = event.data_bytes();
    if data == b"[DONE]" {
        return true;
    }
    match event.event_bytes() {
        b"" => provider == Provider::Ollama && ollama_done(data),
        b"message_stop" | b"response.completed" | b"response.incomplete" | b"response.failed" => {
            true
        }
        _ => false,
    }
}

/// Whether an Ollama line says `"done": true` (the key at any depth; keys inside strings are
/// escaped and cannot match).
#[cfg_attr(not(feature = "registry"), allow(dead_code))]
fn ollama_done(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"done\"";
    memchr::memmem::rfind_iter(data, KEY).any(|at| {
        let rest = &data[at + KEY.len()..];
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"true"))
    })
}

/// How many frames may pass after a terminal event before the frame holding it is
/// recognised; past that, the record is refreshed only when the stream ends.
#[cfg(feature = "registry")]
const MAX_ARMED_FRAMES: u8 = 16;

/// The registry side of the observer.
#[cfg(feature = "registry")]
#[derive(Clone, Default)]
struct Registration {
    registry: Option<DigestRegistry>,
    /// A terminal event was seen and its frame may not have gone out yet.
    armed: Option<Armed>,
    /// The digests the registry holds for this stream (response, request).
    inserted: Option<(Digest, Option<Digest>)>,
    /// Why nothing was inserted, when nothing was.
    skipped: Option<DigestRegistration>,
}

/// Where a terminal event's bytes lie (addresses only; nothing is dereferenced).
#[cfg(feature = "registry")]
#[derive(Clone, Copy)]
struct Armed {
    start: usize,
    end: usize,
    frames_left: u8,
}

#[cfg(feature = "registry")]
impl Registration {
    #[cold]
    fn arm(&mut self, raw: &[u8]) {
        let start = raw.as_ptr().addr();
        self.armed = Some(Armed {
            start,
            end: start + raw.len(),
            frames_left: MAX_ARMED_FRAMES,
        });
    }

    /// A frame went out while a terminal event was pending: record the digest so far.
    ///
    /// The frame that holds the terminal event is recognised by address: the layer forwards
    /// events as slices of the buffer they were decoded from, so that frame's bytes contain
    /// the event's bytes. Every frame queued before it was alive, at another address, when
    /// the event was seen, so no other frame can match. When the event was copied or
    /// re-encoded no frame matches, and the record is refreshed after each frame (at most
    /// [`MAX_ARMED_FRAMES`]) and at the end.
    #[cold]
    fn after_terminal_frame(
        &mut self,
        data: &[u8],
        hasher: &Sha256,
        request: &Option<RequestDigestHandle>,
        report: &mut StreamReport,
    ) {
        let Some(armed) = self.armed.as_mut() else {
            return;
        };
        let frame_start = data.as_ptr().addr();
        let holds_event = armed.start < armed.end
            && frame_start <= armed.start
            && armed.end <= frame_start + data.len();
        if holds_event || armed.frames_left == 0 {
            self.armed = None;
        } else {
            armed.frames_left -= 1;
        }
        let digest = Digest::from_hasher(hasher.clone());
        let request = request.as_ref().and_then(RequestDigestHandle::digest);
        self.register(digest, request, report);
    }

    fn on_end(&mut self, digest: Digest, report: &mut StreamReport) {
        if self.registry.is_none() {
            return;
        }
        self.armed = None;
        self.register(digest, report.request_digest, report);
        let registration = if self.inserted.is_some() {
            DigestRegistration::Inserted
        } else {
            self.skipped.unwrap_or(DigestRegistration::NoResponseId)
        };
        report.extensions.insert(registration);
    }

    fn register(&mut self, digest: Digest, request: Option<Digest>, report: &StreamReport) {
        let Some(registry) = &self.registry else {
            return;
        };
        if self.inserted == Some((digest, request)) {
            return;
        }
        let Some(id) = report.response_id.as_deref().filter(|id| !id.is_empty()) else {
            self.skipped = Some(DigestRegistration::NoResponseId);
            return;
        };
        if id.len() > registry.max_id_len() {
            self.skipped = Some(DigestRegistration::ResponseIdTooLong);
            return;
        }
        let mut record = DigestRecord::new(id, digest);
        record.request_digest = request;
        record.model = report
            .model
            .as_ref()
            .filter(|model| model.len() <= registry.max_id_len())
            .cloned();
        registry.insert(record);
        self.inserted = Some((digest, request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(event: &'a str, data: &'a str) -> EventRef<'a> {
        EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes())
    }

    #[test]
    fn digest_of_matches_known_vectors() {
        assert_eq!(
            Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            serde_json::to_string(&Digest::of(b"abc")).unwrap(),
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
    }

    #[test]
    fn terminal_events_per_format() {
        let any = Provider::Unknown;
        assert!(is_terminal(&ev("", "[DONE]"), any));
        assert!(is_terminal(&ev("message_stop", "{}"), Provider::Anthropic));
        assert!(is_terminal(&ev("response.completed", "{}"), any));
        assert!(is_terminal(&ev("response.incomplete", "{}"), any));
        assert!(is_terminal(&ev("response.failed", "{}"), any));
        assert!(!is_terminal(&ev("response.output_text.delta", "{}"), any));
        assert!(!is_terminal(
            &ev("message_delta", "{}"),
            Provider::Anthropic
        ));
        assert!(!is_terminal(
            &ev("", "{\"choices\":[]}"),
            Provider::OpenAiChat
        ));
        let done = r#"{"model":"m","message":{"content":""},"done_reason":"stop","done": true}"#;
        assert!(is_terminal(&ev("", done), Provider::Ollama));
        assert!(!is_terminal(&ev("", done), Provider::OpenAiChat));
        assert!(!is_terminal(
            &ev(
                "",
                r#"{"message":{"content":"\"done\":true"},"done":false}"#
            ),
            Provider::Ollama
        ));
    }

    #[test]
    fn ollama_done_is_strict_about_the_shape() {
        assert!(ollama_done(br#"{"done":true}"#));
        assert!(ollama_done(b"{\"done\" :\ttrue}"));
        assert!(!ollama_done(br#"{"done":false}"#));
        assert!(!ollama_done(br#"{"done_reason":"true"}"#));
        assert!(!ollama_done(br#"{"done""#));
        assert!(!ollama_done(b""));
    }

    #[cfg(feature = "registry")]
    #[test]
    fn the_frame_holding_the_terminal_event_is_recognised_by_address() {
        use bytes::Bytes;
        use tokio::time::Instant;

        let registry = DigestRegistry::new();
        let mut observer = DigestObserver::with_registry(registry.clone());
        let mut report = StreamReport::new(Instant::now());
        report.response_id = Some("id".into());
        let input = Bytes::from_static(b"data: a\n\ndata: [DONE]\n\n");
        let done = input.slice(9..);
        let event = EventRef::new(b"", b"[DONE]", &done);
        let mut cx = EventContext::new(Instant::now(), false, Provider::OpenAiChat, &mut report);
        observer.on_event(&event, &mut cx);
        assert!(observer.registration.armed.is_some());

        // A frame queued before it (a copy, elsewhere): recorded, still waiting.
        let earlier = input[..9].to_vec();
        observer.on_data(&earlier, &mut report);
        assert!(observer.registration.armed.is_some());
        let record = registry.get("id").unwrap();
        assert_eq!(record.response_digest, Digest::of(&input[..9]));

        // The frame holding the event: recorded, done waiting.
        observer.on_data(&done, &mut report);
        assert!(observer.registration.armed.is_none());
        let record = registry.get("id").unwrap();
        assert_eq!(record.response_digest, Digest::of(&input));

        // Bytes after it are recorded at the end.
        observer.on_data(b": bye\n\n", &mut report);
        let record = registry.get("id").unwrap();
        assert_eq!(record.response_digest, Digest::of(&input));
        observer.on_end(&mut report);
        let all = [&input[..], b": bye\n\n"].concat();
        assert_eq!(report.digest, Some(Digest::of(&all)));
        assert_eq!(
            registry.get("id").unwrap().response_digest,
            Digest::of(&all)
        );
        assert_eq!(
            report.extensions.get::<DigestRegistration>(),
            Some(&DigestRegistration::Inserted)
        );
    }
}

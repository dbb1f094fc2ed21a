//! [`DigestObserver`]: SHA-256 of what the client received; see the [module docs](crate::digest).

use std::fmt;

use sha2::Digest as _;
use sha2::Sha256;

use crate::digest::request::RequestDigestHandle;
use crate::observe::{EventContext, Observer};
use crate::report::{Sha256Digest, StreamReport};
use crate::sse::EventRef;

#[cfg(feature = "registry")]
use crate::digest::registry::{DigestRecord, DigestRegistration, DigestRegistry};
#[cfg(feature = "registry")]
use crate::request::Tenant;

/// Hashes what the client receives with SHA-256; see the [module docs](crate::digest).
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
    /// Under a [`ResumeLayer`](crate::ResumeLayer): hash the stream as its log holds it,
    /// `id:` lines stamped (what its clients read), not as the `SseLayer` hands it on.
    #[cfg(feature = "resume")]
    stamped: crate::digest::stamped::Slot,
}

impl DigestObserver {
    /// An observer that writes [`StreamReport::digest`](crate::StreamReport::digest) (and
    /// `request_digest`, with a [`RequestDigestLayer`](crate::RequestDigestLayer) outside).
    pub fn new() -> Self {
        Self::default()
    }

    /// An observer that also records each stream's digests in `registry`, under the
    /// request's tenant ([`DigestRegistry::tenant_of`]) and the response id, before the
    /// terminal event reaches the client. See the
    /// [module docs](crate::digest#registry-timing-feature-registry).
    ///
    /// ```
    /// use tower_sse::{DigestObserver, DigestRegistry, SseLayer};
    ///
    /// let registry = DigestRegistry::new();
    /// let layer = SseLayer::new().observer(DigestObserver::with_registry(registry.clone()));
    /// // In a handler for `GET /v1/digests/{id}`, with the lookup request's head `parts`:
    /// # let (parts, ()) = http::Request::new(()).into_parts();
    /// let record = registry.get(registry.tenant_of(&parts), "chatcmpl-123");
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
        #[cfg(feature = "resume")]
        {
            self.stamped.0 = request
                .extensions
                .get::<crate::resume::ResumableStream>()
                .map(|stream| Box::new(crate::digest::stamped::Stamped::new(stream.id())));
        }
        #[cfg(feature = "registry")]
        if let Some(registry) = &self.registration.registry {
            self.registration.tenant = registry.tenant_of(request);
        }
    }

    #[inline]
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        #[cfg(feature = "registry")]
        if self.registration.registry.is_some()
            && cx.is_delivered()
            && cx.provider().is_terminal_of_stream(event, cx.recognised)
        {
            self.registration.arm(event.raw());
        }
        #[cfg(not(feature = "registry"))]
        let _ = (event, cx);
    }

    #[inline]
    fn on_data(&mut self, data: &[u8], report: &mut StreamReport) {
        #[cfg(feature = "resume")]
        if let Some(stamped) = self.stamped.0.as_mut() {
            stamped.feed(data, &mut self.hasher);
        } else {
            self.hasher.update(data);
        }
        #[cfg(not(feature = "resume"))]
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
        #[cfg(feature = "resume")]
        if let Some(stamped) = self.stamped.0.as_mut() {
            stamped.finish(&mut self.hasher);
        }
        let digest = Sha256Digest::from_hasher(std::mem::take(&mut self.hasher));
        report.digest = Some(digest);
        report.request_digest = self.request.as_ref().and_then(RequestDigestHandle::digest);
        #[cfg(feature = "registry")]
        self.registration.on_end(digest, report);
    }
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
    /// Who made the request: the record is stored under this tenant.
    tenant: Tenant,
    /// A terminal event was seen and its frame may not have gone out yet.
    armed: Option<Armed>,
    /// The digests the registry holds for this stream (response, request).
    inserted: Option<(Sha256Digest, Option<Sha256Digest>)>,
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
        let digest = Sha256Digest::from_hasher(hasher.clone());
        let request = request.as_ref().and_then(RequestDigestHandle::digest);
        self.register(digest, request, report);
    }

    fn on_end(&mut self, digest: Sha256Digest, report: &mut StreamReport) {
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

    fn register(
        &mut self,
        digest: Sha256Digest,
        request: Option<Sha256Digest>,
        report: &StreamReport,
    ) {
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
        record.tenant = self.tenant;
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

    #[test]
    fn digest_of_matches_known_vectors() {
        assert_eq!(
            Sha256Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            serde_json::to_string(&Sha256Digest::of(b"abc")).unwrap(),
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
    }

    #[cfg(feature = "registry")]
    #[test]
    fn the_frame_holding_the_terminal_event_is_recognised_by_address() {
        use bytes::Bytes;
        use tokio::time::Instant;

        use crate::provider::Provider;

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
        let record = registry.get(Tenant::anonymous(), "id").unwrap();
        assert_eq!(record.response_digest, Sha256Digest::of(&input[..9]));

        // The frame holding the event: recorded, done waiting.
        observer.on_data(&done, &mut report);
        assert!(observer.registration.armed.is_none());
        let record = registry.get(Tenant::anonymous(), "id").unwrap();
        assert_eq!(record.response_digest, Sha256Digest::of(&input));

        // Bytes after it are recorded at the end.
        observer.on_data(b": bye\n\n", &mut report);
        let record = registry.get(Tenant::anonymous(), "id").unwrap();
        assert_eq!(record.response_digest, Sha256Digest::of(&input));
        observer.on_end(&mut report);
        let all = [&input[..], b": bye\n\n"].concat();
        assert_eq!(report.digest, Some(Sha256Digest::of(&all)));
        assert_eq!(
            registry
                .get(Tenant::anonymous(), "id")
                .unwrap()
                .response_digest,
            Sha256Digest::of(&all)
        );
        assert_eq!(
            report.extensions.get::<DigestRegistration>(),
            Some(&DigestRegistration::Inserted)
        );
    }
}

//! [`DigestRegistry`]: digests by tenant and response id; see the [module docs](crate::digest).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::Serialize;
use tokio::time::Instant;

use crate::digest::shared::SharedDigests;
use crate::report::Sha256Digest;
use crate::request::{Tenant, TenantKey};

/// Default [`DigestRegistryBuilder::max_capacity`]: 10 000 records.
const DEFAULT_MAX_CAPACITY: u64 = 10_000;
/// Default [`DigestRegistryBuilder::time_to_live`]: 10 minutes.
const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(600);
/// Default [`DigestRegistryBuilder::max_id_len`]: 256 bytes.
const DEFAULT_MAX_ID_LEN: usize = 256;
/// The longest time to live accepted (longer ones are shortened to this): one year.
const MAX_TIME_TO_LIVE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the registry knows about one stream.
///
/// Serializes (e.g. with `serde_json`) as:
///
/// ```json
/// {"response_id":"chatcmpl-1","tenant":"3f8a…","request_digest":"9f86…",
///  "response_digest":"2c26…","model":"gpt-4o","finished_at":"2025-03-10T01:25:55.123Z"}
/// ```
///
/// Digests are 64 lowercase hex digits (or `null`), the tenant 32 (or `null` for the
/// anonymous tenant), `finished_at` is RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DigestRecord {
    /// The response id the stream carried.
    pub response_id: String,
    /// Who made the request: only this tenant finds the record
    /// ([`DigestRegistry::get`]).
    pub tenant: Tenant,
    /// SHA-256 of the request body, when a
    /// [`RequestDigestLayer`](crate::RequestDigestLayer) saw it read to its end.
    pub request_digest: Option<Sha256Digest>,
    /// SHA-256 of the bytes the client received (keep-alives excluded).
    pub response_digest: Sha256Digest,
    /// The model that answered, when the stream named it.
    pub model: Option<String>,
    /// When the record was made: when the terminal event went out, or the stream ended.
    #[serde(serialize_with = "rfc3339")]
    pub finished_at: SystemTime,
}

impl DigestRecord {
    /// A record for this response id and digest, finished now, of the anonymous tenant,
    /// with no request digest and no model (set those fields as needed).
    pub fn new(response_id: impl Into<String>, response_digest: Sha256Digest) -> Self {
        Self {
            response_id: response_id.into(),
            tenant: Tenant::anonymous(),
            request_digest: None,
            response_digest,
            model: None,
            finished_at: SystemTime::now(),
        }
    }

    /// The record as a JSON object (see the [type docs](Self) for its shape).
    pub fn to_json(&self) -> String {
        // A struct of strings and digests always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What happened to a stream's registry record. A
/// [`DigestObserver`](crate::DigestObserver) with a registry puts one into
/// [`StreamReport::extensions`](crate::StreamReport::extensions) at the end of every stream:
///
/// ```
/// use tower_sse::StreamReport;
/// use tower_sse::digest::DigestRegistration;
///
/// fn on_end(report: StreamReport) {
///     match report.extensions.get::<DigestRegistration>() {
///         Some(DigestRegistration::Inserted) => {}
///         Some(other) => eprintln!("no digest record: {other}"),
///         None => {} // no registry configured
///     }
/// }
/// # let _ = on_end;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DigestRegistration {
    /// The record is in the registry (inserted before the terminal event, or at the end).
    Inserted,
    /// The stream carried no response id (or an empty one): nothing was recorded.
    NoResponseId,
    /// The response id was longer than the registry's
    /// [`max_id_len`](DigestRegistryBuilder::max_id_len): nothing was recorded.
    ResponseIdTooLong,
}

impl DigestRegistration {
    /// A short snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inserted => "inserted",
            Self::NoResponseId => "no_response_id",
            Self::ResponseIdTooLong => "response_id_too_long",
        }
    }
}

impl fmt::Display for DigestRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A bounded, expiring map from (tenant, response id) to [`DigestRecord`]; see the
/// [module docs](crate::digest).
///
/// Records are kept per [`Tenant`]: a lookup finds only the asking tenant's record, and a
/// stream of one tenant never replaces another's, whatever response id the upstream gave
/// it. The registry's [`TenantKey`] says how a request's tenant is found (by default from
/// its credentials: bearer token, `x-api-key`, `x-goog-api-key`, `?key=`, `api-key`); a lookup handler asks [`tenant_of`](Self::tenant_of) the lookup
/// request and answers `404` when [`get`](Self::get) finds nothing, so that a record of
/// another tenant looks like no record at all.
///
/// Cheap to clone: clones share the records.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{Sha256Digest, DigestRegistry};
/// use tower_sse::digest::DigestRecord;
/// use tower_sse::request::Tenant;
///
/// let registry = DigestRegistry::builder()
///     .max_capacity(50_000)
///     .time_to_live(Duration::from_secs(3600))
///     .build();
/// let alice = Tenant::from_key("sk-alice");
/// let mut record = DigestRecord::new("chatcmpl-1", Sha256Digest::of(b"data: [DONE]\n\n"));
/// record.tenant = alice;
/// registry.insert(record);
/// let record = registry.get(alice, "chatcmpl-1").unwrap();
/// assert!(record.to_json().starts_with(r#"{"response_id":"chatcmpl-1","#));
/// // Another tenant, or none, finds nothing.
/// assert!(registry.get(Tenant::from_key("sk-bob"), "chatcmpl-1").is_none());
/// assert!(registry.get(Tenant::anonymous(), "chatcmpl-1").is_none());
/// ```
#[derive(Clone)]
pub struct DigestRegistry {
    inner: Arc<Inner>,
}

/// Records are keyed by tenant first: equal response ids of different tenants never meet.
type Key = (Tenant, String);

struct Inner {
    cache: Cache<Key, Stored>,
    tenant_key: TenantKey,
    max_capacity: u64,
    time_to_live: Duration,
    max_id_len: usize,
    shared: Option<Arc<dyn SharedDigests>>,
}

#[derive(Clone)]
struct Stored {
    record: DigestRecord,
    inserted_at: Instant,
}

impl DigestRegistry {
    /// A registry with the defaults: 10 000 records, 10 minutes, ids up to 256 bytes.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configure a registry.
    pub fn builder() -> DigestRegistryBuilder {
        DigestRegistryBuilder::default()
    }

    /// The tenant's record of this response id, if it is there and younger than the time
    /// to live. Another tenant's record of the same id is never returned.
    pub fn get(&self, tenant: Tenant, response_id: &str) -> Option<DigestRecord> {
        if response_id.is_empty() || response_id.len() > self.inner.max_id_len {
            return None;
        }
        let stored = self.inner.cache.get(&(tenant, response_id.to_owned()))?;
        if stored.inserted_at.elapsed() >= self.inner.time_to_live {
            return None;
        }
        Some(stored.record)
    }

    /// Insert (or replace) a record, under its tenant and response id: it replaces only a
    /// record of the same tenant. Returns `false`, storing nothing, when its response id is
    /// empty or longer than [`max_id_len`](DigestRegistryBuilder::max_id_len); a model name
    /// that is too long is left out.
    pub fn insert(&self, mut record: DigestRecord) -> bool {
        if record.response_id.is_empty() || record.response_id.len() > self.inner.max_id_len {
            return false;
        }
        if record
            .model
            .as_ref()
            .is_some_and(|model| model.len() > self.inner.max_id_len)
        {
            record.model = None;
        }
        if let Some(shared) = &self.inner.shared
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The other replicas learn it in the background; this one has it at once.
            runtime.spawn(shared.put(record.clone(), self.inner.time_to_live));
        }
        let key = (record.tenant, record.response_id.clone());
        self.inner.cache.insert(
            key,
            Stored {
                record,
                inserted_at: Instant::now(),
            },
        );
        true
    }

    /// The tenant's record of this response id: from this process, or else from the
    /// [shared store](DigestRegistryBuilder::shared) (what another replica recorded). With no
    /// shared store, this is [`get`](Self::get).
    pub async fn lookup(&self, tenant: Tenant, response_id: &str) -> Option<DigestRecord> {
        if let Some(record) = self.get(tenant, response_id) {
            return Some(record);
        }
        if response_id.is_empty() || response_id.len() > self.inner.max_id_len {
            return None;
        }
        let shared = self.inner.shared.as_ref()?;
        shared
            .fetch(tenant, response_id.to_owned())
            .await
            .filter(|record| record.tenant == tenant && record.response_id == response_id)
    }

    /// Remove the tenant's record of this response id, returning it if it was there.
    pub fn remove(&self, tenant: Tenant, response_id: &str) -> Option<DigestRecord> {
        self.inner
            .cache
            .remove(&(tenant, response_id.to_owned()))
            .map(|stored| stored.record)
    }

    /// The tenant of a request, as the registry's [`TenantKey`] finds it: the tenant a
    /// [`DigestObserver`](crate::DigestObserver) records a stream under, and the one to
    /// [`get`](Self::get) with when that request asks for a record.
    ///
    /// A lookup handler answers `404` both for no record and for another tenant's:
    ///
    /// ```
    /// use axum::extract::{Path, State};
    /// use axum::http::{StatusCode, request::Parts};
    /// use axum::response::{IntoResponse, Response};
    /// use tower_sse::DigestRegistry;
    ///
    /// async fn lookup(
    ///     State(registry): State<DigestRegistry>,
    ///     Path(id): Path<String>,
    ///     request: Parts,
    /// ) -> Response {
    ///     match registry.get(registry.tenant_of(&request), &id) {
    ///         Some(record) => record.to_json().into_response(),
    ///         None => StatusCode::NOT_FOUND.into_response(),
    ///     }
    /// }
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/v1/digests/{id}", axum::routing::get(lookup))
    ///     .with_state(DigestRegistry::new());
    /// # let _ = app;
    /// ```
    pub fn tenant_of(&self, request: &http::request::Parts) -> Tenant {
        self.inner.tenant_key.tenant(request)
    }

    /// The configured [`TenantKey`].
    pub fn tenant_key(&self) -> &TenantKey {
        &self.inner.tenant_key
    }

    /// How many records are held, approximately (moka counts in its maintenance; call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure).
    pub fn entry_count(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Run moka's pending maintenance now: apply evictions and expirations. It runs by
    /// itself as records are inserted; call this before reading
    /// [`entry_count`](Self::entry_count) in tests or for metrics.
    pub fn run_pending_tasks(&self) {
        self.inner.cache.run_pending_tasks();
    }

    /// The configured capacity.
    pub fn max_capacity(&self) -> u64 {
        self.inner.max_capacity
    }

    /// The configured time to live.
    pub fn time_to_live(&self) -> Duration {
        self.inner.time_to_live
    }

    /// The configured limit on response id and model name lengths, in bytes.
    pub fn max_id_len(&self) -> usize {
        self.inner.max_id_len
    }
}

impl Default for DigestRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DigestRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestRegistry")
            .field("max_capacity", &self.inner.max_capacity)
            .field("time_to_live", &self.inner.time_to_live)
            .field("max_id_len", &self.inner.max_id_len)
            .field("tenant_key", &self.inner.tenant_key)
            .field("entry_count", &self.entry_count())
            .finish()
    }
}

/// Builds a [`DigestRegistry`]; every setting has a safe default.
///
/// ```
/// use std::time::Duration;
///
/// use tower_sse::digest::DigestRecord;
/// use tower_sse::request::Tenant;
/// use tower_sse::{DigestObserver, DigestRegistry, Sha256Digest};
///
/// let registry = DigestRegistry::builder()
///     .max_capacity(50_000)
///     .time_to_live(Duration::from_secs(3600))
///     .max_id_len(64)
///     .build();
/// assert_eq!(registry.time_to_live(), Duration::from_secs(3600));
/// // The observer records every stream that carries a response id:
/// let observer = DigestObserver::with_registry(registry.clone());
/// # let _ = observer;
///
/// // By hand: a record, and an id longer than `max_id_len`, which is not kept.
/// let digest = Sha256Digest::of(b"data: [DONE]\n\n");
/// assert!(registry.insert(DigestRecord::new("chatcmpl-1", digest)));
/// assert!(!registry.insert(DigestRecord::new("x".repeat(65), digest)));
/// let record = registry.get(Tenant::anonymous(), "chatcmpl-1").unwrap();
/// assert_eq!(record.response_digest, digest);
/// ```
#[derive(Clone)]
#[must_use]
pub struct DigestRegistryBuilder {
    max_capacity: u64,
    time_to_live: Duration,
    max_id_len: usize,
    tenant_key: TenantKey,
    shared: Option<Arc<dyn SharedDigests>>,
}

impl fmt::Debug for DigestRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestRegistryBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("time_to_live", &self.time_to_live)
            .field("max_id_len", &self.max_id_len)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for DigestRegistryBuilder {
    fn default() -> Self {
        Self {
            max_capacity: DEFAULT_MAX_CAPACITY,
            time_to_live: DEFAULT_TIME_TO_LIVE,
            max_id_len: DEFAULT_MAX_ID_LEN,
            tenant_key: TenantKey::default(),
            shared: None,
        }
    }
}

impl DigestRegistryBuilder {
    /// The most records held; the least recently used go first. Default: 10 000.
    pub fn max_capacity(mut self, records: u64) -> Self {
        self.max_capacity = records;
        self
    }

    /// How long a record is kept after its last insert. Default: 10 minutes; at most a year.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = ttl.min(MAX_TIME_TO_LIVE);
        self
    }

    /// The longest response id (and model name) stored, in bytes. Default: 256.
    pub fn max_id_len(mut self, bytes: usize) -> Self {
        self.max_id_len = bytes;
        self
    }

    /// How a request's tenant is found. Default: [`TenantKey::credentials`], a hash of the
    /// first credential (bearer token, `x-api-key`, `x-goog-api-key`, `?key=`, `api-key`),
    /// anonymous without one.
    pub fn tenant_key(mut self, key: TenantKey) -> Self {
        self.tenant_key = key;
        self
    }

    /// Also keep the records in a store shared by every replica (`resume::RedisStore` with
    /// the `redis` feature), for [`DigestRegistry::lookup`]. Inserting spawns the write on
    /// the Tokio runtime (without one, the record stays in process).
    pub fn shared(mut self, store: impl SharedDigests) -> Self {
        self.shared = Some(Arc::new(store));
        self
    }

    /// Build the registry.
    pub fn build(self) -> DigestRegistry {
        let cache = Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(self.time_to_live)
            // Keep the newest records: a client asks for its digest right after its stream.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        DigestRegistry {
            inner: Arc::new(Inner {
                cache,
                max_capacity: self.max_capacity,
                time_to_live: self.time_to_live,
                max_id_len: self.max_id_len,
                tenant_key: self.tenant_key,
                shared: self.shared,
            }),
        }
    }
}

/// `SystemTime` as RFC 3339 in UTC with milliseconds (`1970-01-01T00:00:00.000Z`).
fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339(*time))
}

fn format_rfc3339(time: SystemTime) -> String {
    // Times before 1970 are shown as 1970 (a registry records the present).
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64, millis: u64| {
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_741_569_955, 123), "2025-03-10T01:25:55.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn record_json_shape() {
        let mut record = DigestRecord::new("chatcmpl-1", Sha256Digest::of(b""));
        record.finished_at = UNIX_EPOCH;
        record.model = Some("m".into());
        assert_eq!(
            record.to_json(),
            r#"{"response_id":"chatcmpl-1","tenant":null,"request_digest":null,"response_digest":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","model":"m","finished_at":"1970-01-01T00:00:00.000Z"}"#
        );
    }
}

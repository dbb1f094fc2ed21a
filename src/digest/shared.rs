//! [`SharedDigests`]: where a [`DigestRegistry`](crate::DigestRegistry) also keeps its
//! records, so that every replica of a gateway serves every lookup (feature `redis` adds
//! `resume::RedisStore`, which is one).

use std::time::Duration;

use crate::BoxFuture;
use crate::digest::DigestRecord;
use crate::request::Tenant;

/// A store of digest records shared by the replicas of a service, behind a
/// [`DigestRegistry`](crate::DigestRegistry) (give it with
/// [`DigestRegistryBuilder::shared`](crate::digest::DigestRegistryBuilder::shared)).
///
/// The registry stays the first place it looks: a record is inserted in process at once and
/// written to the shared store by a spawned task; a lookup that misses in process asks the
/// shared store ([`DigestRegistry::lookup`](crate::DigestRegistry::lookup)).
///
/// # What an implementation must guarantee
///
/// - **Tenants.** [`fetch`](Self::fetch) finds only a record of the tenant asked for: the
///   same response id of another tenant is another record, never returned.
/// - **Bounded waits.** Both calls end within the store's own timeout; a store that fails
///   finds nothing and keeps nothing (the in-process record is still there).
pub trait SharedDigests: Send + Sync + 'static {
    /// Keep `record` for `ttl`, under its tenant and response id (replacing only a record of
    /// the same tenant and id).
    fn put(&self, record: DigestRecord, ttl: Duration) -> BoxFuture<'static, ()>;

    /// The record of this tenant and response id, if the store has it.
    fn fetch(
        &self,
        tenant: Tenant,
        response_id: String,
    ) -> BoxFuture<'static, Option<DigestRecord>>;
}

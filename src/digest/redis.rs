//! The digest records of a [`DigestRegistry`](crate::DigestRegistry) on Redis, in the
//! [`RedisStore`] of resumable streams (feature `redis`): [`SharedDigests`] for it.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use crate::BoxFuture;
use crate::digest::{DigestRecord, SharedDigests};
use crate::report::Sha256Digest;
use crate::request::Tenant;
use crate::resume::RedisStore;
use crate::resume::redis::millis;

/// Digest records on Redis: `<prefix>digest:{<tenant>}:<response id>`, a hash with the
/// record's fields, expiring with the registry's time to live. The tenant is part of the key:
/// another tenant's record of the same id is another key.
impl SharedDigests for RedisStore {
    fn put(&self, record: DigestRecord, ttl: Duration) -> BoxFuture<'static, ()> {
        let store = self.clone();
        Box::pin(async move {
            let key = digest_key(&store, record.tenant, &record.response_id);
            let at = record
                .finished_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let request = record
                .request_digest
                .map(|d| d.to_hex())
                .unwrap_or_default();
            let model = record.model.clone().unwrap_or_default();
            // Best effort: the registry in process has the record anyway.
            let _ = store
                .call(async |mut c| {
                    redis::pipe()
                        .hset_multiple(
                            &key,
                            &[
                                ("tenant", record.tenant.to_string()),
                                ("id", record.response_id.clone()),
                                ("request", request),
                                ("response", record.response_digest.to_hex()),
                                ("model", model),
                                ("at", at.to_string()),
                            ],
                        )
                        .ignore()
                        .pexpire(&key, millis(ttl) as i64)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        })
    }

    fn fetch(
        &self,
        tenant: Tenant,
        response_id: String,
    ) -> BoxFuture<'static, Option<DigestRecord>> {
        let store = self.clone();
        Box::pin(async move {
            let key = digest_key(&store, tenant, &response_id);
            let fields: HashMap<String, String> =
                store.call(async |mut c| c.hgetall(&key).await).await.ok()?;
            let field = |name: &str| fields.get(name).map(String::as_str);
            let mut record = DigestRecord::new(
                field("id")?.to_owned(),
                Sha256Digest::from_hex(field("response")?)?,
            );
            record.tenant = Tenant::parse(field("tenant")?)?;
            record.request_digest = field("request").and_then(Sha256Digest::from_hex);
            record.model = field("model")
                .filter(|model| !model.is_empty())
                .map(str::to_owned);
            let at: u64 = field("at")?.parse().ok()?;
            record.finished_at = std::time::UNIX_EPOCH + Duration::from_millis(at);
            (record.tenant == tenant && record.response_id == response_id).then_some(record)
        })
    }
}

fn digest_key(store: &RedisStore, tenant: Tenant, response_id: &str) -> String {
    format!("{}digest:{{{tenant}}}:{response_id}", store.prefix())
}

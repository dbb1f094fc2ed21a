//! [`RedisBudgets`]: budgets shared by every replica on one Redis (feature `redis`).
//!
//! - **One script to admit, one to settle.** Each runs atomically on the server: the
//!   admission checks every limit of the key and reserves against all of them or none; the
//!   settlement applies once per reservation id (`SET NX` of a settled marker, kept for a
//!   day) and corrects every limit. One round trip each.
//! - **Keys.** One hash per limit of a key, `<prefix>{<key>}:<limit>`: the braces are a
//!   hash tag, so that all of a key's limits live in one cluster slot (a script may only
//!   touch keys of one slot). The limit's definition is part of its name: a changed limit
//!   starts afresh. Every key has a TTL: a rate's until it has refilled, a calendar
//!   budget's until the end of the period after the current one (debt carries over one).
//! - **Arithmetic.** The same rules as [`MemoryBudgets`](super::MemoryBudgets), in
//!   milliseconds (Lua numbers are doubles: exact integers up to 2^53, so a rate stays exact
//!   while its burst times its period in milliseconds is below 2^53, e.g. 10^9 tokens per
//!   day). Time is the replica's clock (the layer's), so replicas' clocks should agree
//!   within the precision wanted.
//! - **Failures.** Every call is bounded by the store's timeout (250 ms by default). An
//!   admission that fails or is late is the layer's [`OnStoreError`](super::OnStoreError)
//!   policy: `503`, or a request let through unreserved. Such an admission may still run
//!   on Redis (a slow Redis runs what waited in its socket when it wakes), with no stream
//!   to settle it: so each admission leaves a marker (kept a minute), and one that got no
//!   answer is cancelled on a task — given back if it ran, kept from running if it has not
//!   yet (a refused request reserves nothing). A settlement is handed to a task (the end of
//!   a stream never waits on Redis), retried up to three times (a retry of an attempt that
//!   Redis did apply, after a timeout, applies nothing: the settled marker); one that still
//!   fails is counted as lost, its reservation then stays until the key's state expires.
//!   A Redis that restarts without persistence loses every key's state: budgets start
//!   afresh, and a stream settled after that is charged only its overrun.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::Limit;
use super::limits::Window;
use super::memory;
use super::store::{Admit, BudgetStore, Decision, LimitStatus, Rejection, Settlement, StoreError};
use crate::BoxFuture;

const NANOS_PER_MS: u64 = 1_000_000;
/// How long a settled id is remembered (a settlement retried later than this would apply
/// twice; retries stop long before).
const SETTLED_TTL_MS: u64 = 86_400_000;

/// How long an admission's marker lives: longer than any admission can wait in a socket
/// and its cancellation's retries.
const ADMITTED_TTL_MS: u64 = 60_000;

/// An admission sent to Redis and not yet answered. Dropped unanswered (the call failed,
/// timed out, or its future was dropped by the layer's timeout), it cancels the admission
/// on a task: Redis may have run it, or run it later, with no stream to settle it.
struct Pending<'a> {
    store: &'a RedisBudgets,
    admit: Admit<'a>,
    marker: String,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let admit = self.admit;
        self.store.spawn_correction(
            CANCEL,
            std::mem::take(&mut self.marker),
            Settlement {
                id: String::new(),
                key: admit.key.to_owned(),
                limits: Arc::from(admit.limits),
                reserved: admit.amounts,
                actual: super::Amounts::default(),
                admitted_at: admit.now,
                now: admit.now,
            },
        );
    }
}

/// `{prefix}{key}`: the braces make `key` the hash tag, so that every Redis key of one
/// budget key lands in one cluster slot (the scripts touch several at once).
fn push_hashed(out: &mut String, prefix: &str, key: &str) {
    out.push_str(prefix);
    out.push('{');
    out.push_str(key);
    out.push('}');
}

/// `n` in decimal.
fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0; 20];
    // ASCII digits: always UTF-8.
    out.push_str(std::str::from_utf8(crate::digits::decimal(n, &mut digits)).unwrap_or_default());
}

/// A process-unique admission id (for its marker).
fn admission_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::BuildHasher;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
    });
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Reserve against every limit, or none. KEYS: one hash per limit, then the admission's
/// marker. ARGV: now (ms), the marker's TTL (ms), then 8 per limit: kind (`r` rate, `c`
/// calendar), amount, period (ms, rates), burst (rates), n, period number (calendar), ms to
/// the period's end, ms of the period after.
/// Returns `{1}` admitted (the marker says `a`), `{0, limit index (1-based), wait ms (-1:
/// never)}`, or `{2}` when the admission was cancelled before it ran (see [`CANCEL`]).
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local marker = KEYS[#KEYS]
if redis.call('EXISTS', marker) == 1 then return {2} end
local new = {}
local refused, worst_wait = 0, -2
for i = 1, #KEYS - 1 do
  local b = 2 + (i - 1) * 8
  local kind, amount, per, burst, n = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local wait = nil
  if kind == 'r' then
    local h = redis.call('HMGET', KEYS[i], 'l', 't')
    local level, t = tonumber(h[1]) or 0, tonumber(h[2]) or now
    if now > t then level = math.max(0, level - (now - t) * amount) end
    if n > burst then wait = -1
    elseif level + n * per > burst * per then wait = math.ceil((level + n * per - burst * per) / amount) end
    new[i] = level + n * per
  else
    local period, to_end, next_len = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]), tonumber(ARGV[b + 8])
    local h = redis.call('HMGET', KEYS[i], 'p', 'u')
    local p, used = tonumber(h[1]), tonumber(h[2]) or 0
    if p ~= period then
      if p ~= nil and p + 1 == period then used = math.max(0, used - amount) else used = 0 end
    end
    if n > amount then wait = -1
    elseif used + n > amount then
      wait = to_end
      if math.max(0, used - amount) + n > amount then wait = wait + next_len end
    end
    new[i] = used + n
  end
  if wait ~= nil then
    if worst_wait ~= -1 and (wait == -1 or wait > worst_wait) then refused, worst_wait = i, wait end
  end
end
if refused > 0 then return {0, refused, worst_wait} end
for i = 1, #KEYS - 1 do
  local b = 2 + (i - 1) * 8
  local kind, amount = ARGV[b + 1], tonumber(ARGV[b + 2])
  if kind == 'r' then
    redis.call('HSET', KEYS[i], 'l', new[i], 't', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil(new[i] / amount) + 1000)
  else
    redis.call('HSET', KEYS[i], 'p', ARGV[b + 6], 'u', new[i])
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[b + 7]) + tonumber(ARGV[b + 8]))
  end
end
redis.call('SET', marker, 'a', 'PX', ARGV[2])
return {1}
";

/// The correction of a reservation to what was used, every limit (the body of [`SETTLE`]
/// and [`CANCEL`]); returns 1.
macro_rules! correct {
    () => {
        r"
local now = tonumber(ARGV[1])
for i = 1, #KEYS - 1 do
  local b = 2 + (i - 1) * 8
  local kind, amount, per, reserved, actual = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if kind == 'r' then
    local h = redis.call('HMGET', KEYS[i], 'l', 't')
    local level, t = tonumber(h[1]) or 0, tonumber(h[2]) or now
    if now > t then level = math.max(0, level - (now - t) * amount) end
    if actual >= reserved then level = level + (actual - reserved) * per
    else level = math.max(0, level - (reserved - actual) * per) end
    redis.call('HSET', KEYS[i], 'l', level, 't', math.max(now, t))
    redis.call('PEXPIRE', KEYS[i], math.ceil(level / amount) + 1000)
  else
    local period, same, ttl = tonumber(ARGV[b + 6]), ARGV[b + 7] == '1', tonumber(ARGV[b + 8])
    local h = redis.call('HMGET', KEYS[i], 'p', 'u')
    local p, used = tonumber(h[1]), tonumber(h[2]) or 0
    if p ~= period then
      if p ~= nil and p + 1 == period then used = math.max(0, used - amount) else used = 0 end
    end
    if same then used = math.max(0, used + actual - reserved)
    else used = used + math.max(0, actual - reserved) end
    redis.call('HSET', KEYS[i], 'p', period, 'u', used)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"
    };
}

/// Correct a reservation, once per id. KEYS: one hash per limit, then the settled marker.
/// ARGV: now (ms), marker TTL (ms), then 8 per limit: kind, amount, period (ms), reserved,
/// actual, period number now, 1 when the reservation is of this period, ms to the period's
/// end plus the period after. Returns 1 applied, 0 settled before.
const SETTLE: &str = concat!(
    r"
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[2]) then return 0 end
",
    correct!()
);

/// Give back an admission nobody awaits any more (its caller timed out or went away while
/// Redis was slow or away), once, whether Redis ran it or not yet: with the admission's
/// marker at `a` (it ran), its reservation is corrected to zero; else the marker is set to
/// `c`, so that the admission, should Redis still run it, reserves nothing. KEYS and ARGV:
/// as [`SETTLE`]'s, the marker being the admission's (actual: 0). Returns 1 given back, 0
/// not run (now never will be).
const CANCEL: &str = concat!(
    r"
local m = redis.call('GET', KEYS[#KEYS])
redis.call('SET', KEYS[#KEYS], 'c', 'PX', ARGV[2])
if m ~= 'a' then return 0 end
",
    correct!()
);

/// Budgets on Redis, shared by every replica; see the [module docs](self).
///
/// Redis is not contacted until the first admission, so this runs without one:
///
/// ```
/// use std::time::Duration;
/// use tower_sse::budget::{BudgetLayer, OnStoreError, RedisBudgets};
///
/// let store = RedisBudgets::new("redis://127.0.0.1:6379/")?
///     .prefix("gateway-eu:budget:")
///     .timeout(Duration::from_millis(100));
/// let layer = BudgetLayer::new(store).on_store_error(OnStoreError::FailClosed);
/// # let _ = layer;
/// # Ok::<(), tower_sse::budget::StoreError>(())
/// ```
#[derive(Clone)]
pub struct RedisBudgets {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    lost: AtomicU64,
}

impl RedisBudgets {
    /// A store on the Redis at `url`; prefix `tower-sse:budget:`, timeout 250 ms.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(Box::new(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection: OnceCell::new(),
                prefix: "tower-sse:budget:".into(),
                timeout: Duration::from_millis(250),
                lost: AtomicU64::new(0),
            }),
        })
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
        }
        self
    }

    /// The prefix of every key (before first use).
    #[must_use]
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.with(|inner| inner.prefix = prefix)
    }

    /// The bound on every call to Redis, connecting included (before first use).
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|inner| inner.timeout = timeout)
    }

    /// Settlements given up after their retries (their reservations stay until the
    /// key's state expires). Cancellations of unanswered admissions are not counted.
    pub fn lost_settlements(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }

    /// The Redis key of one limit of `key`.
    pub fn limit_key(&self, key: &str, limit: &Limit) -> String {
        let mut name = String::with_capacity(self.inner.prefix.len() + key.len() + 64);
        self.push_limit_key(&mut name, key, limit);
        name
    }

    /// [`limit_key`](Self::limit_key) written onto `out`: the names are built piece by piece,
    /// once per limit on every admission and settlement, where `format!` cost about 19,000
    /// instructions per stream for four limits.
    fn push_limit_key(&self, out: &mut String, key: &str, limit: &Limit) {
        let (kind, per, burst) = match limit.window {
            Window::Rate { per, burst } => ("r", per.as_millis(), burst),
            Window::Day => ("d", 0, 0),
            Window::Month => ("m", 0, 0),
        };
        push_hashed(out, &self.inner.prefix, key);
        for part in [kind, limit.measure.as_str()] {
            out.push(':');
            out.push_str(part);
        }
        out.push(':');
        push_decimal(out, limit.amount);
        out.push(':');
        match u64::try_from(per) {
            Ok(per) => push_decimal(out, per),
            // A window of more than 584 million years: as `format!` would write it.
            Err(_) => out.push_str(&per.to_string()),
        }
        out.push(':');
        push_decimal(out, burst);
    }

    /// The once-only marker of one admission or settlement of `key`: `{prefix}{key}:what:id`.
    fn marker(&self, key: &str, what: &str, id: &str) -> String {
        let mut out =
            String::with_capacity(self.inner.prefix.len() + key.len() + what.len() + id.len() + 4);
        push_hashed(&mut out, &self.inner.prefix, key);
        for part in [what, id] {
            out.push(':');
            out.push_str(part);
        }
        out
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let inner = &self.inner;
        let client = inner.client.clone();
        let timeout = inner.timeout;
        let connect = inner.connection.get_or_try_init(|| async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config).await
        });
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection.clone()),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(late()),
        }
    }

    async fn eval<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(self.inner.timeout, cmd.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(late()),
        }
    }

    async fn admit_now(&self, admit: Admit<'_>) -> Result<Decision, StoreError> {
        let marker = self.marker(admit.key, "admit", &admission_id());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADMIT).arg(admit.limits.len() + 1);
        let mut name = String::with_capacity(self.inner.prefix.len() + admit.key.len() + 64);
        for limit in admit.limits {
            name.clear();
            self.push_limit_key(&mut name, admit.key, limit);
            cmd.arg(name.as_str());
        }
        cmd.arg(&marker);
        cmd.arg(admit.now / NANOS_PER_MS).arg(ADMITTED_TTL_MS);
        for limit in admit.limits {
            let n = limit.measure.of(&admit.amounts);
            let (kind, per, burst) = rate_args(limit);
            cmd.arg(kind).arg(limit.amount).arg(per).arg(burst).arg(n);
            calendar_args(&mut cmd, limit, admit.now);
        }
        // Until Redis answers, the admission may run there without anyone to settle it
        // (this future timed out or was dropped by the layer's timeout): then it is given
        // back, or kept from running.
        let mut pending = Pending {
            store: self,
            admit,
            marker,
            answered: false,
        };
        let answer: Vec<i64> = self.eval(cmd).await?;
        pending.answered = true;
        match answer.as_slice() {
            [1] => Ok(Decision::Admitted),
            [0, index, wait] => {
                let limit = usize::try_from(*index - 1)
                    .ok()
                    .and_then(|i| admit.limits.get(i))
                    .ok_or_else(|| StoreError("the admission script answered no limit".into()))?;
                Ok(Decision::Rejected(Rejection {
                    limit: *limit,
                    retry_after: u64::try_from(*wait).ok().map(Duration::from_millis),
                }))
            }
            _ => Err(StoreError("the admission script answered nonsense".into())),
        }
    }

    /// Run `script` (settle or cancel) for `s`, with `marker` as its once-only key.
    async fn correct(
        &self,
        script: &str,
        marker: String,
        s: &Settlement,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(s.limits.len() + 1);
        let mut name = String::with_capacity(self.inner.prefix.len() + s.key.len() + 64);
        for limit in s.limits.iter() {
            name.clear();
            self.push_limit_key(&mut name, &s.key, limit);
            cmd.arg(name.as_str());
        }
        cmd.arg(marker);
        cmd.arg(s.now / NANOS_PER_MS).arg(SETTLED_TTL_MS);
        for limit in s.limits.iter() {
            let (kind, per, _) = rate_args(limit);
            cmd.arg(kind)
                .arg(limit.amount)
                .arg(per)
                .arg(limit.measure.of(&s.reserved))
                .arg(limit.measure.of(&s.actual));
            let same = limit.period(s.admitted_at) == limit.period(s.now);
            cmd.arg(limit.period(s.now))
                .arg(u8::from(same))
                .arg(ttl_ms(limit, s.now));
        }
        let applied: i64 = self.eval(cmd).await?;
        Ok(applied == 1)
    }

    /// Run a correction on a task, retried up to three times (it applies once whatever
    /// the retries: its marker); a settlement that still fails is counted lost (a
    /// cancellation is not: its admission most often never reached Redis).
    fn spawn_correction(&self, script: &'static str, marker: String, s: Settlement) {
        let lost = move |store: &Self| {
            if script == SETTLE {
                store.inner.lost.fetch_add(1, Ordering::Relaxed);
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            lost(self);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            for attempt in 0..3u32 {
                if store.correct(script, marker.clone(), &s).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100) * (attempt + 1)).await;
            }
            lost(&store);
        });
    }

    /// Apply a settlement now; `Ok(false)` when its id was settled before.
    pub async fn settle_now(&self, s: &Settlement) -> Result<bool, StoreError> {
        let marker = self.marker(&s.key, "settled", &s.id);
        self.correct(SETTLE, marker, s).await
    }

    async fn status_now(
        &self,
        key: &str,
        limits: &[Limit],
        now: u64,
    ) -> Result<Vec<LimitStatus>, StoreError> {
        let mut pipe = redis::pipe();
        for limit in limits {
            pipe.cmd("HMGET")
                .arg(self.limit_key(key, limit))
                .arg(&["l", "t", "p", "u"][..]);
        }
        let mut connection = self.connection().await?;
        let rows: Vec<Vec<Option<i64>>> =
            match tokio::time::timeout(self.inner.timeout, pipe.query_async(&mut connection)).await
            {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => return Err(unavailable(&e)),
                Err(_) => return Err(late()),
            };
        Ok(limits
            .iter()
            .zip(rows)
            .map(|(limit, row)| {
                let get = |i: usize| row.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
                let state = match limit.window {
                    Window::Rate { .. } => {
                        // Level (units × ms) at `t` → the in-process state's theoretical
                        // arrival time (ns × amount).
                        let drained = u128::from((now / NANOS_PER_MS).saturating_sub(get(1)))
                            * u128::from(limit.amount);
                        let level = u128::from(get(0)).saturating_sub(drained);
                        let ahead_ns = level * u128::from(NANOS_PER_MS);
                        super::limits::LimitState::rate(
                            u128::from(now) * u128::from(limit.amount) + ahead_ns,
                        )
                    }
                    _ => super::limits::LimitState::calendar(get(2), get(3)),
                };
                memory::status(limit, &state, now)
            })
            .collect())
    }
}

/// Kind, period (ms) and burst of a limit for the scripts (calendar limits: `c`, 0, 0).
fn rate_args(limit: &Limit) -> (&'static str, u64, u64) {
    match limit.window {
        Window::Rate { per, burst } => ("r", (per.as_millis() as u64).max(1), burst),
        Window::Day | Window::Month => ("c", 0, 0),
    }
}

/// The calendar arguments of the admission: period number, ms to its end, ms of the next.
fn calendar_args(cmd: &mut redis::Cmd, limit: &Limit, now: u64) {
    match limit.window {
        Window::Rate { .. } => {
            cmd.arg(0).arg(0).arg(0);
        }
        Window::Day | Window::Month => {
            cmd.arg(limit.period(now))
                .arg((limit.period_end(now) - now).div_ceil(NANOS_PER_MS))
                .arg(limit.period_len_after(now) / NANOS_PER_MS);
        }
    }
}

/// A calendar state's TTL: to the end of the period after this one.
fn ttl_ms(limit: &Limit, now: u64) -> u64 {
    match limit.window {
        Window::Rate { .. } => 0,
        Window::Day | Window::Month => {
            (limit.period_end(now) - now).div_ceil(NANOS_PER_MS)
                + limit.period_len_after(now) / NANOS_PER_MS
        }
    }
}

fn unavailable(e: &redis::RedisError) -> StoreError {
    // The kind and code only: a Redis error can quote the command.
    StoreError(
        format!(
            "Redis: {:?}{}",
            e.kind(),
            e.code().map(|c| format!(" {c}")).unwrap_or_default()
        )
        .into(),
    )
}

fn late() -> StoreError {
    StoreError("Redis did not answer in time".into())
}

impl BudgetStore for RedisBudgets {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.admit_now(admit))
    }

    fn settle(&self, settlement: Settlement) {
        let marker = self.marker(&settlement.key, "settled", &settlement.id);
        self.spawn_correction(SETTLE, marker, settlement);
    }

    fn status<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
        Box::pin(self.status_now(key, limits, now))
    }

    fn settle_confirmed<'a>(
        &'a self,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { self.settle_now(&settlement).await })
    }
}

impl fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBudgets")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Measure;

    /// The names as the store wrote them with `format!` before: keys already in a Redis
    /// keep their names across the change.
    fn formatted(prefix: &str, key: &str, limit: &Limit) -> String {
        let (kind, per, burst) = match limit.window {
            Window::Rate { per, burst } => ("r", per.as_millis(), burst),
            Window::Day => ("d", 0, 0),
            Window::Month => ("m", 0, 0),
        };
        format!(
            "{prefix}{{{key}}}:{kind}:{}:{}:{per}:{burst}",
            limit.measure.as_str(),
            limit.amount
        )
    }

    #[test]
    fn names_are_the_formatted_ones() {
        let store = RedisBudgets::new("redis://127.0.0.1:1/").unwrap();
        let limits = [
            Limit::rate(Measure::Requests, 60, Duration::from_secs(60)),
            Limit::rate(Measure::TotalTokens, 100_000, Duration::from_millis(1500)).burst(20_000),
            Limit::rate(
                Measure::InputTokens,
                u64::MAX,
                Duration::from_secs(u64::MAX),
            )
            .burst(u64::MAX),
            Limit::per_day(Measure::OutputTokens, 0),
            Limit::per_month(Measure::CostMicros, 50_000_000),
        ];
        for key in ["", "k", "0123456789abcdef0123456789abcdef:gpt-4o", "ü{}"] {
            for limit in &limits {
                assert_eq!(
                    store.limit_key(key, limit),
                    formatted("tower-sse:budget:", key, limit),
                    "{limit:?}"
                );
            }
            assert_eq!(
                store.marker(key, "settled", "ab-1"),
                format!("tower-sse:budget:{{{key}}}:settled:ab-1")
            );
        }
    }
}

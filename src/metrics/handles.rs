//! [`HandleCache`]: the metrics recorder's handles of each label set, looked up once a
//! second instead of once per stream.
//!
//! Recording through `metrics::histogram!(name, labels)` builds a label vector and a
//! `metrics::Key`, which the recorder hashes, looks up and often clones: about a dozen
//! allocations and a lock per metric, nine metrics per stream. The handles it returns stay
//! valid, so [`MetricsObserver`](crate::MetricsObserver) keeps them per label set.
//!
//! An exporter may drop a series that has not been updated for a while (the Prometheus
//! exporter's `idle_timeout`); a handle kept longer would go on recording into the dropped
//! series. So handles are looked up again once they are [`REFRESH`] old: a handle that young
//! cannot belong to a series idle for longer, and an idle timeout of at least [`REFRESH`]
//! loses nothing. The same refresh picks up a recorder installed after the first streams.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Label, SharedString};

use super::names;
use crate::provider::Provider;
use crate::report::Outcome;

/// How long handles are used before they are looked up again.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// The default number of label sets whose handles are kept.
pub const DEFAULT_MAX_LABEL_SETS: usize = 1024;

/// The labels every GenAI metric of a stream carries.
///
/// The model names are the ones [`ModelLabels`](super::ModelLabels) keeps (or `_OTHER`), which
/// it hands out as clones of one shared string per name: so a label set is told apart by the
/// identity of its names (address and length), not their bytes. Looking one up hashes three
/// words instead of both names, and compares no bytes. Two copies of one name (two
/// `ModelLabels` with the same name) are two keys for the same series, which is harmless:
/// both keep valid handles. A key keeps its names alive, so no address is reused while it is
/// in the cache.
#[derive(Debug, Clone)]
pub(crate) struct LabelSet {
    pub(crate) provider: Provider,
    pub(crate) request_model: Option<SharedString>,
    pub(crate) response_model: Option<SharedString>,
}

/// Identity of a kept name: its address and length.
fn identity(name: &Option<SharedString>) -> (usize, usize) {
    name.as_deref()
        .map_or((0, 0), |name| (name.as_ptr() as usize, name.len()))
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        self.provider == other.provider
            && identity(&self.request_model) == identity(&other.request_model)
            && identity(&self.response_model) == identity(&other.response_model)
    }
}

impl Eq for LabelSet {}

impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.provider.hash(state);
        let (request, request_len) = identity(&self.request_model);
        let (response, response_len) = identity(&self.response_model);
        state.write_usize(request ^ request_len.rotate_left(48));
        state.write_usize(response ^ response_len.rotate_left(48));
    }
}

/// A hasher for small keys: one multiply per word (the FxHash step) instead of SipHash's
/// rounds. Not keyed, so only for maps a client cannot grow into long collision chains:
/// keys of addresses, or sets of bounded size (the kept model names, at most a few hundred,
/// where the worst chain is the whole set).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

impl WordHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        let mut tail = [0; 8];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl LabelSet {
    fn labels(&self) -> Vec<Label> {
        let mut labels = vec![
            Label::new("gen_ai.operation.name", self.provider.operation()),
            Label::new("gen_ai.provider.name", self.provider.as_str()),
        ];
        if let Some(model) = &self.request_model {
            labels.push(Label::new("gen_ai.request.model", model.clone()));
        }
        if let Some(model) = &self.response_model {
            labels.push(Label::new("gen_ai.response.model", model.clone()));
        }
        labels
    }
}

/// The handles of one label set, each registered with the recorder on first use (a metric
/// never recorded never appears as an empty series).
#[derive(Debug)]
pub(crate) struct Handles {
    born: Instant,
    labels: Vec<Label>,
    per_chunk: OnceLock<Histogram>,
    first_chunk: OnceLock<Histogram>,
    first_token: OnceLock<Histogram>,
    per_token: OnceLock<Histogram>,
    input_tokens: OnceLock<Histogram>,
    output_tokens: OnceLock<Histogram>,
    /// By outcome: a failed stream's duration also carries `error.type`.
    duration: [OnceLock<Histogram>; Outcome::COUNT],
}

impl Handles {
    fn new(set: &LabelSet) -> Self {
        Self {
            born: Instant::now(),
            labels: set.labels(),
            per_chunk: OnceLock::new(),
            first_chunk: OnceLock::new(),
            first_token: OnceLock::new(),
            per_token: OnceLock::new(),
            input_tokens: OnceLock::new(),
            output_tokens: OnceLock::new(),
            duration: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn histogram<'a>(
        &self,
        slot: &'a OnceLock<Histogram>,
        name: &'static str,
        extra: Option<Label>,
    ) -> &'a Histogram {
        slot.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.extend(extra);
            metrics::histogram!(name, labels)
        })
    }

    pub(crate) fn per_chunk(&self) -> &Histogram {
        self.histogram(&self.per_chunk, names::CLIENT_TIME_PER_OUTPUT_CHUNK, None)
    }

    pub(crate) fn first_chunk(&self) -> &Histogram {
        self.histogram(&self.first_chunk, names::CLIENT_TIME_TO_FIRST_CHUNK, None)
    }

    pub(crate) fn first_token(&self) -> &Histogram {
        self.histogram(&self.first_token, names::SERVER_TIME_TO_FIRST_TOKEN, None)
    }

    pub(crate) fn per_token(&self) -> &Histogram {
        self.histogram(&self.per_token, names::SERVER_TIME_PER_OUTPUT_TOKEN, None)
    }

    pub(crate) fn tokens(&self, output: bool) -> &Histogram {
        let (slot, kind) = if output {
            (&self.output_tokens, "output")
        } else {
            (&self.input_tokens, "input")
        };
        let kind = Label::new("gen_ai.token.type", kind);
        self.histogram(slot, names::CLIENT_TOKEN_USAGE, Some(kind))
    }

    pub(crate) fn duration(&self, outcome: Outcome) -> &Histogram {
        let error =
            (outcome != Outcome::Completed).then(|| Label::new("error.type", outcome.as_str()));
        let slot = &self.duration[outcome.index()];
        self.histogram(slot, names::CLIENT_OPERATION_DURATION, error)
    }
}

/// The handles without labels of their own: the open-streams gauge and, by outcome, the
/// ended-streams counter.
#[derive(Debug)]
struct Global {
    born: Instant,
    streams_open: OnceLock<Gauge>,
    streams_ended: [OnceLock<Counter>; Outcome::COUNT],
}

impl Global {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            streams_open: OnceLock::new(),
            streams_ended: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn streams_open(&self) -> &Gauge {
        self.streams_open
            .get_or_init(|| metrics::gauge!(names::STREAMS_OPEN))
    }
}

/// The handles of every label set seen, up to a bound, shared by the clones of one
/// [`MetricsObserver`](crate::MetricsObserver).
#[derive(Debug)]
pub(crate) struct HandleCache {
    sets: RwLock<HashMap<LabelSet, Arc<Handles>, BuildHasherDefault<WordHasher>>>,
    max_sets: usize,
    global: RwLock<Global>,
    refresh: Duration,
    created: Instant,
    /// When a full cache may next drop its stale entries, in milliseconds since `created`:
    /// at most once a refresh interval, so that label sets beyond the bound cost no write
    /// lock and no sweep per stream.
    next_sweep_ms: AtomicU64,
}

impl HandleCache {
    pub(crate) fn new(max_sets: usize) -> Self {
        Self {
            sets: RwLock::new(HashMap::default()),
            max_sets,
            global: RwLock::new(Global::new()),
            refresh: REFRESH,
            created: Instant::now(),
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The bound it was made with.
    pub(crate) fn max_sets(&self) -> usize {
        self.max_sets
    }

    /// This label set's handles: kept ones while fresh; beyond the bound, handles for this
    /// stream alone (looked up as if there were no cache). `now` is the caller's clock read.
    pub(crate) fn handles(&self, set: &LabelSet, now: Instant) -> Arc<Handles> {
        let read = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        let kept = read.get(set);
        if let Some(handles) = kept
            && self.is_fresh(handles.born, now)
        {
            return handles.clone();
        }
        let full = kept.is_none() && read.len() >= self.max_sets;
        drop(read);
        let handles = Arc::new(Handles::new(set));
        if full && !self.sweep_due(now) {
            return handles;
        }
        let mut write = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        if full {
            // Stale entries make room; live label sets beyond the bound go uncached.
            write.retain(|_, kept| self.is_fresh(kept.born, now));
        }
        if write.len() < self.max_sets || write.contains_key(set) {
            write.insert(set.clone(), handles.clone());
        }
        handles
    }

    /// Whether a full cache may sweep now (and then not again for a refresh interval).
    fn sweep_due(&self, now: Instant) -> bool {
        let at = millis(now.saturating_duration_since(self.created));
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        at >= due
            && self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    at + millis(self.refresh),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Run `f` with the fresh global handles.
    fn with_global<R>(&self, now: Instant, f: impl FnOnce(&Global) -> R) -> R {
        {
            let global = self.global.read().unwrap_or_else(PoisonError::into_inner);
            if self.is_fresh(global.born, now) {
                return f(&global);
            }
        }
        let mut global = self.global.write().unwrap_or_else(PoisonError::into_inner);
        if !self.is_fresh(global.born, now) {
            *global = Global::new();
        }
        f(&global)
    }

    /// A stream opened: `tower_sse.streams.open` goes up.
    pub(crate) fn stream_opened(&self, now: Instant) {
        self.with_global(now, |global| global.streams_open().increment(1.0));
    }

    /// A stream ended: `tower_sse.streams.open` goes down if it went up, and
    /// `tower_sse.streams.ended_total{outcome}` counts it.
    pub(crate) fn stream_ended(&self, was_open: bool, outcome: Outcome, now: Instant) {
        self.with_global(now, |global| {
            if was_open {
                global.streams_open().decrement(1.0);
            }
            global.streams_ended[outcome.index()]
                .get_or_init(
                    || metrics::counter!(names::STREAMS_ENDED, "outcome" => outcome.as_str()),
                )
                .increment(1);
        });
    }

    fn is_fresh(&self, born: Instant, now: Instant) -> bool {
        now.saturating_duration_since(born) < self.refresh
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    fn set(model: &'static str) -> LabelSet {
        LabelSet {
            provider: Provider::OpenAiChat,
            request_model: None,
            response_model: Some(SharedString::const_str(model)),
        }
    }

    #[test]
    fn the_word_hasher_tells_short_names_apart() {
        use std::hash::BuildHasher;
        let names = [
            "",
            "a",
            "a\0",
            "b",
            "abcdefg",
            "abcdefgh",
            "abcdefgh\0",
            "abcdefghi",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
        ];
        let hashes: std::collections::HashSet<u64> = names
            .iter()
            .map(|name| BuildHasherDefault::<WordHasher>::default().hash_one(name))
            .collect();
        assert_eq!(hashes.len(), names.len());
    }

    #[test]
    fn a_label_set_is_looked_up_once_while_fresh() {
        let cache = HandleCache::new(8);
        let first = cache.handles(&set("a"), Instant::now());
        assert!(Arc::ptr_eq(
            &first,
            &cache.handles(&set("a"), Instant::now())
        ));
        assert!(!Arc::ptr_eq(
            &first,
            &cache.handles(&set("b"), Instant::now())
        ));
    }

    #[test]
    fn stale_handles_are_looked_up_again() {
        let mut cache = HandleCache::new(8);
        cache.refresh = Duration::ZERO;
        let first = cache.handles(&set("a"), Instant::now());
        assert!(!Arc::ptr_eq(
            &first,
            &cache.handles(&set("a"), Instant::now())
        ));
    }

    #[test]
    fn label_sets_beyond_the_bound_are_not_kept() {
        let cache = HandleCache::new(1);
        let kept = cache.handles(&set("a"), Instant::now());
        let beyond = cache.handles(&set("b"), Instant::now());
        assert!(!Arc::ptr_eq(
            &beyond,
            &cache.handles(&set("b"), Instant::now())
        ));
        assert!(Arc::ptr_eq(
            &kept,
            &cache.handles(&set("a"), Instant::now())
        ));
        assert_eq!(cache.sets.read().unwrap().len(), 1);
    }

    #[test]
    fn a_full_cache_drops_stale_label_sets_at_most_once_a_refresh() {
        let mut cache = HandleCache::new(1);
        cache.handles(&set("a"), Instant::now());
        // Nothing is stale yet: `b` goes uncached, `a` stays.
        cache.handles(&set("b"), Instant::now());
        assert!(cache.sets.read().unwrap().contains_key(&set("a")));
        // Everything is stale at once: the next sweep makes room for `b`...
        cache.refresh = Duration::ZERO;
        cache.next_sweep_ms.store(0, Ordering::Relaxed);
        cache.handles(&set("b"), Instant::now());
        assert!(cache.sets.read().unwrap().contains_key(&set("b")));
        assert_eq!(cache.sets.read().unwrap().len(), 1);
    }

    #[test]
    fn a_recorder_installed_later_gets_the_records_after_a_refresh() {
        let mut cache = HandleCache::new(8);
        cache.refresh = Duration::ZERO;
        // No recorder yet: recorded into nothing.
        cache.stream_ended(false, Outcome::Completed, Instant::now());
        cache
            .handles(&set("a"), Instant::now())
            .per_chunk()
            .record(0.5);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            cache.stream_ended(false, Outcome::Completed, Instant::now());
            cache
                .handles(&set("a"), Instant::now())
                .per_chunk()
                .record(0.25);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let value = |name: &str| {
            let found = snapshot.iter().find(|(key, ..)| key.key().name() == name);
            found.map(|(.., value)| value)
        };
        assert_eq!(value(names::STREAMS_ENDED), Some(&DebugValue::Counter(1)));
        assert_eq!(
            value(names::CLIENT_TIME_PER_OUTPUT_CHUNK),
            Some(&DebugValue::Histogram(vec![0.25.into()]))
        );
    }
}

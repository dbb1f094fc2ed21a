//! [`ModelLabels`]: which model names become metric label values.

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::SharedString;

use super::handles::WordHasher;

/// The kept names: a bounded set (a first-seen limit, or the allowlist), looked up by every
/// stream, hashed a word at a time (see [`WordHasher`]).
type Names = HashSet<Arc<str>, BuildHasherDefault<WordHasher>>;

/// The label value that stands for every model name not recorded as itself.
pub const OTHER: &str = "_OTHER";

/// The default number of distinct model names recorded as themselves
/// ([`ModelLabels::first_seen`]).
pub const DEFAULT_DISTINCT_MODELS: usize = 100;

/// The default longest model name recorded as itself, in bytes.
pub const DEFAULT_MAX_MODEL_LEN: usize = 128;

/// Which model names become values of the `gen_ai.request.model` and
/// `gen_ai.response.model` metric labels; the rest are recorded as [`OTHER`] (`_OTHER`).
///
/// The request's model comes from the client and the response's from the upstream: left
/// unbounded, a client sending a new name with every request makes the metrics recorder keep
/// a new series per name for ever (a few hundred requests with long names grew a Prometheus
/// exporter by hundreds of megabytes). Following the OpenTelemetry guidance on cardinality,
/// the values are bounded in length and in number:
///
/// - [`first_seen(n)`](Self::first_seen) (the default, with
///   [`DEFAULT_DISTINCT_MODELS`]): the first `n` distinct names seen are recorded as
///   themselves, later new ones as `_OTHER`;
/// - [`allowlist`](Self::allowlist): only the names listed.
///
/// Either way a name longer than [`max_len`](Self::max_len) ([`DEFAULT_MAX_MODEL_LEN`]) is
/// `_OTHER`. Clones share what was seen, so give one value to every observer of a process.
///
/// ```
/// use tower_sse::MetricsObserver;
/// use tower_sse::metrics::ModelLabels;
///
/// let models = ModelLabels::allowlist(["gpt-4o", "claude-sonnet-4-5"]);
/// let observer = MetricsObserver::new().model_labels(models.clone());
/// assert_eq!(models.value("gpt-4o"), "gpt-4o");
/// assert_eq!(models.value("my-own-fine-tune"), "_OTHER");
/// # let _ = observer;
/// ```
#[derive(Clone)]
pub struct ModelLabels(Arc<Inner>);

struct Inner {
    policy: Policy,
    max_len: usize,
}

enum Policy {
    Allow(Names),
    FirstSeen {
        limit: usize,
        /// Read by every stream, written only while fewer than `limit` names are known.
        seen: RwLock<Names>,
    },
}

impl ModelLabels {
    /// The first `limit` distinct names are recorded as themselves, then `_OTHER`.
    pub fn first_seen(limit: usize) -> Self {
        Self(Arc::new(Inner {
            policy: Policy::FirstSeen {
                limit,
                seen: RwLock::new(Names::default()),
            },
            max_len: DEFAULT_MAX_MODEL_LEN,
        }))
    }

    /// Only these names are recorded as themselves.
    pub fn allowlist<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(|n| Arc::from(n.into())).collect();
        Self(Arc::new(Inner {
            policy: Policy::Allow(names),
            max_len: DEFAULT_MAX_MODEL_LEN,
        }))
    }

    /// Names longer than this (in bytes) are `_OTHER`. Default: [`DEFAULT_MAX_MODEL_LEN`].
    /// Set it before cloning: clones made earlier keep the old value.
    #[must_use]
    pub fn max_len(self, max_len: usize) -> Self {
        let Self(inner) = self;
        let Inner { policy, .. } = Arc::try_unwrap(inner).unwrap_or_else(|shared| Inner {
            policy: shared.policy.copy(),
            max_len: shared.max_len,
        });
        Self(Arc::new(Inner { policy, max_len }))
    }

    /// The label value recorded for this model name.
    pub fn value(&self, model: &str) -> String {
        self.label(model).into_owned()
    }

    /// The label value recorded for this model name, sharing the kept name (no copy).
    pub(crate) fn label(&self, model: &str) -> SharedString {
        let other = || SharedString::const_str(OTHER);
        if model.len() > self.0.max_len {
            return other();
        }
        let known = match &self.0.policy {
            Policy::Allow(names) => names.get(model).cloned(),
            Policy::FirstSeen { limit, seen } => {
                // A poisoned lock only means another thread panicked while inserting: the
                // set is still a set.
                let read = seen.read().unwrap_or_else(PoisonError::into_inner);
                match read.get(model) {
                    Some(name) => Some(name.clone()),
                    None if read.len() >= *limit => None,
                    None => {
                        drop(read);
                        let mut write = seen.write().unwrap_or_else(PoisonError::into_inner);
                        match write.get(model) {
                            Some(name) => Some(name.clone()),
                            None if write.len() >= *limit => None,
                            None => {
                                let name: Arc<str> = Arc::from(model);
                                write.insert(name.clone());
                                Some(name)
                            }
                        }
                    }
                }
            }
        };
        known.map_or_else(other, SharedString::from)
    }
}

impl Policy {
    fn copy(&self) -> Self {
        match self {
            Self::Allow(names) => Self::Allow(names.clone()),
            Self::FirstSeen { limit, seen } => Self::FirstSeen {
                limit: *limit,
                seen: RwLock::new(seen.read().unwrap_or_else(PoisonError::into_inner).clone()),
            },
        }
    }
}

impl Default for ModelLabels {
    fn default() -> Self {
        Self::first_seen(DEFAULT_DISTINCT_MODELS)
    }
}

impl fmt::Debug for ModelLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match &self.0.policy {
            Policy::Allow(names) => format!("allowlist of {}", names.len()),
            Policy::FirstSeen { limit, .. } => format!("first {limit} seen"),
        };
        f.debug_struct("ModelLabels")
            .field("policy", &policy)
            .field("max_len", &self.0.max_len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_seen_keeps_the_first_names_and_folds_the_rest() {
        let labels = ModelLabels::first_seen(2);
        let shared = labels.clone();
        assert_eq!(labels.value("a"), "a");
        assert_eq!(shared.value("b"), "b");
        assert_eq!(labels.value("c"), OTHER);
        assert_eq!(labels.value("a"), "a");
        assert_eq!(shared.value("b"), "b");
    }

    /// The handle cache tells label sets apart by the identity of their names: a kept name
    /// is handed out as the same string every time, or every stream would miss the cache.
    #[test]
    fn a_kept_name_is_handed_out_as_one_shared_string() {
        let same = |a: &SharedString, b: &SharedString| {
            std::ptr::eq(a.as_ref().as_ptr(), b.as_ref().as_ptr())
        };
        let labels = ModelLabels::first_seen(1);
        assert!(same(&labels.label("a"), &labels.clone().label("a")));
        assert!(same(&labels.label("b"), &labels.label("c")), "_OTHER");
        let allowed = ModelLabels::allowlist(["a"]);
        assert!(same(&allowed.label("a"), &allowed.label("a")));
    }

    #[test]
    fn long_names_are_other_whatever_the_policy() {
        let labels = ModelLabels::first_seen(10).max_len(4);
        assert_eq!(labels.value("abcd"), "abcd");
        assert_eq!(labels.value("abcde"), OTHER);
        let allowed = ModelLabels::allowlist(["abcdef"]).max_len(4);
        assert_eq!(allowed.value("abcdef"), OTHER);
    }
}

//! [`BudgetConfig`]: budgets from a JSON document (a gateway's `--budgets FILE`),
//! validated with errors that name the place.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{BudgetKey, BudgetLayer, BudgetStore, Limit, Measure, OnStoreError};

/// Budgets as a file describes them.
///
/// ```json
/// {
///   "key": "tenant",
///   "default": [
///     {"measure": "requests", "amount": 60, "per": 60},
///     {"measure": "total_tokens", "amount": 100000, "per": 60, "burst": 20000},
///     {"measure": "cost_micros", "amount": 50000000, "per": "month"}
///   ],
///   "keys": {
///     "0123456789abcdef0123456789abcdef": [{"measure": "output_tokens", "amount": 1000000, "per": "day"}]
///   },
///   "default_output_tokens": 1024,
///   "on_store_error": "fail_closed",
///   "store_timeout_ms": 250,
///   "enforce_mid_stream": true
/// }
/// ```
///
/// - `key`: `"tenant"` (default), `"tenant_and_model"`, or `{"header": "x-team"}`
///   ([`BudgetKey`]);
/// - each limit: a `measure` (`requests`, `input_tokens`, `output_tokens`, `total_tokens`,
///   `cost_micros`), an `amount`, and `per`: seconds (a continuously refilling rate, with an
///   optional `burst`), `"day"` or `"month"` (UTC);
/// - `keys`: limits of single keys instead of the default ones;
/// - `default_output_tokens`, `max_answer_bytes`, `on_store_error` (`"fail_closed"`,
///   `"fail_open"`), `enforce_mid_stream` (`false` by default): as on [`BudgetLayer`];
///   `store_timeout_ms`: [`BudgetLayer::store_timeout`] in milliseconds (at least 1; 250 by
///   default), how long an admission waits for a shared store such as Redis.
///
/// The same document in any format serde reads ([`from_deserializer`](Self::from_deserializer)),
/// such as TOML: `key = "tenant"`, `enforce_mid_stream = true`, then
/// `[[default]]` tables with `measure = "requests"`, `amount = 60`, `per = 60`, and
/// `[keys]` with `team-a = [{ measure = "output_tokens", amount = 1000000, per = "day" }]`.
///
/// Unknown fields are errors, so that a misspelt limit is never silently ignored.
///
/// ```
/// use tower_sse::budget::{BudgetConfig, MemoryBudgets};
///
/// let config = BudgetConfig::from_json(r#"{"default": [{"measure": "requests", "amount": 10, "per": 1}]}"#)?;
/// let layer = config.layer(MemoryBudgets::new());
/// # let _ = layer;
/// let error = BudgetConfig::from_json(r#"{"default": [{"measure": "requests", "amount": 0, "per": 1}]}"#)
///     .unwrap_err();
/// assert!(error.to_string().contains("default[0]"));
/// # Ok::<(), tower_sse::budget::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    key: KeyFile,
    default: Vec<Limit>,
    keys: BTreeMap<String, Vec<Limit>>,
    default_output_tokens: Option<u64>,
    max_answer_bytes: Option<usize>,
    on_store_error: OnStoreError,
    store_timeout: Option<Duration>,
    enforce_mid_stream: bool,
}

/// A budget file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: KeyFile,
    #[serde(default)]
    default: Vec<LimitFile>,
    #[serde(default)]
    keys: BTreeMap<String, Vec<LimitFile>>,
    #[serde(default)]
    default_output_tokens: Option<u64>,
    #[serde(default)]
    max_answer_bytes: Option<usize>,
    #[serde(default)]
    on_store_error: Option<PolicyFile>,
    #[serde(default)]
    store_timeout_ms: Option<u64>,
    #[serde(default)]
    enforce_mid_stream: bool,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeyFile {
    #[default]
    Tenant,
    TenantAndModel,
    Header(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicyFile {
    FailClosed,
    FailOpen,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    measure: MeasureFile,
    amount: u64,
    per: PerFile,
    #[serde(default)]
    burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum MeasureFile {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    CostMicros,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PerFile {
    Secs(f64),
    Calendar(CalendarFile),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum CalendarFile {
    Day,
    Month,
}

impl LimitFile {
    fn limit(self, place: &str) -> Result<Limit, ConfigError> {
        let measure = match self.measure {
            MeasureFile::Requests => Measure::Requests,
            MeasureFile::InputTokens => Measure::InputTokens,
            MeasureFile::OutputTokens => Measure::OutputTokens,
            MeasureFile::TotalTokens => Measure::TotalTokens,
            MeasureFile::CostMicros => Measure::CostMicros,
        };
        let limit = match self.per {
            PerFile::Secs(secs) => {
                let per = Duration::try_from_secs_f64(secs).map_err(|_| {
                    ConfigError(format!(
                        "{place}: `per` must be a number of seconds, \"day\" or \"month\""
                    ))
                })?;
                let limit = Limit::rate(measure, self.amount, per);
                match self.burst {
                    Some(burst) => limit.burst(burst),
                    None => limit,
                }
            }
            PerFile::Calendar(calendar) => {
                if self.burst.is_some() {
                    return Err(ConfigError(format!(
                        "{place}: `burst` applies to rates only, not to a day or a month"
                    )));
                }
                match calendar {
                    CalendarFile::Day => Limit::per_day(measure, self.amount),
                    CalendarFile::Month => Limit::per_month(measure, self.amount),
                }
            }
        };
        limit
            .validate()
            .map_err(|e| ConfigError(format!("{place}: {e}")))?;
        Ok(limit)
    }
}

fn limits(list: Vec<LimitFile>, place: &str) -> Result<Vec<Limit>, ConfigError> {
    list.into_iter()
        .enumerate()
        .map(|(i, limit)| limit.limit(&format!("{place}[{i}]")))
        .collect()
}

impl BudgetConfig {
    /// Read a budget document.
    ///
    /// # Errors
    ///
    /// On JSON that is not a budget document (with its line and column), or a limit that
    /// cannot be used (with its place, such as `keys.team-a[1]`).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let file: File = serde_json::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_file(file)
    }

    /// Read a budget document from any serde format (a TOML file's deserializer, say), with
    /// the checks of [`from_json`](Self::from_json).
    ///
    /// # Errors
    ///
    /// The format's own error (with the place it gives: TOML's line and column) for a
    /// document that is not a budget document; a limit that cannot be used, with its place.
    pub fn from_deserializer<'de, D>(deserializer: D) -> Result<Self, ConfigError>
    where
        D: serde::Deserializer<'de>,
        D::Error: fmt::Display,
    {
        let file = File::deserialize(deserializer).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_file(file)
    }

    fn from_file(file: File) -> Result<Self, ConfigError> {
        if let KeyFile::Header(name) = &file.key
            && http::HeaderName::try_from(name.as_str()).is_err()
        {
            return Err(ConfigError(format!("key: {name:?} is not a header name")));
        }
        if file.store_timeout_ms == Some(0) {
            return Err(ConfigError(
                "store_timeout_ms: must be at least 1 (an admission that may not wait for the store always fails)".into(),
            ));
        }
        let mut keys = BTreeMap::new();
        for (key, list) in file.keys {
            let place = format!("keys.{key}");
            keys.insert(key, limits(list, &place)?);
        }
        Ok(Self {
            key: file.key,
            default: limits(file.default, "default")?,
            keys,
            default_output_tokens: file.default_output_tokens,
            max_answer_bytes: file.max_answer_bytes,
            on_store_error: match file.on_store_error {
                Some(PolicyFile::FailOpen) => OnStoreError::FailOpen,
                _ => OnStoreError::FailClosed,
            },
            store_timeout: file.store_timeout_ms.map(Duration::from_millis),
            enforce_mid_stream: file.enforce_mid_stream,
        })
    }

    /// A layer with these budgets, kept in `store`.
    pub fn layer(&self, store: impl BudgetStore) -> BudgetLayer {
        let key = match &self.key {
            KeyFile::Tenant => BudgetKey::tenant(),
            KeyFile::TenantAndModel => BudgetKey::tenant_and_model(),
            KeyFile::Header(name) => BudgetKey::header(name),
        };
        let mut layer = BudgetLayer::new(store)
            .key(key)
            .limits(self.default.iter().copied())
            .on_store_error(self.on_store_error)
            .enforce_mid_stream(self.enforce_mid_stream);
        for (key, limits) in &self.keys {
            layer = layer.limits_for(key.clone(), limits.iter().copied());
        }
        if let Some(tokens) = self.default_output_tokens {
            layer = layer.default_output_tokens(tokens);
        }
        if let Some(bytes) = self.max_answer_bytes {
            layer = layer.max_answer_bytes(bytes);
        }
        if let Some(timeout) = self.store_timeout {
            layer = layer.store_timeout(timeout);
        }
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_place() {
        let error = |text: &str| BudgetConfig::from_json(text).unwrap_err().to_string();
        assert!(error(r#"{"defaults": []}"#).contains("unknown field `defaults`"));
        assert!(
            error(r#"{"keys": {"a": [{"measure": "requests", "amount": 5, "per": "day", "burst": 1}]}}"#)
                .starts_with("keys.a[0]: `burst`")
        );
        assert!(
            error(r#"{"default": [{"measure": "tokens", "amount": 5, "per": 1}]}"#)
                .contains("line 1")
        );
        assert!(
            error(r#"{"default": [{"measure": "requests", "amount": 5, "per": -1}]}"#)
                .contains("default[0]")
        );
        assert!(error(r#"{"key": {"header": "bad header"}}"#).contains("not a header name"));
        let ok = BudgetConfig::from_json(
            r#"{"key": "tenant_and_model", "default": [{"measure": "total_tokens", "amount": 100, "per": 60, "burst": 10}, {"measure": "cost_micros", "amount": 5, "per": "month"}], "on_store_error": "fail_open"}"#,
        )
        .unwrap();
        assert_eq!(ok.default[0].capacity(), 10);
        assert_eq!(ok.on_store_error, OnStoreError::FailOpen);
        assert!(!ok.enforce_mid_stream);
        let on = BudgetConfig::from_json(r#"{"enforce_mid_stream": true}"#).unwrap();
        assert!(
            on.layer(crate::budget::MemoryBudgets::new())
                .enforces_mid_stream()
        );
        assert!(error(r#"{"enforce_mid_stream": "yes"}"#).contains("line 1"));
        let timeout = BudgetConfig::from_json(r#"{"store_timeout_ms": 40}"#).unwrap();
        assert_eq!(timeout.store_timeout, Some(Duration::from_millis(40)));
        let layer = timeout.layer(super::super::MemoryBudgets::new());
        assert!(
            format!("{layer:?}").contains("store_timeout: 40ms"),
            "{layer:?}"
        );
        assert!(
            error(r#"{"store_timeout_ms": 0}"#).starts_with("store_timeout_ms: must be at least 1")
        );
        assert!(error(r#"{"store_timeout_ms": "1s"}"#).contains("line 1"));
        let bound = BudgetConfig::from_json(r#"{"max_answer_bytes": 65536}"#).unwrap();
        assert_eq!(bound.max_answer_bytes, Some(65536));
        let layer = bound.layer(crate::budget::MemoryBudgets::new());
        assert!(format!("{layer:?}").contains("max_answer_bytes: 65536"));
        assert!(error(r#"{"max_answer_bytes": -1}"#).contains("line 1"));
    }
}

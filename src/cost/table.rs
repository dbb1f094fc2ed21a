//! [`PriceTable`], [`ModelPrices`], [`Cost`] and the loading errors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

use crate::report::{Usage, UsageSource};

/// The highest price accepted, in currency units per million tokens: far above any real
/// price, low enough that no cost computation can overflow before it saturates.
pub const MAX_PRICE: u64 = 1_000_000;

/// Micro-units in one unit of the currency, and tokens in the "million" of the prices.
const MICRO: u64 = 1_000_000;

/// The prices of one model, in **micro-units of the currency per million tokens** (2.50
/// dollars per million tokens is `2_500_000`). See the [module docs](crate::cost) for what
/// each price applies to; an unset optional price falls back as documented there.
///
/// ```
/// use tower_sse::cost::ModelPrices;
///
/// // 3 per million input tokens, 15 per million output tokens, cache reads at 0.30.
/// let prices = ModelPrices::new(3_000_000, 15_000_000).cache_read(300_000);
/// assert_eq!(prices.cache_read, Some(300_000));
/// assert_eq!(prices.reasoning, None); // priced as output
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[must_use]
pub struct ModelPrices {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens (reasoning excluded).
    pub output: u64,
    /// Input tokens read from the prompt cache (`None`: the input price).
    pub cache_read: Option<u64>,
    /// Input tokens written to the prompt cache (`None`: the input price).
    pub cache_write: Option<u64>,
    /// Reasoning tokens (`None`: the output price).
    pub reasoning: Option<u64>,
}

impl ModelPrices {
    /// Input and output prices, in micro-units per million tokens; the others fall back to
    /// them.
    pub fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            cache_read: None,
            cache_write: None,
            reasoning: None,
        }
    }

    /// The price of cache reads.
    pub fn cache_read(mut self, price: u64) -> Self {
        self.cache_read = Some(price);
        self
    }

    /// The price of cache writes.
    pub fn cache_write(mut self, price: u64) -> Self {
        self.cache_write = Some(price);
        self
    }

    /// The price of reasoning tokens.
    pub fn reasoning(mut self, price: u64) -> Self {
        self.reasoning = Some(price);
        self
    }

    /// Every price with its name, for validation.
    fn named(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
            ("reasoning", self.reasoning),
        ]
    }
}

/// What one stream cost, in integer micro-units of the table's currency (see
/// [`PriceTable::currency`]), and how that splits over the five parts of its usage.
/// `total_micros` is always the sum of the breakdown (see the rounding rule in the
/// [module docs](crate::cost)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Cost {
    /// The whole cost, in micro-units (1 dollar is `1_000_000`).
    pub total_micros: u64,
    /// Per part of the usage.
    pub breakdown: CostBreakdown,
    /// The usage's output was estimated (a cut stream): so is this cost.
    pub estimated: bool,
    /// Both the input and the output counts were known. `false`: an unknown count was
    /// priced as 0 tokens, and the cost is low.
    pub complete: bool,
}

/// [`Cost`] per part of [`NormalizedUsage`](crate::usage::NormalizedUsage), in micro-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct CostBreakdown {
    /// Uncached input tokens.
    pub uncached_input: u64,
    /// Input tokens read from the cache.
    pub cache_read: u64,
    /// Input tokens written to the cache.
    pub cache_write: u64,
    /// Output tokens (reasoning excluded).
    pub output: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
}

/// Prices per model: exact names, and prefixes (names ending with `*`, the longest
/// matching one wins). See the [module docs](crate::cost) for the file shape, the lookup and
/// the rounding rule.
///
/// ```
/// use tower_sse::Usage;
/// use tower_sse::cost::{ModelPrices, PriceTable};
///
/// let mut table = PriceTable::new().with_currency("USD");
/// table.insert("claude-sonnet-4*", ModelPrices::new(3_000_000, 15_000_000))?;
/// table.insert("claude-sonnet-4-5-20250929", ModelPrices::new(3_000_000, 15_000_000).cache_read(300_000))?;
/// assert!(table.prices("claude-sonnet-4-20250514").is_some()); // by prefix
/// assert_eq!(table.prices("claude-sonnet-4-5-20250929").unwrap().cache_read, Some(300_000)); // exact
/// assert!(table.prices("claude-opus-4").is_none());
///
/// let mut usage = Usage::default();
/// usage.input_tokens = Some(3);
/// usage.output_tokens = Some(1);
/// // 3 × 3 + 1 × 15 micro-units (a price per million tokens is micro-units per token).
/// assert_eq!(table.cost("claude-sonnet-4-20250514", &usage).unwrap().total_micros, 24);
/// # Ok::<(), tower_sse::cost::PriceError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawTable")]
pub struct PriceTable {
    currency: Option<String>,
    exact: HashMap<Box<str>, ModelPrices>,
    /// Prefixes (without their `*`), longest first.
    prefixes: Vec<(Box<str>, ModelPrices)>,
}

impl PriceTable {
    /// An empty table: every model is unpriced.
    pub fn new() -> Self {
        Self::default()
    }

    /// Label the table's currency (informational: nothing is converted).
    #[must_use]
    pub fn with_currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = Some(currency.into());
        self
    }

    /// Whether no model is priced.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The currency's label, when the table has one.
    pub fn currency(&self) -> Option<&str> {
        self.currency.as_deref()
    }

    /// Price `name` (an exact model name, or a prefix ending with `*`), replacing any
    /// prices it had. Errors for an empty name, a `*` elsewhere than at the end, or a price
    /// above [`MAX_PRICE`].
    pub fn insert(&mut self, name: &str, prices: ModelPrices) -> Result<(), PriceError> {
        let error = |kind, price| PriceError::new(kind, Some(name), price);
        for (price, value) in prices.named() {
            if value.is_some_and(|v| v > MAX_PRICE * MICRO) {
                return Err(error(PriceErrorKind::TooLarge, Some(price)));
            }
        }
        let (stem, prefix) = match name.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (name, false),
        };
        if stem.is_empty() {
            return Err(error(PriceErrorKind::EmptyName, None));
        }
        if stem.contains('*') {
            return Err(error(PriceErrorKind::MisplacedWildcard, None));
        }
        if !prefix {
            self.exact.insert(stem.into(), prices);
            return Ok(());
        }
        match self.prefixes.iter_mut().find(|(p, _)| &**p == stem) {
            Some((_, known)) => *known = prices,
            None => {
                self.prefixes.push((stem.into(), prices));
                // Longest first; equal lengths cannot both match one name.
                self.prefixes
                    .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            }
        }
        Ok(())
    }

    /// Read a table from JSON (the shape in the [module docs](crate::cost)).
    pub fn from_json(json: &str) -> Result<Self, PriceError> {
        serde_json::from_str::<RawTable>(json)
            .map_err(|e| PriceError::syntax(e.to_string()))?
            .try_into()
    }

    /// The prices of `model`: its exact entry, else its longest matching prefix.
    pub fn prices(&self, model: &str) -> Option<&ModelPrices> {
        self.exact.get(model).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| model.starts_with(&**prefix))
                .map(|(_, prices)| prices)
        })
    }

    /// What `usage` cost with `model`'s prices: `None` when the model is not in the table
    /// (never a guess), or the usage has no count at all. See the module docs for the
    /// rounding and for unknown counts.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<Cost> {
        let prices = self.prices(model)?;
        Some(price(prices, usage)).filter(|_| usage.has_counts())
    }
}

/// The cost of `usage` at `prices`.
fn price(prices: &ModelPrices, usage: &Usage) -> Cost {
    let n = usage.normalized();
    let part = |tokens: Option<u64>, per_million: u64| {
        let exact = u128::from(tokens.unwrap_or(0)) * u128::from(per_million);
        u64::try_from(exact.div_ceil(u128::from(MICRO))).unwrap_or(u64::MAX)
    };
    let breakdown = CostBreakdown {
        uncached_input: part(n.uncached_input, prices.input),
        cache_read: part(n.cache_read, prices.cache_read.unwrap_or(prices.input)),
        cache_write: part(n.cache_write, prices.cache_write.unwrap_or(prices.input)),
        output: part(n.output, prices.output),
        reasoning: part(n.reasoning, prices.reasoning.unwrap_or(prices.output)),
    };
    let total_micros = [
        breakdown.uncached_input,
        breakdown.cache_read,
        breakdown.cache_write,
        breakdown.output,
        breakdown.reasoning,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add);
    Cost {
        total_micros,
        breakdown,
        estimated: usage.source == UsageSource::Estimated,
        complete: usage.input_tokens.is_some() && usage.output_tokens.is_some(),
    }
}

/// Why a price table could not be loaded: what is wrong, and where (the model and the
/// price, when it is about one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceError {
    kind: PriceErrorKind,
    model: Option<String>,
    price: Option<&'static str>,
    detail: Option<String>,
}

/// What is wrong in a price table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PriceErrorKind {
    /// The text is not a price table (its syntax, an unknown or missing field): the message
    /// says where.
    Syntax,
    /// A price below zero.
    Negative,
    /// A price that is not a finite number (NaN, infinite), or a string that is not a
    /// decimal number.
    NotANumber,
    /// A price with more than 6 decimals (below a micro-unit per million tokens).
    TooPrecise,
    /// A price above [`MAX_PRICE`] per million tokens.
    TooLarge,
    /// An empty model name (or a lone `*`).
    EmptyName,
    /// A `*` elsewhere than at the end of a name (only prefixes are supported).
    MisplacedWildcard,
}

impl PriceError {
    fn new(kind: PriceErrorKind, model: Option<&str>, price: Option<&'static str>) -> Self {
        Self {
            kind,
            model: model.map(str::to_owned),
            price,
            detail: None,
        }
    }

    fn syntax(detail: String) -> Self {
        Self {
            detail: Some(detail),
            ..Self::new(PriceErrorKind::Syntax, None, None)
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> PriceErrorKind {
        self.kind
    }

    /// The model entry at fault, when the error is about one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The price at fault (`input`, `cache_read`…), when the error is about one.
    pub fn price(&self) -> Option<&'static str> {
        self.price
    }
}

impl fmt::Display for PriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("price table")?;
        if let Some(model) = &self.model {
            write!(f, ", model `{model}`")?;
        }
        if let Some(price) = self.price {
            write!(f, ", price `{price}`")?;
        }
        f.write_str(": ")?;
        match self.kind {
            PriceErrorKind::Syntax => f.write_str(self.detail.as_deref().unwrap_or("not a table")),
            PriceErrorKind::Negative => f.write_str("a price cannot be negative"),
            PriceErrorKind::NotANumber => f.write_str("not a finite decimal number"),
            PriceErrorKind::TooPrecise => {
                f.write_str("more than 6 decimals (below a micro-unit per million tokens)")
            }
            PriceErrorKind::TooLarge => {
                write!(f, "above the maximum of {MAX_PRICE} per million tokens")
            }
            PriceErrorKind::EmptyName => f.write_str("empty model name"),
            PriceErrorKind::MisplacedWildcard => {
                f.write_str("`*` is only allowed at the end of a name (a prefix)")
            }
        }
    }
}

impl std::error::Error for PriceError {}

/// The table as written: validated into a [`PriceTable`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default)]
    currency: Option<String>,
    models: BTreeMap<String, RawPrices>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    input: RawPrice,
    output: RawPrice,
    #[serde(default)]
    cache_read: Option<RawPrice>,
    #[serde(default)]
    cache_write: Option<RawPrice>,
    #[serde(default)]
    reasoning: Option<RawPrice>,
}

/// A price per million tokens as written: a number or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    Number(f64),
    Text(String),
}

impl TryFrom<RawTable> for PriceTable {
    type Error = PriceError;

    fn try_from(raw: RawTable) -> Result<Self, PriceError> {
        let mut table = PriceTable {
            currency: raw.currency,
            ..PriceTable::default()
        };
        for (name, prices) in &raw.models {
            let micros = |price: &'static str, raw: &RawPrice| {
                micros_per_million(raw)
                    .map_err(|kind| PriceError::new(kind, Some(name), Some(price)))
            };
            let optional =
                |price, raw: &Option<RawPrice>| raw.as_ref().map(|r| micros(price, r)).transpose();
            let prices = ModelPrices {
                input: micros("input", &prices.input)?,
                output: micros("output", &prices.output)?,
                cache_read: optional("cache_read", &prices.cache_read)?,
                cache_write: optional("cache_write", &prices.cache_write)?,
                reasoning: optional("reasoning", &prices.reasoning)?,
            };
            table.insert(name, prices)?;
        }
        Ok(table)
    }
}

/// A written price (currency units per million tokens) in micro-units per million tokens.
fn micros_per_million(raw: &RawPrice) -> Result<u64, PriceErrorKind> {
    match raw {
        RawPrice::Number(x) => number_micros(*x),
        RawPrice::Text(text) => decimal_micros(text.trim()),
    }
}

fn number_micros(x: f64) -> Result<u64, PriceErrorKind> {
    if !x.is_finite() {
        return Err(PriceErrorKind::NotANumber);
    }
    if x < 0.0 {
        return Err(PriceErrorKind::Negative);
    }
    if x > MAX_PRICE as f64 {
        return Err(PriceErrorKind::TooLarge);
    }
    let scaled = x * MICRO as f64;
    let rounded = scaled.round();
    // A decimal with at most 6 decimals lands within float error of a whole number.
    if (scaled - rounded).abs() > scaled * 1e-12 + 1e-6 {
        return Err(PriceErrorKind::TooPrecise);
    }
    // In range: 0 ≤ rounded ≤ MAX_PRICE × MICRO < 2^53.
    Ok(rounded as u64)
}

/// `123.456789` exactly, digits only: no sign but `-` (refused), no exponent.
fn decimal_micros(text: &str) -> Result<u64, PriceErrorKind> {
    if text.starts_with('-') {
        return Err(PriceErrorKind::Negative);
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(PriceErrorKind::NotANumber);
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 6 {
        return Err(PriceErrorKind::TooPrecise);
    }
    let whole = whole.trim_start_matches('0');
    // More digits than MAX_PRICE has: too large, before any overflow.
    if whole.len() > 7 {
        return Err(PriceErrorKind::TooLarge);
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| PriceErrorKind::NotANumber)?
    };
    let mut micros = 0u64;
    for (i, b) in fraction.bytes().enumerate() {
        micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
    }
    let total = whole * MICRO + micros;
    if total > MAX_PRICE * MICRO {
        return Err(PriceErrorKind::TooLarge);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_micros("2.50"), Ok(2_500_000));
        assert_eq!(decimal_micros("0.075"), Ok(75_000));
        assert_eq!(decimal_micros(".000001"), Ok(1));
        assert_eq!(decimal_micros("15"), Ok(15_000_000));
        assert_eq!(decimal_micros("1.0000000"), Ok(1_000_000));
        assert_eq!(decimal_micros("0.0000001"), Err(PriceErrorKind::TooPrecise));
        assert_eq!(decimal_micros("-1"), Err(PriceErrorKind::Negative));
        assert_eq!(decimal_micros("1e3"), Err(PriceErrorKind::NotANumber));
        assert_eq!(decimal_micros("."), Err(PriceErrorKind::NotANumber));
        assert_eq!(decimal_micros(""), Err(PriceErrorKind::NotANumber));
        assert_eq!(decimal_micros("1000000"), Ok(MAX_PRICE * MICRO));
        assert_eq!(
            decimal_micros("1000000.000001"),
            Err(PriceErrorKind::TooLarge)
        );
        assert_eq!(
            decimal_micros("99999999999999999999999"),
            Err(PriceErrorKind::TooLarge)
        );
    }

    #[test]
    fn numbers_round_to_micro_units() {
        assert_eq!(number_micros(0.075), Ok(75_000));
        assert_eq!(number_micros(0.000_001), Ok(1));
        assert_eq!(number_micros(999_999.999_999), Ok(999_999_999_999));
        assert_eq!(number_micros(0.123_456_7), Err(PriceErrorKind::TooPrecise));
        assert_eq!(number_micros(-0.5), Err(PriceErrorKind::Negative));
        assert_eq!(number_micros(f64::NAN), Err(PriceErrorKind::NotANumber));
        assert_eq!(number_micros(1e7), Err(PriceErrorKind::TooLarge));
    }

    #[test]
    fn parts_round_up_and_add_up() {
        let prices = ModelPrices::new(1, 3);
        let mut usage = Usage {
            input_tokens: Some(1),
            output_tokens: Some(1_000_001),
            ..Usage::default()
        };
        let cost = price(&prices, &usage);
        // 1 × 1 / 10^6 rounds up to 1; 1 000 001 × 3 / 10^6 = 3.000003 rounds up to 4.
        assert_eq!(cost.breakdown.uncached_input, 1);
        assert_eq!(cost.breakdown.output, 4);
        assert_eq!(cost.total_micros, 5);
        // A part with no tokens, or a free price, costs exactly 0.
        usage.input_tokens = Some(0);
        assert_eq!(price(&prices, &usage).breakdown.uncached_input, 0);
    }

    #[test]
    fn huge_counts_saturate() {
        let prices = ModelPrices::new(MAX_PRICE * MICRO, MAX_PRICE * MICRO);
        let usage = Usage {
            input_tokens: Some(u64::MAX),
            output_tokens: Some(u64::MAX),
            ..Usage::default()
        };
        assert_eq!(price(&prices, &usage).total_micros, u64::MAX);
    }
}

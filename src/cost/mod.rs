//! What a stream cost: a [`PriceTable`] per model turns a [`Usage`](crate::Usage) into a
//! [`Cost`] in integer micro-units of the currency, with its breakdown, and [`CostObserver`]
//! puts it in [`StreamReport::cost`](crate::StreamReport::cost).
//!
//! # Prices
//!
//! Each model has prices per million tokens for the five parts of
//! [`NormalizedUsage`](crate::usage::NormalizedUsage), which mean the same for every
//! provider (so an Anthropic usage and an OpenAI one are priced by the same rule):
//!
//! | price | priced tokens | when not given |
//! |---|---|---|
//! | `input` | uncached input | required |
//! | `output` | output (reasoning excluded) | required |
//! | `cache_read` | input read from the prompt cache | the `input` price |
//! | `cache_write` | input written to the prompt cache | the `input` price |
//! | `reasoning` | reasoning (thinking) tokens | the `output` price |
//!
//! # Which model
//!
//! A model name is looked up as given: an exact entry wins; else the entries that end with
//! `*` are prefixes, and the longest prefix of the name wins (`gpt-4o-mini*` before
//! `gpt-4o*` for `gpt-4o-mini-2024-07-18`). Names are compared byte for byte (case
//! counts). A model that no entry matches has **no cost** (`None`), never a guessed one:
//! [`CostObserver`] counts such streams ([`CostObserver::unpriced`], and the metric
//! `tower_sse.cost.unpriced` under feature `metrics`).
//!
//! # File shape
//!
//! [`PriceTable`] deserializes (serde) from a map of model names to prices, under `models`,
//! with an optional `currency` (a label, not converted); every price is a number or a
//! decimal string of the currency per million tokens, at most 6 decimals. In TOML (a
//! `[prices]` section of a larger file works the same, as a field of type [`PriceTable`]):
//!
//! ```toml
//! currency = "USD"
//!
//! [models."gpt-4o*"]
//! input = 2.50
//! cache_read = 1.25
//! output = 10.00
//!
//! [models."claude-sonnet-4*"]
//! input = "3.00"
//! cache_read = "0.30"
//! cache_write = "3.75"
//! output = "15.00"
//! ```
//!
//! In JSON:
//!
//! ```
//! use tower_sse::Usage;
//! use tower_sse::cost::PriceTable;
//!
//! let table = PriceTable::from_json(r#"{
//!     "currency": "USD",
//!     "models": {
//!         "gpt-4o*": { "input": 2.50, "cache_read": 1.25, "output": 10.00 },
//!         "gpt-4o-mini*": { "input": 0.15, "cache_read": 0.075, "output": 0.60 }
//!     }
//! }"#)?;
//!
//! let mut usage = Usage::default();
//! usage.input_tokens = Some(1_000); // OpenAI: 800 of them from the cache
//! usage.cached_input_tokens = Some(800);
//! usage.output_tokens = Some(100);
//! let cost = table.cost("gpt-4o-2024-08-06", &usage).expect("a priced model");
//! // 200 × 2.50 + 800 × 1.25 + 100 × 10.00 dollars per million tokens:
//! assert_eq!(cost.total_micros, 500 + 1_000 + 1_000);
//! assert_eq!(cost.breakdown.cache_read, 1_000);
//! assert!(table.cost("llama-3", &usage).is_none());
//! # Ok::<(), tower_sse::cost::PriceError>(())
//! ```
//!
//! Loading checks every price: negative, not finite, more than 6 decimals, above
//! [`MAX_PRICE`] per million, an empty name or a `*` anywhere but at the end are
//! [`PriceError`]s naming the model and the price.
//!
//! # Rounding
//!
//! Prices are kept exactly, as micro-units per million tokens. Each part's cost is
//! `tokens × price / 1 000 000` micro-units, computed exactly (128-bit) and **rounded up**
//! to a whole micro-unit; the total is the sum of the parts. So the breakdown always adds up
//! to the total, rounding never bills less than the exact price, and it bills at most one
//! micro-unit more per part (5 per stream).
//!
//! # Unknown counts
//!
//! Counts the provider did not report are priced as 0 tokens, and the cost says so:
//! [`Cost::complete`] is `false` when the input or the output count is unknown. A usage whose
//! output was estimated (a cut stream) gives a cost flagged [`Cost::estimated`].

mod observer;
mod table;

pub use self::observer::CostObserver;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use self::observer::UNPRICED_TOTAL;
pub use self::table::{
    Cost, CostBreakdown, MAX_PRICE, ModelPrices, PriceError, PriceErrorKind, PriceTable,
};

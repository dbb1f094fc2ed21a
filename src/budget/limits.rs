//! What a budget limits ([`Measure`]), over which window ([`Window`]), and the arithmetic of
//! both kinds of window: a continuously refilling rate (GCRA) and a UTC calendar period.
//!
//! The arithmetic is pure (a state, an instant, an amount in; a decision and a new state
//! out), in integers only, so that every store applies the very same rules: the in-process
//! store calls it under its lock.

use std::time::Duration;

use serde::Serialize;

use super::Amounts;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_DAY: u64 = 86_400 * NANOS_PER_SEC;
/// The largest amount a limit takes: far above any real budget, and small enough that the
/// rate arithmetic (instants in nanoseconds times the amount) never overflows 128 bits.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000_000;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Measure {
    /// Requests admitted.
    Requests,
    /// Input (prompt) tokens, as the provider counts them.
    InputTokens,
    /// Output (completion) tokens.
    OutputTokens,
    /// Input plus output tokens.
    TotalTokens,
    /// Money, in integer micro-units of the currency, as a
    /// [`Pricing`](super::Pricing) computes it.
    CostMicros,
}

impl Measure {
    /// A short, stable, snake_case name (metric labels, error messages, configuration).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
            Self::TotalTokens => "total_tokens",
            Self::CostMicros => "cost_micros",
        }
    }

    /// How much of this measure `amounts` hold.
    pub fn of(self, amounts: &Amounts) -> u64 {
        match self {
            Self::Requests => amounts.requests,
            Self::InputTokens => amounts.input_tokens,
            Self::OutputTokens => amounts.output_tokens,
            Self::TotalTokens => amounts.input_tokens.saturating_add(amounts.output_tokens),
            Self::CostMicros => amounts.cost_micros,
        }
    }
}

/// Over which window a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Window {
    /// A rate that refills continuously: `amount` per `per`, up to a burst of `burst`
    /// (the amount itself by default). No window edges: what was spent `per` ago is fully
    /// back, what was spent half of it ago half back (GCRA, the generic cell rate
    /// algorithm, on integers).
    Rate {
        /// The period over which `amount` refills.
        per: Duration,
        /// The most that can be spent at once, after a rest.
        burst: u64,
    },
    /// A UTC calendar day: the whole amount is back at midnight UTC.
    Day,
    /// A UTC calendar month: the whole amount is back at 00:00 UTC on the first.
    Month,
}

/// One limit of a budget: at most `amount` of a [`Measure`] per [`Window`].
///
/// ```
/// use std::time::Duration;
/// use tower_sse::budget::{Limit, Measure};
///
/// let limits = [
///     Limit::rate(Measure::Requests, 60, Duration::from_secs(60)),
///     Limit::rate(Measure::TotalTokens, 100_000, Duration::from_secs(60)).burst(20_000),
///     Limit::per_day(Measure::OutputTokens, 2_000_000),
///     Limit::per_month(Measure::CostMicros, 50_000_000), // 50.00 in the currency
/// ];
/// assert!(limits.iter().all(|limit| limit.validate().is_ok()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// What it counts.
    pub measure: Measure,
    /// How much per window.
    pub amount: u64,
    /// Which window.
    pub window: Window,
}

/// A limit that cannot be used, from [`Limit::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLimit(pub(crate) String);

impl std::fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidLimit {}

impl Limit {
    /// `amount` per `per`, refilling continuously, with a burst of `amount`.
    pub fn rate(measure: Measure, amount: u64, per: Duration) -> Self {
        Self {
            measure,
            amount,
            window: Window::Rate { per, burst: amount },
        }
    }

    /// `amount` per UTC day.
    pub fn per_day(measure: Measure, amount: u64) -> Self {
        Self {
            measure,
            amount,
            window: Window::Day,
        }
    }

    /// `amount` per UTC month.
    pub fn per_month(measure: Measure, amount: u64) -> Self {
        Self {
            measure,
            amount,
            window: Window::Month,
        }
    }

    /// A rate limit's burst: the most that can be spent at once (ignored by calendar
    /// limits).
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        if let Window::Rate { burst: b, .. } = &mut self.window {
            *b = burst;
        }
        self
    }

    /// Whether the limit can be applied: an amount (and a burst) of 1 to [`MAX_AMOUNT`], and
    /// a rate's period of 1 ms to 366 days.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let bad = |why: &str| Err(InvalidLimit(format!("{}: {why}", self.describe())));
        if self.amount == 0 || self.amount > MAX_AMOUNT {
            return bad("the amount must be 1 to 10^15");
        }
        if let Window::Rate { per, burst } = self.window {
            if per < Duration::from_millis(1) || per > Duration::from_secs(366 * 86_400) {
                return bad("the period must be 1 ms to 366 days");
            }
            if burst == 0 || burst > MAX_AMOUNT {
                return bad("the burst must be 1 to 10^15");
            }
        }
        Ok(())
    }

    /// A short description, as error messages show it: `total_tokens 100000/60s`,
    /// `cost_micros 50000000/month`.
    pub fn describe(&self) -> String {
        match self.window {
            Window::Rate { per, .. } => {
                format!("{} {}/{}", self.measure.as_str(), self.amount, human(per))
            }
            Window::Day => format!("{} {}/day", self.measure.as_str(), self.amount),
            Window::Month => format!("{} {}/month", self.measure.as_str(), self.amount),
        }
    }

    /// The most one request can ever take under this limit: the burst of a rate, the amount
    /// of a calendar period.
    pub fn capacity(&self) -> u64 {
        match self.window {
            Window::Rate { burst, .. } => burst,
            Window::Day | Window::Month => self.amount,
        }
    }
}

fn human(per: Duration) -> String {
    let ms = per.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The state of one limit for one key, as the in-process store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LimitState {
    /// Rate: the theoretical arrival time, in nanoseconds times the amount (0: at rest).
    /// Calendar: unused.
    tat: u128,
    /// Calendar: the period the count is for (day or month number since 1970).
    period: u64,
    /// Calendar: what was spent in it (more than the amount: debt).
    used: u64,
}

impl LimitState {
    /// A rate's state at this theoretical arrival time (nanoseconds times the amount).
    #[cfg(feature = "redis")]
    pub(crate) fn rate(tat: u128) -> Self {
        Self {
            tat,
            ..Self::default()
        }
    }

    /// A calendar budget's state: `used` in period number `period`.
    #[cfg(feature = "redis")]
    pub(crate) fn calendar(period: u64, used: u64) -> Self {
        Self {
            period,
            used,
            ..Self::default()
        }
    }
}

/// What a limit says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It fits.
    Fits,
    /// Not now: it fits after this wait.
    Wait(Duration),
    /// Never: it is larger than the limit's capacity.
    Never,
}

impl Limit {
    /// Would `n` fit now (`now`: nanoseconds since the Unix epoch)?
    pub(crate) fn check(&self, state: &LimitState, n: u64, now: u64) -> Verdict {
        if n == 0 {
            return Verdict::Fits;
        }
        if n > self.capacity() {
            return Verdict::Never;
        }
        match self.window {
            Window::Rate { per, burst } => {
                let (a, p) = (u128::from(self.amount), per.as_nanos());
                let now_s = u128::from(now) * a;
                let new = self.rate_base(state, now) + u128::from(n) * p;
                let allowed = now_s + u128::from(burst) * p;
                if new <= allowed {
                    Verdict::Fits
                } else {
                    Verdict::Wait(nanos((new - allowed).div_ceil(a)))
                }
            }
            Window::Day | Window::Month => {
                let used = self.calendar_used(state, now);
                if used.saturating_add(n) <= self.amount {
                    Verdict::Fits
                } else {
                    // The next period, or later when debt carries over it.
                    let mut wait = self.period_end(now) - now;
                    let carried = used.saturating_sub(self.amount);
                    if carried.saturating_add(n) > self.amount {
                        // Debt of more than a whole period: at least two periods away.
                        wait += self.period_len_after(now);
                    }
                    Verdict::Wait(nanos(u128::from(wait)))
                }
            }
        }
    }

    /// Spend `n` now (after a [`check`](Self::check) that fit, or as debt).
    pub(crate) fn spend(&self, state: &mut LimitState, n: u64, now: u64) {
        match self.window {
            Window::Rate { per, .. } => {
                state.tat = self.rate_base(state, now) + u128::from(n) * per.as_nanos();
            }
            Window::Day | Window::Month => {
                state.used = self.calendar_used(state, now).saturating_add(n);
                state.period = self.period(now);
            }
        }
    }

    /// Correct a reservation of `reserved` made at `admitted_at` to `actual`, now: the
    /// difference is charged (an overrun: debt that later requests see) or given back (as
    /// far as it has not refilled by itself already).
    pub(crate) fn settle(
        &self,
        state: &mut LimitState,
        reserved: u64,
        actual: u64,
        admitted_at: u64,
        now: u64,
    ) {
        match self.window {
            Window::Rate { per, .. } => {
                let p = per.as_nanos();
                if actual >= reserved {
                    self.spend(state, actual - reserved, now);
                } else {
                    let now_s = u128::from(now) * u128::from(self.amount);
                    let refund = u128::from(reserved - actual) * p;
                    state.tat = state.tat.saturating_sub(refund).max(now_s);
                }
            }
            Window::Day | Window::Month => {
                let used = self.calendar_used(state, now);
                let same = self.period(admitted_at) == self.period(now);
                state.used = if same {
                    (used + actual).saturating_sub(reserved)
                } else {
                    // The reservation's period is over: what it reserved stays there, the
                    // overrun (if any) goes to this one.
                    used.saturating_add(actual.saturating_sub(reserved))
                };
                state.period = self.period(now);
            }
        }
    }

    /// How much is spent now (more than the capacity: debt) and when all of it is back or
    /// the period ends (nanoseconds from now).
    pub(crate) fn usage(&self, state: &LimitState, now: u64) -> (u64, Duration) {
        match self.window {
            Window::Rate { per, .. } => {
                let a = u128::from(self.amount);
                let ahead = self.rate_base(state, now) - u128::from(now) * a;
                let used = ahead.div_ceil(per.as_nanos());
                (
                    u64::try_from(used).unwrap_or(u64::MAX),
                    nanos(ahead.div_ceil(a)),
                )
            }
            Window::Day | Window::Month => (
                self.calendar_used(state, now),
                nanos(u128::from(self.period_end(now) - now)),
            ),
        }
    }

    fn rate_base(&self, state: &LimitState, now: u64) -> u128 {
        state.tat.max(u128::from(now) * u128::from(self.amount))
    }

    /// What is spent in the current period: the count when it is this period's, the
    /// overrun carried over from the one before, else nothing.
    fn calendar_used(&self, state: &LimitState, now: u64) -> u64 {
        let period = self.period(now);
        if state.period == period {
            state.used
        } else if state.period + 1 == period {
            state.used.saturating_sub(self.amount)
        } else {
            0
        }
    }

    /// The number of the calendar period of `now` (days or months since 1970).
    pub(crate) fn period(&self, now: u64) -> u64 {
        let day = now / NANOS_PER_DAY;
        match self.window {
            Window::Month => {
                let (y, m) = year_month(day);
                (y - 1970) * 12 + (m - 1)
            }
            _ => day,
        }
    }

    /// When the calendar period of `now` ends, in nanoseconds since the epoch.
    pub(crate) fn period_end(&self, now: u64) -> u64 {
        let day = now / NANOS_PER_DAY;
        match self.window {
            Window::Month => {
                let (y, m) = year_month(day);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m) * NANOS_PER_DAY
            }
            _ => (day + 1) * NANOS_PER_DAY,
        }
    }

    /// The length of the period after the one of `now`.
    pub(crate) fn period_len_after(&self, now: u64) -> u64 {
        let end = self.period_end(now);
        self.period_end(end) - end
    }
}

fn nanos(n: u128) -> Duration {
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    Duration::from_nanos(n)
}

/// The year and month (1-12) of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m)
}

/// The day number since 1970-01-01 of the first of month `m` of year `y` (`days_from_civil`).
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    /// 2026-12-07T06:00:00Z.
    const T0: u64 = 1_796_623_200 * SEC;

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(days_from_civil(1970, 1), 0);
        assert_eq!(days_from_civil(2000, 3), 11_017);
        for day in [0, 59, 60, 365, 11_016, 11_017, 20_429, 20_820, 40_000] {
            let (y, m) = year_month(day);
            assert!(days_from_civil(y, m) <= day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            assert!(days_from_civil(ny, nm) > day);
        }
        assert_eq!(year_month(T0 / NANOS_PER_DAY), (2026, 12));
    }

    #[test]
    fn rate_refills_continuously() {
        let limit = Limit::rate(Measure::TotalTokens, 60, Duration::from_secs(60));
        let mut s = LimitState::default();
        assert_eq!(limit.check(&s, 60, T0), Verdict::Fits);
        limit.spend(&mut s, 60, T0);
        assert_eq!(
            limit.check(&s, 1, T0),
            Verdict::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            limit.check(&s, 30, T0),
            Verdict::Wait(Duration::from_secs(30))
        );
        // Half a period later, half is back: no window edge.
        assert_eq!(limit.check(&s, 30, T0 + 30 * SEC), Verdict::Fits);
        assert_eq!(limit.check(&s, 61, T0 + 3600 * SEC), Verdict::Never);
        assert_eq!(limit.usage(&s, T0 + 15 * SEC).0, 45);
    }

    #[test]
    fn rate_settlement_refunds_and_records_debt() {
        let limit = Limit::rate(Measure::OutputTokens, 100, Duration::from_secs(100));
        let mut s = LimitState::default();
        limit.spend(&mut s, 80, T0);
        limit.settle(&mut s, 80, 20, T0, T0);
        assert_eq!(limit.usage(&s, T0).0, 20);
        // Overrun: 170 used on a reservation of 20: 170 spent now, 70 of them in debt.
        limit.settle(&mut s, 20, 170, T0, T0);
        assert_eq!(limit.usage(&s, T0).0, 170);
        assert_eq!(
            limit.check(&s, 1, T0),
            Verdict::Wait(Duration::from_secs(71))
        );
        // A refund never makes room that has refilled by itself already.
        let mut s = LimitState::default();
        limit.spend(&mut s, 100, T0);
        limit.settle(&mut s, 100, 0, T0, T0 + 200 * SEC);
        assert_eq!(limit.usage(&s, T0 + 200 * SEC).0, 0);
        assert_eq!(limit.check(&s, 101, T0 + 200 * SEC), Verdict::Never);
    }

    #[test]
    fn day_budget_resets_at_midnight_utc_and_carries_debt() {
        let limit = Limit::per_day(Measure::TotalTokens, 1000);
        let mut s = LimitState::default();
        limit.spend(&mut s, 900, T0);
        let midnight = (T0 / NANOS_PER_DAY + 1) * NANOS_PER_DAY;
        assert_eq!(
            limit.check(&s, 200, T0),
            Verdict::Wait(Duration::from_nanos(midnight - T0))
        );
        assert_eq!(limit.check(&s, 100, T0), Verdict::Fits);
        assert_eq!(limit.check(&s, 1001, T0), Verdict::Never);
        // 900 reserved, 1300 used: 300 of debt carried into the next day.
        limit.settle(&mut s, 900, 1300, T0, T0);
        assert_eq!(limit.usage(&s, midnight).0, 300);
        assert_eq!(limit.check(&s, 700, midnight), Verdict::Fits);
        assert!(matches!(limit.check(&s, 701, midnight), Verdict::Wait(_)));
        // A reservation from yesterday settled today: only the overrun counts today.
        let mut s = LimitState::default();
        limit.spend(&mut s, 500, T0);
        limit.settle(&mut s, 500, 600, T0, midnight + SEC);
        assert_eq!(limit.usage(&s, midnight + SEC).0, 100);
    }

    #[test]
    fn month_budget_ends_on_the_first() {
        let limit = Limit::per_month(Measure::CostMicros, 10);
        let mut s = LimitState::default();
        limit.spend(&mut s, 10, T0);
        // 2027-01-01T00:00:00Z.
        let first = days_from_civil(2027, 1) * NANOS_PER_DAY;
        assert_eq!(
            limit.check(&s, 1, T0),
            Verdict::Wait(Duration::from_nanos(first - T0))
        );
        assert_eq!(limit.check(&s, 10, first), Verdict::Fits);
    }

    #[test]
    fn validation() {
        assert!(
            Limit::rate(Measure::Requests, 0, Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(
            Limit::rate(Measure::Requests, 1, Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            Limit::per_day(Measure::Requests, MAX_AMOUNT + 1)
                .validate()
                .is_err()
        );
        assert!(
            Limit::rate(Measure::Requests, 5, Duration::from_secs(1))
                .burst(0)
                .validate()
                .is_err()
        );
    }
}

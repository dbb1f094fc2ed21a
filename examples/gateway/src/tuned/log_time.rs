//! The timestamp of a log line: tracing-subscriber's `SystemTime` text (RFC 3339 in UTC, with
//! microseconds: `2026-11-29T11:49:25.123456Z`), with the part up to the second formatted once
//! a second per thread instead of for every line.

use std::cell::RefCell;
use std::fmt;
use std::time::UNIX_EPOCH;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// A [`FormatTime`] that writes what tracing-subscriber's [`SystemTime`] writes, byte for
/// byte, at a fraction of the cost: the date and time of day are formatted when the second
/// changes, the microseconds for every line.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedSystemTime;

/// The first second past year 9999: from there on (and before 1970) the timestamp is left to
/// tracing-subscriber, whose text changes shape.
const YEAR_10000: u64 = 253_402_300_800;

thread_local! {
    /// The second last formatted on this thread, and its text up to the decimal point.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for CachedSystemTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(since) = std::time::SystemTime::now().duration_since(UNIX_EPOCH) else {
            return SystemTime.format_time(w);
        };
        let seconds = since.as_secs();
        if seconds >= YEAR_10000 {
            return SystemTime.format_time(w);
        }
        SECOND.with_borrow_mut(|(cached, text)| {
            if *cached != seconds {
                text.clear();
                write_up_to_seconds(text, seconds)?;
                *cached = seconds;
            }
            w.write_str(text)
        })?;
        let mut micros = since.subsec_micros();
        let mut digits = *b"000000Z";
        for digit in digits[..6].iter_mut().rev() {
            // `micros % 10` is a digit.
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for `seconds` since 1970 (before year 10000), in UTC.
fn write_up_to_seconds(out: &mut String, seconds: u64) -> fmt::Result {
    use std::fmt::Write as _;
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The date and time of `seconds`, as `httpdate` (an independent formatter) reads them:
    /// `Sun, 06 Nov 1994 08:49:37 GMT` → `1994-11-06T08:49:37.`.
    fn reference(seconds: u64) -> String {
        let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds));
        let parts: Vec<&str> = text.split([' ', ':']).collect();
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == parts[2])
        .unwrap()
            + 1;
        format!(
            "{}-{month:02}-{}T{}:{}:{}.",
            parts[3], parts[1], parts[4], parts[5], parts[6]
        )
    }

    #[test]
    fn dates_and_times_match_an_independent_formatter() {
        let mut next = super::super::test_numbers(0x2545_f491_4f6c_dd1du64);
        // Edges: the epoch, leap days, century years, the last second before year 10000.
        let edges = [
            0,
            951_782_399,
            951_782_400,
            951_868_800,
            4_107_542_400,
            4_107_628_800,
            YEAR_10000 - 1,
        ];
        let random = (0..50_000).map(|_| next() % YEAR_10000);
        for seconds in edges.into_iter().chain(random) {
            let mut ours = String::new();
            write_up_to_seconds(&mut ours, seconds).unwrap();
            assert_eq!(ours, reference(seconds), "{seconds}");
        }
    }

    #[test]
    fn a_line_is_shaped_as_tracing_subscribers_own() {
        let mut ours = String::new();
        let mut theirs = String::new();
        CachedSystemTime
            .format_time(&mut Writer::new(&mut ours))
            .unwrap();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        // The same shape, byte by byte (digits where digits are), and ours came first.
        assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
        for (a, b) in ours.bytes().zip(theirs.bytes()) {
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{ours} / {theirs}");
            if !a.is_ascii_digit() {
                assert_eq!(a, b, "{ours} / {theirs}");
            }
        }
        assert!(ours <= theirs, "{ours} / {theirs}");
        // A second call in the same second reuses the text and still writes its own micros.
        let mut again = String::new();
        CachedSystemTime
            .format_time(&mut Writer::new(&mut again))
            .unwrap();
        assert_eq!(again.len(), ours.len());
        assert!(again >= ours);
    }
}

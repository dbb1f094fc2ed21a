//! The fields of a text log line, written straight: `name=value` pairs separated by spaces,
//! what tracing-subscriber's default fields (`DefaultFields`) write with colours off, byte for
//! byte (floats: the same number, see [`PlainFields`]), its escaping of terminal control
//! characters in messages and errors included.
//!
//! The default goes through `dyn Debug` and `write!` for every field (and paints every name
//! and `=` with a style that is a no-op without colours). A stream's log line has 19 fields,
//! mostly numbers, so the line cost more than the rest of the stream's end. Here numbers go
//! through `itoa` and `ryu`, booleans and plain strings are copied, and only strings that
//! need escapes, floats written with an exponent and `Display` values still go through `fmt`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// A [`FormatFields`] for text lines without colours: `name=value`, values as `Debug` would
/// write them (strings quoted), the `message` field as its text alone.
///
/// Floats between 1e-4 and 1e16 are written by `ryu`: the shortest digits that read back as
/// the same number, as `Debug` writes them, except that where two 17-digit forms are equally
/// near (rare: a 16-digit form does not read back and the exact value ends in a 5 at the
/// 18th digit), ryu takes the even last digit and `Debug` the upper one.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            seen: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    seen: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// The separator, then `name=` (nothing for the message); false once writing failed.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        if self.seen {
            self.result = self.writer.write_char(' ');
        }
        self.seen = true;
        if field.name() != "message" {
            let name = shown_name(field);
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }

    fn write(&mut self, text: &str) {
        self.result = self.writer.write_str(text);
    }
}

impl PlainVisitor<'_> {
    /// `value` through `Debug`, with the terminal control characters escaped as the default
    /// fields escape them in messages and errors when the writer asks for it.
    fn write_escaped(&mut self, value: &dyn fmt::Debug) {
        self.result = if self.writer.sanitizes_ansi_escapes() {
            let mut escaping = Escaping {
                inner: &mut self.writer,
            };
            fmt::Write::write_fmt(&mut escaping, format_args!("{value:?}"))
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

/// A field's name as the line shows it: a raw identifier without its `r#`.
fn shown_name(field: &Field) -> &'static str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

/// An error and its sources as the default fields list them: `[first, second]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Debug for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&format_args!("{error}"));
            next = error.source();
        }
        list.finish()
    }
}

/// Writes what it is given with ESC, BEL, BS, FF, DEL and the C1 controls escaped (the set
/// tracing-subscriber escapes, against terminal injection through log lines).
struct Escaping<'a, 'w> {
    inner: &'a mut Writer<'w>,
}

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // The usual text has none of them: one write. (A C1 control is 0xC2 then 0x80..=0x9F
        // in UTF-8.)
        let bytes = text.as_bytes();
        let plain = !bytes.iter().enumerate().any(|(i, &b)| {
            matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f)
                || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
        });
        if plain {
            return self.inner.write_str(text);
        }
        for ch in text.chars() {
            match ch {
                '\x1b' => self.inner.write_str("\\x1b")?,
                '\x07' => self.inner.write_str("\\x07")?,
                '\x08' => self.inner.write_str("\\x08")?,
                '\x0c' => self.inner.write_str("\\x0c")?,
                '\x7f' => self.inner.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.inner, "\\u{{{:x}}}", u32::from(ch))?,
                _ => self.inner.write_char(ch)?,
            }
        }
        Ok(())
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            self.write(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field) {
            self.write(itoa::Buffer::new().format(value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.start(field) {
            return;
        }
        // Where `Debug` writes a plain decimal (no exponent), ryu writes the same shortest
        // digits, several times faster (but for a tie in a 17th digit: ryu takes the even
        // one, `Debug` the upper one; the same number either way); elsewhere `Debug` itself.
        if (1e-4..1e16).contains(&value.abs()) {
            self.write(ryu::Buffer::new().format_finite(value));
        } else {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field) {
            self.write(if value { "true" } else { "false" });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        if field.name() == "message" {
            self.write_escaped(&format_args!("{value}"));
            return;
        }
        // `Debug` of a string of printable ASCII without quotes or backslashes is the string
        // in quotes; anything else gets `Debug`'s escapes.
        if value
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
        {
            self.result = self
                .writer
                .write_char('"')
                .and_then(|()| self.writer.write_str(value))
                .and_then(|()| self.writer.write_char('"'));
        } else {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        self.write_escaped(&format_args!("{value}"));
        if let Some(source) = value.source() {
            let name = shown_name(field);
            self.result = self
                .result
                .and_then(|()| write!(self.writer, " {name}.sources="));
            if self.result.is_ok() {
                self.write_escaped(&Sources(source));
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        if field.name() == "message" {
            self.write_escaped(value);
        } else {
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    /// Log lines collected in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Every kind of value a stream's log line holds, and the odd ones.
    fn emit_all() {
        let model = "gpt-4o-mini";
        let odd = "quote \" backslash \\ tab \t newline \n é ✓";
        let none: Option<&str> = None;
        tracing::info!(
            outcome = %"completed",
            provider = %"openai",
            model = model,
            response_id = Some("chatcmpl-123"),
            absent = none,
            odd = odd,
            empty = "",
            control = "\u{7f}\u{1}",
            status = Some(200u16),
            events = 18u64,
            big = u64::MAX,
            negative = -42i64,
            duration_ms = 1601.2345678f64,
            tiny = 0.00001f64,
            huge = 1e21f64,
            whole = 3.0f64,
            nan = f64::NAN,
            estimated = false,
            shown = true,
            r#type = "raw",
            "stream ended"
        );
        tracing::warn!(error = %"upstream: connection reset", "stream ended");
        tracing::info!(only = 1u64);
        // Messages and errors with terminal control characters, errors with sources.
        tracing::warn!("escape \u{1b}[31m bell \u{7} c1 \u{85} del \u{7f} tab \t");
        tracing::info!(message = "a message \u{1b} given as a string", n = 1u64);
        let io = std::io::Error::other("inner \u{1b}");
        let outer = Outer(io);
        tracing::error!(
            error = &outer as &(dyn std::error::Error + 'static),
            "failed"
        );
        let alone = std::io::Error::other("alone \u{9b}");
        tracing::error!(r#err = &alone as &(dyn std::error::Error + 'static));
    }

    /// An error with a source.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \u{7}")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn lines(
        fields: impl for<'w> FormatFields<'w> + Send + Sync + 'static,
        emit: impl Fn(),
    ) -> String {
        let out = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .compact()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        out.text()
    }

    #[test]
    fn the_lines_are_byte_identical_to_tracing_subscribers_default_fields() {
        let ours = lines(PlainFields, emit_all);
        let theirs = lines(DefaultFields::new(), emit_all);
        assert_eq!(ours, theirs);
        assert!(ours.contains("events=18 big=18446744073709551615 negative=-42"));
        assert!(ours.contains(r#"odd="quote \" backslash \\ tab \t newline \n é ✓""#));
        assert!(ours.contains("type=\"raw\""));
        assert_eq!(ours.lines().count(), 7);
        assert!(ours.contains(r"escape \x1b[31m bell \x07 c1 \u{85} del \x7f tab"));
        assert!(ours.contains(r"failed error=outer \x07 error.sources=[inner \x1b]"));
        assert!(ours.contains(r"err=alone \u{9b}"));
    }

    #[test]
    fn floats_are_the_same_numbers_as_debug_writes() {
        let mut next = super::super::test_numbers(0x9e37_79b9_7f4a_7c15u64);
        let edges = [
            0.0,
            -0.0,
            1e-4,
            9.999e-5,
            1e16,
            9.999_999_999_999_998e15,
            1.0,
            0.1,
            100.0,
        ];
        let random_bits = (0..20_000).map(|_| f64::from_bits(next()));
        let values: Vec<f64> = edges.into_iter().chain(random_bits).collect();
        // Durations in milliseconds as the log line has them: up to a day, from nanoseconds.
        let durations: Vec<f64> = (0..20_000)
            .map(|_| std::time::Duration::from_nanos(next() % 86_400_000_000_000))
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let emit = || {
            for &value in values.iter().chain(&durations) {
                tracing::info!(x = value);
            }
        };
        let ours = lines(PlainFields, emit);
        let theirs = lines(DefaultFields::new(), emit);
        assert_eq!(ours.lines().count(), values.len() + durations.len());
        let mut ties = 0;
        for (ours, theirs) in ours.lines().zip(theirs.lines()) {
            if ours != theirs {
                // Only where two 17-digit forms are equally near: ryu takes the even last
                // digit, `Debug` the upper one. Both read back as the same number.
                let number = |line: &str| line.split_once("x=").unwrap().1.parse::<f64>().unwrap();
                assert_eq!(
                    number(ours).to_bits(),
                    number(theirs).to_bits(),
                    "{ours} / {theirs}"
                );
                assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
                ties += 1;
            }
        }
        assert!(ties < 10, "{ties} lines differ");
    }
}

//! The one byte-scanning toolkit of the crate: byte pre-filters, and lenient, borrowed
//! JSON pieces. The provider formats read their events with it, and the include-usage layer
//! finds `stream_options` in request bodies with it; it knows no format.
//!
//! The pre-filters look at bytes only: a quoted key found with `memchr`, then the first
//! bytes of its value. A quoted key cannot match inside a JSON string (the quotes there are
//! escaped), so a hit is a real key, at some depth. Parsing then goes into small structs
//! whose numbers and strings never fail the whole parse: a count that is negative, a float
//! with a fraction, too large for `u64`, a string or an object is unknown (`None`), and the
//! other counts of the same object still count.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use memchr::memmem::Finder;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A static `memmem` finder, built on first use.
macro_rules! finders {
    ($($name:ident = $needle:expr;)*) => {
        $(pub(crate) static $name: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new($needle));)*
    };
}
pub(crate) use finders;

/// Parse a `T` from the start of `bytes`, ignoring whatever follows the first JSON value
/// (so a slice starting at an object inside an event parses that object only).
pub(crate) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    T::deserialize(&mut de).ok()
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
pub(crate) fn skip_ws(data: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = data.get(at) {
        at += 1;
    }
    at
}

/// Where the value of each occurrence of `key` (a quoted key, like `"usage"`) starts: after
/// optional whitespace, a colon and optional whitespace. Occurrences not followed by a colon
/// (string values that happen to equal the key) are skipped.
pub(crate) fn values<'d>(data: &'d [u8], key: &'d Finder<'_>) -> impl Iterator<Item = usize> + 'd {
    let len = key.needle().len();
    key.find_iter(data).filter_map(move |at| {
        let colon = skip_ws(data, at + len);
        if data.get(colon) != Some(&b':') {
            return None;
        }
        let value = skip_ws(data, colon + 1);
        (value < data.len()).then_some(value)
    })
}

/// Where the first object value of `key` starts (its `{`).
pub(crate) fn object_value(data: &[u8], key: &Finder<'_>) -> Option<usize> {
    values(data, key).find(|&at| data.get(at) == Some(&b'{'))
}

/// Whether `key` has a string value somewhere (`"finish_reason":"stop"`, not `null`).
pub(crate) fn has_string_value(data: &[u8], key: &Finder<'_>) -> bool {
    values(data, key).any(|at| data.get(at) == Some(&b'"'))
}

/// Whether `key` has the value `true` somewhere.
pub(crate) fn has_true_value(data: &[u8], key: &Finder<'_>) -> bool {
    values(data, key).any(|at| data.get(at..).is_some_and(|v| v.starts_with(b"true")))
}

/// Whether the value of the first `key` is an empty array or `null`, or the key is absent.
pub(crate) fn is_empty_array_or_absent(data: &[u8], key: &Finder<'_>) -> bool {
    let Some(at) = values(data, key).next() else {
        return true;
    };
    match data.get(at) {
        Some(b'[') => data.get(skip_ws(data, at + 1)) == Some(&b']'),
        Some(b'n') => data.get(at..).is_some_and(|v| v.starts_with(b"null")),
        _ => false,
    }
}

/// Call `f` with the contents of each string value of `key`, as sent (JSON escapes not
/// decoded), empty ones excluded. Returns whether `f` was called.
pub(crate) fn string_values(data: &[u8], key: &Finder<'_>, f: &mut impl FnMut(&[u8])) -> bool {
    let mut called = false;
    for at in values(data, key) {
        if data.get(at) != Some(&b'"') {
            continue;
        }
        let start = at + 1;
        let mut pos = start;
        let end = loop {
            let Some(rest) = data.get(pos..) else {
                break None;
            };
            match memchr::memchr2(b'"', b'\\', rest) {
                Some(i) if rest.get(i) == Some(&b'"') => break Some(pos + i),
                Some(i) => pos += i + 2,
                None => break None,
            }
        };
        if let Some(text) = end.and_then(|end| data.get(start..end))
            && !text.is_empty()
        {
            f(text);
            called = true;
        }
    }
    called
}

/// Whether `key` (a quoted key) occurs, at any depth.
pub(crate) fn present(data: &[u8], key: &Finder<'_>) -> bool {
    key.find(data).is_some()
}

/// The first non-empty string value of `key` (a quoted key): the range of its text, between
/// the quotes, escapes not decoded.
pub(crate) fn text_of(data: &[u8], key: &Finder<'_>) -> Option<(usize, usize)> {
    key.find_iter(data).find_map(|at| {
        // `"key"` then optional whitespace, a colon, optional whitespace and a quote.
        let mut i = at + key.needle().len();
        let mut next = || {
            while data.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            i += 1;
            data.get(i - 1).copied()
        };
        if next() != Some(b':') || next() != Some(b'"') {
            return None;
        }
        let start = i;
        // The closing quote: the first one not escaped by a backslash.
        let mut end = start;
        loop {
            match data.get(end)? {
                b'"' => break,
                b'\\' => end += 2,
                _ => end += 1,
            }
        }
        (end > start).then_some((start, end))
    })
}

/// Call `f` with the string values of the first key that has any (keys tried in order, so
/// the usual event costs one `memmem` and one scan of its text).
pub(crate) fn first_of(data: &[u8], keys: &[&Finder<'static>], f: &mut impl FnMut(&[u8])) {
    for key in keys {
        if string_values(data, key, f) {
            return;
        }
    }
}

/// Drain whatever a visitor was handed, for the lenient types below.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A token count: a non-negative integer that fits `u64` (an integral float such as `12.0`
/// is accepted). Anything else is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Count(pub(crate) Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                // 2^64 is exactly representable; every integral f64 below it fits u64.
                const LIMIT: f64 = 18_446_744_073_709_551_616.0;
                let ok = v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < LIMIT;
                // `as` saturates; the value is only used when it is exact.
                Ok(Count(ok.then_some(v as u64)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
                Count::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
                drain_seq(seq).map(|()| Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                drain_map(map).map(|()| Count(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A string, borrowed from the input unless it holds escapes. Anything else (or an empty
/// string) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Text<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Text<'a>, D::Error> {
                Text::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'a>, A::Error> {
                drain_seq(seq).map(|()| Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'a>, A::Error> {
                drain_map(map).map(|()| Text(None))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A boolean; anything else is `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flag(pub(crate) bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Flag, A::Error> {
                drain_seq(seq).map(|()| Flag(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Flag, A::Error> {
                drain_map(map).map(|()| Flag(false))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// An object parsed as `T`; anything else (`null`, a number, an array…) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lenient<T>(pub(crate) Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Lenient<T>, A::Error> {
                drain_seq(seq).map(|()| Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// One element of an array of choices or candidates that may name a finish reason.
pub(crate) trait HasReason<'a> {
    fn reason(self) -> Option<Cow<'a, str>>;
}

/// The last non-empty finish reason among the elements of an array (`choices`,
/// `candidates`), read without collecting the array.
#[derive(Debug)]
pub(crate) struct LastReason<'a, C>(pub(crate) Option<Cow<'a, str>>, PhantomData<C>);

impl<C> Default for LastReason<'_, C> {
    fn default() -> Self {
        Self(None, PhantomData)
    }
}

impl<'de: 'a, 'a, C: Deserialize<'de> + HasReason<'a>> Deserialize<'de> for LastReason<'a, C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a, C>(PhantomData<(&'a (), C)>);
        impl<'de: 'a, 'a, C: Deserialize<'de> + HasReason<'a>> Visitor<'de> for V<'a, C> {
            type Value = LastReason<'a, C>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut last = None;
                while let Some(Lenient(choice)) = seq.next_element::<Lenient<C>>()? {
                    if let Some(reason) = choice.and_then(HasReason::reason) {
                        last = Some(reason);
                    }
                }
                Ok(LastReason(last, PhantomData))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LastReason::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LastReason::default())
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// One member of a JSON object: the byte ranges of its key (quotes included) and of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) key: Range<usize>,
    pub(crate) value: Range<usize>,
}

/// A JSON object as [`member`] read it: where its braces are, and the member it looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    /// The index of the opening brace.
    pub(crate) open: usize,
    /// The index of the closing brace.
    pub(crate) close: usize,
    /// Whether the object has no members at all.
    pub(crate) empty: bool,
    /// The member named, if the object has it.
    pub(crate) member: Option<Member>,
}

/// The member `name` of the object at the start of `data` (after optional whitespace), found
/// at that object's own level: keys of nested objects, and strings anywhere, never match.
/// Keys are compared decoded (`"stream\u005foptions"` is `stream_options`).
///
/// Reads to the object's closing brace, in one pass (strings with `memchr`). `None` when the
/// bytes are not an object as far as this checks (strings, bracket depth, colons and commas;
/// not the scalars, nor what follows the object), or when `name` occurs twice. Run it on
/// bytes a parser accepted to get exact answers; on any other bytes it answers or says
/// `None`, and never panics.
pub(crate) fn member(data: &[u8], name: &str) -> Option<Object> {
    let open = skip_ws(data, 0);
    if data.get(open) != Some(&b'{') {
        return None;
    }
    let mut at = skip_ws(data, open + 1);
    if data.get(at) == Some(&b'}') {
        return Some(Object {
            open,
            close: at,
            empty: true,
            member: None,
        });
    }
    let mut found = None;
    loop {
        if data.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(data, at)?;
        let colon = skip_ws(data, key_end);
        if data.get(colon) != Some(&b':') {
            return None;
        }
        let value = skip_ws(data, colon + 1);
        let value_end = skip_value(data, value)?;
        if key_is(data.get(at..key_end)?, name) {
            if found.is_some() {
                return None;
            }
            found = Some(Member {
                key: at..key_end,
                value: value..value_end,
            });
        }
        let next = skip_ws(data, value_end);
        match data.get(next)? {
            b',' => at = skip_ws(data, next + 1),
            b'}' => {
                return Some(Object {
                    open,
                    close: next,
                    empty: false,
                    member: found,
                });
            }
            _ => return None,
        }
    }
}

/// The index just past the string whose opening quote is at `at`.
fn string_end(data: &[u8], at: usize) -> Option<usize> {
    let mut pos = at + 1;
    loop {
        let rest = data.get(pos..)?;
        let i = memchr::memchr2(b'"', b'\\', rest)?;
        if rest.get(i) == Some(&b'"') {
            return Some(pos + i + 1);
        }
        // A backslash: skip it and the byte it escapes.
        pos += i + 2;
    }
}

/// Whether the quoted key `quoted` is `name`, escapes decoded.
fn key_is(quoted: &[u8], name: &str) -> bool {
    let Some(raw) = quoted.get(1..quoted.len().saturating_sub(1)) else {
        return false;
    };
    if memchr::memchr(b'\\', raw).is_none() {
        return raw == name.as_bytes();
    }
    serde_json::from_slice::<String>(quoted).is_ok_and(|key| key == name)
}

finders! {
    TYPE_KEY = b"\"type\"";
}

/// The contents of the top-level `"type"` string of a JSON object, as sent (escapes not
/// decoded); `None` when the data is not an object or has no top-level `type` string. It
/// names an event relayed without its `event:` line, in the formats that put the name in
/// both places (Anthropic, OpenAI Responses).
///
/// Providers put `type` first: that costs a few byte compares. Otherwise (a relay that
/// re-serialised the object, keys sorted), and only when a `"type"` key occurs at all, the
/// top level is walked with nested values skipped by their delimiters (`memchr`), so that
/// the `type` of a nested object (a content block, a delta, a tool call) never counts.
/// Linear in the data, no allocation, and garbage is `None`.
pub(crate) fn top_level_type(data: &[u8]) -> Option<&[u8]> {
    let mut at = skip_ws(data, 0);
    if data.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut first = true;
    loop {
        at = skip_ws(data, at);
        if data.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(data, at)? - 1;
        let key = data.get(at + 1..key_end)?;
        at = skip_ws(data, key_end + 1);
        if data.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(data, at + 1);
        if key == b"type" {
            if data.get(at) != Some(&b'"') {
                return None;
            }
            let end = string_end(data, at)? - 1;
            return data.get(at + 1..end);
        }
        if std::mem::take(&mut first) {
            // Not the usual layout: walk on only if there is a `type` key to find.
            TYPE_KEY.find(data.get(at..)?)?;
        }
        at = skip_ws(data, skip_value(data, at)?);
        if data.get(at) != Some(&b',') {
            return None;
        }
        at += 1;
    }
}

/// The string values (escapes decoded) of the top-level members `names` of the object at the
/// start of `data`. The top level is walked only until every name was found (nested values
/// are skipped by their delimiters, never parsed): a name's first occurrence counts, a value
/// that is not a string is skipped, and bytes that stop looking like an object end the walk
/// with what was found before them.
pub(crate) fn top_level_strings<const N: usize>(
    data: &[u8],
    names: [&str; N],
) -> [Option<String>; N] {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut missing = N;
    let mut at = skip_ws(data, 0);
    if data.get(at) != Some(&b'{') {
        return found;
    }
    at = skip_ws(data, at + 1);
    while missing > 0 && data.get(at) == Some(&b'"') {
        let Some(key_end) = string_end(data, at) else {
            break;
        };
        let colon = skip_ws(data, key_end);
        if data.get(colon) != Some(&b':') {
            break;
        }
        let value = skip_ws(data, colon + 1);
        if data.get(value) == Some(&b'"')
            && let Some(key) = data.get(at..key_end)
            && let Some(slot) = names
                .iter()
                .zip(found.iter_mut())
                .find_map(|(name, slot)| (slot.is_none() && key_is(key, name)).then_some(slot))
            && let Some(text) = data.get(value..).and_then(parse::<String>)
        {
            *slot = Some(text);
            missing -= 1;
        }
        let Some(end) = skip_value(data, value) else {
            break;
        };
        at = skip_ws(data, end);
        if data.get(at) != Some(&b',') {
            break;
        }
        at = skip_ws(data, at + 1);
    }
    found
}

/// Where the JSON value that starts at `at` ends (the index after it). Strings, objects and
/// arrays end at their delimiters (only the brackets of the value's own kind are counted,
/// strings skipped); numbers, `true`, `false` and `null` at the next delimiter.
fn skip_value(data: &[u8], mut at: usize) -> Option<usize> {
    let (open, close) = match *data.get(at)? {
        b'"' => return string_end(data, at),
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        _ => {
            let rest = data.get(at..)?;
            return rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .filter(|&len| len > 0)
                .map(|len| at + len);
        }
    };
    let mut depth = 0usize;
    loop {
        let rest = data.get(at..)?;
        let i = memchr::memchr3(b'"', open, close, rest)?;
        let found = *rest.get(i)?;
        let pos = at + i;
        if found == b'"' {
            at = string_end(data, pos)?;
            continue;
        }
        if found == open {
            depth += 1;
        } else {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(pos + 1);
            }
        }
        at = pos + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    finders! {
        KEY = b"\"k\"";
    }

    #[test]
    fn counts_are_lenient() {
        let count = |json: &str| parse::<Count>(json.as_bytes()).and_then(|c| c.0);
        assert_eq!(count("12"), Some(12));
        assert_eq!(count("0"), Some(0));
        assert_eq!(count("18446744073709551615"), Some(u64::MAX));
        assert_eq!(count("18446744073709551616"), None);
        assert_eq!(count("1e30"), None);
        assert_eq!(count("-1"), None);
        assert_eq!(count("-0"), Some(0));
        assert_eq!(count("12.0"), Some(12));
        assert_eq!(count("12.5"), None);
        assert_eq!(count("1e3"), Some(1000));
        assert_eq!(count("\"12\""), None);
        assert_eq!(count("null"), None);
        assert_eq!(count("true"), None);
        assert_eq!(count("[1,2]"), None);
        assert_eq!(count("{\"a\":1}"), None);
    }

    #[test]
    fn lenient_objects_keep_their_neighbours() {
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(default)]
            n: Count,
        }
        #[derive(serde::Deserialize)]
        struct Outer {
            #[serde(default)]
            a: Lenient<Inner>,
            #[serde(default)]
            b: Count,
        }
        for (json, a, b) in [
            (r#"{"a":{"n":1},"b":2}"#, Some(1), Some(2)),
            (r#"{"a":5,"b":2}"#, None, Some(2)),
            (r#"{"a":[{"n":1}],"b":2}"#, None, Some(2)),
            (r#"{"a":null,"b":-2}"#, None, None),
            (r#"{"a":{"n":"x"},"b":2}"#, None, Some(2)),
        ] {
            let outer = parse::<Outer>(json.as_bytes()).expect(json);
            assert_eq!(outer.a.0.and_then(|i| i.n.0), a, "{json}");
            assert_eq!(outer.b.0, b, "{json}");
        }
    }

    #[test]
    fn parse_stops_after_the_first_value() {
        assert_eq!(parse::<Count>(b"7, \"x\": ]]]").map(|c| c.0), Some(Some(7)));
        assert!(parse::<Count>(b"").is_none());
        assert!(parse::<Lenient<IgnoredAny>>(b"{\"a\":").is_none());
    }

    #[test]
    fn byte_prefilters() {
        assert_eq!(object_value(br#"{"k" : {"a":1}}"#, &KEY), Some(7));
        assert_eq!(object_value(br#"{"k":null}"#, &KEY), None);
        assert_eq!(object_value(br#"{"x":"k","y":"\"k\":{"}"#, &KEY), None);
        assert!(has_string_value(br#"{"k": "stop"}"#, &KEY));
        assert!(!has_string_value(br#"{"k":null}"#, &KEY));
        assert!(!has_string_value(br#"{"k""#, &KEY));
        assert!(has_true_value(br#"{"k":true}"#, &KEY));
        assert!(!has_true_value(br#"{"k":false}"#, &KEY));
        assert!(is_empty_array_or_absent(br#"{"k":[ ]}"#, &KEY));
        assert!(is_empty_array_or_absent(br#"{"k":null}"#, &KEY));
        assert!(is_empty_array_or_absent(br#"{}"#, &KEY));
        assert!(!is_empty_array_or_absent(br#"{"k":[{}]}"#, &KEY));
        assert!(!is_empty_array_or_absent(br#"{"k":["#, &KEY));
    }

    #[test]
    fn top_level_strings_are_read_from_the_top_level_only() {
        let meta = |data: &str| top_level_strings(data.as_bytes(), ["id", "model"]);
        let both = |id: &str, model: &str| [Some(id.to_string()), Some(model.to_string())];
        assert_eq!(
            meta(
                r#"{"id":"c-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}"#
            ),
            both("c-1", "m")
        );
        // Nested members never count; escapes are decoded, in keys and values.
        assert_eq!(
            meta(
                r#" { "choices" : [{"id":"x","model":"y"}], "meta":{"id":"z"}, "i\u0064" : "a\"b", "model":"m\u00e9" } "#
            ),
            both("a\"b", "mé")
        );
        // The first occurrence counts; a value that is not a string is skipped.
        assert_eq!(
            meta(r#"{"id":7,"id":"c","model":"m","model":"n"}"#),
            both("c", "m")
        );
        // What was found before the bytes stop being an object is kept.
        assert_eq!(meta(r#"{"id":"c","x":[}"#), [Some("c".to_string()), None]);
        assert_eq!(meta(r#"{"model":"m","id":"c""#), both("c", "m"));
        for data in [
            "",
            "[DONE]",
            "[\"id\"]",
            r#"{"id""#,
            r#"{"id":"unterminated"#,
            "{}",
        ] {
            assert_eq!(meta(data), [None, None], "{data}");
        }
        // Never panics on any prefix.
        let whole = r#"{"a":{"b":"}\"{"},"id":"c\\","model":"m"}"#;
        for end in 0..=whole.len() {
            let _ = meta(&whole[..end]);
        }
    }

    #[test]
    fn top_level_type_ignores_nested_ones() {
        let ty = |data: &str| top_level_type(data.as_bytes()).map(|t| t.to_vec());
        let some = |t: &str| Some(t.as_bytes().to_vec());
        assert_eq!(ty(r#"{"type":"message_stop"}"#), some("message_stop"));
        assert_eq!(ty(" {\n \"type\" :\t\"ping\" }"), some("ping"));
        assert_eq!(ty(r#"{"type":"a\"b"}"#), some(r#"a\"b"#));
        // Keys sorted by a relay: nested `type`s are skipped.
        assert_eq!(
            ty(
                r#"{"delta":{"text":"}\"type\":","type":"text_delta"},"index":0,"list":[{"type":"x"},"]"],"n":-1.5e3,"ok":true,"type":"content_block_delta"}"#
            ),
            some("content_block_delta")
        );
        // No top-level `type`: an OpenAI Chat tool call, an error object.
        assert_eq!(
            ty(
                r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":0,"type":"function"}]}}]}"#
            ),
            None
        );
        assert_eq!(ty(r#"{"error":{"type":"invalid_request_error"}}"#), None);
        assert_eq!(ty(r#"{"id":"c","choices":[]}"#), None);
        // Not a string, not an object, not JSON, cut short.
        for data in [
            r#"{"type":1}"#,
            r#"{"type":null}"#,
            r#"["type"]"#,
            r#"{}"#,
            "",
            "[DONE]",
            r#"{"type""#,
            r#"{"type":"unterminated"#,
            r#"{"a":{"type":"x""#,
            r#"{"a":1 "type":"x"}"#,
            r#"{"a":"\"#,
            r#"{"a":}}}}"type":"x"}"#,
            r#"{"a":,"type":"x"}"#,
            r#"{"a":[[[[,"type":"x"}"#,
        ] {
            assert_eq!(ty(data), None, "{data}");
        }
    }

    #[test]
    fn string_values_skip_escapes_and_unterminated_strings() {
        let mut seen = Vec::new();
        let data = br#"{"k":"a\"b\\","j":1,"k":"","k":null,"k":"c","k":"unterminated\"#;
        string_values(data, &KEY, &mut |t| seen.push(t.to_vec()));
        assert_eq!(seen, vec![br#"a\"b\\"#.to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn members_are_found_at_their_own_level_only() {
        let name = "stream_options";
        let at = |data: &str| member(data.as_bytes(), name);
        let slice = |data: &'static str, r: Range<usize>| &data[r];

        let data =
            r#" { "a" : {"stream_options":1}, "b":["stream_options"], "stream_options" : null } "#;
        let object = at(data).unwrap();
        assert_eq!(
            (object.open, object.close, object.empty),
            (1, data.len() - 2, false)
        );
        let m = object.member.unwrap();
        assert_eq!(slice(data, m.key), r#""stream_options""#);
        assert_eq!(slice(data, m.value), "null");

        // Nested keys and strings that look like keys do not count.
        let data = r#"{"messages":[{"content":"\"stream_options\":{}"}],"tools":[{"name":"stream_options"}],"s":{"stream_options":{"x":1}}}"#;
        assert_eq!(at(data).unwrap().member, None);

        // An escaped key is the key it decodes to.
        let data = r#"{"stream\u005foptions":{"include_usage":false}}"#;
        let m = at(data).unwrap().member.unwrap();
        assert_eq!(slice(data, m.value), r#"{"include_usage":false}"#);

        // Every kind of value is skipped whole.
        let data = r#"{"n":-1.5e3,"t":true,"s":"a\\\"}","o":{"a":[1,{"b":"]"}]},"e":[],"stream_options":123456789012345678901234567890}"#;
        let m = at(data).unwrap().member.unwrap();
        assert_eq!(slice(data, m.value), "123456789012345678901234567890");

        let object = at(" {\n} ").unwrap();
        assert_eq!((object.open, object.close, object.empty), (1, 3, true));
        assert_eq!(object.member, None);
    }

    #[test]
    fn member_says_none_on_bytes_that_are_not_one_object() {
        for data in [
            "",
            "   ",
            "[]",
            "\"stream_options\"",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"ends in a backslash\\",
            "{\"a\":{\"b\":[1,2}",
            "{\"a\":1 \"b\":2}",
            "{\"stream_options\":1,\"stream_options\":2}",
            "{\"a\":}",
        ] {
            assert_eq!(member(data.as_bytes(), "stream_options"), None, "{data:?}");
        }
    }

    #[test]
    fn member_never_panics_on_prefixes_of_an_object() {
        let data =
            br#" {"a":[{"b":"c\"\\"}],"stream_options" : {"include_usage":false} , "z":-1} "#;
        for end in 0..=data.len() {
            let _ = member(&data[..end], "stream_options");
            for start in 0..end {
                let _ = member(&data[start..end], "include_usage");
            }
        }
    }
}

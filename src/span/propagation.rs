//! The W3C trace context (`traceparent`, `tracestate`) read from a request and written into
//! the upstream's: the few lines of the W3C Trace Context format, on the API's types, so
//! that the crate needs no SDK; or the process's global propagator when asked.

use std::str::FromStr;

use http::HeaderMap;
use http::header::HeaderValue;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The header of the W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The vendor entries that go with it.
pub(crate) const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` taken (the W3C's advice: at least 512 characters kept; longer
/// ones may be dropped whole).
const MAX_TRACESTATE: usize = 512;

/// Where a span's parent comes from and how its context is passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// W3C Trace Context (`traceparent` / `tracestate`), built in. The default.
    #[default]
    W3c,
    /// The process's global propagator (`opentelemetry::global::set_text_map_propagator`):
    /// B3, Jaeger, baggage, or a composite, as the application configured it.
    Global,
}

impl Propagation {
    /// The parent context of a request (the empty context when it carries none).
    pub(crate) fn extract(self, headers: &HeaderMap) -> Context {
        match self {
            Self::W3c => match remote_parent(headers) {
                Some(parent) => Context::new().with_remote_span_context(parent),
                None => Context::new(),
            },
            Self::Global => opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(headers))
            }),
        }
    }

    /// Writes `cx`'s span context into the upstream request's headers.
    pub(crate) fn inject(self, cx: &Context, headers: &mut HeaderMap) {
        match self {
            Self::W3c => {
                let span = cx.span();
                let sc = span.span_context();
                if !sc.is_valid() {
                    return;
                }
                let value = format!(
                    "00-{}-{}-{:02x}",
                    sc.trace_id(),
                    sc.span_id(),
                    sc.trace_flags().to_u8()
                );
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(TRACEPARENT, value);
                }
                let state = sc.trace_state().header();
                match HeaderValue::from_str(&state) {
                    Ok(value) if !state.is_empty() => {
                        headers.insert(TRACESTATE, value);
                    }
                    _ => {
                        headers.remove(TRACESTATE);
                    }
                }
            }
            Self::Global => opentelemetry::global::get_text_map_propagator(|p| {
                p.inject_context(cx, &mut HeaderInjector(headers))
            }),
        }
    }
}

/// The caller's span, from a valid `traceparent` (and its `tracestate`), by the W3C rules:
/// version `00` is exactly 55 characters; later versions at least that, with a `-` after
/// the flags; version `ff`, ids of all zeros, upper-case hex or a second `traceparent` are
/// not valid, and then the request starts a trace of its own.
pub(crate) fn remote_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let bytes = value.as_bytes();
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (version, trace_id, span_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if !(lower_hex(version) && lower_hex(trace_id) && lower_hex(span_id) && lower_hex(flags)) {
        return None;
    }
    match version {
        "ff" => return None,
        "00" if bytes.len() != 55 => return None,
        _ if bytes.len() > 55 && bytes[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = trace_state(headers);
    // Only the sampled bit is defined; the others are not passed on.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The `tracestate` entries (all header lines joined), or none when they are malformed or
/// longer than [`MAX_TRACESTATE`].
fn trace_state(headers: &HeaderMap) -> TraceState {
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let Ok(value) = value.to_str() else {
            return TraceState::default();
        };
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(value);
        if joined.len() > MAX_TRACESTATE {
            return TraceState::default();
        }
    }
    let entries: String = joined
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    TraceState::from_str(&entries).unwrap_or_default()
}

/// A request's headers, read by a propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The upstream request's headers, written by a propagator.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_the_remote_parent() {
        let sc = remote_parent(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "congo=t61rcWkgMzE"),
        ]))
        .expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            let mut map = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(bad) {
                map.insert(TRACEPARENT, value);
            }
            assert!(remote_parent(&map).is_none(), "{bad:?}");
        }
        // Two traceparent lines: neither is trusted.
        assert!(remote_parent(&headers(&[(TRACEPARENT, PARENT), (TRACEPARENT, PARENT)])).is_none());
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let sc = remote_parent(&headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later",
        )]))
        .expect("valid");
        assert!(!sc.is_sampled());
    }

    #[test]
    fn a_malformed_or_long_tracestate_is_dropped_not_the_parent() {
        let sc = remote_parent(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "no-equals-sign,UPPER=1"),
        ]))
        .unwrap();
        assert!(sc.trace_state().header().is_empty());
        let long: &'static str = Box::leak(format!("a={}", "x".repeat(600)).into_boxed_str());
        let sc = remote_parent(&headers(&[(TRACEPARENT, PARENT), (TRACESTATE, long)])).unwrap();
        assert!(sc.trace_state().header().is_empty());
        let sc = remote_parent(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "a=1"),
            (TRACESTATE, "b=2"),
        ]))
        .unwrap();
        assert_eq!(
            (sc.trace_state().get("a"), sc.trace_state().get("b")),
            (Some("1"), Some("2"))
        );
    }

    #[test]
    fn injection_writes_the_span_it_is_given() {
        let sc = remote_parent(&headers(&[(TRACEPARENT, PARENT), (TRACESTATE, "a=1")])).unwrap();
        let cx = Context::new().with_remote_span_context(sc);
        let mut out = HeaderMap::new();
        Propagation::W3c.inject(&cx, &mut out);
        assert_eq!(out[TRACEPARENT], PARENT);
        assert_eq!(out[TRACESTATE], "a=1");
        // No valid span: nothing written.
        let mut out = HeaderMap::new();
        Propagation::W3c.inject(&Context::new(), &mut out);
        assert!(out.is_empty());
    }
}

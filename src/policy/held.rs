//! [`Holdback`]: a bounded window of events held back, so that a rule sees text spanning
//! events before any of it is released; [`Held`]: that window, as a policy sees it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::provider::Provider;

use super::text;

/// How many events, bytes and how much time a stream may hold back (each capped). Off by
/// default: then nothing waits, and a policy adds no latency.
///
/// With `events(n)` (n ≥ 2), every event waits until `n - 1` later ones arrived (or the
/// byte or time cap, or the end of the stream, releases it), so
/// [`Policy::on_held`](super::Policy::on_held) sees up to `n` consecutive events at once.
/// The time cap holds even while the upstream is silent: the stream's one timer (the one
/// that sends keep-alives) also wakes when the oldest held event reaches it, and releases
/// it then; no timer per event. Keep-alives go on while events are held (nothing went out,
/// so the keep-alive timer fires as usual).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::policy::Holdback;
///
/// let holdback = Holdback::events(3).max_bytes(16 * 1024).max_time(Duration::from_millis(500));
/// assert!(holdback.is_on());
/// assert!(!Holdback::off().is_on());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Holdback {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    pub(crate) time: Duration,
}

impl Holdback {
    /// The most events a window may hold.
    pub const MAX_EVENTS: usize = 1024;
    /// The default byte cap: 64 KiB of held events.
    pub const DEFAULT_BYTES: usize = 64 * 1024;
    /// The default time cap: one second.
    pub const DEFAULT_TIME: Duration = Duration::from_secs(1);

    /// No holdback.
    pub fn off() -> Self {
        Self {
            events: 0,
            bytes: Self::DEFAULT_BYTES,
            time: Self::DEFAULT_TIME,
        }
    }

    /// A window of `n` events (at most [`MAX_EVENTS`](Self::MAX_EVENTS); below 2, off).
    pub fn events(n: usize) -> Self {
        Self {
            events: n.min(Self::MAX_EVENTS),
            ..Self::off()
        }
    }

    /// Release the oldest events while more than `bytes` are held.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.bytes = bytes;
        self
    }

    /// Release events held longer than `time`.
    pub fn max_time(mut self, time: Duration) -> Self {
        self.time = time;
        self
    }

    /// Whether events are held at all.
    pub fn is_on(&self) -> bool {
        self.events >= 2
    }
}

impl Default for Holdback {
    fn default() -> Self {
        Self::off()
    }
}

/// One held event: its wire bytes as they will go out.
#[derive(Debug)]
pub(crate) struct HeldEvent {
    pub(crate) wire: Bytes,
    /// The text's range in `wire`, JSON escapes not decoded.
    pub(crate) text: Option<(usize, usize)>,
    pub(crate) content: bool,
    pub(crate) replaced: bool,
    pub(crate) dropped: bool,
    /// Not an event: a block or comment of the upstream's, kept in its place.
    pub(crate) block: bool,
    pub(crate) at: Instant,
}

/// The events a stream holds back, oldest first, as [`Policy::on_held`](super::Policy::on_held)
/// sees them: read their text, rewrite it, drop events. The upstream's blocks and comments
/// between them wait in their place too (they are entries without text, never content).
pub struct Held<'a> {
    pub(crate) events: &'a mut VecDeque<HeldEvent>,
    pub(crate) provider: Provider,
}

impl Held<'_> {
    /// How many events are held (dropped ones included until released).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The stream's provider format.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Whether event `i` is a content event.
    pub fn is_content(&self, i: usize) -> bool {
        self.events.get(i).is_some_and(|e| e.content && !e.dropped)
    }

    /// The bytes event `i` will go out as.
    pub fn wire(&self, i: usize) -> Option<&[u8]> {
        self.events
            .get(i)
            .filter(|e| !e.dropped)
            .map(|e| &e.wire[..])
    }

    /// The decoded text of event `i`, when it has a text view (see
    /// [`PolicyContext::text`](super::PolicyContext::text)).
    pub fn text(&self, i: usize) -> Option<Cow<'_, str>> {
        let event = self.events.get(i).filter(|e| !e.dropped)?;
        let (start, end) = event.text?;
        text::decode(event.wire.get(start..end)?)
    }

    /// Replace the text of event `i` with `new`, the rest of its bytes as they are. Returns
    /// whether it had a text view to rewrite.
    pub fn set_text(&mut self, i: usize, new: &str) -> bool {
        let Some(event) = self.events.get_mut(i).filter(|e| !e.dropped) else {
            return false;
        };
        let Some((start, end)) = event.text else {
            return false;
        };
        let escaped = text::encode(new);
        event.wire = text::splice(&event.wire, start, end, escaped.as_bytes());
        event.text = Some((start, start + escaped.len()));
        event.replaced = true;
        true
    }

    /// Redact text that may span the held events: `find` gets the texts of the held content
    /// events joined (in order) and returns the ranges to redact (sorted, not overlapping,
    /// on char boundaries); each becomes `replacement`, written in the event where it
    /// starts, and the rest of it is taken out of the events it spans. Returns how many
    /// events changed.
    ///
    /// ```
    /// # fn demo(held: &mut tower_sse::policy::Held<'_>) {
    /// // Every "hunter2", even cut over several events.
    /// held.redact("[redacted]", |text| {
    ///     text.match_indices("hunter2").map(|(at, m)| at..at + m.len()).collect()
    /// });
    /// # }
    /// ```
    pub fn redact(
        &mut self,
        replacement: &str,
        find: impl FnOnce(&str) -> Vec<std::ops::Range<usize>>,
    ) -> usize {
        let texts: Vec<(usize, String)> = (0..self.len())
            .filter_map(|i| self.text(i).map(|t| (i, t.into_owned())))
            .collect();
        if texts.is_empty() {
            return 0;
        }
        let joined: String = texts.iter().map(|(_, t)| t.as_str()).collect();
        let matches = find(&joined);
        if matches.is_empty() {
            return 0;
        }
        let pieces: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
        let rewritten = text::redact_pieces(&pieces, &matches, replacement);
        let mut changed = 0;
        for ((i, _), new) in texts.iter().zip(rewritten) {
            if let Some(new) = new
                && self.set_text(*i, &new)
            {
                changed += 1;
            }
        }
        changed
    }

    /// Keep event `i` from the client.
    pub fn drop_event(&mut self, i: usize) {
        if let Some(event) = self.events.get_mut(i) {
            event.dropped = true;
        }
    }
}

impl fmt::Debug for Held<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("len", &self.events.len())
            .field("provider", &self.provider)
            .finish()
    }
}

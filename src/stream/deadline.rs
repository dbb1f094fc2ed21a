//! Every timer rule of a stream, in one place.
//!
//! | deadline | counts from | ends |
//! |---|---|---|
//! | total | the request's arrival at the layer | always applies |
//! | first event | the request's arrival at the layer | at the first content event |
//! | idle | the last complete upstream item; it starts with the first content event when a first-event timeout is set, else with the response head | on each complete upstream item (keep-alives of this layer do not count) |
//! | keep-alive | the last frame sent to the client | re-armed by every frame sent |
//!
//! While a streaming request waits for its response head, the first-event and total deadlines
//! already run ([`head_deadline`]). One `Sleep` per stream serves them all: it is armed for
//! the earliest of them and moved only when that one comes earlier.

use std::time::Duration;

use tokio::time::Instant;

use crate::report::Outcome;
use crate::stream::config::Config;

/// What the one timer fired for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    KeepAlive,
    Timeout(Outcome),
    /// A policy's held events reached the holdback's time cap (the upstream is silent).
    Release,
}

/// When things happened, for the one timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    started_at: Instant,
    /// The last frame handed to the client (keep-alives count).
    last_output_at: Instant,
    /// The last complete upstream item; `None` while the idle timeout does not apply yet.
    idle_from: Option<Instant>,
    /// Whether a content event arrived (ends the first-event timeout).
    content_seen: bool,
    /// Whether keep-alives may be sent (not into an encoded stream's bytes).
    keep_alive: bool,
}

impl Deadlines {
    /// The deadlines of a stream whose request arrived at `started_at`; nothing was sent to
    /// the client before `last_output_at`.
    pub(crate) fn new(started_at: Instant, last_output_at: Instant) -> Self {
        Self {
            started_at,
            last_output_at,
            idle_from: None,
            content_seen: false,
            keep_alive: true,
        }
    }

    /// No keep-alive for this stream: its bytes pass as they come ([`Framing::Encoded`](crate::framing::Framing::Encoded)).
    pub(crate) fn no_keep_alive(&mut self) {
        self.keep_alive = false;
    }

    /// The response head arrived.
    pub(crate) fn on_head(&mut self, config: &Config, now: Instant) {
        self.restart_idle(config, now);
    }

    /// An upstream frame brought complete items (and maybe content).
    pub(crate) fn on_items(&mut self, config: &Config, content: bool, now: Instant) {
        self.content_seen |= content;
        self.restart_idle(config, now);
    }

    /// A frame went to the client.
    pub(crate) fn on_output(&mut self, now: Instant) {
        self.last_output_at = now;
    }

    /// The idle rule: it applies from the first content event when a first-event timeout is
    /// set (that one bounds the wait before), else from the response head.
    fn restart_idle(&mut self, config: &Config, now: Instant) {
        if self.content_seen || config.first_event_timeout.is_none() {
            self.idle_from = Some(now);
        }
    }

    /// When the timer should fire next.
    pub(crate) fn next(&self, config: &Config) -> Option<Instant> {
        let candidates = [
            config
                .keep_alive
                .as_ref()
                .filter(|_| self.keep_alive)
                .map(|k| after(self.last_output_at, k.interval)),
            config.total_timeout.map(|d| after(self.started_at, d)),
            config
                .first_event_timeout
                .filter(|_| !self.content_seen)
                .map(|d| after(self.started_at, d)),
            config
                .idle_timeout
                .zip(self.idle_from)
                .map(|(d, at)| after(at, d)),
        ];
        candidates.into_iter().flatten().min()
    }

    /// A timeout that passed at `now`, keep-alives aside. Checked on every upstream frame (a
    /// busy upstream never lets the timer run), so it costs nothing when no timeout is set.
    #[inline]
    pub(crate) fn timeout_due(&self, config: &Config, now: Instant) -> Option<Outcome> {
        if config.total_timeout.is_none()
            && config.first_event_timeout.is_none()
            && config.idle_timeout.is_none()
        {
            return None;
        }
        match self.due(config, now) {
            Some(Due::Timeout(outcome)) => Some(outcome),
            _ => None,
        }
    }

    /// What is due at `now`: deadlines first, then a keep-alive.
    pub(crate) fn due(&self, config: &Config, now: Instant) -> Option<Due> {
        let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| now >= at);
        if passed(config.total_timeout.map(|d| after(self.started_at, d))) {
            return Some(Due::Timeout(Outcome::DeadlineExceeded));
        }
        if !self.content_seen
            && passed(
                config
                    .first_event_timeout
                    .map(|d| after(self.started_at, d)),
            )
        {
            return Some(Due::Timeout(Outcome::FirstEventTimeout));
        }
        if passed(
            config
                .idle_timeout
                .zip(self.idle_from)
                .map(|(d, at)| after(at, d)),
        ) {
            return Some(Due::Timeout(Outcome::IdleTimeout));
        }
        if passed(
            config
                .keep_alive
                .as_ref()
                .filter(|_| self.keep_alive)
                .map(|k| after(self.last_output_at, k.interval)),
        ) {
            return Some(Due::KeepAlive);
        }
        None
    }
}

/// The deadline of a streaming request still waiting for its response head: the earlier of
/// the first-event and total deadlines, and which one it is.
pub(crate) fn head_deadline(config: &Config, started_at: Instant) -> Option<(Instant, Outcome)> {
    let first = config
        .first_event_timeout
        .map(|d| (after(started_at, d), Outcome::FirstEventTimeout));
    let total = config
        .total_timeout
        .map(|d| (after(started_at, d), Outcome::DeadlineExceeded));
    [first, total]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
}

/// What the client's error event says when a deadline ends the stream.
pub(crate) fn timeout_message(config: &Config, outcome: Outcome) -> String {
    match outcome {
        Outcome::FirstEventTimeout => format!(
            "no content from the upstream within {:?}",
            config.first_event_timeout.unwrap_or_default()
        ),
        Outcome::IdleTimeout => format!(
            "no upstream event for {:?}",
            config.idle_timeout.unwrap_or_default()
        ),
        _ => format!(
            "the stream ran past its deadline of {:?}",
            config.total_timeout.unwrap_or_default()
        ),
    }
}

/// `at + duration`, saturating far in the future: `Duration::MAX` means "never", not a panic.
pub(crate) fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

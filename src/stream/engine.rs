//! The per-stream engine: decode once, classify, observe, queue whole events for the client.
//!
//! No I/O and no timers here; the body drives it (and so does the drain task after a client
//! went away). Its fields are private: the body tells it that the head arrived, hands it each
//! frame and learns what happened, and ends the stream with [`Engine::fail`] or
//! [`Engine::close`].

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use tokio::time::Instant;

use crate::framing::Framing;
use crate::observe::{EventContext, Observer};
use crate::policy::run::{Acting, Wire};
use crate::provider::{Classifier, ContentSpan, Provider};
use crate::report::{Outcome, StreamReport};
use crate::sse::relay::{Outbox, Relay, Relayed};
use crate::sse::{DecodeError, EventRef};
use crate::stream::config::Config;

/// What one upstream data frame brought.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Activity {
    /// Complete upstream items (events, comments, blocks).
    pub(crate) items: bool,
    /// At least one of them was a content event.
    pub(crate) content: bool,
}

/// Why the upstream's bytes ended the stream: the body decides what the client sees
/// ([`Engine::fail`]), the drain task only records it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) outcome: Outcome,
    /// The layer's own words, safe to show a client.
    pub(crate) message: String,
}

#[derive(Debug)]
pub(crate) struct Engine<O> {
    config: Arc<Config>,
    relay: Relay,
    observer: O,
    report: StreamReport,
    classifier: Classifier,
    outbox: Outbox,
    /// The upstream's trailers, after every data frame (rare: boxed).
    trailers: Option<Box<HeaderMap>>,
    /// Whether events go to a client (`false` while draining after a disconnect).
    delivered: bool,
    /// The upstream's bytes pass as they come, undecoded ([`Framing::Encoded`]).
    pass_bytes: bool,
    /// NDJSON goes to the client as NDJSON (it asked for it), not reframed into SSE.
    keep_lines: bool,
    /// The stream's policy, when the layer has one (boxed: streams without pay one word).
    acting: Option<Box<Acting>>,
    /// The stream is resumable: each frame handed on is marked for its producer, whole event
    /// or not (boxed: other streams pay one word).
    #[cfg(feature = "resume")]
    handoff: Option<Box<HandingOff>>,
}

/// The `SseLayer`'s side of a resumable stream's [`Handoff`](crate::resume::shared::Handoff).
#[cfg(feature = "resume")]
#[derive(Debug)]
struct HandingOff {
    to: Arc<crate::resume::shared::Handoff>,
    /// The last frame marked whole, kept until the next frame goes (so that its bytes stay
    /// where the mark says).
    handed: Option<Bytes>,
}

impl<O> Engine<O> {
    /// The hand-off of a resumable stream, for its producer.
    #[cfg(feature = "resume")]
    pub(crate) fn handoff(&self) -> Option<Arc<crate::resume::shared::Handoff>> {
        self.handoff.as_ref().map(|handoff| handoff.to.clone())
    }
}

impl<O: Observer> Engine<O> {
    /// The engine of a request that reached the layer at `started_at`; `hint` is the format
    /// its path suggests.
    pub(crate) fn new(
        config: Arc<Config>,
        observer: O,
        started_at: Instant,
        hint: Provider,
    ) -> Self {
        let mut report = StreamReport::new(started_at);
        report.provider = hint;
        let classifier = Classifier::new(hint, config.content_predicate.clone());
        let acting = config
            .policy
            .clone()
            .map(|policy| Box::new(Acting::new(policy, config.holdback)));
        let relay = Relay::sse(
            config.max_event_size,
            config.lenient_eof,
            config.forward_comments,
        );
        Self {
            config,
            relay,
            observer,
            report,
            classifier,
            outbox: Outbox::default(),
            trailers: None,
            delivered: true,
            pass_bytes: false,
            keep_lines: false,
            acting,
            #[cfg(feature = "resume")]
            handoff: None,
        }
    }

    /// The observer and the report, for a stream that ended before its head.
    pub(crate) fn into_parts(self) -> (O, StreamReport) {
        (self.observer, self.report)
    }

    /// The stream is resumable: hand each event that needs no change on as a frame of its
    /// own, and tell the producer which frames those are (it stamps them without decoding
    /// them again).
    #[cfg(feature = "resume")]
    pub(crate) fn hand_off_to(&mut self, handoff: Arc<crate::resume::shared::Handoff>) {
        self.relay.split_events();
        self.handoff = Some(Box::new(HandingOff {
            to: handoff,
            handed: None,
        }));
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The upstream's response head arrived: a stream framed this way, or (`None`) not a
    /// stream at all.
    pub(crate) fn head(
        &mut self,
        parts: &http::response::Parts,
        framing: Option<Framing>,
        now: Instant,
    ) {
        self.report.status = Some(parts.status);
        self.report.response_at = Some(now);
        self.take_failover(&parts.extensions);
        let Some(framing) = framing else {
            self.report.framing = Framing::NotAStream;
            return;
        };
        self.report.framing = framing;
        if framing == Framing::JsonLines {
            self.relay = if self.keep_lines {
                Relay::lines(self.config.max_event_size)
            } else {
                Relay::json_lines(self.config.max_event_size)
            };
        }
        self.observer.on_response(parts, &mut self.report);
    }

    /// The attempts of a [`Failover`](crate::failover::Failover) inside, when it is there:
    /// from the answer's extensions (a map lookup, free when the map is empty).
    pub(crate) fn take_failover(&mut self, extensions: &http::Extensions) {
        if let Some(failover) = extensions.get::<crate::failover::FailoverReport>() {
            self.report.failover = Some(Box::new(failover.clone()));
        }
    }

    /// Every upstream call of a [`Failover`](crate::failover::Failover) inside failed: its
    /// attempts, from its error.
    pub(crate) fn failover_error(&mut self, error: &(dyn std::error::Error + 'static)) {
        if let Some(failed) = error.downcast_ref::<crate::failover::FailoverError>() {
            self.report.failover = Some(Box::new(failed.report.clone()));
        }
    }

    /// Send NDJSON to the client as NDJSON (before [`head`](Self::head)): whole lines, and an
    /// error as a JSON line of its own.
    pub(crate) fn keep_lines(&mut self) {
        self.keep_lines = true;
    }

    /// Pass the upstream's bytes as they come, undecoded, and add none (an encoded stream,
    /// [`Framing::Encoded`]): no event is seen, no error event is sent.
    pub(crate) fn pass_bytes(&mut self) {
        self.pass_bytes = true;
    }

    /// An upstream data frame arrived: decode it and queue what it completed. `Err` when its
    /// bytes end the stream.
    pub(crate) fn frame(&mut self, chunk: Bytes, now: Instant) -> Result<Activity, Failure> {
        self.report.bytes_in += chunk.len() as u64;
        if self.report.first_byte_at.is_none() {
            self.report.first_byte_at = Some(now);
        }
        if self.pass_bytes {
            return Ok(self.pass_frame(chunk));
        }
        self.relay.push(chunk);
        self.decode_ready(now)
    }

    /// A frame of an encoded stream ([`pass_bytes`](Self::pass_bytes)), passed as it came.
    /// Undecodable here: each frame counts as activity (the first as the first event) for
    /// the deadlines. Out of line and cold: every SSE frame pays only the flag's test, and
    /// [`frame`](Self::frame) stays small enough to inline into the body's poll.
    #[cold]
    #[inline(never)]
    fn pass_frame(&mut self, chunk: Bytes) -> Activity {
        if !chunk.is_empty() {
            self.outbox.push(chunk);
        }
        Activity {
            items: true,
            content: true,
        }
    }

    /// The upstream's trailers arrived: they go out after every queued event.
    pub(crate) fn trailers(&mut self, trailers: HeaderMap) {
        self.trailers = Some(Box::new(trailers));
    }

    /// The upstream body ended: flush what is left. `Some` when it ended badly and the
    /// stream is to end with an error event.
    ///
    /// An upstream that stopped in the middle of an event is truncation. By default the
    /// client gets the unfinished block as it came (its own parser discards the event, as it
    /// would without the layer) and the report says [`Outcome::UpstreamTruncated`]; with
    /// `error_on_truncation` the stream ends with an error event instead.
    pub(crate) fn finish(&mut self, now: Instant) -> Option<Failure> {
        if self.pass_bytes {
            return None;
        }
        self.relay.finish();
        if let Err(failure) = self.decode_ready(now) {
            return Some(failure);
        }
        self.release_held(now);
        let truncated = self.relay.is_truncated();
        let error_event = truncated && self.config.error_on_truncation;
        self.relay.forward_trailing(&mut self.outbox, !error_event);
        if !truncated {
            return None;
        }
        let failure = Failure {
            outcome: Outcome::UpstreamTruncated,
            message: "the upstream ended in the middle of an event".to_owned(),
        };
        if error_event {
            return Some(failure);
        }
        self.report.outcome = failure.outcome;
        self.report.error.get_or_insert(failure.message);
        None
    }

    /// Decode everything the relay can complete.
    ///
    /// SSE takes the inlined path; NDJSON a copy of it out of line. One inlined loop that
    /// could also call the NDJSON decoder would hand that call the observers' closure, and
    /// with it the addresses of this loop's locals: they would live in memory for every SSE
    /// event too, and the grown loop stopped inlining into the body's poll (about 33
    /// instructions per SSE event, 100 with the usage and timing observers: BENCHMARKS.md,
    /// "The proxy merge's per-event cost").
    ///
    /// A stream with a policy takes a third path, out of line too: a stream without one
    /// pays one test per upstream frame, and nothing per event.
    #[inline]
    fn decode_ready(&mut self, now: Instant) -> Result<Activity, Failure> {
        if self.relay.is_sse() && self.acting.is_none() {
            self.decode_relay(now, false)
        } else {
            self.decode_lines(now)
        }
    }

    /// [`decode_ready`](Self::decode_ready) for NDJSON, or for a stream a policy acts on,
    /// out of line.
    #[cold]
    #[inline(never)]
    fn decode_lines(&mut self, now: Instant) -> Result<Activity, Failure> {
        if self.acting.is_some() {
            return self.decode_acting(now);
        }
        self.decode_relay(now, true)
    }

    /// Decode what the relay completes for a stream a policy acts on.
    ///
    /// The order per event (DESIGN.md §9), which `policy_runs_between_upstream_and_delivery_observers`
    /// checks:
    ///
    /// 1. decode (the relay), then classify (provider format, content, the text's place);
    /// 2. the observers' `on_event`: usage and timing count what the upstream *generated*,
    ///    whatever happens next (an observer's `drop_event` keeps the event from the policy
    ///    too);
    /// 3. the policy: pass, replace, drop or stop, through its holdback window if any;
    /// 4. the observers' `on_data`, as each frame goes out ([`pop`](Self::pop)): the digest
    ///    hashes what the client *received*;
    /// 5. the client.
    fn decode_acting(&mut self, now: Instant) -> Result<Activity, Failure> {
        let Self {
            config,
            relay,
            observer,
            report,
            classifier,
            outbox,
            delivered,
            acting,
            ..
        } = self;
        let Some(acting) = acting.as_deref_mut() else {
            return Ok(Activity::default());
        };
        let wire = Wire {
            lines: matches!(relay, Relay::Lines(_)),
            strip_comments: !config.forward_comments,
        };
        let mut activity = Activity::default();
        let mut staging = Outbox::default();
        let on_event = |event: EventRef<'_>, staging: &mut Outbox| {
            acting.absorb(staging, outbox, now);
            let (forward, found) = observe_found(
                event,
                now,
                classifier,
                observer,
                report,
                *delivered,
                &mut activity,
            );
            if !forward || !*delivered {
                return forward;
            }
            let provider = classifier.provider();
            acting.event(
                event,
                found.is_content(),
                found.text_span(),
                provider,
                wire,
                report,
                now,
                outbox,
            )
        };
        let relayed = relay.decode_acting(&mut staging, on_event);
        acting.absorb(&mut staging, outbox, now);
        // Once: a stopped stream drained for its final usage goes on decoding, undelivered.
        if *delivered && let Some(reason) = acting.stopped() {
            let outcome = match reason.kind() {
                crate::policy::StopKind::BudgetExceeded => Outcome::BudgetExceeded,
                _ => Outcome::PolicyStopped,
            };
            return Err(Failure {
                outcome,
                message: reason.reason().to_owned(),
            });
        }
        self.relayed(relayed, activity)
    }

    /// Release what the policy holds (the stream ends, or fails).
    fn release_held(&mut self, now: Instant) {
        if let Some(acting) = self.acting.as_deref_mut() {
            acting.release_all(&mut self.report, now, &mut self.outbox);
        }
    }

    /// When held events reach the holdback's time cap (`None`: nothing is held).
    pub(crate) fn held_until(&self) -> Option<Instant> {
        self.acting.as_deref().and_then(Acting::release_at)
    }

    /// The holdback's time cap passed while the upstream was silent: release what waited
    /// that long.
    #[cold]
    #[inline(never)]
    pub(crate) fn release_expired(&mut self, now: Instant) {
        if let Some(acting) = self.acting.as_deref_mut() {
            acting.release_due(&mut self.report, now, &mut self.outbox);
        }
    }

    /// Decode what the relay completes, handing each event to the observers: with the SSE
    /// decoder alone unless `any_framing` (a constant in each of the two copies).
    #[inline(always)]
    fn decode_relay(&mut self, now: Instant, any_framing: bool) -> Result<Activity, Failure> {
        let Self {
            relay,
            observer,
            report,
            classifier,
            outbox,
            delivered,
            ..
        } = self;
        let mut activity = Activity::default();
        let on_event = |event: EventRef<'_>| {
            observe(
                event,
                now,
                classifier,
                observer,
                report,
                *delivered,
                &mut activity,
            )
        };
        let relayed = if any_framing {
            relay.decode_ready(outbox, on_event)
        } else {
            relay.decode_sse(outbox, on_event)
        };
        self.relayed(relayed, activity)
    }

    /// What one decode pass relayed, added to `activity`; an event past `max_event_size`
    /// ends the stream.
    #[inline(always)]
    fn relayed(
        &mut self,
        relayed: Result<Relayed, DecodeError>,
        mut activity: Activity,
    ) -> Result<Activity, Failure> {
        match relayed {
            Ok(relayed) => {
                activity.items |= relayed.items;
                self.report.comments += relayed.comments;
                Ok(activity)
            }
            Err(e) => Err(Failure {
                outcome: Outcome::EventTooLarge,
                message: e.to_string(),
            }),
        }
    }

    /// End the stream with a failure: queue the error event, which says `message` (the
    /// layer's own words, safe to show a client), and record the outcome. `detail` goes to
    /// the report only, in place of the message: an upstream error's text can name internal
    /// hosts, or a URL with an API key in it. The first recorded error wins.
    pub(crate) fn fail(&mut self, outcome: Outcome, message: &str, detail: Option<String>) {
        if matches!(outcome, Outcome::PolicyStopped | Outcome::BudgetExceeded) {
            // The provider's own end is queued already (`PolicyReport::stopped_by` says why).
            self.report.outcome = outcome;
            return;
        }
        self.release_held(Instant::now());
        if self.keep_lines && self.report.framing == Framing::JsonLines {
            // The same error, as a line an NDJSON reader parses (unless error events are
            // off).
            if self.config.error_event.render(outcome, message).is_some() {
                self.outbox.push(error_line(outcome, message));
            }
        } else if !self.pass_bytes
            && let Some(bytes) = self.config.error_event.render(outcome, message)
        {
            self.outbox.push(bytes);
        }
        self.report.outcome = outcome;
        self.report
            .error
            .get_or_insert_with(|| detail.unwrap_or_else(|| message.to_owned()));
    }

    /// Record an error the client sees otherwise (a failed body under
    /// [`UpstreamErrorPolicy::Propagate`](crate::stream::UpstreamErrorPolicy::Propagate), or a
    /// failure while draining).
    pub(crate) fn record_error(&mut self, error: String) {
        self.report.error = Some(error);
    }

    /// The client went away: events are no longer delivered, and what was queued is dropped.
    #[cfg(feature = "drain")]
    pub(crate) fn detach(&mut self) {
        self.delivered = false;
        if let Some(acting) = self.acting.as_deref_mut() {
            acting.discard();
        }
        self.discard_output();
    }

    /// Drop queued frames without handing them to anyone (the client is gone).
    #[cfg(feature = "drain")]
    pub(crate) fn discard_output(&mut self) {
        self.outbox.clear();
        self.trailers = None;
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.outbox.is_empty() || self.trailers.is_some()
    }

    /// The next frame for the client.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Frame<Bytes>> {
        let Some((data, whole)) = self.outbox.pop_marked() else {
            return self.trailers.take().map(|t| Frame::trailers(*t));
        };
        #[cfg(feature = "resume")]
        if let Some(handoff) = self.handoff.as_deref_mut() {
            handoff.handed = whole.then(|| data.clone());
            handoff.to.handed(handoff.handed.as_ref());
        }
        #[cfg(not(feature = "resume"))]
        let _ = whole;
        self.report.bytes_out += data.len() as u64;
        self.observer.on_data(&data, &mut self.report);
        Some(Frame::data(data))
    }

    /// The response's status, once its head arrived.
    pub(crate) fn status(&self) -> Option<http::StatusCode> {
        self.report.status
    }

    /// A frame of an answer that is not a stream went to the client untouched.
    pub(crate) fn passed(&mut self, data: &Bytes) {
        let len = data.len() as u64;
        self.report.bytes_in += len;
        self.report.bytes_out += len;
        self.observer.on_data(data, &mut self.report);
    }

    /// Count a keep-alive the body sent.
    pub(crate) fn count_keep_alive(&mut self, len: usize) {
        self.outbox.mark_started();
        self.report.keep_alives += 1;
        self.report.bytes_out += len as u64;
    }

    /// Close the report: the observers add their findings.
    pub(crate) fn close(&mut self, outcome: Outcome, now: Instant) -> StreamReport {
        // A failure recorded earlier (an error event sent) wins over a later outcome.
        if self.report.outcome == Outcome::Completed {
            self.report.outcome = outcome;
        }
        provider_error_outcome(&mut self.report);
        if let Some(failover) = self.report.failover.as_mut() {
            failover.settle(self.report.outcome, self.report.content_events);
        }
        self.report.ended_at = now;
        self.report.provider = self.classifier.provider();
        self.observer.on_end(&mut self.report);
        let started_at = self.report.started_at;
        std::mem::replace(&mut self.report, StreamReport::new(started_at))
    }
}

/// An error as one NDJSON line: `{"error":{"type":"<outcome>","message":"..."}}`.
fn error_line(outcome: Outcome, message: &str) -> Bytes {
    let message = serde_json::Value::from(message);
    Bytes::from(format!(
        "{{\"error\":{{\"type\":\"{}\",\"message\":{message}}}}}\n",
        outcome.as_str()
    ))
}

/// Classify an event and let the observers see it. Returns whether to forward it.
#[inline]
fn observe<O: Observer>(
    event: EventRef<'_>,
    now: Instant,
    classifier: &mut Classifier,
    observer: &mut O,
    report: &mut StreamReport,
    delivered: bool,
    activity: &mut Activity,
) -> bool {
    observe_found(
        event, now, classifier, observer, report, delivered, activity,
    )
    .0
}

/// [`observe`], also saying what the classifier found (for a policy).
#[inline(always)]
fn observe_found<O: Observer>(
    event: EventRef<'_>,
    now: Instant,
    classifier: &mut Classifier,
    observer: &mut O,
    report: &mut StreamReport,
    delivered: bool,
    activity: &mut Activity,
) -> (bool, ContentSpan) {
    report.events += 1;
    let found = classifier.classify(&event);
    classifier.fill_meta(&event, &mut report.response_id, &mut report.model);
    let content = found.is_content();
    if content {
        report.content_events += 1;
        activity.content = true;
    } else if report.provider_error.is_none() {
        note_provider_error(
            event.event_bytes(),
            event.data_bytes(),
            classifier.provider(),
            report,
        );
    }
    let data = event.data_bytes();
    let mut cx = EventContext {
        at: now,
        content,
        text: found
            .text_span()
            .and_then(|(start, end)| data.get(start..end)),
        delivered,
        forward: true,
        provider: classifier.provider(),
        recognised: classifier.is_recognised(),
        report,
    };
    observer.on_event(&event, &mut cx);
    (cx.forward, found)
}

/// Record the provider's in-band error, if the event is one (asked of events that are not
/// content only: content events pay nothing). The first error wins: later ones, and content
/// after it, change nothing. Cold: ordinary streams have a few events that are not
/// content, so the per-event path keeps its shape. It takes the event's name and data, not
/// a reference to the event, which would make every event build its whole `EventRef` in
/// memory for this call.
#[cold]
#[inline(never)]
fn note_provider_error(name: &[u8], data: &[u8], provider: Provider, report: &mut StreamReport) {
    report.provider_error = provider.provider_error(name, data);
}

/// A stream whose provider reported an error ends with [`Outcome::ProviderError`] when it
/// would otherwise have completed, or ended in the middle of an event (the error says more
/// than the truncation; the report's `error` still says the stream was cut). Timeouts,
/// disconnects, failed bodies and the layer's other failures keep their outcome.
fn provider_error_outcome(report: &mut StreamReport) {
    if report.provider_error.is_some()
        && matches!(
            report.outcome,
            Outcome::Completed | Outcome::UpstreamTruncated
        )
    {
        report.outcome = Outcome::ProviderError;
    }
}

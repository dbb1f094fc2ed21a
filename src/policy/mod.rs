//! Acting on a stream: the [`Policy`] hook, which passes, rewrites, drops or stops each whole
//! event before it reaches the client.
//!
//! Observers ([`Observer`](crate::Observer)) watch; a policy acts. It runs inside the one
//! body of [`SseLayer`](crate::SseLayer), on the events its one decoder found, at a fixed
//! place in the order each event follows (`stream/engine.rs` writes it down):
//!
//! 1. decode, then classify (provider format, content or not, where the text is);
//! 2. the observers' [`on_event`](crate::Observer::on_event): usage and timing count what
//!    the upstream *generated*, whatever the policy then does;
//! 3. the policy: [`Verdict::Pass`], [`Verdict::Replace`], [`Verdict::Drop`] or
//!    [`Verdict::Stop`], optionally over a bounded window of held events ([`Holdback`]);
//! 4. the observers' [`on_data`](crate::Observer::on_data): the digest hashes what the client
//!    *received* (the replaced bytes, not the dropped ones, the stop frames);
//! 5. out to the client.
//!
//! A stop ends the stream as the provider would have ended it ([`StopKind`]): OpenAI Chat a
//! last chunk with `finish_reason: "content_filter"` then `[DONE]`, Anthropic a
//! `message_delta` with a stop reason then `message_stop`, Responses `response.incomplete`,
//! Gemini a candidate with `finishReason: "SAFETY"` (each written by its
//! `provider/<format>.rs`), so that SDKs end cleanly; the report says
//! [`Outcome::PolicyStopped`](crate::Outcome::PolicyStopped) and why
//! ([`PolicyReport::stopped_by`]).
//!
//! After a stop, the tokens the upstream generated are still billed: with
//! `SseLayer::drain_on_disconnect` (feature `drain`) the upstream is read on,
//! undelivered and bounded as a drain is, for the provider's final usage (the report is made
//! when that drain ends); without it the upstream is cancelled and the report's usage is
//! estimated from the text the upstream sent, flagged
//! [`UsageSource::Estimated`](crate::UsageSource::Estimated). A budget stop
//! (`budget::BudgetStop`) never drains: it exists to stop the spending.
//!
//! Under a `ResumeLayer` (feature `resume`; outside the `SseLayer`), the log holds what
//! the policy let out: a resume replays the redacted bytes, never the original.
//!
//! With no policy set, nothing of this runs: the per-event path is the observers' alone.
//!
//! A policy that redacts a word in the text of each content event:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Empty, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_sse::SseLayer;
//! use tower_sse::policy::{Policy, PolicyContext, Verdict};
//! use tower_sse::request::UploadBody;
//!
//! #[derive(Clone)]
//! struct NoSecrets;
//!
//! impl Policy for NoSecrets {
//!     fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
//!         match cx.text() {
//!             Some(text) if text.contains("hunter2") => {
//!                 let redacted = text.replace("hunter2", "[redacted]");
//!                 cx.replace_text(&redacted).map_or(Verdict::Drop, Verdict::Replace)
//!             }
//!             _ => Verdict::Pass,
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
//!     let stream = concat!(
//!         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"pw: hunter2\"}}]}\n\n",
//!         "data: [DONE]\n\n",
//!     );
//!     let response = Response::builder()
//!         .header("content-type", "text/event-stream")
//!         .body(Full::new(Bytes::from_static(stream.as_bytes())))
//!         .unwrap();
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let service = SseLayer::new().policy(NoSecrets).layer(upstream);
//! let response = service.oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     &body[..],
//!     concat!(
//!         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"pw: [redacted]\"}}]}\n\n",
//!         "data: [DONE]\n\n",
//!     )
//!     .as_bytes()
//! );
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

mod context;
mod held;
mod report;
pub(crate) mod run;
mod text;

pub use self::context::PolicyContext;
pub use self::held::{Held, Holdback};
pub use self::report::PolicyReport;

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it as it came (byte for byte, zero copy when nothing is held).
    Pass,
    /// Send these bytes instead: a whole event in the stream's wire form (an SSE event
    /// ending in a blank line, or for a client that reads NDJSON one line ending in `\n`).
    /// [`PolicyContext::replace_text`] makes them from new text.
    Replace(Bytes),
    /// Keep the event from the client. Usage and timing still count it.
    Drop,
    /// End the stream here, as the provider would ([`StopKind`]): what is held is released,
    /// this event and every later one are not.
    Stop(StopReason),
}

/// How a stopped stream ends, in the provider's own terms (see each variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StopKind {
    /// The content broke a rule: OpenAI `finish_reason: "content_filter"`, Anthropic
    /// `stop_reason: "refusal"`, Responses `incomplete_details.reason: "content_filter"`,
    /// Gemini `finishReason: "SAFETY"`.
    #[default]
    ContentFilter,
    /// A limit was reached (a budget): OpenAI `"length"`, Anthropic `"max_tokens"`,
    /// Responses `"max_output_tokens"`, Gemini `"MAX_TOKENS"`.
    Length,
    /// The stream's budget ran out ([`BudgetStop`](crate::budget::BudgetStop)): not a
    /// normal end but an error, in the provider's error shape with the type
    /// `budget_exceeded` (OpenAI an `error` object, Anthropic and Responses an `error`
    /// event, Gemini an `error` with `RESOURCE_EXHAUSTED`, Ollama an `error` line), so that
    /// SDKs raise it; the outcome is [`Outcome::BudgetExceeded`](crate::Outcome::BudgetExceeded).
    BudgetExceeded,
}

/// Why a stream was stopped: its [`StopKind`] and a short reason for the report (never sent
/// to the client).
///
/// ```
/// use tower_sse::policy::{StopKind, StopReason};
///
/// let reason = StopReason::new("no-secrets: a key in the answer");
/// assert_eq!(reason.kind(), StopKind::ContentFilter);
/// let budget = StopReason::new("budget: tenant over its limit").with_kind(StopKind::Length);
/// assert_eq!(budget.reason(), "budget: tenant over its limit");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason {
    kind: StopKind,
    reason: Cow<'static, str>,
}

impl StopReason {
    /// A content-filter stop, for `reason` (name the policy in it: the report keeps it).
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: StopKind::ContentFilter,
            reason: reason.into(),
        }
    }

    /// The same reason, ending the stream as `kind` says.
    #[must_use]
    pub fn with_kind(mut self, kind: StopKind) -> Self {
        self.kind = kind;
        self
    }

    /// How the stream ends.
    pub fn kind(&self) -> StopKind {
        self.kind
    }

    /// The reason, for the report.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Acts on one stream, event by event. See [the module docs](self).
///
/// The layer clones the policy it was given for every stream (so per-stream state starts
/// fresh). Hooks run inline in the body's poll: cheap, never blocking, never panicking.
///
/// Policies compose in tuples: `(A, B)` asks `A`, and `B` only when `A` passes; the first
/// verdict other than [`Verdict::Pass`] wins. With a [`Holdback`], each one's
/// [`on_held`](Self::on_held) runs in order.
pub trait Policy {
    /// An event arrived (after the observers saw it): what to do with it.
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict;

    /// With a [`Holdback`]: the events held so far (the one just judged by
    /// [`on_event`](Self::on_event) last), before any of them is released. Rewrite or drop
    /// held events to act on text that spans events; `Some` stops the stream (the held
    /// events still go out first, as they are now).
    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        let _ = held;
        None
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        (**self).on_event(cx)
    }
    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        (**self).on_held(held)
    }
}

impl<A: Policy, B: Policy> Policy for (A, B) {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        match self.0.on_event(cx) {
            Verdict::Pass => self.1.on_event(cx),
            verdict => verdict,
        }
    }
    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        self.0.on_held(held).or_else(|| self.1.on_held(held))
    }
}

impl<A: Policy, B: Policy, C: Policy> Policy for (A, B, C) {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        match self.0.on_event(cx) {
            Verdict::Pass => match self.1.on_event(cx) {
                Verdict::Pass => self.2.on_event(cx),
                verdict => verdict,
            },
            verdict => verdict,
        }
    }
    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        self.0
            .on_held(held)
            .or_else(|| self.1.on_held(held))
            .or_else(|| self.2.on_held(held))
    }
}

/// A policy of any type, boxed: what the layer keeps (it clones one per stream).
///
/// ```
/// use tower_sse::policy::{BoxPolicy, Policy, PolicyContext, Verdict};
///
/// #[derive(Clone)]
/// struct PassAll;
/// impl Policy for PassAll {
///     fn on_event(&mut self, _: &PolicyContext<'_>) -> Verdict {
///         Verdict::Pass
///     }
/// }
/// let policy = BoxPolicy::new(PassAll);
/// let _per_stream = policy.clone();
/// ```
pub struct BoxPolicy(Box<dyn ClonePolicy>);

impl BoxPolicy {
    /// Box `policy`.
    pub fn new<P: Policy + Clone + Send + Sync + 'static>(policy: P) -> Self {
        Self(Box::new(policy))
    }
}

/// A policy that clones itself into a box.
trait ClonePolicy: Policy + Send + Sync {
    fn clone_box(&self) -> Box<dyn ClonePolicy>;
}

impl<P: Policy + Clone + Send + Sync + 'static> ClonePolicy for P {
    fn clone_box(&self) -> Box<dyn ClonePolicy> {
        Box::new(self.clone())
    }
}

impl Clone for BoxPolicy {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl fmt::Debug for BoxPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxPolicy").finish_non_exhaustive()
    }
}

impl Policy for BoxPolicy {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        self.0.on_event(cx)
    }
    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        self.0.on_held(held)
    }
}

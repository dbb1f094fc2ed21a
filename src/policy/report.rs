//! [`PolicyReport`]: what a policy did to one stream.

use std::time::Duration;

use tokio::time::Instant;

/// What the stream's [`Policy`](super::Policy) did, in
/// [`StreamReport::policy`](crate::StreamReport::policy). All zero without a policy.
///
/// Events the observers dropped ([`EventContext::drop_event`](crate::EventContext::drop_event))
/// never reach the policy and are not counted here; nor are the events after a stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyReport {
    /// Events forwarded as they came.
    pub passed: u64,
    /// Events forwarded rewritten ([`Verdict::Replace`](super::Verdict::Replace), or text
    /// rewritten while held).
    pub replaced: u64,
    /// Events kept from the client.
    pub dropped: u64,
    /// Events that waited in the [`Holdback`](super::Holdback) window.
    pub held: u64,
    /// The time events spent held, summed over them.
    pub held_time: Duration,
    /// When the first content event was released to the client (time to first token as
    /// the client saw it; [`Timing`](crate::Timing) keeps the upstream's own).
    pub first_content_released_at: Option<Instant>,
    /// Why a policy stopped the stream (the outcome is then
    /// [`PolicyStopped`](crate::Outcome::PolicyStopped)).
    pub stopped_by: Option<String>,
}

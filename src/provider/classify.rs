//! The [`Classifier`]: per stream, which format it is, which events are content, and the
//! response id and model from its first events.

use std::fmt;
use std::sync::Arc;

use crate::sse::EventRef;

use super::{ContentSpan, Provider, ResponseMeta};

/// A user-supplied "is this event content?" predicate.
pub(crate) type ContentPredicate = Arc<dyn Fn(&EventRef<'_>, Provider) -> bool + Send + Sync>;

/// Per-stream format detection and content classification.
#[derive(Clone)]
pub(crate) struct Classifier {
    provider: Provider,
    confirmed: bool,
    predicate: Option<ContentPredicate>,
    /// JSON events still to look at for the response id and model.
    meta_budget: u8,
}

/// How many events may be parsed looking for the response id and model (some formats, like
/// Ollama's, never send an id).
const META_BUDGET: u8 = 4;

impl Classifier {
    pub(crate) fn new(hint: Provider, predicate: Option<ContentPredicate>) -> Self {
        Self {
            provider: hint,
            confirmed: false,
            predicate,
            meta_budget: META_BUDGET,
        }
    }

    /// Fill the report's response id and model from the first events that name them.
    #[inline]
    pub(crate) fn fill_meta(
        &mut self,
        event: &EventRef<'_>,
        id: &mut Option<String>,
        model: &mut Option<String>,
    ) {
        if self.meta_budget == 0 || (id.is_some() && model.is_some()) {
            return;
        }
        let meta = self.provider.response_meta(event);
        if meta != ResponseMeta::default() || event.data_bytes().first() == Some(&b'{') {
            self.meta_budget -= 1;
        }
        if id.is_none() {
            *id = meta.id;
        }
        if model.is_none() {
            *model = meta.model;
        }
    }

    pub(crate) fn provider(&self) -> Provider {
        self.provider
    }

    /// Whether the format was recognised from one of the stream's own events (not only
    /// guessed from the request path).
    pub(crate) fn is_recognised(&self) -> bool {
        self.confirmed
    }

    /// Look at one event: confirm the format if not done yet, and say whether it is content
    /// (and where its text is, when the format puts it in one string).
    #[inline]
    pub(crate) fn classify(&mut self, event: &EventRef<'_>) -> ContentSpan {
        if !self.confirmed
            && let Some(provider) = Provider::from_event(event)
        {
            self.provider = provider;
            self.confirmed = true;
        }
        match &self.predicate {
            Some(predicate) => ContentSpan::when(predicate(event, self.provider)),
            None => self.provider.content(event),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("provider", &self.provider)
            .field("confirmed", &self.confirmed)
            .field("custom_predicate", &self.predicate.is_some())
            .finish()
    }
}

//! A reader's span (feature `otel`): one short span per resumed connection, linked to the
//! stream's span wherever the resume is served
//! ([`ResumeLayer::spans`](crate::ResumeLayer::spans); the span module's `reader` file says
//! how). Without the feature, or without spans asked for, a [`Traced`] holds nothing and
//! costs nothing.

use http::HeaderMap;

use crate::resume::id::StreamId;
use crate::resume::layer::{Config, ReaderRecord};
use crate::resume::shared::Shared;
use crate::resume::store::TraceParent;

/// How a reader's connection ended, as its span says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReaderEnd {
    /// It sent the stream's end.
    StreamEnd,
    /// Its client left first.
    ClientLeft,
    /// It could not go on without a gap.
    Gap,
    /// The server's shutdown ended it.
    Shutdown,
}

impl ReaderEnd {
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Self::StreamEnd => "stream_end",
            Self::ClientLeft => "client_left",
            Self::Gap => "gap",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The span of a resume request, from its entry to the end of its connection.
#[derive(Debug, Default)]
pub(crate) struct Traced {
    #[cfg(feature = "otel")]
    span: Option<crate::span::reader::ReaderSpan>,
}

#[cfg(feature = "otel")]
mod on {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::Status;

    use super::*;
    use crate::span::names::*;
    use crate::span::record::int;

    impl Traced {
        /// Opens the span of a resume request, when the layer has spans.
        pub(crate) fn open(config: &Config, headers: &HeaderMap) -> Self {
            Self {
                span: config.spans.as_ref().and_then(|spans| spans.open(headers)),
            }
        }

        /// The span, moved out (to the reader that serves the connection).
        pub(crate) fn take(&mut self) -> Self {
            Self {
                span: self.span.take(),
            }
        }

        /// The resume is served: which stream, after which seq, linked to the stream's
        /// span: the context its producer holds when it runs in this process (with its
        /// `tracestate`), else the one the log kept (`log`).
        pub(crate) fn resumed(
            &self,
            stream: StreamId,
            cursor: u64,
            producer: Option<&Shared>,
            log: Option<TraceParent>,
        ) {
            if let Some(span) = &self.span {
                let kept = log.map(crate::span::reader::producer_context);
                let link = producer.and_then(Shared::span).or(kept.as_ref());
                span.resumed(&stream.to_string(), cursor, link);
            }
        }

        /// The resume was answered without a reader (`204`, with its `sse-resume` reason).
        pub(crate) fn answered(self, status: http::StatusCode, reason: Option<&str>) {
            if let Some(span) = self.span {
                span.end(|span| {
                    span.set_attribute(KeyValue::new(
                        HTTP_RESPONSE_STATUS_CODE,
                        i64::from(status.as_u16()),
                    ));
                    if let Some(reason) = reason {
                        span.set_attribute(KeyValue::new(
                            TOWER_SSE_RESUME_ANSWER,
                            reason.to_owned(),
                        ));
                    }
                });
            }
        }

        /// The connection ended: what it sent and how it ended.
        pub(crate) fn ended(self, record: &ReaderRecord, end: ReaderEnd) {
            let Some(span) = self.span else { return };
            span.end(|span| {
                let mut attributes = vec![
                    KeyValue::new(HTTP_RESPONSE_STATUS_CODE, 200),
                    KeyValue::new(TOWER_SSE_EVENTS, int(record.events)),
                    KeyValue::new(
                        TOWER_SSE_RESUME_REPLAYED_EVENTS,
                        int(record.replayed_events),
                    ),
                    KeyValue::new(TOWER_SSE_KEEP_ALIVES, int(record.keep_alives)),
                    KeyValue::new(TOWER_SSE_BYTES, int(record.bytes)),
                    KeyValue::new(TOWER_SSE_RESUME_READER_END, end.as_str()),
                ];
                if let Some(gap) = record.gap {
                    attributes.push(KeyValue::new(TOWER_SSE_RESUME_GAP, gap.as_str()));
                    attributes.push(KeyValue::new(ERROR_TYPE, "resume_gap"));
                    span.set_status(Status::error("resume_gap"));
                }
                span.set_attributes(attributes);
            });
        }
    }
}

#[cfg(not(feature = "otel"))]
impl Traced {
    pub(crate) fn open(_: &Config, _: &HeaderMap) -> Self {
        Self {}
    }

    pub(crate) fn take(&mut self) -> Self {
        Self {}
    }

    pub(crate) fn resumed(&self, _: StreamId, _: u64, _: Option<&Shared>, _: Option<TraceParent>) {}

    pub(crate) fn answered(self, _: http::StatusCode, _: Option<&str>) {}

    pub(crate) fn ended(self, _: &ReaderRecord, _: ReaderEnd) {}
}

//! Keep reading the upstream after the client went away, so that the provider's final
//! usage reaches the report (feature `drain`).

use std::future::poll_fn;

use bytes::Bytes;
use http_body::Body;
use tokio::time::{Instant, timeout_at};

use crate::BoxError;
use crate::observe::Observer;
use crate::report::{OnEnd, Outcome};
use crate::stream::body::{Live, Phase, report_disconnect};
use crate::stream::deadline::after;
use crate::stream::engine::Engine;

/// Makes the report when dropped, unless it was made already: the drain task may be dropped
/// without running to its end (the runtime shutting down), and the report must still go out
/// exactly once.
struct ReportOnDrop<O: Observer, E: OnEnd>(Option<Live<O, E>>);

impl<O: Observer, E: OnEnd> Drop for ReportOnDrop<O, E> {
    fn drop(&mut self) {
        if let Some(mut live) = self.0.take() {
            // The upstream is no longer read: the limit's permits go before the report.
            live.permits.clear();
            let report = live
                .engine
                .close(Outcome::ClientDisconnected, Instant::now());
            live.on_end.on_end(report);
        }
    }
}

/// The `on_drop` of streams configured with
/// [`drain_on_disconnect`](crate::SseLayer::drain_on_disconnect): spawn a task that reads
/// the upstream to its end (or the limit), with events marked as not delivered, then gives
/// back the permits of the stream limits outside (`live.permits`) and makes the report.
/// Without a runtime, or before the upstream answered, it cancels instead (the permits go at
/// once, before the report).
pub(crate) fn drain_after_disconnect<B, O, E>(mut live: Live<O, E>, phase: Phase<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    O: Observer + Send + 'static,
    E: OnEnd + Send + 'static,
{
    let limit = live.engine.config().drain;
    let handle = tokio::runtime::Handle::try_current();
    let (Some(limit), Phase::Streaming(mut body), Ok(handle)) = (limit, phase, handle) else {
        return report_disconnect(live, Phase::<B>::Flushing);
    };
    // What was queued for the client will never reach it.
    live.engine.detach();
    let mut guard = ReportOnDrop(Some(live));
    handle.spawn(async move {
        let deadline = after(Instant::now(), limit);
        let mut frames = 0u32;
        while let Some(live) = guard.0.as_mut() {
            // Be a fair neighbour to the streams still being served.
            frames = frames.wrapping_add(1);
            if frames.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
            // An upstream that always has a frame ready never lets the timeout run.
            if Instant::now() >= deadline {
                break;
            }
            let frame = timeout_at(deadline, poll_fn(|cx| body.as_mut().poll_frame(cx))).await;
            let now = Instant::now();
            match frame {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && let Err(failure) = live.engine.frame(data, now)
                    {
                        live.engine.record_error(failure.message);
                        break;
                    }
                    live.engine.discard_output();
                    if body.is_end_stream() {
                        finish(&mut live.engine, now);
                        break;
                    }
                }
                Ok(None) => {
                    finish(&mut live.engine, now);
                    break;
                }
                Ok(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    live.engine.record_error(format!("while draining: {error}"));
                    break;
                }
                // The drain limit: keep what was seen.
                Err(_) => break,
            }
        }
        drop(body);
        if let Some(live) = guard.0.as_mut() {
            live.permits.clear();
        }
        drop(guard);
    });
}

/// The drained upstream ended: the report keeps why, if it ended badly.
fn finish<O: Observer>(engine: &mut Engine<O>, now: Instant) {
    if let Some(failure) = engine.finish(now) {
        engine.record_error(failure.message);
    }
}

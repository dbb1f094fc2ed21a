//! [`StreamLimitFuture`]: waits for the inner response and decides whether it keeps its
//! permit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::StreamPredicate;
use crate::limit::StreamLimitBody;
use crate::limit::body::BodyKind;
use crate::limit::body::rejection;
use crate::limit::layer::Settings;
use crate::limit::permit::{DrainPermits, Permit};

pin_project! {
    /// The response future of [`StreamLimit`].
    pub struct StreamLimitFuture<F, P> {
        #[pin]
        pub(super) kind: FutureKind<F, P>,
    }
}

pin_project! {
    #[project = FutureProj]
    pub(super) enum FutureKind<F, P> {
        Waiting {
            #[pin]
            future: F,
            permit: Option<Permit>,
            predicate: P,
        },
        Rejected { settings: Arc<Settings> },
        // The response went out: polling again is a caller's bug.
        Done,
    }
}

impl<F, P> fmt::Debug for StreamLimitFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            FutureKind::Waiting { .. } => "Waiting",
            FutureKind::Rejected { .. } => "Rejected",
            FutureKind::Done => "Done",
        };
        f.debug_struct("StreamLimitFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, P, B, E> Future for StreamLimitFuture<F, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    P: StreamPredicate<B>,
{
    type Output = Result<Response<StreamLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let output = match kind.as_mut().project() {
            FutureProj::Waiting {
                future,
                permit,
                predicate,
            } => match ready!(future.poll(cx)) {
                Ok(response) => {
                    let stream = predicate.is_stream(&response) && !response.body().is_end_stream();
                    // Not a stream: released now.
                    let permit = permit.take().filter(|_| stream);
                    // A stream layer inside that drains after a disconnect takes the permit
                    // on when the body is dropped before its end.
                    let drain = match (&permit, response.extensions().get::<DrainPermits>()) {
                        (Some(_), Some(drain)) => drain.clone(),
                        _ => DrainPermits::none(),
                    };
                    Ok(response.map(|body| StreamLimitBody {
                        kind: BodyKind::Limited {
                            permit,
                            drain,
                            body,
                        },
                    }))
                }
                Err(error) => {
                    drop(permit.take());
                    Err(error)
                }
            },
            FutureProj::Rejected { settings } => Ok(rejection(settings)),
            FutureProj::Done => panic!("`StreamLimitFuture` polled after completion"),
        };
        kind.set(FutureKind::Done);
        Poll::Ready(output)
    }
}

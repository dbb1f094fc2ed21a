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
use crate::limit::permit::SharedPermit;

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
            permit: Option<SharedPermit>,
            predicate: P,
        },
        Rejected { settings: Option<Arc<Settings>> },
    }
}

impl<F, P> fmt::Debug for StreamLimitFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            FutureKind::Waiting { .. } => "Waiting",
            FutureKind::Rejected { .. } => "Rejected",
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
        match self.project().kind.project() {
            FutureProj::Waiting {
                future,
                permit,
                predicate,
            } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(error) => {
                        if let Some(permit) = permit.take() {
                            permit.release();
                        }
                        return Poll::Ready(Err(error));
                    }
                };
                let stream = predicate.is_stream(&response) && !response.body().is_end_stream();
                let mut permit = permit.take();
                // Not a stream: released now, even if a layer inside claimed it for a drain.
                if !stream && let Some(permit) = permit.take() {
                    permit.release();
                }
                Poll::Ready(Ok(response.map(|body| StreamLimitBody {
                    kind: BodyKind::Limited { permit, body },
                })))
            }
            FutureProj::Rejected { settings } => match settings.take() {
                Some(settings) => Poll::Ready(Ok(rejection(&settings))),
                None => Poll::Pending,
            },
        }
    }
}

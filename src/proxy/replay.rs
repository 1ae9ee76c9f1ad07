//! Keeping a small request body while it streams upstream, so the request can be replayed
//! once with a new token after a 401.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// Bodies up to this size are kept for a replay (DESIGN.md step 7).
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

#[derive(Default)]
struct Kept {
    data: BytesMut,
    /// More than `MAX_REPLAY_BODY` went by: nothing is kept.
    overflow: bool,
    /// The body ended; `data` is all of it.
    complete: bool,
}

/// The body as far as it was sent; see [`Keep::into_parts`].
#[derive(Clone, Default)]
pub struct KeptBody(Arc<Mutex<Kept>>);

impl KeptBody {
    /// The whole body, if it was sent to the end and was small enough to keep.
    #[must_use]
    pub fn whole(&self) -> Option<Bytes> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (kept.complete && !kept.overflow).then(|| kept.data.clone().freeze())
    }
}

/// A body that passes every frame through and keeps a copy of the first
/// [`MAX_REPLAY_BODY`] bytes.
pub struct Keep<B> {
    inner: B,
    kept: KeptBody,
}

impl<B: Body> Keep<B> {
    pub fn new(inner: B) -> (Self, KeptBody) {
        let kept = KeptBody::default();
        if inner.is_end_stream() {
            kept.0.lock().unwrap_or_else(PoisonError::into_inner).complete = true;
        }
        (
            Self {
                inner,
                kept: kept.clone(),
            },
            kept,
        )
    }
}

impl<B> Body for Keep<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A sender that knows the length stops polling after the last byte, so the end is
        // also seen through `is_end_stream`, not only through a final `None`.
        let ended = self.inner.is_end_stream();
        let mut kept = self.kept.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !kept.overflow
                {
                    if kept.data.len() + data.len() > MAX_REPLAY_BODY {
                        kept.overflow = true;
                        kept.data = BytesMut::new();
                    } else {
                        kept.data.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(None) => kept.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        if ended && !matches!(polled, Poll::Ready(Some(Err(_)))) {
            kept.complete = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn a_small_body_is_kept_whole_once_sent() {
        let (body, kept) = Keep::new(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(kept.whole(), None, "not sent yet");
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello");
        assert_eq!(kept.whole().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn a_body_that_knows_its_end_is_complete_without_a_final_poll() {
        let (mut body, kept) = Keep::new(Full::new(Bytes::from_static(b"hello")));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        // hyper stops here for a body of known length; it never polls for the end.
        assert_eq!(kept.whole().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_at_once() {
        let (_body, kept) = Keep::new(http_body_util::Empty::<Bytes>::new());
        assert_eq!(kept.whole().as_deref(), Some(&b""[..]));
    }

    /// Frames of 30 KiB, one per poll.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_passed_on_but_not_kept() {
        let (body, kept) = Keep::new(Chunks(vec![Bytes::from(vec![7_u8; 30 * 1024]); 3]));
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), 90 * 1024);
        assert_eq!(kept.whole(), None);

        let (body, kept) = Keep::new(Full::new(Bytes::from(vec![1_u8; MAX_REPLAY_BODY])));
        let _ = body.collect().await.unwrap();
        assert_eq!(
            kept.whole().map(|b| b.len()),
            Some(MAX_REPLAY_BODY),
            "exactly the limit is kept"
        );
    }
}

//! The body type every response the proxy builds or relays has, and small helpers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or request body: relayed, buffered or masked on the way.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Any body, boxed with its error boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    Ok(limited.collect().await?.to_bytes())
}

/// Turns the bytes buffered so far into the bytes ready to send, leaving in the buffer
/// what must wait for more; `end` is set once the body is over (nothing may wait).
pub type Rewrite =
    Box<dyn FnMut(&mut bytes::BytesMut, bool) -> Result<bytes::BytesMut, BoxError> + Send>;

/// A body rewritten as it streams (masked line by line, scrubbed across chunk
/// boundaries): each chunk is appended to a buffer that `rewrite` drains.
pub fn rewritten(inner: Body, rewrite: Rewrite) -> Body {
    boxed(Rewritten {
        inner,
        pending: bytes::BytesMut::new(),
        rewrite,
        done: false,
    })
}

struct Rewritten {
    inner: Body,
    pending: bytes::BytesMut,
    rewrite: Rewrite,
    done: bool,
}

impl hyper::body::Body for Rewritten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let end = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        false
                    }
                    // Trailers pass as they are.
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    this.done = true;
                    true
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            };
            let ready = (this.rewrite)(&mut this.pending, end)?;
            if !ready.is_empty() {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(ready.freeze()))));
            }
        }
    }
}

//! A stream the proxy can cut from outside, for sessions whose I/O runs in a task it
//! does not own (russh spawns its own): once killed, every read and write fails, so
//! that task ends and drops — closes — the socket, whatever the peer does.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct Shared {
    killed: AtomicBool,
    /// The tasks waiting to read and to write, woken by a kill.
    wakers: Mutex<[Option<Waker>; 2]>,
}

/// Cuts the stream it was made with.
#[derive(Clone)]
pub struct KillSwitch(Arc<Shared>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        let wakers =
            std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

/// `S`, cut when its [`KillSwitch`] is used.
pub struct Killable<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Killable<S> {
    pub fn new(inner: S) -> (Self, KillSwitch) {
        let shared = Arc::new(Shared::default());
        (
            Self {
                inner,
                shared: shared.clone(),
            },
            KillSwitch(shared),
        )
    }

    /// Fails when killed; otherwise remembers who to wake on a kill.
    fn check(&self, cx: &Context<'_>, slot: usize) -> io::Result<()> {
        let mut wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.killed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was cut by the gateway",
            ));
        }
        if !wakers[slot]
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            wakers[slot] = Some(cx.waker().clone());
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx, 0) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx, 1) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx, 1) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_kill_ends_a_pending_read() {
        let (a, _b) = tokio::io::duplex(64);
        let (mut killable, switch) = Killable::new(a);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            killable.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        switch.kill();
        let result = reader.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}

//! Writes towards a peer that reach the peer: batched writes, and a single write,
//! both flushed.
//!
//! Why flushing matters: a TLS stream (tokio-rustls) accepts bytes into its session
//! and returns once the socket would block, keeping the encrypted rest until the
//! next write or a flush. A proxy that writes one message and then waits for the
//! answer would wait forever for an answer to bytes still in its own memory. Every
//! protocol write goes through [`Batched`] or [`write_flushed`]; clippy's
//! `disallowed-methods` (clippy.toml) refuses a bare `write_all` elsewhere.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most bytes held back for one write.
const BATCH_MAX: usize = 64 * 1024;

/// Writes `bytes` and flushes them out of any buffer in the writer (a TLS session's).
#[allow(clippy::disallowed_methods)]
pub async fn write_flushed<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Writes messages in batches: one write for all the messages handled between two
/// reads, instead of one per message (a result's descriptions, rows and completion
/// would otherwise each be a send). Large messages go out unbuffered. Bytes are
/// with the peer only once [`Batched::flush`] returns.
pub struct Batched<W> {
    writer: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> Batched<W> {
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            buf: BytesMut::with_capacity(BATCH_MAX),
        }
    }

    #[allow(clippy::disallowed_methods)]
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > BATCH_MAX {
            self.push_buffered().await?;
            if bytes.len() > BATCH_MAX {
                // Flushed with the next `flush`, like the batch.
                return self.writer.write_all(bytes).await;
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Sends everything given so far on to the peer, through any buffer in the
    /// writer.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.push_buffered().await?;
        self.writer.flush().await
    }

    #[allow(clippy::disallowed_methods)]
    async fn push_buffered(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.writer.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// A TLS client and server over an in-memory pipe of `capacity` bytes.
    async fn tls_pair(
        capacity: usize,
    ) -> (
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
    ) {
        let cert = rcgen::generate_simple_self_signed(vec!["peer.test".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(capacity);
        let name = rustls_pki_types::ServerName::try_from("peer.test").unwrap();
        let connecting = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, a);
        let accepting = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(b);
        let (c, s) = tokio::join!(connecting, accepting);
        (c.unwrap(), s.unwrap())
    }

    /// Reads plaintext until the stream ends (or fails: no close_notify is sent).
    async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> usize {
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got += n;
        }
        got
    }

    // Through a pipe smaller than the message, the TLS session holds most of it
    // when its write returns: only the flush gets it to the peer. The writer is
    // dropped (without close_notify) right after, so whatever was not flushed is lost
    // and the count says so.
    #[tokio::test]
    async fn batched_writes_reach_a_tls_peer() {
        for size in [10 * 1024, 200 * 1024] {
            let (client, server) = tls_pair(1024).await;
            let writing = async move {
                let mut out = Batched::new(client);
                out.send(&vec![7u8; size]).await.unwrap();
                out.send(b"tail").await.unwrap();
                out.flush().await.unwrap();
            };
            let ((), got) = tokio::join!(writing, read_all(server));
            assert_eq!(got, size + 4, "message of {size} bytes");
        }
    }

    #[tokio::test]
    async fn a_flushed_write_reaches_a_tls_peer() {
        let (mut client, server) = tls_pair(1024).await;
        let writing = async move {
            write_flushed(&mut client, &[1u8; 10 * 1024]).await.unwrap();
        };
        let ((), got) = tokio::join!(writing, read_all(server));
        assert_eq!(got, 10 * 1024);
    }
}

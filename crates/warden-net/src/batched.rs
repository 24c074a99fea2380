//! Batched writes towards a peer.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most bytes held back for one write.
const BATCH_MAX: usize = 64 * 1024;

/// Writes messages in batches: one write for all the messages handled between two
/// reads, instead of one per message (a result's descriptions, rows and completion
/// would otherwise each be a send). Large messages go out unbuffered.
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

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > BATCH_MAX {
            self.flush().await?;
            if bytes.len() > BATCH_MAX {
                return self.writer.write_all(bytes).await;
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.writer.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

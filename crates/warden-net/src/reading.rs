//! Reads from a peer into a message buffer with room for a whole burst.
//!
//! Why: tokio's `read_buf` reads only into the buffer's spare capacity, and a
//! `BytesMut` that has just handed its frames out may have a few dozen bytes left
//! (or, when full, grows by 64): a 63-byte query then takes two `recv` calls. Making
//! room first costs nothing when there is room, and reuses the buffer's allocation
//! once the frames cut from it are dropped.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Room made before each read: larger than a typical message burst, small enough to
/// keep per-session memory modest (two buffers per session).
pub const READ_ROOM: usize = 16 * 1024;

/// Reads what the peer has sent into `buf`, after making [`READ_ROOM`] bytes of room;
/// `Ok(0)` when the peer closed.
pub async fn read_more<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(READ_ROOM);
    reader.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_message_is_read_in_one_call_even_into_a_nearly_full_buffer() {
        let message = vec![b'q'; 1000];
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[0; 30]);
        let _ = buf.split_to(30);
        let mut reader: &[u8] = &message;
        assert_eq!(read_more(&mut reader, &mut buf).await.unwrap(), 1000);
        assert_eq!(&buf[..], &message[..]);
    }
}

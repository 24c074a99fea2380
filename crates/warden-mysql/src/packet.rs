//! Packet framing: a 3-byte little-endian payload length and a 1-byte sequence id.
//!
//! A payload of 16 MiB − 1 bytes or more is split into fragments of exactly
//! 0xFFFFFF bytes followed by a shorter one (possibly empty); the decoder joins them
//! into one logical [`Packet`]. Sequence ids count up by one per fragment within a
//! command's exchange, so each side can detect a lost or reordered packet.

use bytes::{Buf, Bytes, BytesMut};

use crate::MysqlProtocolError;

/// Largest payload of one fragment.
pub const MAX_FRAGMENT: usize = 0xFF_FFFF;

/// One logical packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first fragment.
    pub seq: u8,
    /// How many fragments it came in (the next packet's id is `seq + fragments`).
    pub fragments: u8,
    pub payload: Bytes,
}

impl Packet {
    /// The sequence id the peer's next packet must carry.
    pub fn next_seq(&self) -> u8 {
        self.seq.wrapping_add(self.fragments)
    }

    /// Bytes on the wire, headers included.
    pub fn wire_len(&self) -> u64 {
        self.payload.len() as u64 + 4 * u64::from(self.fragments)
    }
}

/// Splits a byte stream into packets; refuses payloads above `max_payload`.
#[derive(Debug, Clone, Copy)]
pub struct PacketDecoder {
    max_payload: usize,
}

impl PacketDecoder {
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// Takes one whole packet off the front of `buf`, or `None` when more bytes are
    /// needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, MysqlProtocolError> {
        let mut at = 0usize;
        let mut total = 0usize;
        let mut fragments = 0u8;
        let first_seq = match buf.get(3) {
            Some(&s) => s,
            None => return Ok(None),
        };
        loop {
            let Some(h) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
            let expected = first_seq.wrapping_add(fragments);
            if h[3] != expected {
                return Err(MysqlProtocolError::Sequence {
                    got: h[3],
                    expected,
                });
            }
            total += len;
            if total > self.max_payload {
                return Err(MysqlProtocolError::TooLarge {
                    len: total,
                    limit: self.max_payload,
                });
            }
            fragments = fragments
                .checked_add(1)
                .ok_or(MysqlProtocolError::TooLarge {
                    len: total,
                    limit: self.max_payload,
                })?;
            at += 4 + len;
            if buf.len() < at {
                // Room for the rest now, instead of growing once per read.
                buf.reserve(at - buf.len());
                return Ok(None);
            }
            if len < MAX_FRAGMENT {
                break;
            }
        }
        let payload = if fragments == 1 {
            buf.advance(4);
            buf.split_to(total).freeze()
        } else {
            let mut joined = BytesMut::with_capacity(total);
            for _ in 0..fragments {
                let len =
                    usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
                buf.advance(4);
                joined.extend_from_slice(&buf[..len]);
                buf.advance(len);
            }
            joined.freeze()
        };
        Ok(Some(Packet {
            seq: first_seq,
            fragments,
            payload,
        }))
    }
}

/// Appends `payload` as one logical packet starting at sequence id `*seq`, split
/// into fragments as needed; `*seq` is left at the id of the next packet.
pub fn put_packet(out: &mut BytesMut, seq: &mut u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAGMENT);
        out.reserve(4 + n);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.extend_from_slice(&[*seq]);
        out.extend_from_slice(&rest[..n]);
        *seq = seq.wrapping_add(1);
        rest = &rest[n..];
        // A fragment of exactly MAX_FRAGMENT bytes says "more follows", so a payload
        // that ends on the boundary needs an empty last fragment.
        if n < MAX_FRAGMENT {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(seq: u8, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let mut s = seq;
        put_packet(&mut out, &mut s, payload);
        out
    }

    #[test]
    fn small_packets_round_trip_and_wait_for_bytes() {
        let wire = encode(3, b"\x03SELECT 1");
        let d = PacketDecoder::new(1 << 20);
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            assert_eq!(d.decode(&mut part).unwrap(), None, "cut at {cut}");
        }
        let mut all = wire.clone();
        let p = d.decode(&mut all).unwrap().unwrap();
        assert_eq!(
            (p.seq, p.fragments, &p.payload[..]),
            (3, 1, &b"\x03SELECT 1"[..])
        );
        assert_eq!(p.next_seq(), 4);
        assert!(all.is_empty());
    }

    #[test]
    fn large_payloads_are_split_and_joined() {
        for len in [
            MAX_FRAGMENT - 1,
            MAX_FRAGMENT,
            MAX_FRAGMENT + 7,
            2 * MAX_FRAGMENT,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = encode(255, &payload);
            let expected_fragments = len / MAX_FRAGMENT + 1;
            assert_eq!(wire.len(), len + 4 * expected_fragments);
            let p = PacketDecoder::new(64 << 20)
                .decode(&mut wire)
                .unwrap()
                .unwrap();
            assert_eq!(p.payload.len(), len);
            assert_eq!(&p.payload[..], &payload[..]);
            assert_eq!(usize::from(p.fragments), expected_fragments);
            assert_eq!(p.seq, 255);
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn bad_sequence_and_oversize_are_errors() {
        let mut wire = encode(0, &vec![1u8; MAX_FRAGMENT + 1]);
        wire[MAX_FRAGMENT + 4 + 3] = 9; // second fragment's id
        assert_eq!(
            PacketDecoder::new(64 << 20).decode(&mut wire),
            Err(MysqlProtocolError::Sequence {
                got: 9,
                expected: 1
            })
        );
        let mut big = BytesMut::from(&[0xFF, 0xFF, 0x7F, 0][..]);
        assert!(matches!(
            PacketDecoder::new(1024).decode(&mut big),
            Err(MysqlProtocolError::TooLarge { .. })
        ));
    }
}

//! Reading and writing the protocol's primitive fields: little-endian integers,
//! length-encoded integers and strings, NUL-terminated strings.

use bytes::{BufMut, BytesMut};

use crate::MysqlProtocolError;

/// The length-encoded-integer prefix that means SQL NULL in a text row.
pub(crate) const NULL_VALUE: u8 = 0xFB;

/// A bounds-checked cursor over one packet's payload.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn err(&self, detail: &'static str) -> MysqlProtocolError {
        MysqlProtocolError::Malformed {
            what: self.what,
            detail,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MysqlProtocolError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MysqlProtocolError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MysqlProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MysqlProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uint(&mut self, n: usize) -> Result<u64, MysqlProtocolError> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// A length-encoded integer; `None` for the NULL marker (0xFB).
    pub(crate) fn lenenc(&mut self) -> Result<Option<u64>, MysqlProtocolError> {
        match self.u8()? {
            x @ 0..=0xFA => Ok(Some(u64::from(x))),
            NULL_VALUE => Ok(None),
            0xFC => self.uint(2).map(Some),
            0xFD => self.uint(3).map(Some),
            0xFE => self.uint(8).map(Some),
            _ => Err(self.err("invalid length-encoded integer")),
        }
    }

    /// A length-encoded integer that must not be NULL.
    pub(crate) fn lenenc_int(&mut self) -> Result<u64, MysqlProtocolError> {
        self.lenenc()?
            .ok_or_else(|| self.err("unexpected NULL marker"))
    }

    /// A length-encoded string; `None` for NULL.
    pub(crate) fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, MysqlProtocolError> {
        match self.lenenc()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| self.err("length out of range"))?;
                self.take(n).map(Some)
            }
        }
    }

    pub(crate) fn lenenc_str(&mut self) -> Result<&'a [u8], MysqlProtocolError> {
        self.lenenc_bytes()?
            .ok_or_else(|| self.err("unexpected NULL marker"))
    }

    /// A NUL-terminated string (the NUL is consumed, not returned).
    pub(crate) fn nul_str(&mut self) -> Result<&'a [u8], MysqlProtocolError> {
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
}

pub(crate) fn put_lenenc(b: &mut BytesMut, n: u64) {
    match n {
        0..=0xFA => b.put_u8(n as u8),
        0xFB..=0xFFFF => {
            b.put_u8(0xFC);
            b.put_u16_le(n as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            b.put_u8(0xFD);
            b.put_uint_le(n, 3);
        }
        _ => {
            b.put_u8(0xFE);
            b.put_u64_le(n);
        }
    }
}

pub(crate) fn put_lenenc_bytes(b: &mut BytesMut, s: &[u8]) {
    put_lenenc(b, s.len() as u64);
    b.extend_from_slice(s);
}

pub(crate) fn put_nul_str(b: &mut BytesMut, s: &[u8]) {
    b.extend_from_slice(s);
    b.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips_at_every_width() {
        for n in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_lenenc(&mut b, n);
            let mut r = Reader::new(&b, "test");
            assert_eq!(r.lenenc().unwrap(), Some(n), "{n}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn truncated_fields_are_errors() {
        assert!(Reader::new(&[0xFC, 1], "t").lenenc().is_err());
        assert!(Reader::new(&[0xFF], "t").lenenc().is_err());
        assert!(Reader::new(&[5, b'a'], "t").lenenc_bytes().is_err());
        assert!(Reader::new(b"abc", "t").nul_str().is_err());
        assert!(
            Reader::new(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], "t")
                .lenenc_bytes()
                .is_err()
        );
    }
}

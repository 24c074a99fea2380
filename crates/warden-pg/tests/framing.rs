//! The frontend decoder under arbitrary input and arbitrary read boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::BytesMut;
use proptest::prelude::*;
use warden_pg::{FrontendDecoder, PgFrontendMessage};

fn query(sql: &str) -> Vec<u8> {
    let mut v = vec![b'Q'];
    v.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    v.extend_from_slice(sql.as_bytes());
    v.push(0);
    v
}

proptest! {
    /// Garbage gets an error or a wait, never a panic, and never a message from
    /// beyond the bytes given.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = FrontendDecoder::new(1 << 16);
        let mut startup = BytesMut::from(&data[..]);
        let _ = d.decode_startup(&mut startup);
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..64 {
            match d.decode(&mut buf) {
                Ok(Some(f)) => prop_assert!(f.raw.len() <= data.len()),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// However the stream is cut into reads, the same messages come out.
    #[test]
    fn read_boundaries_do_not_matter(
        sqls in proptest::collection::vec("[ -~]{0,60}", 1..8),
        cuts in proptest::collection::vec(1usize..40, 1..30),
    ) {
        let stream: Vec<u8> = sqls.iter().flat_map(|s| query(s)).collect();
        let d = FrontendDecoder::new(1 << 16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < stream.len() {
            let n = (*cut.next().unwrap()).min(stream.len() - at);
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f.message);
            }
        }
        let want: Vec<PgFrontendMessage> = sqls.iter().map(|s| PgFrontendMessage::Query { sql: s.clone() }).collect();
        prop_assert_eq!(got, want);
        prop_assert!(buf.is_empty());
    }
}

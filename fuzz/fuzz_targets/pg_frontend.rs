//! Any bytes as a PostgreSQL client stream: the decoder frames, decodes or refuses,
//! and never panics or reads past its input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warden_pg::FrontendDecoder;

fuzz_target!(|data: &[u8]| {
    let decoder = FrontendDecoder::new(1 << 20);
    let mut startup = BytesMut::from(data);
    let _ = decoder.decode_startup(&mut startup);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        assert!(frame.raw.len() <= data.len());
    }
});

//! Any bytes as an SFTP stream in either direction, cut anywhere, and as typed
//! keystrokes and `scp` command lines: the observers answer or refuse, never panic,
//! and never keep more than one bounded packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_ssh::commands::{ScpCommand, TypedLines};
use warden_ssh::sftp::SftpObserver;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut o = SftpObserver::default();
    // Alternate directions in pieces whose sizes come from the input.
    for (i, piece) in rest.chunks(usize::from(split).max(1)).enumerate() {
        let r = if i % 2 == 0 {
            o.from_client(piece).map(|_| ())
        } else {
            o.from_server(piece)
        };
        if r.is_err() {
            break;
        }
    }
    let _ = o.finish();
    let mut typed = TypedLines::default();
    for line in typed.feed(rest) {
        assert!(line.len() <= 4096 * 4);
    }
    let _ = ScpCommand::parse(&String::from_utf8_lossy(rest));
});

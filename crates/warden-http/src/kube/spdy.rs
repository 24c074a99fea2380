//! Reading SPDY/3.1 data frames, the older transport of `kubectl exec` and `attach`,
//! so the terminal is recorded as it is over WebSocket. What a client sends on its
//! streams is the terminal's input (stdin, and resizes), what the server sends is its
//! output (stdout, stderr, the final status): the direction is enough, so the
//! compressed headers that name each stream are not read. Control frames are skipped.

use crate::kube::channels::ChannelData;

/// An incremental reader of one direction's SPDY frames.
#[derive(Debug, Default)]
pub struct SpdyReader {
    header: Vec<u8>,
    /// Bytes left in the current frame's payload.
    remaining: usize,
    /// The current frame is a data frame (its payload is recorded).
    data: bool,
}

impl SpdyReader {
    /// Reads `bytes`; data frame payloads go to `out` as input (`from_client`) or
    /// output.
    pub fn feed(&mut self, mut bytes: &[u8], from_client: bool, out: &mut Vec<ChannelData>) {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                let need = 8 - self.header.len();
                let take = need.min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() < 8 {
                    return;
                }
                let h = std::mem::take(&mut self.header);
                self.data = h[0] & 0x80 == 0;
                self.remaining =
                    usize::from(h[5]) << 16 | usize::from(h[6]) << 8 | usize::from(h[7]);
                continue;
            }
            let take = self.remaining.min(bytes.len());
            if self.data && take > 0 {
                let chunk = bytes[..take].to_vec();
                out.push(if from_client {
                    ChannelData::Stdin(chunk)
                } else {
                    ChannelData::Output(chunk)
                });
            }
            bytes = &bytes[take..];
            self.remaining -= take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        let len = payload.len() as u32;
        f.extend_from_slice(&[0, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        f.extend_from_slice(payload);
        f
    }

    fn control_frame(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80, 3];
        f.extend_from_slice(&kind.to_be_bytes());
        let len = payload.len() as u32;
        f.extend_from_slice(&[0, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn data_frames_are_read_across_any_split_and_control_frames_skipped() {
        let mut stream = control_frame(1, b"compressed headers....");
        stream.extend(data_frame(3, b"echo hi\n"));
        stream.extend(control_frame(6, b"ping"));
        stream.extend(data_frame(5, &vec![b'x'; 70_000]));
        for step in [1, 5, 8, 4096, stream.len()] {
            let mut reader = SpdyReader::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                reader.feed(chunk, true, &mut out);
            }
            let mut input = Vec::new();
            for d in out {
                match d {
                    ChannelData::Stdin(b) => input.extend(b),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(&input[..8], b"echo hi\n", "step {step}");
            assert_eq!(input.len(), 8 + 70_000, "step {step}");
        }
    }
}

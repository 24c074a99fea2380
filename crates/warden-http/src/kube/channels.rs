//! Reading the Kubernetes WebSocket channel protocols (`v5.channel.k8s.io` down to
//! `channel.k8s.io`) that `kubectl exec` and `attach` speak, so the terminal can be
//! recorded: every data message (binary, or text: the server reads both) starts with its channel — 0 stdin, 1 stdout,
//! 2 stderr, 3 the server's status, 4 terminal resizes (`{"Width":..,"Height":..}`),
//! 255 (v5) a stream's close. Frames are parsed as the bytes pass, without holding
//! more than a frame header: a `kubectl cp` through exec streams as fast as before.

/// The subprotocols whose messages are binary channel frames (recordable).
pub const RECORDABLE: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Resize messages longer than this are not read (they are a few dozen bytes).
const MAX_RESIZE_BYTES: usize = 256;

/// What one direction of the stream carried, as far as the recording cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelData {
    Stdin(Vec<u8>),
    Output(Vec<u8>),
    Resize { width: u32, height: u32 },
}

/// An incremental reader of one direction's WebSocket frames.
#[derive(Debug, Default)]
pub struct ChannelReader {
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_at: usize,
    /// The current message's opcode (of its first frame) and whether its channel
    /// byte has been read.
    message_opcode: u8,
    channel: Option<u8>,
    in_payload: bool,
    /// The current frame is a control frame (close, ping, pong): no channel data.
    in_control: bool,
    frame_fin: bool,
    resize: Vec<u8>,
}

impl ChannelReader {
    /// Reads `data`, appending what it carried to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<ChannelData>) {
        while !data.is_empty() {
            if !self.in_payload {
                let Some(used) = self.read_header(data) else {
                    return;
                };
                data = &data[used..];
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let mut chunk = data[..take].to_vec();
            data = &data[take..];
            self.remaining -= take as u64;
            if let Some(key) = self.mask {
                for b in &mut chunk {
                    *b ^= key[self.mask_at % 4];
                    self.mask_at += 1;
                }
            }
            self.payload(&chunk, out);
            if self.remaining == 0 {
                self.end_frame(out);
            }
        }
    }

    /// Consumes header bytes; `Some(n)`: `n` bytes used and the header is complete
    /// (or the frame had no payload).
    fn read_header(&mut self, data: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            let need = self.header_len();
            if self.header.len() >= need {
                break;
            }
            let b = *data.get(used)?;
            self.header.push(b);
            used += 1;
        }
        let h = std::mem::take(&mut self.header);
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.mask_at = 0;
        self.remaining = len;
        self.frame_fin = fin;
        if opcode != 0 {
            // A control frame (close, ping, pong) may come between the frames of a
            // message; it carries no channel data.
            if opcode >= 8 {
                self.in_control = true;
            } else {
                self.message_opcode = opcode;
                self.channel = None;
            }
        }
        self.in_payload = true;
        if len == 0 {
            let mut none = Vec::new();
            self.end_frame(&mut none);
        }
        Some(used)
    }

    fn header_len(&self) -> usize {
        if self.header.len() < 2 {
            return 2;
        }
        let masked = self.header[1] & 0x80 != 0;
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if masked { 4 } else { 0 }
    }

    fn payload(&mut self, mut chunk: &[u8], out: &mut Vec<ChannelData>) {
        // The API server reads a text frame's bytes like a binary one's: both are
        // channel data.
        if self.in_control || !matches!(self.message_opcode, 1 | 2) {
            return;
        }
        if self.channel.is_none() {
            let Some((&c, rest)) = chunk.split_first() else {
                return;
            };
            self.channel = Some(c);
            chunk = rest;
        }
        if chunk.is_empty() {
            return;
        }
        match self.channel {
            Some(0) => out.push(ChannelData::Stdin(chunk.to_vec())),
            Some(1 | 2) => out.push(ChannelData::Output(chunk.to_vec())),
            Some(4) if self.resize.len() + chunk.len() <= MAX_RESIZE_BYTES => {
                self.resize.extend_from_slice(chunk);
            }
            _ => {}
        }
    }

    fn end_frame(&mut self, out: &mut Vec<ChannelData>) {
        self.in_payload = false;
        if self.in_control {
            self.in_control = false;
            return;
        }
        if self.frame_fin {
            if self.channel == Some(4)
                && let Ok(size) = serde_json::from_slice::<serde_json::Value>(&self.resize)
            {
                let dim = |k: &str| size[k].as_u64().and_then(|v| u32::try_from(v).ok());
                if let (Some(width), Some(height)) = (dim("Width"), dim("Height")) {
                    out.push(ChannelData::Resize { width, height });
                }
            }
            self.resize.clear();
            self.channel = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn reads_channels_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 2, b"\x00ls -l\n", Some([1, 2, 3, 4])));
        stream.extend(frame(true, 1, b"\x00pwd\n", Some([5, 6, 7, 8])));
        stream.extend(frame(true, 9, b"ping", Some([9, 9, 9, 9])));
        stream.extend(frame(false, 2, b"\x01hel", None));
        stream.extend(frame(true, 10, b"", None));
        stream.extend(frame(true, 0, b"lo", None));
        stream.extend(frame(
            true,
            2,
            b"\x04{\"Width\":120,\"Height\":40}",
            Some([7, 0, 7, 0]),
        ));
        let big = vec![b'x'; 70_000];
        let mut big_msg = vec![2u8];
        big_msg.extend_from_slice(&big);
        stream.extend(frame(true, 2, &big_msg, None));
        for step in [1, 3, 7, 4096, stream.len()] {
            let mut reader = ChannelReader::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                reader.feed(chunk, &mut out);
            }
            let mut stdin = Vec::new();
            let mut output = Vec::new();
            let mut sizes = Vec::new();
            for d in out {
                match d {
                    ChannelData::Stdin(b) => stdin.extend(b),
                    ChannelData::Output(b) => output.extend(b),
                    ChannelData::Resize { width, height } => sizes.push((width, height)),
                }
            }
            assert_eq!(stdin, b"ls -l\npwd\n", "step {step}");
            assert_eq!(&output[..5], b"hello", "step {step}");
            assert_eq!(output.len(), 5 + big.len(), "step {step}");
            assert_eq!(sizes, [(120, 40)], "step {step}");
        }
    }
}

//! Watches an SFTP stream (RFC draft `filexfer-02`, version 3, as OpenSSH speaks it)
//! without changing it, to audit what was transferred and changed: files opened and
//! the bytes read from and written to them, removals, renames, directories.
//!
//! The observer sees the bytes both ways as the proxy relays them; it keeps at most
//! one packet per direction, so a 100 MiB transfer costs no more memory than a small
//! one. A packet it cannot frame ends the channel (the audit would be incomplete).

use std::collections::HashMap;

use bytes::{Buf, BytesMut};

/// OpenSSH's sftp-server refuses packets over 256 KiB; allow some headroom.
pub const MAX_PACKET: usize = 1024 * 1024;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_SETSTAT: u8 = 9;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_EXTENDED: u8 = 200;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

const PFLAG_WRITE: u32 = 0x02;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("SFTP packet of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("malformed SFTP packet")]
    Malformed,
}

/// Something worth an audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftpEvent {
    /// A file was closed (or the channel ended with it open).
    Transfer {
        path: String,
        /// Opened for writing.
        write: bool,
        read_bytes: u64,
        written_bytes: u64,
    },
    /// A change to the file tree, seen when the client asked for it.
    Change {
        op: &'static str,
        path: String,
        target: Option<String>,
    },
}

struct OpenFile {
    path: String,
    write: bool,
    read_bytes: u64,
    written_bytes: u64,
}

/// Frames one direction of the stream.
#[derive(Default)]
struct Framer {
    buf: BytesMut,
}

impl Framer {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet (type byte first), if one has arrived.
    fn next(&mut self) -> Result<Option<BytesMut>, SftpError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = usize::try_from(len).map_err(|_| SftpError::TooLong(usize::MAX))?;
        if len > MAX_PACKET {
            return Err(SftpError::TooLong(len));
        }
        if len == 0 {
            return Err(SftpError::Malformed);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len)))
    }
}

/// Reads SFTP fields from one packet.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Result<u8, SftpError> {
        let (&b, rest) = self.0.split_first().ok_or(SftpError::Malformed)?;
        self.0 = rest;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, SftpError> {
        let (head, rest) = self.0.split_at_checked(4).ok_or(SftpError::Malformed)?;
        self.0 = rest;
        Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    }
    fn skip(&mut self, n: usize) -> Result<(), SftpError> {
        self.0 = self.0.get(n..).ok_or(SftpError::Malformed)?;
        Ok(())
    }
    fn bytes(&mut self) -> Result<&'a [u8], SftpError> {
        let n = usize::try_from(self.u32()?).map_err(|_| SftpError::Malformed)?;
        let (head, rest) = self.0.split_at_checked(n).ok_or(SftpError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }
    fn text(&mut self) -> Result<String, SftpError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
}

/// The state of one SFTP channel.
#[derive(Default)]
pub struct SftpObserver {
    to_server: Framer,
    to_client: Framer,
    /// OPEN requests waiting for their handle, by request id.
    opening: HashMap<u32, (String, bool)>,
    /// READ requests waiting for their data, by request id: the file's handle.
    reading: HashMap<u32, Vec<u8>>,
    files: HashMap<Vec<u8>, OpenFile>,
}

impl SftpObserver {
    /// Bytes the client sent to the server.
    pub fn from_client(&mut self, data: &[u8]) -> Result<Vec<SftpEvent>, SftpError> {
        self.to_server.push(data);
        let mut events = Vec::new();
        while let Some(packet) = self.to_server.next()? {
            if let Some(e) = self.request(&packet)? {
                events.push(e);
            }
        }
        Ok(events)
    }

    /// Bytes the server sent to the client.
    pub fn from_server(&mut self, data: &[u8]) -> Result<(), SftpError> {
        self.to_client.push(data);
        while let Some(packet) = self.to_client.next()? {
            self.response(&packet)?;
        }
        Ok(())
    }

    /// Files still open when the channel ends.
    pub fn finish(&mut self) -> Vec<SftpEvent> {
        let mut files: Vec<_> = self.files.drain().map(|(_, f)| f).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.into_iter().map(transfer).collect()
    }

    fn request(&mut self, packet: &[u8]) -> Result<Option<SftpEvent>, SftpError> {
        let mut f = Fields(packet);
        let kind = f.u8()?;
        if kind == 1 {
            return Ok(None); // INIT: a version, no id
        }
        let id = f.u32()?;
        let change = |op, path, target| Some(SftpEvent::Change { op, path, target });
        Ok(match kind {
            FXP_OPEN => {
                let path = f.text()?;
                let flags = f.u32()?;
                self.opening.insert(id, (path, flags & PFLAG_WRITE != 0));
                None
            }
            FXP_READ => {
                let handle = f.bytes()?.to_vec();
                self.reading.insert(id, handle);
                None
            }
            FXP_WRITE => {
                let handle = f.bytes()?;
                f.skip(8)?;
                let data = f.bytes()?;
                if let Some(file) = self.files.get_mut(handle) {
                    file.written_bytes += data.len() as u64;
                }
                None
            }
            FXP_CLOSE => {
                let handle = f.bytes()?;
                self.files.remove(handle).map(transfer)
            }
            FXP_REMOVE => change("remove", f.text()?, None),
            FXP_MKDIR => change("mkdir", f.text()?, None),
            FXP_RMDIR => change("rmdir", f.text()?, None),
            FXP_SETSTAT => change("setstat", f.text()?, None),
            FXP_RENAME => {
                let from = f.text()?;
                change("rename", from, Some(f.text()?))
            }
            FXP_SYMLINK => {
                let link = f.text()?;
                change("symlink", link, Some(f.text()?))
            }
            FXP_EXTENDED => {
                let name = f.text()?;
                match name.as_str() {
                    "posix-rename@openssh.com" => {
                        let from = f.text()?;
                        change("rename", from, Some(f.text()?))
                    }
                    "hardlink@openssh.com" => {
                        let from = f.text()?;
                        change("hardlink", from, Some(f.text()?))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
    }

    fn response(&mut self, packet: &[u8]) -> Result<(), SftpError> {
        let mut f = Fields(packet);
        let kind = f.u8()?;
        if kind == 2 {
            return Ok(()); // VERSION
        }
        let id = f.u32()?;
        match kind {
            FXP_HANDLE => {
                let handle = f.bytes()?.to_vec();
                if let Some((path, write)) = self.opening.remove(&id) {
                    self.files.insert(
                        handle,
                        OpenFile {
                            path,
                            write,
                            read_bytes: 0,
                            written_bytes: 0,
                        },
                    );
                }
            }
            FXP_DATA => {
                let data = f.bytes()?;
                if let Some(handle) = self.reading.remove(&id)
                    && let Some(file) = self.files.get_mut(&handle)
                {
                    file.read_bytes += data.len() as u64;
                }
            }
            _ => {
                // A STATUS (or anything else) ends whatever the id was waiting for.
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
        Ok(())
    }
}

fn transfer(f: OpenFile) -> SftpEvent {
    SftpEvent::Transfer {
        path: f.path,
        write: f.write,
        read_bytes: f.read_bytes,
        written_bytes: f.written_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, body: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        for b in body {
            p.extend_from_slice(b);
        }
        let mut out = (p.len() as u32).to_be_bytes().to_vec();
        out.extend(p);
        out
    }
    fn s(b: &[u8]) -> Vec<u8> {
        let mut out = (b.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(b);
        out
    }
    fn id(n: u32) -> [u8; 4] {
        n.to_be_bytes()
    }

    #[test]
    fn an_upload_split_across_messages_is_one_transfer() {
        let mut o = SftpObserver::default();
        let open = packet(
            FXP_OPEN,
            &[
                &id(1),
                &s(b"/tmp/up.bin"),
                &0x1au32.to_be_bytes(),
                &[0, 0, 0, 0],
            ],
        );
        assert!(o.from_client(&open).unwrap().is_empty());
        o.from_server(&packet(FXP_HANDLE, &[&id(1), &s(b"h1")]))
            .unwrap();
        let data = vec![7u8; 40_000];
        let write = packet(
            FXP_WRITE,
            &[&id(2), &s(b"h1"), &0u64.to_be_bytes(), &s(&data)],
        );
        // Delivered in awkward pieces, as SSH data messages may cut it.
        for chunk in write.chunks(999) {
            assert!(o.from_client(chunk).unwrap().is_empty());
        }
        let events = o
            .from_client(&packet(FXP_CLOSE, &[&id(3), &s(b"h1")]))
            .unwrap();
        assert_eq!(
            events,
            vec![SftpEvent::Transfer {
                path: "/tmp/up.bin".into(),
                write: true,
                read_bytes: 0,
                written_bytes: 40_000
            }]
        );
    }

    #[test]
    fn downloads_count_data_and_changes_are_seen() {
        let mut o = SftpObserver::default();
        o.from_client(&packet(
            FXP_OPEN,
            &[&id(1), &s(b"/etc/hosts"), &1u32.to_be_bytes(), &[0; 4]],
        ))
        .unwrap();
        o.from_server(&packet(FXP_HANDLE, &[&id(1), &s(b"h")]))
            .unwrap();
        o.from_client(&packet(
            FXP_READ,
            &[&id(2), &s(b"h"), &0u64.to_be_bytes(), &100u32.to_be_bytes()],
        ))
        .unwrap();
        o.from_server(&packet(FXP_DATA, &[&id(2), &s(&[1; 60])]))
            .unwrap();
        let renamed = o
            .from_client(&packet(FXP_RENAME, &[&id(3), &s(b"a"), &s(b"b")]))
            .unwrap();
        assert_eq!(
            renamed,
            vec![SftpEvent::Change {
                op: "rename",
                path: "a".into(),
                target: Some("b".into())
            }]
        );
        assert_eq!(
            o.finish(),
            vec![SftpEvent::Transfer {
                path: "/etc/hosts".into(),
                write: false,
                read_bytes: 60,
                written_bytes: 0
            }]
        );
    }

    #[test]
    fn bad_framing_is_an_error() {
        let mut o = SftpObserver::default();
        assert_eq!(
            o.from_client(&u32::MAX.to_be_bytes()),
            Err(SftpError::TooLong(u32::MAX as usize))
        );
        let mut o = SftpObserver::default();
        assert_eq!(
            o.from_client(&packet(FXP_OPEN, &[&id(1), &[0, 0, 0, 9]])),
            Err(SftpError::Malformed)
        );
    }
}

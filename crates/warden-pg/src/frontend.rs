//! Messages from clients: the startup packet family and the tagged messages after it.

use bytes::{Buf, Bytes, BytesMut};

use crate::PgProtocolError;
use crate::wire::{cstr, done, need, object_name, split_tagged};

/// Protocol 3.0.
const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// PostgreSQL itself refuses startup packets over 10000 bytes.
const MAX_STARTUP: usize = 10_000;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgStartup {
    /// Protocol 3.x with its parameters (`user`, `database`, `application_name`, ...).
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
}

impl PgStartup {
    /// The value of a startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            PgStartup::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A tagged message from the client. `raw` fields keep the exact frame for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgFrontendMessage {
    /// Simple query: one or more statements.
    Query {
        sql: String,
    },
    /// Extended protocol: prepare a statement.
    Parse {
        statement: String,
        sql: String,
        param_types: Vec<u32>,
    },
    /// Extended protocol: bind parameters to a statement, making a portal.
    Bind {
        portal: String,
        statement: String,
        /// Byte length of each parameter value (`None`: NULL); the values stay in `raw`.
        param_lengths: Vec<Option<u32>>,
        /// Empty: all text; one: applies to all columns; else one per column.
        result_formats: Vec<i16>,
    },
    /// `S` statement or `P` portal.
    Describe {
        target: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        target: u8,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail {
        message: String,
    },
    /// Password, SASL initial response or SASL response: the meaning depends on the
    /// authentication exchange in progress, so the payload is kept as it is.
    Password {
        payload: Bytes,
    },
    /// The legacy function-call message (`F`).
    FunctionCall,
}

impl PgFrontendMessage {
    pub fn name(&self) -> &'static str {
        match self {
            PgFrontendMessage::Query { .. } => "Query",
            PgFrontendMessage::Parse { .. } => "Parse",
            PgFrontendMessage::Bind { .. } => "Bind",
            PgFrontendMessage::Describe { .. } => "Describe",
            PgFrontendMessage::Execute { .. } => "Execute",
            PgFrontendMessage::Close { .. } => "Close",
            PgFrontendMessage::Sync => "Sync",
            PgFrontendMessage::Flush => "Flush",
            PgFrontendMessage::Terminate => "Terminate",
            PgFrontendMessage::CopyData => "CopyData",
            PgFrontendMessage::CopyDone => "CopyDone",
            PgFrontendMessage::CopyFail { .. } => "CopyFail",
            PgFrontendMessage::Password { .. } => "PasswordMessage",
            PgFrontendMessage::FunctionCall => "FunctionCall",
        }
    }
}

/// A decoded message and the exact bytes of its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<M> {
    pub message: M,
    pub raw: Bytes,
}

/// Frames and decodes a client's byte stream. Feed it with [`BytesMut`] the caller
/// reads into; it returns `Ok(None)` until a whole frame has arrived.
#[derive(Debug, Clone)]
pub struct FrontendDecoder {
    max_message: usize,
}

impl FrontendDecoder {
    /// `max_message` bounds one message (PostgreSQL's own limit is 1 GiB).
    pub fn new(max_message: usize) -> Self {
        Self { max_message }
    }

    /// The startup packet (untagged: length, then a code).
    pub fn decode_startup(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<PgStartup>>, PgProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let len_usize =
            usize::try_from(len).map_err(|_| PgProtocolError::BadLength(i64::from(len)))?;
        if len_usize < 8 {
            return Err(PgProtocolError::BadLength(i64::from(len)));
        }
        if len_usize > MAX_STARTUP {
            return Err(PgProtocolError::TooLarge {
                len: len_usize,
                limit: MAX_STARTUP,
            });
        }
        if buf.len() < len_usize {
            return Ok(None);
        }
        let raw = buf.split_to(len_usize).freeze();
        let mut body = raw.slice(4..);
        let code = body.get_i32();
        let message = match code {
            SSL_REQUEST if body.is_empty() => PgStartup::SslRequest,
            GSSENC_REQUEST if body.is_empty() => PgStartup::GssEncRequest,
            CANCEL_REQUEST => {
                need(&body, 8, "CancelRequest")?;
                let process_id = body.get_i32();
                let secret_key = body.get_i32();
                done(&body, "CancelRequest")?;
                PgStartup::Cancel {
                    process_id,
                    secret_key,
                }
            }
            SSL_REQUEST | GSSENC_REQUEST => {
                return Err(PgProtocolError::Malformed {
                    message: "SSLRequest",
                    detail: "trailing bytes",
                });
            }
            version => {
                let major = u16::try_from(version >> 16).unwrap_or(u16::MAX);
                let minor = u16::try_from(version & 0xffff).unwrap_or(u16::MAX);
                if major != 3 {
                    return Err(PgProtocolError::UnsupportedVersion { major, minor });
                }
                let _ = PROTOCOL_3_0;
                let mut params = Vec::new();
                loop {
                    need(&body, 1, "StartupMessage")?;
                    if body[0] == 0 {
                        body.advance(1);
                        break;
                    }
                    let key = cstr(&mut body, "StartupMessage")?;
                    let value = cstr(&mut body, "StartupMessage")?;
                    params.push((key, value));
                }
                done(&body, "StartupMessage")?;
                PgStartup::Startup { minor, params }
            }
        };
        Ok(Some(Frame { message, raw }))
    }

    /// One tagged message.
    pub fn decode(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<PgFrontendMessage>>, PgProtocolError> {
        let Some((tag, raw)) = split_tagged(buf, self.max_message)? else {
            return Ok(None);
        };
        let mut body = raw.slice(5..);
        let message = match tag {
            b'Q' => {
                let sql = cstr(&mut body, "Query")?;
                done(&body, "Query")?;
                PgFrontendMessage::Query { sql }
            }
            b'P' => {
                let statement = object_name(&mut body, "Parse")?;
                let sql = cstr(&mut body, "Parse")?;
                need(&body, 2, "Parse")?;
                let n = usize::from(body.get_u16());
                need(&body, n * 4, "Parse")?;
                let param_types = (0..n).map(|_| body.get_u32()).collect();
                done(&body, "Parse")?;
                PgFrontendMessage::Parse {
                    statement,
                    sql,
                    param_types,
                }
            }
            b'B' => {
                // Parameter values stay in `raw`; the result formats tell how rows of
                // this portal will be encoded.
                const M: &str = "Bind";
                let portal = object_name(&mut body, M)?;
                let statement = object_name(&mut body, M)?;
                need(&body, 2, M)?;
                let n = usize::from(body.get_u16());
                need(&body, n * 2, M)?;
                body.advance(n * 2);
                need(&body, 2, M)?;
                let params = usize::from(body.get_u16());
                let mut param_lengths = Vec::with_capacity(params.min(1024));
                for _ in 0..params {
                    need(&body, 4, M)?;
                    let len = body.get_i32();
                    param_lengths.push(u32::try_from(len).ok());
                    if len > 0 {
                        let l = usize::try_from(len).map_err(|_| PgProtocolError::Malformed {
                            message: M,
                            detail: "bad length",
                        })?;
                        need(&body, l, M)?;
                        body.advance(l);
                    } else if len < -1 {
                        return Err(PgProtocolError::Malformed {
                            message: M,
                            detail: "bad parameter length",
                        });
                    }
                }
                need(&body, 2, M)?;
                let n = usize::from(body.get_u16());
                need(&body, n * 2, M)?;
                let result_formats = (0..n).map(|_| body.get_i16()).collect();
                done(&body, M)?;
                PgFrontendMessage::Bind {
                    portal,
                    statement,
                    param_lengths,
                    result_formats,
                }
            }
            b'D' | b'C' => {
                let what = if tag == b'D' { "Describe" } else { "Close" };
                need(&body, 1, what)?;
                let target = body.get_u8();
                if target != b'S' && target != b'P' {
                    return Err(PgProtocolError::Malformed {
                        message: what,
                        detail: "target is not S or P",
                    });
                }
                let name = object_name(&mut body, what)?;
                done(&body, what)?;
                if tag == b'D' {
                    PgFrontendMessage::Describe { target, name }
                } else {
                    PgFrontendMessage::Close { target, name }
                }
            }
            b'E' => {
                let portal = object_name(&mut body, "Execute")?;
                need(&body, 4, "Execute")?;
                let max_rows = body.get_i32();
                done(&body, "Execute")?;
                PgFrontendMessage::Execute { portal, max_rows }
            }
            b'S' | b'H' | b'X' | b'c' => {
                done(&body, "Sync/Flush/Terminate/CopyDone")?;
                match tag {
                    b'S' => PgFrontendMessage::Sync,
                    b'H' => PgFrontendMessage::Flush,
                    b'X' => PgFrontendMessage::Terminate,
                    _ => PgFrontendMessage::CopyDone,
                }
            }
            b'd' => PgFrontendMessage::CopyData,
            b'f' => {
                let message = cstr(&mut body, "CopyFail")?;
                done(&body, "CopyFail")?;
                PgFrontendMessage::CopyFail { message }
            }
            b'p' => PgFrontendMessage::Password { payload: body },
            b'F' => PgFrontendMessage::FunctionCall,
            other => return Err(PgProtocolError::UnknownMessage(char::from(other))),
        };
        Ok(Some(Frame { message, raw }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn dec() -> FrontendDecoder {
        FrontendDecoder::new(1 << 20)
    }

    #[test]
    fn startup_family() {
        let mut b = BytesMut::new();
        let body = b"user\0alice\0database\0prod\0\0";
        b.extend_from_slice(&((body.len() + 8) as i32).to_be_bytes());
        b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        b.extend_from_slice(body);
        let f = dec()
            .decode_startup(&mut b)
            .ok()
            .flatten()
            .map(|f| f.message);
        let f = f.unwrap_or(PgStartup::SslRequest);
        assert_eq!(f.param("database"), Some("prod"));
        assert_eq!(f.param("user"), Some("alice"));

        let mut ssl = BytesMut::from(&[0u8, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(
            dec()
                .decode_startup(&mut ssl)
                .ok()
                .flatten()
                .map(|f| f.message),
            Some(PgStartup::SslRequest)
        );

        let mut cancel =
            BytesMut::from(&[0u8, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 0, 0, 0, 9][..]);
        assert_eq!(
            dec()
                .decode_startup(&mut cancel)
                .ok()
                .flatten()
                .map(|f| f.message),
            Some(PgStartup::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
        // Partial input waits; bad lengths and versions are errors.
        assert_eq!(
            dec().decode_startup(&mut BytesMut::from(&[0u8, 0, 0][..])),
            Ok(None)
        );
        assert!(
            dec()
                .decode_startup(&mut BytesMut::from(&[0u8, 0, 0, 2][..]))
                .is_err()
        );
        assert!(
            dec()
                .decode_startup(&mut BytesMut::from(&[255u8, 255, 255, 255][..]))
                .is_err()
        );
        assert!(matches!(
            dec().decode_startup(&mut BytesMut::from(&[0u8, 0, 0, 9, 0, 2, 0, 0, 0][..])),
            Err(PgProtocolError::UnsupportedVersion { major: 2, .. })
        ));
    }

    #[test]
    fn tagged_messages() {
        let mut b = tagged(b'Q', b"SELECT 1\0");
        b.extend_from_slice(&tagged(b'S', b""));
        let d = dec();
        let q = d.decode(&mut b).ok().flatten();
        assert_eq!(
            q.as_ref().map(|f| &f.message),
            Some(&PgFrontendMessage::Query {
                sql: "SELECT 1".into()
            })
        );
        assert_eq!(q.map(|f| f.raw.len()), Some(14));
        assert_eq!(
            d.decode(&mut b).ok().flatten().map(|f| f.message),
            Some(PgFrontendMessage::Sync)
        );
        assert!(b.is_empty());

        let mut parse = tagged(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            d.decode(&mut parse).ok().flatten().map(|f| f.message),
            Some(PgFrontendMessage::Parse {
                statement: "s1".into(),
                sql: "SELECT $1".into(),
                param_types: vec![23]
            })
        );
        let mut exec = tagged(b'E', b"\0\0\0\0\x05");
        assert_eq!(
            d.decode(&mut exec).ok().flatten().map(|f| f.message),
            Some(PgFrontendMessage::Execute {
                portal: String::new(),
                max_rows: 5
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let d = dec();
        for bad in [
            tagged(b'Q', b"SELECT 1"),        // unterminated
            tagged(b'Q', b"SELECT 1\0extra"), // trailing
            tagged(b'Q', b"\xff\xfe\0"),      // not UTF-8
            tagged(b'P', b"s\0q\0\0\x05"),    // 5 params announced, none present
            tagged(b'D', b"Xname\0"),         // bad target
            tagged(b'E', b"\0\0\0"),          // truncated max_rows
            tagged(b'S', b"x"),               // Sync with a body
            tagged(b'?', b""),                // unknown
        ] {
            let mut b = bad.clone();
            assert!(d.decode(&mut b).is_err(), "{bad:?}");
        }
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            d.decode(&mut huge),
            Err(PgProtocolError::TooLarge { .. })
        ));
        let mut negative = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xfe][..]);
        assert!(matches!(
            d.decode(&mut negative),
            Err(PgProtocolError::BadLength(-2))
        ));
        let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            d.decode(&mut short),
            Err(PgProtocolError::BadLength(3))
        ));
    }
}

//! The connection phase: the server's greeting (`HandshakeV10`), the client's
//! `HandshakeResponse41` (or its short `SSLRequest` form), and the OK / ERR / EOF
//! packets both phases end with.

use bytes::{BufMut, BytesMut};

use crate::MysqlProtocolError;
use crate::wire::{Reader, put_lenenc, put_lenenc_bytes, put_nul_str};

/// Capability flags (the ones the proxy looks at or negotiates).
pub mod caps {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;

    /// What the gateway offers clients. Left out on purpose: compression, session
    /// tracking, query attributes and optional metadata (they change packet layouts
    /// the proxy must read), and LOCAL_FILES (added only when the listener allows it).
    pub const OFFERED: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC_CLIENT_DATA
        | DEPRECATE_EOF;

    /// Flags that only shape the session's semantics or packet layouts; these pass
    /// from the client's choice to the backend.
    pub const SESSION: u32 = FOUND_ROWS
        | LONG_FLAG
        | NO_SCHEMA
        | IGNORE_SPACE
        | INTERACTIVE
        | TRANSACTIONS
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | DEPRECATE_EOF
        | LOCAL_FILES;
}

/// Server status flags the proxy reads.
pub mod status {
    pub const AUTOCOMMIT: u16 = 0x0002;
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const CURSOR_EXISTS: u16 = 0x0040;
}

/// `utf8mb4_general_ci`, the collation the gateway's greeting announces.
pub const DEFAULT_COLLATION: u8 = 45;

/// The greeting a server sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    pub collation: u8,
    pub status: u16,
    /// The nonce the client proves its password with (20 bytes, or 32 for ed25519
    /// after an auth switch).
    pub scramble: Vec<u8>,
    pub auth_plugin: String,
}

impl Greeting {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "server greeting");
        if r.u8()? != 10 {
            return Err(r.err("unsupported protocol version"));
        }
        let server_version = String::from_utf8_lossy(r.nul_str()?).into_owned();
        let connection_id = r.u32()?;
        let mut scramble = r.take(8)?.to_vec();
        r.u8()?;
        let mut capabilities = u32::from(r.u16()?);
        let mut collation = DEFAULT_COLLATION;
        let mut status = 0;
        let mut auth_plugin = String::from("mysql_native_password");
        if !r.is_empty() {
            collation = r.u8()?;
            status = r.u16()?;
            capabilities |= u32::from(r.u16()?) << 16;
            let data_len = usize::from(r.u8()?);
            r.take(10)?;
            if capabilities & caps::SECURE_CONNECTION != 0 {
                let n = data_len.saturating_sub(8).max(13);
                let part2 = r.take(n.min(r.remaining()))?;
                // The second part ends with a NUL that is not part of the nonce.
                let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
                scramble.extend_from_slice(part2);
            }
            if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
                let name = match r.nul_str() {
                    Ok(n) => n,
                    // Some servers omit the final NUL.
                    Err(_) => r.rest(),
                };
                auth_plugin = String::from_utf8_lossy(name).into_owned();
            }
        }
        if scramble.len() < 20 {
            return Err(r.err("nonce too short"));
        }
        Ok(Self {
            server_version,
            connection_id,
            capabilities,
            collation,
            status,
            scramble,
            auth_plugin,
        })
    }

    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(96);
        b.put_u8(10);
        put_nul_str(&mut b, self.server_version.as_bytes());
        b.put_u32_le(self.connection_id);
        b.extend_from_slice(&self.scramble[..8]);
        b.put_u8(0);
        b.put_u16_le(self.capabilities as u16);
        b.put_u8(self.collation);
        b.put_u16_le(self.status);
        b.put_u16_le((self.capabilities >> 16) as u16);
        b.put_u8((self.scramble.len() + 1) as u8);
        b.extend_from_slice(&[0; 10]);
        put_nul_str(&mut b, &self.scramble[8..]);
        put_nul_str(&mut b, self.auth_plugin.as_bytes());
        b
    }
}

/// What a client answers the greeting with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// The short form: switch to TLS, then the full response follows.
    SslRequest {
        capabilities: u32,
    },
    Response(HandshakeResponse),
}

/// The client's full `HandshakeResponse41`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub collation: u8,
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    pub auth_plugin: Option<String>,
    pub attributes: Vec<(String, String)>,
}

impl ClientHello {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "handshake response");
        let capabilities = r.u32()?;
        if capabilities & caps::PROTOCOL_41 == 0 {
            return Err(r.err("the client does not speak protocol 4.1"));
        }
        let max_packet = r.u32()?;
        let collation = r.u8()?;
        r.take(23)?;
        if r.is_empty() && capabilities & caps::SSL != 0 {
            return Ok(Self::SslRequest { capabilities });
        }
        let user = String::from_utf8_lossy(r.nul_str()?).into_owned();
        let auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_str()?.to_vec()
        } else if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(r.u8()?);
            r.take(n)?.to_vec()
        } else {
            r.nul_str()?.to_vec()
        };
        let database = if capabilities & caps::CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(String::from_utf8_lossy(r.nul_str()?).into_owned())
        } else {
            None
        };
        let auth_plugin = if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(String::from_utf8_lossy(r.nul_str()?).into_owned())
        } else {
            None
        };
        let mut attributes = Vec::new();
        if capabilities & caps::CONNECT_ATTRS != 0 && !r.is_empty() {
            let len = usize::try_from(r.lenenc_int()?).map_err(|_| r.err("bad attributes"))?;
            let block = r.take(len)?;
            let mut a = Reader::new(block, "connection attributes");
            while !a.is_empty() {
                let k = String::from_utf8_lossy(a.lenenc_str()?).into_owned();
                let v = String::from_utf8_lossy(a.lenenc_str()?).into_owned();
                attributes.push((k, v));
            }
        }
        Ok(Self::Response(HandshakeResponse {
            capabilities,
            max_packet,
            collation,
            user,
            auth_response,
            database,
            auth_plugin,
            attributes,
        }))
    }
}

impl HandshakeResponse {
    /// The 32-byte head shared by the full response and the `SSLRequest`.
    fn put_head(&self, b: &mut BytesMut) {
        b.put_u32_le(self.capabilities);
        b.put_u32_le(self.max_packet);
        b.put_u8(self.collation);
        b.extend_from_slice(&[0; 23]);
    }

    /// The `SSLRequest` that precedes this response when TLS is wanted.
    pub fn encode_ssl_request(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(32);
        self.put_head(&mut b);
        b
    }

    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(128 + self.auth_response.len());
        self.put_head(&mut b);
        put_nul_str(&mut b, self.user.as_bytes());
        if self.capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(&mut b, &self.auth_response);
        } else {
            b.put_u8(self.auth_response.len().min(255) as u8);
            b.extend_from_slice(&self.auth_response[..self.auth_response.len().min(255)]);
        }
        if self.capabilities & caps::CONNECT_WITH_DB != 0 {
            put_nul_str(&mut b, self.database.as_deref().unwrap_or("").as_bytes());
        }
        if self.capabilities & caps::PLUGIN_AUTH != 0 {
            put_nul_str(&mut b, self.auth_plugin.as_deref().unwrap_or("").as_bytes());
        }
        if self.capabilities & caps::CONNECT_ATTRS != 0 {
            let mut attrs = BytesMut::new();
            for (k, v) in &self.attributes {
                put_lenenc_bytes(&mut attrs, k.as_bytes());
                put_lenenc_bytes(&mut attrs, v.as_bytes());
            }
            put_lenenc_bytes(&mut b, &attrs);
        }
        b
    }
}

/// An `ERR` packet.
pub fn err_packet(code: u16, sqlstate: &str, message: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(9 + message.len());
    b.put_u8(0xFF);
    b.put_u16_le(code);
    b.put_u8(b'#');
    let state = sqlstate.as_bytes();
    let mut five = [b'0'; 5];
    five[..state.len().min(5)].copy_from_slice(&state[..state.len().min(5)]);
    b.extend_from_slice(&five);
    b.extend_from_slice(message.as_bytes());
    b
}

/// An `OK` packet with no rows affected.
pub fn ok_packet(status: u16) -> BytesMut {
    let mut b = BytesMut::with_capacity(7);
    b.put_u8(0);
    put_lenenc(&mut b, 0);
    put_lenenc(&mut b, 0);
    b.put_u16_le(status);
    b.put_u16_le(0);
    b
}

/// An `AuthSwitchRequest` asking the client to log in with `plugin`.
pub fn auth_switch(plugin: &str, data: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(2 + plugin.len() + data.len());
    b.put_u8(0xFE);
    put_nul_str(&mut b, plugin.as_bytes());
    b.extend_from_slice(data);
    b
}

/// A decoded `ERR` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

impl ServerError {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "ERR packet");
        if r.u8()? != 0xFF {
            return Err(r.err("not an error"));
        }
        let code = r.u16()?;
        let sqlstate = if r.peek() == Some(b'#') {
            r.u8()?;
            String::from_utf8_lossy(r.take(5)?).into_owned()
        } else {
            "HY000".into()
        };
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(Self {
            code,
            sqlstate,
            message,
        })
    }

    pub fn encode(&self) -> BytesMut {
        err_packet(self.code, &self.sqlstate, &self.message)
    }
}

/// Collations (handshake ids) of the character sets in which a multi-byte character
/// can end in an ASCII byte such as `\` or `'` (big5, sjis, gbk, cp932, gb18030): a
/// server reading the client's text in one of them sees quotes where the gateway,
/// reading UTF-8, does not, so statements could hide from its checks.
const QUOTE_UNSAFE_COLLATIONS: &[u8] = &[1, 13, 28, 84, 87, 88, 95, 96, 248, 249, 250];

/// Whether a client may log in with this handshake collation.
pub fn quote_safe_collation(id: u8) -> bool {
    !QUOTE_UNSAFE_COLLATIONS.contains(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trips() {
        let g = Greeting {
            server_version: "10.11.0-warden".into(),
            connection_id: 7,
            capabilities: caps::OFFERED | caps::SSL,
            collation: DEFAULT_COLLATION,
            status: status::AUTOCOMMIT,
            scramble: (1..=20).collect(),
            auth_plugin: "mysql_native_password".into(),
        };
        assert_eq!(Greeting::decode(&g.encode()).unwrap(), g);
    }

    #[test]
    fn responses_round_trip_with_and_without_ssl() {
        let r = HandshakeResponse {
            capabilities: caps::OFFERED,
            max_packet: 1 << 24,
            collation: 33,
            user: "alice".into(),
            auth_response: vec![9; 300],
            database: Some("billing".into()),
            auth_plugin: Some("mysql_clear_password".into()),
            attributes: vec![("program_name".into(), "mysql".into())],
        };
        assert_eq!(
            ClientHello::decode(&r.encode()).unwrap(),
            ClientHello::Response(r.clone())
        );
        let ssl = HandshakeResponse {
            capabilities: r.capabilities | caps::SSL,
            ..r
        };
        assert_eq!(
            ClientHello::decode(&ssl.encode_ssl_request()).unwrap(),
            ClientHello::SslRequest {
                capabilities: ssl.capabilities
            }
        );
    }

    #[test]
    fn malformed_handshakes_are_errors() {
        assert!(ClientHello::decode(&[]).is_err());
        assert!(ClientHello::decode(&[0; 32]).is_err()); // no PROTOCOL_41
        let mut b = HandshakeResponse {
            capabilities: caps::OFFERED,
            user: "u".into(),
            ..Default::default()
        }
        .encode();
        b.truncate(34);
        assert!(ClientHello::decode(&b).is_err());
        assert!(Greeting::decode(&[10, b'x']).is_err());
    }

    #[test]
    fn errors_round_trip() {
        let e = ServerError {
            code: 1227,
            sqlstate: "42000".into(),
            message: "denied".into(),
        };
        assert_eq!(ServerError::decode(&e.encode()).unwrap(), e);
    }
}

//! Logging in to a MySQL or MariaDB server with the credential the gateway holds:
//! TLS first when the connection asks for it (never a silent fallback to plain
//! text), then `mysql_native_password`, `caching_sha2_password` (fast path, and full
//! authentication over TLS or with the server's RSA key) or MariaDB's
//! `client_ed25519`, following the server's auth switches.
//!
//! The password leaves this module only as the plugin requires (in clear only over
//! TLS); errors carry the server's message, never the secret.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use warden_core::{DialError, Dialer, Secret};
use warden_net::{BackendTls, BoxedStream};

use crate::MysqlProtocolError;
use crate::auth::{self, AuthError};
use crate::handshake::{Greeting, HandshakeResponse, ServerError, caps};
use crate::packet::{Packet, PacketDecoder, put_packet};
use crate::resultset::OkInfo;
use crate::wire::Reader;

/// The largest packet accepted during the login.
const LOGIN_MAX_PACKET: usize = 1 << 20;

/// What the proxy asks of the backend login.
pub struct BackendLogin<'a> {
    /// Opens the connection (the session's dialer).
    pub dialer: &'a dyn Dialer,
    pub addr: &'a str,
    pub user: &'a str,
    /// Empty: no default database.
    pub database: &'a str,
    pub password: Option<&'a Secret<String>>,
    pub tls: Option<&'a BackendTls>,
    /// The client's session-shaping capability flags (see [`caps::SESSION`]).
    pub client_capabilities: u32,
    pub collation: u8,
    /// Connection attributes the server shows in its session tables.
    pub attributes: Vec<(String, String)>,
}

/// A logged-in server connection.
pub struct BackendSession {
    pub stream: BoxedStream,
    /// Bytes read past the login (normally none).
    pub buffer: BytesMut,
    pub greeting: Greeting,
    /// The flags in force on this connection.
    pub capabilities: u32,
    pub status: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Unreachable(DialError),
    #[error("the database does not offer TLS, which this connection requires")]
    NoTls,
    /// Why, with the fix named when the certificate was refused.
    #[error("TLS with the database failed: {0}")]
    Tls(String),
    #[error("the database server refused the login ({}): {}", .0.code, .0.message)]
    Refused(ServerError),
    #[error("the database server asked for an unsupported authentication method ({0})")]
    Unsupported(String),
    #[error(
        "the database server asked for the password in clear over an unencrypted connection; refused"
    )]
    ClearWithoutTls,
    #[error("authentication step failed: {0}")]
    Auth(#[from] AuthError),
    #[error("protocol error during login: {0}")]
    Protocol(#[from] MysqlProtocolError),
    #[error("connection to the database server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database server closed the connection during login")]
    Closed,
    #[error("the database server did not complete the login in time")]
    TimedOut,
}

/// Reads one packet, reading more from `stream` as needed.
pub async fn read_packet(
    stream: &mut BoxedStream,
    buf: &mut BytesMut,
    decoder: &PacketDecoder,
) -> Result<Packet, LoginError> {
    loop {
        if let Some(p) = decoder.decode(buf)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(LoginError::Closed);
        }
    }
}

async fn send(stream: &mut BoxedStream, seq: u8, payload: &[u8]) -> Result<(), LoginError> {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    let mut s = seq;
    put_packet(&mut out, &mut s, payload);
    warden_net::write_flushed(stream, &out).await?;
    Ok(())
}

/// The first answer for `plugin` to `nonce`; `None` when the plugin is not one the
/// proxy speaks.
fn plugin_response(
    plugin: &str,
    password: &[u8],
    nonce: &[u8],
    encrypted: bool,
) -> Result<Option<Vec<u8>>, LoginError> {
    Ok(Some(match plugin {
        auth::NATIVE => auth::native_password(password, nonce),
        auth::CACHING_SHA2 => auth::caching_sha2(password, nonce),
        auth::ED25519 => auth::ed25519_signature(password, nonce)?,
        auth::CLEAR if encrypted => {
            let mut p = password.to_vec();
            p.push(0);
            p
        }
        auth::CLEAR => return Err(LoginError::ClearWithoutTls),
        _ => return Ok(None),
    }))
}

/// Connects and logs in.
pub async fn login(req: BackendLogin<'_>) -> Result<BackendSession, LoginError> {
    let mut stream = req
        .dialer
        .dial(req.addr)
        .await
        .map_err(LoginError::Unreachable)?;
    let decoder = PacketDecoder::new(LOGIN_MAX_PACKET);
    let mut buf = BytesMut::new();
    let first = read_packet(&mut stream, &mut buf, &decoder).await?;
    if first.payload.first() == Some(&0xFF) {
        return Err(LoginError::Refused(ServerError::decode(&first.payload)?));
    }
    let greeting = Greeting::decode(&first.payload)?;
    if greeting.capabilities & caps::PROTOCOL_41 == 0 {
        return Err(LoginError::Unsupported("pre-4.1 protocol".into()));
    }
    let mut capabilities = (caps::PROTOCOL_41
        | caps::LONG_PASSWORD
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
        | caps::CONNECT_ATTRS
        | (req.client_capabilities & caps::SESSION))
        & greeting.capabilities;
    if !req.database.is_empty() {
        capabilities |= caps::CONNECT_WITH_DB & greeting.capabilities;
    }
    let mut seq = first.next_seq();
    let encrypted = req.tls.is_some();
    if let Some(tls) = req.tls {
        if greeting.capabilities & caps::SSL == 0 {
            return Err(LoginError::NoTls);
        }
        capabilities |= caps::SSL;
        let head = HandshakeResponse {
            capabilities,
            max_packet: 1 << 30,
            collation: req.collation,
            ..HandshakeResponse::default()
        };
        send(&mut stream, seq, &head.encode_ssl_request()).await?;
        seq = seq.wrapping_add(1);
        if !buf.is_empty() {
            return Err(MysqlProtocolError::Malformed {
                what: "server greeting",
                detail: "data before the TLS handshake",
            }
            .into());
        }
        let stream_tls = tls
            .connector
            .connect(tls.server_name.clone(), stream)
            .await
            .map_err(|e| LoginError::Tls(warden_net::handshake_failure(&e)))?;
        stream = Box::new(stream_tls);
    }
    let password: &[u8] = req.password.map_or(b"", |p| p.expose().as_bytes());
    let mut plugin = greeting.auth_plugin.clone();
    let auth_response = match plugin_response(&plugin, password, &greeting.scramble, encrypted) {
        Ok(Some(r)) => r,
        // Answer something and let the server switch to a plugin we speak.
        Ok(None) | Err(LoginError::Auth(_)) | Err(LoginError::ClearWithoutTls) => {
            plugin = auth::NATIVE.into();
            auth::native_password(password, &greeting.scramble)
        }
        Err(e) => return Err(e),
    };
    let response = HandshakeResponse {
        capabilities,
        max_packet: 1 << 30,
        collation: req.collation,
        user: req.user.to_string(),
        auth_response,
        database: (!req.database.is_empty()).then(|| req.database.to_string()),
        auth_plugin: Some(plugin.clone()),
        attributes: req.attributes,
    };
    send(&mut stream, seq, &response.encode()).await?;
    let mut nonce = greeting.scramble.clone();
    loop {
        let p = read_packet(&mut stream, &mut buf, &decoder).await?;
        let next = p.next_seq();
        match p.payload.first() {
            Some(0x00) => {
                let ok = OkInfo::decode(&p.payload)?;
                return Ok(BackendSession {
                    stream,
                    buffer: buf,
                    greeting,
                    capabilities,
                    status: ok.status,
                });
            }
            Some(0xFF) => return Err(LoginError::Refused(ServerError::decode(&p.payload)?)),
            Some(0xFE) => {
                let mut r = Reader::new(&p.payload[1..], "auth switch");
                plugin = String::from_utf8_lossy(r.nul_str()?).into_owned();
                nonce = r.rest().to_vec();
                let answer = plugin_response(&plugin, password, &nonce, encrypted)?
                    .ok_or_else(|| LoginError::Unsupported(plugin.clone()))?;
                send(&mut stream, next, &answer).await?;
            }
            Some(0x01) if plugin == auth::CACHING_SHA2 => match p.payload.get(1) {
                // Fast authentication succeeded; the OK follows.
                Some(3) => {}
                // Full authentication: the password itself, protected by TLS or by
                // the server's RSA key.
                Some(4) if encrypted => {
                    let mut clear = password.to_vec();
                    clear.push(0);
                    send(&mut stream, next, &clear).await?;
                }
                Some(4) => {
                    send(&mut stream, next, &[0x02]).await?;
                    let key = read_packet(&mut stream, &mut buf, &decoder).await?;
                    if key.payload.first() != Some(&0x01) {
                        return Err(AuthError::BadPublicKey.into());
                    }
                    let encrypted =
                        auth::rsa_encrypted_password(password, &nonce, &key.payload[1..])?;
                    send(&mut stream, key.next_seq(), &encrypted).await?;
                }
                _ => return Err(LoginError::Unsupported("caching_sha2_password step".into())),
            },
            _ => return Err(LoginError::Unsupported(format!("{plugin} exchange"))),
        }
    }
}

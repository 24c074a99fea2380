//! A MySQL session's start: the greeting, the client's handshake (TLS when the
//! listener has a certificate), its token (or the tunnel's), the session opened
//! through the hooks and the backend login with the held credential, all within the
//! login timeout; then the relay, and at its end the kill of a query left running.

use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_core::{
    ConnectionKind, Dialer, EndReason, LoginRequest, SessionHandle, SessionHooks, SqlDialect,
    TunnelLogin,
};
use warden_net::{BackendTls, BoxedStream, Rewind};

use super::relay::Relay;
use super::{ConnectionId, ProxyConfig, ServerThread, refusal_errno, scramble};
use crate::auth;
use crate::errno;
use crate::handshake::{
    ClientHello, DEFAULT_COLLATION, Greeting, auth_switch, caps, err_packet, ok_packet, status,
};
use crate::login::{BackendLogin, LoginError, login};
use crate::packet::{Packet, PacketDecoder, put_packet};

/// Where the login conversation with the client stands.
struct ClientLogin {
    stream: BoxedStream,
    buf: BytesMut,
    decoder: PacketDecoder,
    deadline: tokio::time::Instant,
    /// The sequence id of our next packet.
    seq: u8,
}

impl ClientLogin {
    async fn packet(&mut self) -> Option<Packet> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) if p.seq == self.seq => {
                    self.seq = p.next_seq();
                    return Some(p);
                }
                Ok(Some(_)) | Err(_) => {
                    self.error(errno::HANDSHAKE, "bad handshake packet").await;
                    return None;
                }
                Ok(None) => {}
            }
            match tokio::time::timeout_at(self.deadline, self.stream.read_buf(&mut self.buf)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn send(&mut self, payload: &[u8]) -> bool {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        put_packet(&mut out, &mut self.seq, payload);
        warden_net::write_flushed(&mut self.stream, &out)
            .await
            .is_ok()
    }

    async fn error(&mut self, (code, state): (u16, &str), message: &str) {
        let _ = self.send(&err_packet(code, state, message)).await;
        let _ = self.stream.shutdown().await;
    }
}

pub(super) async fn serve_stream<H: SessionHooks>(
    stream: BoxedStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
    tunnel: Option<TunnelLogin>,
) {
    let mut c = ClientLogin {
        stream,
        buf: BytesMut::new(),
        decoder: PacketDecoder::new(64 * 1024),
        deadline: tokio::time::Instant::now() + config.login_timeout,
        seq: 0,
    };
    let nonce = scramble();
    let mut offered = caps::OFFERED;
    if config.tls.is_some() && tunnel.is_none() {
        offered |= caps::SSL;
    }
    if config.allow_local_infile {
        offered |= caps::LOCAL_FILES;
    }
    let connection_id = ConnectionId::reserve(&config.threads);
    let greeting = Greeting {
        server_version: config.server_version.clone(),
        connection_id: connection_id.id,
        capabilities: offered,
        collation: DEFAULT_COLLATION,
        status: status::AUTOCOMMIT,
        scramble: nonce.clone(),
        auth_plugin: auth::NATIVE.into(),
    };
    if !c.send(&greeting.encode()).await {
        return;
    }
    let Some(first) = c.packet().await else {
        return;
    };
    let mut encrypted = false;
    let hello = match ClientHello::decode(&first.payload) {
        Ok(ClientHello::SslRequest { .. }) => {
            let Some(acceptor) = config.tls.clone() else {
                return c
                    .error(errno::HANDSHAKE, "this listener has no TLS certificate")
                    .await;
            };
            // MySQL clients start the handshake without waiting for an answer: what
            // was read after the request is its first bytes.
            let plain = std::mem::replace(&mut c.stream, Box::new(tokio::io::empty()));
            let plain = Rewind::new(std::mem::take(&mut c.buf), plain);
            match tokio::time::timeout_at(c.deadline, acceptor.accept(plain)).await {
                Ok(Ok(s)) => c.stream = Box::new(s),
                _ => return,
            }
            encrypted = true;
            let Some(full) = c.packet().await else {
                return;
            };
            match ClientHello::decode(&full.payload) {
                Ok(ClientHello::Response(r)) => r,
                _ => return c.error(errno::HANDSHAKE, "bad handshake response").await,
            }
        }
        Ok(ClientHello::Response(r)) => r,
        Err(e) => return c.error(errno::HANDSHAKE, &e.to_string()).await,
    };
    if tunnel.is_none() && !encrypted && !config.allow_plaintext_tokens && !peer.ip().is_loopback()
    {
        let message = if config.tls.is_some() {
            "token authentication over plain TCP is refused for non-loopback clients: connect with TLS (--ssl)"
        } else {
            "token authentication over plain TCP is refused for non-loopback clients, and this listener has no TLS certificate"
        };
        return c.error(errno::ACCESS_DENIED, message).await;
    }
    let named = match &tunnel {
        Some(t) => Some(t.connection.clone()),
        None => hello.database.clone().filter(|d| !d.is_empty()),
    };
    let Some(connection) = named else {
        return c
            .error(
                errno::NO_DB,
                "name the Warden connection as the database (e.g. `mysql -h gateway -P 13306 -u you -p billing`)",
            )
            .await;
    };
    // The token: sent in clear (the only way a server can check a token it did not
    // issue), so ask for `mysql_clear_password` unless the client already used it.
    let token = if let Some(t) = &tunnel {
        t.token.expose().as_bytes().to_vec()
    } else if hello.auth_plugin.as_deref() == Some(auth::CLEAR) {
        hello.auth_response.clone()
    } else {
        let mut data = nonce.clone();
        data.push(0);
        if !c.send(&auth_switch(auth::CLEAR, &data)).await {
            return;
        }
        match c.packet().await {
            Some(p) => p.payload.to_vec(),
            None => return,
        }
    };
    let token = String::from_utf8_lossy(token.strip_suffix(&[0]).unwrap_or(&token)).into_owned();
    let request = LoginRequest {
        protocol: ConnectionKind::Mysql,
        connection: &connection,
        user: &hello.user,
        token: &token,
        client: peer,
    };
    let session = match hooks.open(request).await {
        Ok(h) => Arc::new(h),
        Err(r) => return c.error(refusal_errno(r.kind), &r.message).await,
    };
    let id = session.id().to_string();
    if !crate::handshake::quote_safe_collation(hello.collation) {
        let message = format!(
            "the client's character set (collation {}) lets a character end in a quote or backslash, which would hide statements from the gateway's checks; connect with utf8mb4 (the default) or another ASCII-safe character set",
            hello.collation
        );
        session
            .close(Some(EndReason::Refused(message.clone())))
            .await;
        return c.error(errno::UNKNOWN_CHARACTER_SET, &message).await;
    }
    let tls = match BackendTls::for_target(&session.target) {
        Ok(t) => t,
        Err(e) => {
            let message = format!("the connection's TLS settings cannot be used: {e}");
            session
                .close(Some(EndReason::BackendGone(message.clone())))
                .await;
            return c.error(errno::GATEWAY, &message).await;
        }
    };
    let client_caps = hello.capabilities & offered;
    let mut attributes = vec![
        ("_client_name".to_string(), "warden".to_string()),
        ("warden_session".to_string(), id.clone()),
    ];
    if let Some((_, p)) = hello.attributes.iter().find(|(k, _)| k == "program_name") {
        attributes.push(("program_name".into(), p.clone()));
    }
    let backend = Backend {
        target: session.clone(),
        dialer: session.dialer(),
        tls,
    };
    // A database that accepts connections but never answers must not hold the
    // session (and its client) forever.
    let backend_login = backend.login(client_caps, hello.collation, attributes);
    let logged_in = tokio::time::timeout(config.login_timeout, login(backend_login))
        .await
        .unwrap_or(Err(LoginError::TimedOut));
    let server = match logged_in {
        Ok(s) => s,
        Err(e) => {
            let (reason, message) = match &e {
                LoginError::Unreachable(_)
                | LoginError::NoTls
                | LoginError::Tls(_)
                | LoginError::TimedOut => (
                    format!("backend unreachable: {e}"),
                    format!("the database behind this connection cannot be reached: {e}"),
                ),
                _ => (
                    "backend login failed".to_string(),
                    format!("the gateway could not log in to the database: {e}"),
                ),
            };
            session.close(Some(EndReason::BackendGone(reason))).await;
            return c.error(errno::GATEWAY, &message).await;
        }
    };
    if !c.send(&ok_packet(server.status)).await {
        session
            .close(Some(EndReason::Internal("client left during login".into())))
            .await;
        return;
    }
    let server_thread = server.greeting.connection_id;
    let this_thread = ServerThread {
        addr: session.target.addr.clone(),
        user: session.target.user.clone(),
        thread: server_thread,
    };
    connection_id.bind(this_thread.clone());
    let mut relay = Relay {
        client: c.stream,
        client_buf: c.buf,
        client_out: BytesMut::new(),
        client_seq: 0,
        server: server.stream,
        server_buf: server.buffer,
        server_seq: 0,
        decoder: PacketDecoder::new(config.max_packet),
        client_eof: client_caps & caps::DEPRECATE_EOF != 0,
        server_eof: server.capabilities & caps::DEPRECATE_EOF != 0,
        local_infile: config.allow_local_infile && server.capabilities & caps::LOCAL_FILES != 0,
        session: session.clone(),
        dialect: server_dialect(&server.greeting.server_version),
        prepared: HashMap::new(),
        last_prepared: None,
        awaiting: false,
        threads: config.threads.clone(),
        this_thread,
        statement: None,
    };
    let mut ended = session.ended();
    let (reason, by_gateway) = tokio::select! {
        r = relay.run() => (r, false),
        r = ended.wait() => (Some(EndReason::Ended(r)), true),
    };
    let reason = session.failure().or(reason);
    if by_gateway {
        if !relay.awaiting {
            // Idle: the error is read as the answer to the client's next command
            // (whose answer starts at sequence id 1), so it is shown, not taken for
            // a protocol fault.
            relay.client_seq = 1;
        }
        if let Some(why) = &reason {
            relay.refuse(errno::KILLED, &why.to_string());
        }
        let _ = relay.flush_client().await;
    } else if let Some(why) = reason
        .as_ref()
        .filter(|r| !matches!(r, EndReason::ClientGone | EndReason::ClientProtocol(_)))
    {
        // The client is told why its session ends (it was refused already when it
        // broke the protocol itself).
        relay.refuse(errno::GATEWAY, &why.to_string());
        let _ = relay.flush_client().await;
    }
    drop(connection_id);
    if (reason == Some(EndReason::ClientGone) || by_gateway) && relay.awaiting {
        // The server notices a closed socket only when it next writes: stop the
        // query that was running for nobody.
        kill_query(&backend, server_thread, config.login_timeout).await;
    }
    drop(relay);
    session.close(reason).await;
}

/// The backend a session logs in to, kept for the kill connection.
struct Backend {
    target: Arc<SessionHandle>,
    dialer: Arc<dyn Dialer>,
    tls: Option<BackendTls>,
}

impl Backend {
    fn login(
        &self,
        client_capabilities: u32,
        collation: u8,
        attributes: Vec<(String, String)>,
    ) -> BackendLogin<'_> {
        let target = &self.target.target;
        BackendLogin {
            dialer: self.dialer.as_ref(),
            addr: &target.addr,
            user: &target.user,
            database: &target.database,
            password: target.secret.as_ref(),
            tls: self.tls.as_ref(),
            client_capabilities,
            collation,
            attributes,
        }
    }
}

/// Kills the query a server thread is running, over a connection of its own.
async fn kill_query(backend: &Backend, thread: u32, timeout: Duration) {
    let attrs = vec![("_client_name".to_string(), "warden".to_string())];
    let logging_in = login(backend.login(0, DEFAULT_COLLATION, attrs));
    let Ok(Ok(mut s)) = tokio::time::timeout(timeout, logging_in).await else {
        return;
    };
    let mut out = BytesMut::new();
    let mut seq = 0;
    put_packet(
        &mut out,
        &mut seq,
        format!("\x03KILL QUERY {thread}").as_bytes(),
    );
    let _ = warden_net::write_flushed(&mut s.stream, &out).await;
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.stream.read_buf(&mut buf)).await;
}

/// How the server reads statements, from the version its greeting announces
/// (MariaDB says so, behind a `5.5.5-` prefix on older versions).
fn server_dialect(version: &str) -> SqlDialect {
    if version.to_ascii_lowercase().contains("mariadb") {
        SqlDialect::Mariadb
    } else {
        SqlDialect::Mysql
    }
}

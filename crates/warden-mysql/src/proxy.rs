//! One client session through the MySQL proxy: greeting, TLS upgrade when
//! configured, the token through `mysql_clear_password`, the backend login with the
//! held credential, then the command relay.
//!
//! The classic protocol is strictly request/response, so the relay is one loop: read
//! a command, decide it, record it (audit-before-execute: a failed record refuses
//! the command), forward it, then relay its whole answer, masking every row of every
//! result set. A denied command never reaches the server; the client gets an `ERR`
//! (1227, naming the rule) and the session goes on. While an answer is awaited the
//! client socket is watched too: a client that vanishes ends the session and its
//! running query is killed on the server.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::{
    Action, Admission, ClientWatch, ColumnPlan, Command, ConnectionKind, Decision, DenialCause,
    Dialer, EndReason, LoginRequest, RefusalKind, SessionHandle, SessionHooks, SqlDialect,
    TimelineEvent, TunnelLogin,
};
use warden_net::{BackendTls, BoxedStream, Rewind, SessionRegistry};

use crate::MysqlProtocolError;
use crate::auth;
use crate::command::{LAST_PREPARED, MysqlCommand, StmtExecute};
use crate::errno;
use crate::handshake::{
    ClientHello, DEFAULT_COLLATION, Greeting, ServerError, auth_switch, caps, err_packet,
    ok_packet, status,
};
use crate::login::{BackendLogin, LoginError, login};
use crate::packet::{Packet, PacketDecoder, put_packet};
use crate::resultset::{
    ColumnDef, OkInfo, ResponseHead, binary_row_values, eof_to_ok, is_terminator, mask_binary_row,
    mask_error, mask_text_row, terminator_status, text_row_values,
};

/// Listener-level settings.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Accept tokens over plain TCP from non-loopback clients.
    pub allow_plaintext_tokens: bool,
    /// Offers `CLIENT_SSL` when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Largest packet (after joining fragments) accepted from either side.
    pub max_packet: usize,
    /// How long a client has to finish its login.
    pub login_timeout: Duration,
    /// Let `LOAD DATA LOCAL INFILE` through (the server then reads a file from the
    /// client's machine). Off by default.
    pub allow_local_infile: bool,
    /// The server version announced in the greeting.
    pub server_version: String,
    /// Shared by all sessions of a listener: what `KILL <id>` means.
    pub threads: ThreadMap,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            allow_plaintext_tokens: false,
            tls: None,
            max_packet: 1 << 30,
            login_timeout: Duration::from_secs(30),
            allow_local_infile: false,
            server_version: "8.0.36-warden".into(),
            threads: ThreadMap::default(),
        }
    }
}

/// The connection ids the gateway gave clients (in its greetings) → the server
/// thread behind each, so `KILL [QUERY] <id>` from another session — what the `mysql`
/// client sends on Ctrl-C — reaches the right thread. Clients never see the servers'
/// thread ids, and an id that is not one of ours is left to the server.
pub type ThreadMap = SessionRegistry<u32, ServerThread>;

/// A server thread: where, as which account, which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerThread {
    addr: String,
    user: String,
    thread: u32,
}

/// `KILL [CONNECTION | QUERY] <id>` as a whole statement: (query only, id).
fn kill_statement(sql: &str) -> Option<(bool, u32)> {
    let text = sql.trim();
    let text = text.strip_suffix(';').unwrap_or(text);
    let words: Vec<&str> = text.split_whitespace().collect();
    let (query, id) = match words.as_slice() {
        [k, id] if k.eq_ignore_ascii_case("kill") => (false, id),
        [k, what, id]
            if k.eq_ignore_ascii_case("kill") && what.eq_ignore_ascii_case("connection") =>
        {
            (false, id)
        }
        [k, what, id] if k.eq_ignore_ascii_case("kill") && what.eq_ignore_ascii_case("query") => {
            (true, id)
        }
        _ => return None,
    };
    id.parse().ok().map(|id| (query, id))
}

const SERVER_GONE: &str = "database connection lost";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// A nonce without NUL bytes (the greeting NUL-terminates its second part).
fn scramble() -> Vec<u8> {
    random_bytes::<20>().iter().map(|b| 1 + b % 126).collect()
}

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
        self.stream.write_all(&out).await.is_ok()
    }

    async fn error(&mut self, (code, state): (u16, &str), message: &str) {
        let _ = self.send(&err_packet(code, state, message)).await;
        let _ = self.stream.shutdown().await;
    }
}

fn refusal_errno(kind: RefusalKind) -> (u16, &'static str) {
    match kind {
        RefusalKind::BadCredentials => errno::ACCESS_DENIED,
        RefusalKind::NoAccess => errno::DB_ACCESS_DENIED,
        RefusalKind::PolicyUnusable => errno::DENIED,
        RefusalKind::Unavailable => errno::GATEWAY,
    }
}

/// Serves one client connection to its end. Errors end this session only.
pub async fn serve_client<H: SessionHooks>(
    tcp: TcpStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
) {
    let _ = tcp.set_nodelay(true);
    serve_stream(Box::new(tcp), peer, hooks, config, None).await;
}

/// Serves a client that came through a tunnel: no TLS offered (the tunnel's
/// transport has its own) and no token asked for (the tunnel carries it and names
/// the connection; the client's database and password are ignored).
pub async fn serve_tunnel<H: SessionHooks>(
    stream: BoxedStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
    tunnel: TunnelLogin,
) {
    serve_stream(stream, peer, hooks, config, Some(tunnel)).await;
}

async fn serve_stream<H: SessionHooks>(
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
    let greeting = Greeting {
        server_version: config.server_version.clone(),
        connection_id: u32::from_le_bytes(random_bytes::<4>()) & 0x7FFF_FFFF,
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
    config
        .threads
        .insert(greeting.connection_id, this_thread.clone());
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
        prepared: HashMap::new(),
        last_prepared: None,
        awaiting: false,
        threads: config.threads.clone(),
        this_thread,
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
    config.threads.remove(&greeting.connection_id);
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
    let _ = s.stream.write_all(&out).await;
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.stream.read_buf(&mut buf)).await;
}

/// A statement prepared through the proxy.
struct Prepared {
    sql: String,
    params: usize,
    /// Parameter types as last bound by an execution.
    types: Option<Vec<u8>>,
    /// Bytes sent per parameter with `COM_STMT_SEND_LONG_DATA` since the last
    /// execution (the server forgets them at each execution and reset).
    long_data: HashMap<u16, u64>,
}

/// How rows of a result set are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowFormat {
    Text,
    Binary,
}

/// Why the relay ends: `None` when the client quit.
type End = Option<EndReason>;

fn protocol_end(who: &str, e: &MysqlProtocolError) -> End {
    Some(if who == "client" {
        EndReason::ClientProtocol(e.to_string())
    } else {
        EndReason::BackendProtocol(e.to_string())
    })
}

fn server_gone() -> End {
    Some(EndReason::BackendGone(SERVER_GONE.into()))
}

/// The client's side of a statement held for review: MySQL has no message to show
/// meanwhile; its socket is read (up to a bound) to notice it leaving.
struct HeldClient<'a> {
    stream: &'a mut BoxedStream,
    buf: &'a mut BytesMut,
}

impl ClientWatch for HeldClient<'_> {
    async fn held(&mut self, _notice: &str) {}

    async fn gone(&mut self) {
        while self.buf.len() < 1 << 20 {
            if matches!(self.stream.read_buf(self.buf).await, Ok(0) | Err(_)) {
                return;
            }
        }
        std::future::pending().await
    }
}

fn denied_message(rule: &str, reason: &str) -> String {
    format!("Warden denied this statement: {reason} (rule {rule})")
}

/// Most bytes held for the client before a write.
const CLIENT_BATCH: usize = 64 * 1024;

/// Room made in a read buffer before each read, so a large answer is taken in a few
/// reads rather than many small ones.
const READ_CHUNK: usize = 32 * 1024;

/// Reads what is available right now without waiting: `None` when nothing is.
async fn read_now(stream: &mut BoxedStream, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

struct Relay {
    client: BoxedStream,
    client_buf: BytesMut,
    client_out: BytesMut,
    client_seq: u8,
    server: BoxedStream,
    server_buf: BytesMut,
    server_seq: u8,
    decoder: PacketDecoder,
    /// Whether each side uses DEPRECATE_EOF (the server may lack it; then the
    /// proxy turns its EOFs into what the client expects).
    client_eof: bool,
    server_eof: bool,
    local_infile: bool,
    session: Arc<SessionHandle>,
    prepared: HashMap<u32, Prepared>,
    last_prepared: Option<u32>,
    /// A command is at the server and its answer not yet complete.
    awaiting: bool,
    threads: ThreadMap,
    /// This session's server thread.
    this_thread: ServerThread,
}

impl Relay {
    async fn run(&mut self) -> End {
        loop {
            let packet = match self.client_command().await {
                Ok(p) => p,
                Err(end) => return end,
            };
            let command = match MysqlCommand::decode(&packet.payload) {
                Ok(c) => c,
                Err(e) => {
                    self.refuse(errno::GATEWAY, &format!("malformed packet: {e}"));
                    let _ = self.flush_client().await;
                    return protocol_end("client", &e);
                }
            };
            if let Err(end) = self.command(command, &packet.payload).await {
                return end;
            }
        }
    }

    // --- I/O ----------------------------------------------------------------------

    async fn flush_client(&mut self) -> Result<(), End> {
        if !self.client_out.is_empty() {
            if self.client.write_all(&self.client_out).await.is_err() {
                return Err(Some(EndReason::ClientGone));
            }
            self.client_out.clear();
        }
        Ok(())
    }

    fn send_client(&mut self, payload: &[u8]) {
        let before = self.client_out.len();
        put_packet(&mut self.client_out, &mut self.client_seq, payload);
        self.session
            .count_out((self.client_out.len() - before) as u64);
    }

    async fn send_client_batched(&mut self, payload: &[u8]) -> Result<(), End> {
        self.send_client(payload);
        if self.client_out.len() >= CLIENT_BATCH {
            self.flush_client().await?;
        }
        Ok(())
    }

    async fn send_server(&mut self, payload: &[u8]) -> Result<(), End> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        put_packet(&mut out, &mut self.server_seq, payload);
        self.server.write_all(&out).await.map_err(|_| server_gone())
    }

    /// The next command: a packet with sequence id 0.
    async fn client_command(&mut self) -> Result<Packet, End> {
        loop {
            match self.decoder.decode(&mut self.client_buf) {
                Ok(Some(p)) if p.seq == 0 => {
                    self.session.count_in(p.wire_len());
                    self.client_seq = p.next_seq();
                    self.server_seq = 0;
                    return Ok(p);
                }
                Ok(Some(p)) => {
                    let e = MysqlProtocolError::Sequence {
                        got: p.seq,
                        expected: 0,
                    };
                    self.client_seq = p.next_seq();
                    self.refuse(errno::OUT_OF_ORDER, &e.to_string());
                    let _ = self.flush_client().await;
                    return Err(protocol_end("client", &e));
                }
                Ok(None) => {}
                Err(e) => {
                    let code = match e {
                        MysqlProtocolError::TooLarge { .. } => errno::PACKET_TOO_LARGE,
                        MysqlProtocolError::Sequence { .. } => errno::OUT_OF_ORDER,
                        MysqlProtocolError::Malformed { .. } => errno::GATEWAY,
                    };
                    self.client_seq = 1;
                    self.refuse(code, &e.to_string());
                    let _ = self.flush_client().await;
                    return Err(protocol_end("client", &e));
                }
            }
            self.flush_client().await?;
            self.client_buf.reserve(READ_CHUNK);
            match self.client.read_buf(&mut self.client_buf).await {
                Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                Ok(_) => {}
            }
        }
    }

    /// The next packet of the server's answer, in sequence. Rows handled so far go
    /// to the client before waiting; the client is watched meanwhile so a vanished
    /// client ends the session at once.
    async fn server_packet(&mut self) -> Result<Packet, End> {
        loop {
            match self.decoder.decode(&mut self.server_buf) {
                Ok(Some(p)) if p.seq == self.server_seq => {
                    self.server_seq = p.next_seq();
                    return Ok(p);
                }
                Ok(Some(p)) => {
                    return Err(protocol_end(
                        "the database",
                        &MysqlProtocolError::Sequence {
                            got: p.seq,
                            expected: self.server_seq,
                        },
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(protocol_end("the database", &e)),
            }
            // Rows handled so far wait for the client only while more of the
            // answer is already here: one write per answer, not one per segment.
            self.server_buf.reserve(READ_CHUNK);
            match read_now(&mut self.server, &mut self.server_buf).await {
                Some(Ok(0) | Err(_)) => return Err(server_gone()),
                Some(Ok(_)) => continue,
                None => {}
            }
            self.flush_client().await?;
            // A client that keeps sending while its answer is pending is not read
            // further until the answer is through (bounded memory).
            let watch_client = self.client_buf.len() < 1 << 20;
            self.client_buf.reserve(READ_CHUNK);
            tokio::select! {
                r = self.server.read_buf(&mut self.server_buf) => match r {
                    Ok(0) | Err(_) => return Err(server_gone()),
                    Ok(_) => {}
                },
                r = self.client.read_buf(&mut self.client_buf), if watch_client => match r {
                    Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                    Ok(_) => {}
                },
            }
        }
    }

    fn record_timeline(&self, event: TimelineEvent) -> Result<(), End> {
        self.session.record(event).map_err(Some)
    }

    /// Refuses a statement: the client's error, also in the recording.
    fn deny(&mut self, (code, state): (u16, &str), message: &str) -> Result<(), End> {
        self.record_timeline(TimelineEvent::Error {
            code: code.to_string(),
            message: message.to_string(),
            duration_us: None,
        })?;
        self.refuse((code, state), message);
        Ok(())
    }

    /// Answers the client with the gateway's own error.
    fn refuse(&mut self, (code, state): (u16, &str), message: &str) {
        self.send_client(&err_packet(code, state, message));
    }

    // --- commands -----------------------------------------------------------------

    async fn command(&mut self, command: MysqlCommand, payload: &Bytes) -> Result<(), End> {
        match command {
            MysqlCommand::Quit => {
                let _ = self.send_server(payload).await;
                Err(None)
            }
            MysqlCommand::Query { sql } => {
                let kill = kill_statement(&sql)
                    .and_then(|(query, id)| self.threads.get(&id).map(|t| (query, id, t)));
                if !self
                    .admit(self.sql(&sql, "COM_QUERY"), errno::DENIED)
                    .await?
                {
                    return Ok(());
                }
                match kill {
                    // One of our ids: kill its server thread, if it runs on the same
                    // server as the same account (as the server itself would allow).
                    Some((query, id, target)) => {
                        if target.addr != self.this_thread.addr
                            || target.user != self.this_thread.user
                        {
                            self.deny(
                                errno::KILL_DENIED,
                                &format!("You are not owner of thread {id}"),
                            )?;
                            return Ok(());
                        }
                        let what = if query { "QUERY " } else { "" };
                        let rewritten = format!("\x03KILL {what}{}", target.thread);
                        self.forward(rewritten.as_bytes()).await?;
                    }
                    None => self.forward(payload).await?,
                }
                self.results(RowFormat::Text).await
            }
            MysqlCommand::InitDb { database } => {
                // The connection's database pin is the guard's to apply.
                let command = Command::new(Action::UseDatabase { name: &database }, "COM_INIT_DB");
                if !self.admit(command, errno::DB_ACCESS_DENIED).await? {
                    return Ok(());
                }
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::StmtPrepare { sql } => {
                // Decided here; an allowed statement is audited at each execution.
                let decision = self.session.guard.decide(&Action::Sql {
                    dialect: SqlDialect::Mysql,
                    text: &sql,
                });
                if decision != Decision::Allow {
                    let command = self.sql(&sql, "COM_STMT_PREPARE").decided(decision);
                    if !self.admit(command, errno::DENIED).await? {
                        return Ok(());
                    }
                }
                self.forward(payload).await?;
                self.prepare(sql).await
            }
            MysqlCommand::StmtExecute(execute) => self.execute(execute, payload).await,
            MysqlCommand::StmtSendLongData {
                statement,
                param,
                len,
            } => {
                // No answer comes; an unknown statement is the server's to ignore.
                if let Some(p) = self.prepared.get_mut(&statement) {
                    *p.long_data.entry(param).or_default() += len as u64;
                }
                self.send_server(payload).await
            }
            MysqlCommand::StmtClose { statement } => {
                self.prepared.remove(&statement);
                self.send_server(payload).await
            }
            MysqlCommand::StmtFetch { .. } => {
                self.refuse(
                    errno::NOT_SUPPORTED,
                    "cursors (COM_STMT_FETCH) are not relayed by Warden",
                );
                Ok(())
            }
            MysqlCommand::ResetConnection => {
                self.prepared.clear();
                self.last_prepared = None;
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::StmtReset { statement } => {
                if let Some(p) = self.prepared.get_mut(&statement) {
                    p.long_data.clear();
                }
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::Ping | MysqlCommand::SetOption { .. } => {
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::Statistics => {
                self.forward(payload).await?;
                let p = self.server_packet().await?;
                self.awaiting = false;
                self.send_client(&p.payload);
                Ok(())
            }
            MysqlCommand::FieldList { .. } => {
                self.forward(payload).await?;
                self.field_list().await
            }
            other @ MysqlCommand::Other { .. } => {
                let message = format!("Warden does not relay {}", other.name());
                self.refuse(errno::UNKNOWN_COMMAND, &message);
                Ok(())
            }
        }
    }

    async fn forward(&mut self, payload: &[u8]) -> Result<(), End> {
        self.send_server(payload).await?;
        self.awaiting = true;
        Ok(())
    }

    /// Runs an action through the session's admission path; `Ok(true)` when it may
    /// be forwarded. A refused one is answered here (`deny_code`, or the gateway's
    /// own error when it could not be audited) and is in the recording.
    async fn admit(&mut self, command: Command<'_>, deny_code: (u16, &str)) -> Result<bool, End> {
        let decision = command
            .decided
            .clone()
            .unwrap_or_else(|| self.session.guard.decide(&command.action));
        if matches!(decision, Decision::Review { .. }) {
            // Answers already handled reach the client before the wait.
            let _ = self.flush_client().await;
        }
        let session = self.session.clone();
        let mut client = HeldClient {
            stream: &mut self.client,
            buf: &mut self.client_buf,
        };
        match session.admit(command.decided(decision), &mut client).await {
            Admission::Admitted { .. } => Ok(true),
            Admission::Denied(denial) => {
                let code = match denial.cause {
                    DenialCause::AuditUnavailable => errno::GATEWAY,
                    _ => deny_code,
                };
                self.deny(code, &denied_message(&denial.rule, &denial.reason))?;
                Ok(false)
            }
            Admission::End(reason) => Err(Some(reason)),
        }
    }

    fn sql<'a>(&self, sql: &'a str, via: &'static str) -> Command<'a> {
        Command::new(
            Action::Sql {
                dialect: SqlDialect::Mysql,
                text: sql,
            },
            via,
        )
    }

    async fn execute(&mut self, execute: StmtExecute, payload: &Bytes) -> Result<(), End> {
        let id = if execute.statement == LAST_PREPARED {
            self.last_prepared.unwrap_or(LAST_PREPARED)
        } else {
            execute.statement
        };
        let Some(prepared) = self.prepared.get(&id) else {
            self.refuse(
                errno::UNKNOWN_STATEMENT,
                &format!("unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
            );
            return Ok(());
        };
        if execute.flags != 0 {
            self.refuse(
                errno::NOT_SUPPORTED,
                "cursors (COM_STMT_EXECUTE with a cursor type) are not relayed by Warden",
            );
            return Ok(());
        }
        let sql = prepared.sql.clone();
        let summary = execute.parameter_lengths(
            prepared.params,
            prepared.types.as_deref(),
            &prepared.long_data,
        );
        let parameters = match summary {
            Ok((lengths, types)) => {
                if let (Some(t), Some(p)) = (types, self.prepared.get_mut(&id)) {
                    p.types = Some(t);
                }
                Some(lengths)
            }
            // The server will reject what cannot be read; audit without a summary.
            Err(_) => None,
        };
        if let Some(p) = self.prepared.get_mut(&id) {
            p.long_data.clear();
        }
        // Decided when it was prepared (only allowed statements are kept): the
        // session's guard does not change, so each execution is only audited.
        let mut command = self.sql(&sql, "COM_STMT_EXECUTE").decided(Decision::Allow);
        command.parameters = parameters;
        if !self.admit(command, errno::DENIED).await? {
            return Ok(());
        }
        self.forward(payload).await?;
        self.results(RowFormat::Binary).await
    }

    /// Relays a one-packet answer (OK, ERR or EOF).
    async fn simple(&mut self) -> Result<(), End> {
        let started = Instant::now();
        let p = self.server_packet().await?;
        self.awaiting = false;
        if p.payload.first() == Some(&0xFF) {
            return self.server_error(&p.payload, started);
        }
        self.send_client(&p.payload);
        Ok(())
    }

    /// Relays a server `ERR`, masked, and records it.
    fn server_error(&mut self, payload: &[u8], started: Instant) -> Result<(), End> {
        let masked = if self.session.masker.is_active() {
            mask_error(payload, self.session.masker.as_ref())
                .map_err(|e| protocol_end("the database", &e))?
        } else {
            None
        };
        let shown = masked.as_deref().unwrap_or(payload);
        if let Ok(e) = ServerError::decode(shown) {
            self.record_timeline(TimelineEvent::Error {
                code: e.code.to_string(),
                message: e.message,
                duration_us: Some(started.elapsed().as_micros() as u64),
            })?;
        }
        self.send_client(shown);
        Ok(())
    }

    /// Reads `n` column definitions, forwarding each, and the EOF after them when
    /// the server sends one (dropped when the client asked for DEPRECATE_EOF).
    async fn column_definitions(&mut self, n: u64) -> Result<Vec<ColumnDef>, End> {
        let mut columns = Vec::with_capacity(n.min(4096) as usize);
        for _ in 0..n {
            let p = self.server_packet().await?;
            columns
                .push(ColumnDef::decode(&p.payload).map_err(|e| protocol_end("the database", &e))?);
            self.send_client_batched(&p.payload).await?;
        }
        if n > 0 && !self.server_eof {
            let p = self.server_packet().await?;
            if !is_terminator(&p.payload) {
                return Err(Some(EndReason::BackendProtocol(
                    "no EOF after the column definitions".into(),
                )));
            }
            if !self.client_eof {
                self.send_client(&p.payload);
            }
        }
        Ok(columns)
    }

    /// Relays a result set's terminator, converted for the client if need be;
    /// returns its status flags.
    fn terminator(&mut self, payload: &[u8]) -> Result<u16, End> {
        let status = terminator_status(payload, self.server_eof)
            .map_err(|e| protocol_end("the database", &e))?;
        if self.client_eof && !self.server_eof {
            let ok = eof_to_ok(payload).map_err(|e| protocol_end("the database", &e))?;
            self.send_client(&ok);
        } else {
            self.send_client(payload);
        }
        Ok(status)
    }

    /// Relays the answer to a query or an execution: any number of OKs and result
    /// sets (multi-statements, procedures), until one says no more follow.
    async fn results(&mut self, format: RowFormat) -> Result<(), End> {
        let keep = self.session.recorder().rows_per_result();
        loop {
            let started = Instant::now();
            let p = self.server_packet().await?;
            let head =
                ResponseHead::decode(&p.payload).map_err(|e| protocol_end("the database", &e))?;
            match head {
                ResponseHead::Ok(ok) => {
                    self.send_client(&p.payload);
                    self.record_ok(&ok, started)?;
                    if ok.status & status::MORE_RESULTS_EXISTS == 0 {
                        break;
                    }
                }
                ResponseHead::Err => {
                    self.server_error(&p.payload, started)?;
                    break;
                }
                ResponseHead::Eof { .. } => {
                    self.send_client(&p.payload);
                    break;
                }
                ResponseHead::LocalInfile => {
                    self.local_infile(&p.payload).await?;
                }
                ResponseHead::ResultSet { columns } => {
                    self.send_client(&p.payload);
                    let defs = self.column_definitions(columns).await?;
                    let plans: Vec<ColumnPlan> = if self.session.masker.is_active() {
                        defs.iter()
                            .map(|c| self.session.masker.plan(&c.column_ref()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
                    let mut total = 0u64;
                    let more = loop {
                        let row = self.server_packet().await?;
                        if row.payload.first() == Some(&0xFF) {
                            self.server_error(&row.payload, started)?;
                            break false;
                        }
                        if is_terminator(&row.payload) {
                            let status = self.terminator(&row.payload)?;
                            self.record_timeline(TimelineEvent::Result {
                                tag: format!("SELECT {total}"),
                                columns: defs.iter().map(|c| c.name.clone()).collect(),
                                rows: std::mem::take(&mut rows),
                                rows_total: total,
                                duration_us: Some(started.elapsed().as_micros() as u64),
                            })?;
                            break status & status::MORE_RESULTS_EXISTS != 0;
                        }
                        total += 1;
                        let masked = if plans.is_empty() {
                            None
                        } else {
                            match format {
                                RowFormat::Text => mask_text_row(
                                    &row.payload,
                                    &plans,
                                    self.session.masker.as_ref(),
                                ),
                                RowFormat::Binary => mask_binary_row(
                                    &row.payload,
                                    &defs,
                                    &plans,
                                    self.session.masker.as_ref(),
                                ),
                            }
                            .map_err(|e| protocol_end("the database", &e))?
                        };
                        let shown: Bytes = masked.map_or(row.payload, BytesMut::freeze);
                        if rows.len() < keep {
                            let values = match format {
                                RowFormat::Text => text_row_values(&shown),
                                RowFormat::Binary => binary_row_values(&shown, &defs),
                            }
                            .map_err(|e| protocol_end("the database", &e))?;
                            rows.push(values);
                        }
                        self.send_client_batched(&shown).await?;
                    };
                    if !more {
                        break;
                    }
                }
            }
        }
        self.awaiting = false;
        Ok(())
    }

    fn record_ok(&self, ok: &OkInfo, started: Instant) -> Result<(), End> {
        self.record_timeline(TimelineEvent::Result {
            tag: format!("OK {}", ok.affected_rows),
            columns: Vec::new(),
            rows: Vec::new(),
            rows_total: ok.affected_rows,
            duration_us: Some(started.elapsed().as_micros() as u64),
        })
    }

    /// `LOAD DATA LOCAL INFILE`: the server asks the client for a file. Relayed only
    /// when the listener allows it; otherwise the server gets "no file" and the
    /// client never sees the request.
    async fn local_infile(&mut self, request: &[u8]) -> Result<(), End> {
        if !self.local_infile {
            self.send_server(&[]).await?;
            self.record_timeline(TimelineEvent::Error {
                code: errno::NOT_ALLOWED.0.to_string(),
                message: "LOAD DATA LOCAL INFILE refused by the gateway".into(),
                duration_us: None,
            })?;
            return Ok(());
        }
        self.send_client(request);
        self.flush_client().await?;
        let (mut bytes, mut packets) = (0u64, 0u64);
        loop {
            let p = loop {
                match self.decoder.decode(&mut self.client_buf) {
                    Ok(Some(p)) if p.seq == self.client_seq => break p,
                    Ok(Some(p)) => {
                        return Err(protocol_end(
                            "client",
                            &MysqlProtocolError::Sequence {
                                got: p.seq,
                                expected: self.client_seq,
                            },
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(protocol_end("client", &e)),
                }
                match self.client.read_buf(&mut self.client_buf).await {
                    Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                    Ok(_) => {}
                }
            };
            self.client_seq = p.next_seq();
            self.session.count_in(p.wire_len());
            bytes += p.payload.len() as u64;
            packets += 1;
            self.send_server(&p.payload).await?;
            if p.payload.is_empty() {
                break;
            }
        }
        self.server_seq = self.client_seq;
        self.record_timeline(TimelineEvent::Copy {
            direction: "in".into(),
            bytes,
            rows: packets.saturating_sub(1),
        })?;
        Ok(())
    }

    /// Relays the answer to `COM_STMT_PREPARE` and remembers the statement.
    async fn prepare(&mut self, sql: String) -> Result<(), End> {
        let started = Instant::now();
        let p = self.server_packet().await?;
        if p.payload.first() == Some(&0xFF) {
            self.awaiting = false;
            return self.server_error(&p.payload, started);
        }
        let bad = |d| {
            protocol_end(
                "the database",
                &MysqlProtocolError::Malformed {
                    what: "COM_STMT_PREPARE answer",
                    detail: d,
                },
            )
        };
        if p.payload.len() < 12 || p.payload[0] != 0 {
            return Err(bad("too short"));
        }
        let id = u32::from_le_bytes([p.payload[1], p.payload[2], p.payload[3], p.payload[4]]);
        let columns = u16::from_le_bytes([p.payload[5], p.payload[6]]);
        let params = u16::from_le_bytes([p.payload[7], p.payload[8]]);
        self.send_client(&p.payload);
        self.column_definitions(u64::from(params)).await?;
        self.column_definitions(u64::from(columns)).await?;
        self.awaiting = false;
        self.prepared.insert(
            id,
            Prepared {
                sql,
                params: usize::from(params),
                types: None,
                long_data: HashMap::new(),
            },
        );
        self.last_prepared = Some(id);
        Ok(())
    }

    /// Relays the answer to `COM_FIELD_LIST`: column definitions up to an EOF.
    async fn field_list(&mut self) -> Result<(), End> {
        let started = Instant::now();
        loop {
            let p = self.server_packet().await?;
            if p.payload.first() == Some(&0xFF) {
                self.awaiting = false;
                return self.server_error(&p.payload, started);
            }
            if is_terminator(&p.payload) {
                self.terminator(&p.payload)?;
                self.awaiting = false;
                return Ok(());
            }
            self.send_client_batched(&p.payload).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_statements_are_recognized_whole() {
        assert_eq!(kill_statement("KILL QUERY 42"), Some((true, 42)));
        assert_eq!(kill_statement(" kill connection 7 ;"), Some((false, 7)));
        assert_eq!(kill_statement("KILL 9"), Some((false, 9)));
        assert_eq!(kill_statement("KILL QUERY 42; DROP TABLE t"), None);
        assert_eq!(kill_statement("KILL QUERY ID 42"), None);
        assert_eq!(kill_statement("SELECT 1"), None);
    }
}

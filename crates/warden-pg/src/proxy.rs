//! One client session through the PostgreSQL proxy: startup (TLS when configured),
//! token login, backend login with the held credential, then the relay.
//!
//! Every `Query` and `Parse` is decided by the session's guard; every execution (a
//! `Query`, or a `Bind` of a prepared statement) is recorded through the hooks
//! *before* it is forwarded (audit-before-execute; a failed record denies). A denied
//! statement never reaches the server: the proxy forwards in its place a message that
//! fails at the server with a one-time marker, and when the server's error for it comes
//! back the proxy replaces it with its own `ErrorResponse` (SQLSTATE 42501, naming the
//! rule). The server thus keeps the response order, the pipeline's skip-until-Sync
//! behaviour and the transaction state exactly as for a real error. Rows, COPY data,
//! notices and notifications are masked on the way back.
//!
//! Around this module: `requests` matches answers to requests, `catalog` knows the
//! columns' origins, `capture` keeps what the recording shows, `copy` handles COPY.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::{
    Action, Admission, ClientWatch, Command, ConnectionKind, Decision, DenialCause, Dialer,
    EndReason, LoginRequest, RefusalKind, SessionHandle, SessionHooks, SqlDialect, TimelineEvent,
    TunnelLogin,
};

use crate::backend::{self as out, PgNotice};
use crate::capture::{CopyCount, ResultCapture, memchr_count};
use crate::catalog::{Catalog, Described, column_masking};
use crate::copy::{CopyFormat, CopyOutPlan, mask_copy_row};
use crate::frontend::{FrontendDecoder, PgFrontendMessage, PgStartup};
use crate::login::login;
use crate::prepared::PreparedStatements;
use crate::requests::{Expect, RequestLog, Requests};
use crate::results::{BackendDecoder, ColumnMasking, PgBackendMessage, mask_data_row};
use crate::sqlstate;
use crate::tls::{BackendTls, BoxedStream, TlsSetupError, connect_backend};
use warden_net::{Batched, SessionRegistry};

/// An open session with its backend TLS built.
pub(crate) struct ProxySession {
    pub(crate) handle: Arc<SessionHandle>,
    /// TLS towards the database; `None` is plain TCP.
    pub(crate) backend_tls: Option<BackendTls>,
    /// Bounds each login and catalog exchange with the database.
    pub(crate) timeout: std::time::Duration,
}

impl ProxySession {
    fn new(
        handle: SessionHandle,
        timeout: std::time::Duration,
    ) -> (Arc<SessionHandle>, Result<Self, TlsSetupError>) {
        let handle = Arc::new(handle);
        let tls = BackendTls::for_target(&handle.target);
        let session = tls.map(|backend_tls| Self {
            handle: handle.clone(),
            backend_tls,
            timeout,
        });
        (handle, session)
    }
}

/// The SQLSTATE a refused login is answered with.
fn refusal_sqlstate(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::BadCredentials => sqlstate::INVALID_PASSWORD,
        RefusalKind::NoAccess => sqlstate::INVALID_CATALOG_NAME,
        RefusalKind::PolicyUnusable => sqlstate::INSUFFICIENT_PRIVILEGE,
        RefusalKind::Unavailable => sqlstate::CONNECTION_FAILURE,
    }
}

/// Cancel keys the gateway handed to clients → where and how to cancel on the server.
/// Clients never see the server's keys, and a guessed key matches nothing.
pub type CancelMap = SessionRegistry<CancelKey, ServerCancel>;

/// A (process id, secret key) pair as in `BackendKeyData`.
type CancelKey = (i32, i32);
/// How to reach the server (its session's dialer and address) and its own cancel
/// key for a session.
#[derive(Clone)]
pub struct ServerCancel {
    dialer: Arc<dyn Dialer>,
    addr: String,
    process_id: i32,
    secret_key: i32,
}

/// Forwards a client's CancelRequest to the server session it names, if any.
async fn forward_cancel(map: &CancelMap, process_id: i32, secret_key: i32) {
    let Some(server) = map.get(&(process_id, secret_key)) else {
        return;
    };
    let (pid, key) = (server.process_id, server.secret_key);
    if let Ok(mut s) = server.dialer.dial(&server.addr).await {
        let mut b = BytesMut::new();
        b.extend_from_slice(&16i32.to_be_bytes());
        b.extend_from_slice(&80_877_102i32.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&key.to_be_bytes());
        let _ = s.write_all(&b).await;
    }
}

fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    i32::from_be_bytes(b)
}

/// Listener-level settings.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Shared by all sessions of a listener.
    pub cancels: CancelMap,
    /// Accept tokens over plain TCP from non-loopback clients.
    pub allow_plaintext_tokens: bool,
    /// Answers `SSLRequest` with TLS when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_message: usize,
    /// How long a client has to send its startup packet and token.
    pub login_timeout: std::time::Duration,
}

async fn fatal(stream: &mut (impl AsyncWrite + Unpin), code: &str, message: &str) {
    let mut b = BytesMut::new();
    out::error_response(
        &mut b,
        &PgNotice {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        },
    );
    let _ = stream.write_all(&b).await;
    let _ = stream.shutdown().await;
}

/// Ends a session whose database leg failed before the relay started: recorded as
/// ended for `reason`, the client told `message`.
async fn end_at_login(
    handle: &SessionHandle,
    client: &mut BoxedStream,
    reason: String,
    message: &str,
) {
    handle.close(Some(EndReason::BackendGone(reason))).await;
    fatal(client, sqlstate::CONNECTION_FAILURE, message).await;
}

/// Reads more of the login from the client; `false` when it left or took too long.
async fn read_before(
    deadline: tokio::time::Instant,
    client: &mut BoxedStream,
    buf: &mut BytesMut,
) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, client.read_buf(buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Serves one client connection to its end. Errors end this session only.
pub async fn serve_client<H: SessionHooks>(
    tcp: TcpStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
) {
    // Frames are written as they are decided; without this, Nagle and delayed ACKs
    // add ~40 ms to each small request/response exchange.
    let _ = tcp.set_nodelay(true);
    serve_stream(Box::new(tcp), peer, hooks, config, None).await;
}

/// Serves a client that came through a tunnel: no TLS negotiation (the tunnel's
/// transport has its own) and no password exchange (the tunnel carries the token
/// and names the connection; the database the client names is ignored).
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
    mut client: BoxedStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
    tunnel: Option<TunnelLogin>,
) {
    let mut encrypted = false;
    let decoder = FrontendDecoder::new(config.max_message);
    let mut buf = BytesMut::new();
    // A client that does not finish its login in time is dropped, so idle sockets
    // cannot hold sessions open.
    let login_deadline = tokio::time::Instant::now() + config.login_timeout;
    // Startup: answer SSL/GSS requests with "no" until the real startup packet.
    let params = loop {
        match decoder.decode_startup(&mut buf) {
            Ok(Some(f)) => match f.message {
                PgStartup::SslRequest if !encrypted && config.tls.is_some() && tunnel.is_none() => {
                    // Bytes sent after the request but before the handshake would be
                    // taken as if they came through TLS: refuse them.
                    if !buf.is_empty() {
                        return fatal(
                            &mut client,
                            sqlstate::PROTOCOL_VIOLATION,
                            "data sent before the TLS handshake",
                        )
                        .await;
                    }
                    let Some(acceptor) = config.tls.clone() else {
                        return;
                    };
                    if client.write_all(b"S").await.is_err() {
                        return;
                    }
                    match tokio::time::timeout_at(login_deadline, acceptor.accept(client)).await {
                        Ok(Ok(stream)) => {
                            client = Box::new(stream);
                            encrypted = true;
                        }
                        _ => return,
                    }
                }
                PgStartup::SslRequest | PgStartup::GssEncRequest => {
                    if client.write_all(b"N").await.is_err() {
                        return;
                    }
                }
                PgStartup::Cancel {
                    process_id,
                    secret_key,
                } => {
                    return forward_cancel(&config.cancels, process_id, secret_key).await;
                }
                startup @ PgStartup::Startup { .. } => break startup,
            },
            Ok(None) => {
                if !read_before(login_deadline, &mut client, &mut buf).await {
                    return;
                }
            }
            Err(e) => {
                return fatal(&mut client, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await;
            }
        }
    };
    let user = params.param("user").unwrap_or("").to_string();
    let (database, token) = match tunnel {
        Some(t) => (t.connection, t.token.expose().clone()),
        None => {
            let database = params
                .param("database")
                .or(params.param("user"))
                .unwrap_or("")
                .to_string();
            match ask_token(
                &mut client,
                &mut buf,
                &decoder,
                &config,
                peer,
                encrypted,
                login_deadline,
            )
            .await
            {
                Some(token) => (database, token),
                None => return,
            }
        }
    };
    let request = LoginRequest {
        protocol: ConnectionKind::Postgres,
        connection: &database,
        user: &user,
        token: &token,
        client: peer,
    };
    serve_login(client, buf, hooks, config, params, request).await;
}

/// Asks a direct client for its token (the password message); `None` when the
/// login cannot go on (the client was told why).
async fn ask_token(
    client: &mut BoxedStream,
    buf: &mut BytesMut,
    decoder: &FrontendDecoder,
    config: &ProxyConfig,
    peer: SocketAddr,
    encrypted: bool,
    login_deadline: tokio::time::Instant,
) -> Option<String> {
    if !encrypted && !config.allow_plaintext_tokens && !peer.ip().is_loopback() {
        let message = if config.tls.is_some() {
            "token authentication over plain TCP is refused for non-loopback clients: connect with sslmode=require"
        } else {
            "token authentication over plain TCP is refused for non-loopback clients, and this listener has no TLS certificate"
        };
        fatal(client, sqlstate::INVALID_AUTHORIZATION, message).await;
        return None;
    }
    let mut b = BytesMut::new();
    out::authentication_cleartext(&mut b);
    client.write_all(&b).await.ok()?;
    loop {
        match decoder.decode(buf) {
            Ok(Some(f)) => match f.message {
                PgFrontendMessage::Password { payload } => {
                    let text = String::from_utf8_lossy(&payload);
                    return Some(text.trim_end_matches('\0').to_string());
                }
                other => {
                    fatal(
                        client,
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("expected a password, got {}", other.name()),
                    )
                    .await;
                    return None;
                }
            },
            Ok(None) => {
                if !read_before(login_deadline, client, buf).await {
                    return None;
                }
            }
            Err(e) => {
                fatal(client, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await;
                return None;
            }
        }
    }
}

/// Opens the session the login asked for and relays it to its end.
async fn serve_login<H: SessionHooks>(
    mut client: BoxedStream,
    buf: BytesMut,
    hooks: Arc<H>,
    config: ProxyConfig,
    params: PgStartup,
    request: LoginRequest<'_>,
) {
    let handle = match hooks.open(request).await {
        Ok(h) => h,
        Err(r) => return fatal(&mut client, refusal_sqlstate(r.kind), &r.message).await,
    };
    let (handle, session) = ProxySession::new(handle, config.login_timeout);
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            return end_at_login(
                &handle,
                &mut client,
                format!("backend TLS settings unusable: {e}"),
                &format!("the connection's TLS settings cannot be used: {e}"),
            )
            .await;
        }
    };
    let target = &handle.target;
    let connecting = connect_backend(&handle, session.backend_tls.as_ref());
    let connected = tokio::time::timeout(config.login_timeout, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no connection within {} s",
                config.login_timeout.as_secs()
            ))
        });
    let mut server = match connected {
        Ok(s) => s,
        Err(e) => {
            return end_at_login(
                &handle,
                &mut client,
                format!("backend unreachable: {e}"),
                &format!("the database behind this connection cannot be reached: {e}"),
            )
            .await;
        }
    };
    let app = params
        .param("application_name")
        .map(|a| vec![("application_name".to_string(), a.to_string())])
        .unwrap_or_default();
    let logging_in = login(
        &mut server,
        &target.user,
        &target.database,
        target.secret.as_ref(),
        &app,
    );
    let logged_in = match tokio::time::timeout(config.login_timeout, logging_in).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the database did not complete the login within {} s",
            config.login_timeout.as_secs()
        )),
    };
    let server_session = match logged_in {
        Ok(s) => s,
        Err(e) => {
            // The server's message names the role, never the secret.
            return end_at_login(
                &handle,
                &mut client,
                "backend login failed".into(),
                &format!("the gateway could not log in to the database: {e}"),
            )
            .await;
        }
    };
    let mut b = BytesMut::new();
    out::authentication_ok(&mut b);
    for (k, v) in &server_session.parameters {
        out::parameter_status(&mut b, k, v);
    }
    // The client gets keys of our own; a cancel with them reaches this server session.
    let ours = (random_i32() & i32::MAX, random_i32());
    config.cancels.insert(
        ours,
        ServerCancel {
            dialer: handle.dialer(),
            addr: target.addr.clone(),
            process_id: server_session.process_id,
            secret_key: server_session.secret_key,
        },
    );
    out::backend_key_data(&mut b, ours.0, ours.1);
    out::ready_for_query(&mut b, b'I');
    if client.write_all(&b).await.is_err() {
        config.cancels.remove(&ours);
        handle
            .close(Some(EndReason::Internal("client left during login".into())))
            .await;
        return;
    }
    let cancels = config.cancels.clone();
    let reason = relay(client, server, buf, session, config).await;
    if reason == Some(EndReason::ClientGone) {
        // A query may still be running for nobody: the server only notices a closed
        // socket when it next writes to it.
        forward_cancel(&cancels, ours.0, ours.1).await;
    }
    cancels.remove(&ours);
    handle.close(reason).await;
}

/// Why a session ends when answers can no longer be matched to requests: masking
/// rows with the wrong columns must not follow.
const LOST_TRACK: &str = "the gateway lost track of the client's requests; the session was ended";

/// Marker → (SQLSTATE, rule, reason) for statements replaced by a failing stand-in.
type Denials = Arc<Mutex<HashMap<String, (&'static str, String, String)>>>;

/// A statement name as SQL writes it: a double-quoted identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Bytes read ahead from a client while one of its statements waits for review.
const HELD_READ_LIMIT: usize = 1 << 20;

fn stand_in(marker: &str) -> String {
    format!("SELECT 1 FROM \"{marker}\"")
}

fn denied_message(rule: &str, reason: &str) -> String {
    format!("Warden denied this statement: {reason} (rule {rule})")
}

/// The client's side of a statement held for review: the notice goes out between the
/// server's messages; its socket is read (up to a bound) to notice it leaving.
struct HeldClient<'a> {
    rd: &'a mut tokio::io::ReadHalf<BoxedStream>,
    buf: &'a mut BytesMut,
    notices: &'a tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl ClientWatch for HeldClient<'_> {
    async fn held(&mut self, notice: &str) {
        let mut b = BytesMut::new();
        out::notice_response(
            &mut b,
            &PgNotice {
                severity: "NOTICE",
                code: sqlstate::WARNING,
                message: notice,
                detail: None,
                hint: None,
            },
        );
        let _ = self.notices.send(b.freeze());
    }

    async fn gone(&mut self) {
        // What the client sends meanwhile is kept for after the decision.
        while self.buf.len() < HELD_READ_LIMIT {
            if matches!(self.rd.read_buf(self.buf).await, Ok(0) | Err(_)) {
                return;
            }
        }
        std::future::pending().await
    }
}

fn database_lost() -> EndReason {
    EndReason::BackendGone("database connection lost".into())
}

async fn relay(
    client: BoxedStream,
    server: BoxedStream,
    mut client_buf: BytesMut,
    session: ProxySession,
    config: ProxyConfig,
) -> Option<EndReason> {
    let handle = session.handle.clone();
    let (mut client_rd, client_wr) = tokio::io::split(client);
    let (mut server_rd, server_wr) = tokio::io::split(server);
    let mut client_out_owned = Batched::new(client_wr);
    // Borrowed by the answering side, and used again after it ends to tell the client
    // why the session ended.
    let client_out = &mut client_out_owned;
    let mut server_out = Batched::new(server_wr);
    let denials: Denials = Arc::new(Mutex::new(HashMap::new()));
    // What the client asked, in order, so each answer can be matched to its request.
    let expected: Arc<Mutex<Requests>> = Arc::default();
    let upstream_expected = expected.clone();
    let masker = handle.masker.clone();
    let upstream_denials = denials.clone();
    let up = handle.clone();
    let mut ended = handle.ended();
    // Messages the proxy itself sends the client between the server's (a held
    // statement's notice); the answering side writes them at a message boundary.
    let (notices, mut notices_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let recorder = handle.recorder().clone();
    let down = handle.clone();
    // Which SQL each prepared statement name runs, for the audit events of its
    // executions; the answering side confirms what the server took.
    let prepared: Arc<Mutex<PreparedStatements>> = Arc::default();
    let down_prepared = prepared.clone();
    let upstream = async move {
        let decoder = FrontendDecoder::new(config.max_message);
        let mut copy_in = CopyCount::default();
        let mut requests = RequestLog::default();
        // A stand-in of a denied extended-protocol message was sent: the server
        // fails it and skips everything until the next Sync.
        let mut skipping_until_sync = false;
        loop {
            let frame = loop {
                match decoder.decode(&mut client_buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {
                        // Every whole message read so far is handled: send them on
                        // in one write before waiting for more.
                        if server_out.flush().await.is_err() {
                            return Some(database_lost());
                        }
                        match client_rd.read_buf(&mut client_buf).await {
                            Ok(0) | Err(_) => return Some(EndReason::ClientGone),
                            Ok(_) => {}
                        }
                    }
                    Err(e) => return Some(EndReason::ClientProtocol(e.to_string())),
                }
            };
            up.count_in(frame.raw.len() as u64);
            if let Some(statement) = requests.sent(&frame.message, &upstream_expected) {
                let mut d = BytesMut::new();
                crate::wire::put_frame(&mut d, b'D', |b| {
                    b.extend_from_slice(b"S");
                    crate::wire::put_cstr(b, statement.as_bytes());
                });
                if server_out.send(&d).await.is_err() {
                    return Some(database_lost());
                }
            }
            match &frame.message {
                PgFrontendMessage::CopyData => {
                    copy_in.bytes += frame.raw.len().saturating_sub(5) as u64;
                    copy_in.rows += memchr_count(&frame.raw[5..]);
                }
                PgFrontendMessage::CopyDone | PgFrontendMessage::CopyFail { .. } => {
                    let done = std::mem::take(&mut copy_in);
                    if let Err(e) = up.record(TimelineEvent::Copy {
                        direction: "in".into(),
                        bytes: done.bytes,
                        rows: done.rows,
                    }) {
                        return Some(e);
                    }
                }
                PgFrontendMessage::Sync | PgFrontendMessage::Query { .. } => {
                    skipping_until_sync = false;
                }
                _ => {}
            }
            // Query and Parse are decided here. An allowed Parse only prepares; each
            // Bind of it is an execution, audited (with its parameters summarized)
            // before it is forwarded.
            let bind_sql: String;
            let bound = match &frame.message {
                PgFrontendMessage::Bind { statement, .. } => {
                    lock(&prepared).sql_of(statement).map(str::to_string)
                }
                _ => None,
            };
            let command = match &frame.message {
                PgFrontendMessage::Query { sql } => Command::new(
                    Action::Sql {
                        dialect: SqlDialect::Postgres,
                        text: sql,
                    },
                    "Query",
                ),
                PgFrontendMessage::Parse { sql, .. } => Command::new(
                    Action::Sql {
                        dialect: SqlDialect::Postgres,
                        text: sql,
                    },
                    "Parse",
                ),
                PgFrontendMessage::Bind {
                    statement,
                    param_lengths,
                    ..
                } => match bound {
                    Some(sql) => {
                        bind_sql = sql;
                        Command::new(
                            Action::Sql {
                                dialect: SqlDialect::Postgres,
                                text: &bind_sql,
                            },
                            "Bind",
                        )
                        .decided(Decision::Allow)
                        .with_parameters(param_lengths.clone())
                    }
                    // The server skips it: nothing runs, nothing to decide.
                    None if skipping_until_sync => {
                        if server_out.send(&frame.raw).await.is_err() {
                            return Some(database_lost());
                        }
                        continue;
                    }
                    // A statement the proxy cannot attribute (SQL-level PREPARE,
                    // server-side code, a name parsed twice): not run.
                    None => {
                        bind_sql = format!("EXECUTE {}", quoted(statement));
                        Command::new(
                        Action::Sql {
                            dialect: SqlDialect::Postgres,
                            text: &bind_sql,
                        },
                        "Bind",
                    )
                    .decided(Decision::Deny {
                        rule: "pg.unattributed_statement".into(),
                        reason: format!(
                            "the prepared statement {} was not prepared by a statement Warden decided (SQL-level PREPARE, server-side code, or a name parsed twice); prepare it with Parse after closing the name",
                            quoted(statement)
                        ),
                    })
                    .with_parameters(param_lengths.clone())
                    }
                },
                PgFrontendMessage::Close { target: b'S', name } => {
                    lock(&prepared).closed(name);
                    if server_out.send(&frame.raw).await.is_err() {
                        return Some(database_lost());
                    }
                    continue;
                }
                // It calls functions by OID, around every SQL rule.
                PgFrontendMessage::FunctionCall => Command::new(
                    Action::Feature {
                        name: "function_call",
                    },
                    "function_call",
                ),
                PgFrontendMessage::Terminate => {
                    let _ = server_out.send(&frame.raw).await;
                    let _ = server_out.flush().await;
                    return None;
                }
                _ => {
                    if server_out.send(&frame.raw).await.is_err() {
                        return Some(database_lost());
                    }
                    continue;
                }
            };
            let decision = command
                .decided
                .clone()
                .unwrap_or_else(|| up.guard.decide(&command.action));
            if matches!(decision, Decision::Review { .. }) && server_out.flush().await.is_err() {
                // Statements already sent run while this one waits.
                return Some(database_lost());
            }
            let parse_only = matches!(
                (&frame.message, &decision),
                (PgFrontendMessage::Parse { .. }, Decision::Allow)
            );
            let admission = if parse_only {
                // Allowed and only prepared: audited at each execution.
                Admission::Admitted { review: None }
            } else {
                let mut client = HeldClient {
                    rd: &mut client_rd,
                    buf: &mut client_buf,
                    notices: &notices,
                };
                up.admit(command.clone().decided(decision), &mut client)
                    .await
            };
            let text = match &command.action {
                Action::Sql { text, .. } => Some(*text),
                _ => None,
            };
            let bytes: Bytes = match admission {
                Admission::Admitted { .. } => {
                    match &frame.message {
                        PgFrontendMessage::Parse { statement, .. } => {
                            let mut prepared = lock(&prepared);
                            prepared.statement(text.unwrap_or_default());
                            prepared.parsed(statement, text);
                        }
                        PgFrontendMessage::Query { sql } => lock(&prepared).statement(sql),
                        _ => {}
                    }
                    frame.raw.clone()
                }
                Admission::Denied(denial) => {
                    if matches!(command.action, Action::Feature { .. }) {
                        return Some(EndReason::Refused(format!(
                            "function-call protocol refused: {}",
                            denial.reason
                        )));
                    }
                    if let PgFrontendMessage::Parse { statement, .. } = &frame.message {
                        lock(&prepared).parsed(statement, None);
                    }
                    if !matches!(frame.message, PgFrontendMessage::Query { .. }) {
                        skipping_until_sync = true;
                    }
                    let code = match denial.cause {
                        DenialCause::AuditUnavailable => sqlstate::SYSTEM_ERROR,
                        _ => sqlstate::INSUFFICIENT_PRIVILEGE,
                    };
                    let mut raw = [0u8; 12];
                    let _ = aws_lc_rs::rand::fill(&mut raw);
                    let mut marker = String::from("warden-denied-");
                    crate::wire::push_hex(&mut marker, &raw);
                    if let Ok(mut d) = upstream_denials.lock() {
                        d.insert(marker.clone(), (code, denial.rule, denial.reason));
                    }
                    rewrite(&frame.message, &marker)
                }
                Admission::End(reason) => return Some(reason),
            };
            if server_out.send(&bytes).await.is_err() {
                return Some(database_lost());
            }
        }
    };

    let downstream = async move {
        let decoder = BackendDecoder::new(config.max_message);
        let mut buf = BytesMut::new();
        // How the rows of the result being sent are masked, and whether they have
        // been chosen for it yet (at its RowDescription or first row).
        let mut columns: Vec<ColumnMasking> = Vec::new();
        let mut result_open = false;
        // Bound portals: how their rows are masked and what their columns are named.
        let mut portals: HashMap<String, (Vec<ColumnMasking>, Described)> = HashMap::new();
        // Columns of described prepared statements: plan, type OID, format.
        let mut statements: HashMap<String, Described> = HashMap::new();
        // A ParameterDescription means the next RowDescription/NoData describes a
        // statement; `Some(true)` when the proxy asked (the client does not see it).
        let mut describing_statement: Option<bool> = None;
        let mut catalog = Catalog::default();
        let mut capture = ResultCapture::new(recorder.rows_per_result());
        let mut copy_out = CopyCount::default();
        // The COPY-out in progress, when its rows are masked: format, column plans,
        // whether the header line is still to come.
        let mut copy_masking: Option<(CopyFormat, Vec<warden_core::ColumnPlan>, bool)> = None;
        // Where a statement's duration starts when its request's own time is unknown
        // (the second and later statements of one simple query).
        let mut last_done = Instant::now();
        loop {
            let frame = loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {
                        if client_out.flush().await.is_err() {
                            return Some(EndReason::ClientGone);
                        }
                        tokio::select! {
                            read = server_rd.read_buf(&mut buf) => match read {
                                Ok(0) | Err(_) => {
                                    return Some(EndReason::BackendGone("database closed the connection".into()));
                                }
                                Ok(_) => {}
                            },
                            Some(notice) = notices_rx.recv() => {
                                if client_out.send(&notice).await.is_err() {
                                    return Some(EndReason::ClientGone);
                                }
                            }
                        }
                    }
                    Err(e) => return Some(EndReason::BackendProtocol(e.to_string())),
                }
            };
            let bytes: Bytes = match &frame.message {
                PgBackendMessage::RowDescription { fields } => {
                    if masker.is_active() {
                        let oids: Vec<u32> = fields.iter().map(|f| f.table_oid).collect();
                        if let Err(e) = catalog.resolve(&oids, &session).await {
                            return Some(EndReason::Unmaskable(format!(
                                "column tables cannot be resolved for masking: {e}"
                            )));
                        }
                    }
                    let described = catalog.describe_columns(fields, masker.as_ref());
                    match describing_statement.take() {
                        // A statement's shape: its rows come later, in the Bind's formats.
                        Some(ours) => {
                            if let Some(name) = take(&expected, |e| match e {
                                Expect::DescribeStatement(n, _) => Some(n.clone()),
                                _ => None,
                            }) {
                                statements.insert(name, described);
                            }
                            if ours {
                                continue;
                            }
                        }
                        None => match take(&expected, |e| match e {
                            Expect::DescribePortal(p) => Some(p.clone()),
                            _ => None,
                        }) {
                            // A portal's shape, in the formats its Bind asked for; its
                            // rows come with its Execute.
                            Some(portal) => {
                                portals
                                    .insert(portal, (column_masking(&described, None), described));
                            }
                            // A simple query's rows follow now, in these formats.
                            None => {
                                columns = column_masking(&described, None);
                                capture.start(&described);
                                result_open = true;
                            }
                        },
                    }
                    frame.raw.clone()
                }
                PgBackendMessage::Other { tag: b't' } => {
                    let ours = expected
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next_describe_is_ours();
                    describing_statement = Some(ours);
                    if ours {
                        continue;
                    }
                    frame.raw.clone()
                }
                PgBackendMessage::Other { tag: b'n' } => {
                    if let Some(ours) = describing_statement.take() {
                        let name = take(&expected, |e| match e {
                            Expect::DescribeStatement(n, _) => Some(n.clone()),
                            _ => None,
                        });
                        if let Some(name) = name {
                            statements.insert(name, Vec::new());
                        }
                        if ours {
                            continue;
                        }
                    }
                    frame.raw.clone()
                }
                // ParseComplete: the statement name now holds new SQL; what was known
                // of its columns is gone.
                PgBackendMessage::Other { tag: b'1' } => {
                    if let Some(name) = take(&expected, |e| match e {
                        Expect::Parse(n) => Some(n.clone()),
                        _ => None,
                    }) {
                        lock(&down_prepared).confirmed(&name);
                        statements.remove(&name);
                    }
                    frame.raw.clone()
                }
                // BindComplete: this portal's rows have its statement's columns in the
                // formats the Bind asked for (the proxy describes statements the
                // client did not).
                PgBackendMessage::Other { tag: b'2' } => {
                    // Every BindComplete answers a Bind; none to match means the
                    // proxy lost track of the requests, and masking with the wrong
                    // columns must not follow.
                    let Some((statement, portal, formats)) = take(&expected, |e| match e {
                        Expect::Bind {
                            statement,
                            portal,
                            formats,
                        } => Some((statement.clone(), portal.clone(), formats.clone())),
                        _ => None,
                    }) else {
                        return Some(EndReason::Internal(LOST_TRACK.into()));
                    };
                    // Every bound statement was described (by the client or the
                    // proxy); one that was not cannot be masked by column.
                    let Some(described) = statements.get(&statement) else {
                        return Some(EndReason::Internal(LOST_TRACK.into()));
                    };
                    portals.insert(
                        portal,
                        (column_masking(described, Some(&formats)), described.clone()),
                    );
                    frame.raw.clone()
                }
                PgBackendMessage::ReadyForQuery { .. } => {
                    copy_masking = None;
                    result_open = false;
                    // Requests the server skipped after an error end with this cycle.
                    let failed = lock(&expected).end_cycle();
                    if !failed.is_empty() {
                        let mut prepared = lock(&down_prepared);
                        for name in failed {
                            prepared.failed(&name);
                        }
                    }
                    describing_statement = None;
                    frame.raw.clone()
                }
                // Copied-out rows are masked like result rows; what cannot be masked
                // ends the session before any data leaves (fail closed).
                PgBackendMessage::CopyResponse { kind: b'H', .. } if masker.is_active() => {
                    let plan = take(&expected, |e| match e {
                        Expect::CopyOut(p) => Some(p.clone()),
                        _ => None,
                    });
                    let (select, format) = match plan {
                        Some(CopyOutPlan::Maskable { select, format }) => (select, format),
                        Some(CopyOutPlan::Unmaskable(why)) => {
                            return Some(EndReason::Unmaskable(format!(
                                "COPY TO cannot be masked ({why}); the session was ended before any data was sent"
                            )));
                        }
                        None => {
                            return Some(EndReason::Unmaskable("COPY TO from a statement the gateway could not read cannot be masked; the session was ended before any data was sent".into()));
                        }
                    };
                    let fields = match catalog.describe(&select, &session).await {
                        Ok(f) => f,
                        Err(e) => {
                            return Some(EndReason::Unmaskable(format!(
                                "the columns of a COPY TO cannot be resolved for masking ({e}); the session was ended before any data was sent"
                            )));
                        }
                    };
                    let plans = catalog
                        .describe_columns(&fields, masker.as_ref())
                        .into_iter()
                        .map(|c| c.plan)
                        .collect();
                    let header = matches!(format, CopyFormat::Csv { header: true, .. });
                    copy_masking = Some((format, plans, header));
                    frame.raw.clone()
                }
                PgBackendMessage::CopyResponse { kind: b'G', .. } => {
                    expected
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .copy_in_started();
                    frame.raw.clone()
                }
                PgBackendMessage::CopyResponse { kind: b'W', .. } if masker.is_active() => {
                    return Some(EndReason::Unmaskable("COPY BOTH (replication) cannot be masked; the session was ended before any data was sent".into()));
                }
                PgBackendMessage::CopyData => {
                    copy_out.bytes += frame.raw.len().saturating_sub(5) as u64;
                    copy_out.rows += memchr_count(&frame.raw[5..]);
                    match &mut copy_masking {
                        Some((_, _, header @ true)) => {
                            *header = false;
                            frame.raw.clone()
                        }
                        Some((format, plans, false)) => {
                            match mask_copy_row(&frame.raw[5..], format, plans, masker.as_ref()) {
                                Ok(Some(row)) => {
                                    let mut b = BytesMut::with_capacity(row.len() + 5);
                                    crate::wire::put_frame(&mut b, b'd', |b| {
                                        b.extend_from_slice(&row)
                                    });
                                    b.freeze()
                                }
                                Ok(None) => frame.raw.clone(),
                                Err(e) => {
                                    return Some(EndReason::Unmaskable(format!(
                                        "a copied row cannot be masked: {e}"
                                    )));
                                }
                            }
                        }
                        None => frame.raw.clone(),
                    }
                }
                PgBackendMessage::CopyDone => {
                    copy_masking = None;
                    let done = std::mem::take(&mut copy_out);
                    if let Err(e) = recorder.record(TimelineEvent::Copy {
                        direction: "out".into(),
                        bytes: done.bytes,
                        rows: done.rows,
                    }) {
                        return Some(down.fail(e.into()));
                    }
                    frame.raw.clone()
                }
                PgBackendMessage::DataRow => {
                    // The first row of an Execute's result: its portal's columns.
                    if !result_open {
                        match expected
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .executing()
                        {
                            Some(Some(portal)) => {
                                let Some((c, described)) = portals.get(&portal) else {
                                    return Some(EndReason::Internal(LOST_TRACK.into()));
                                };
                                columns = c.clone();
                                capture.start(described);
                            }
                            // A simple query whose RowDescription was not seen.
                            Some(None) | None => {
                                return Some(EndReason::Internal(LOST_TRACK.into()));
                            }
                        }
                        result_open = true;
                    }
                    let row = if masker.is_active() {
                        match mask_data_row(&frame.raw, &columns, masker.as_ref()) {
                            Ok(Some(rewritten)) => rewritten.freeze(),
                            Ok(None) => frame.raw.clone(),
                            // A row that cannot be read is not passed on unmasked.
                            Err(e) => {
                                return Some(EndReason::Unmaskable(format!(
                                    "unreadable result row: {e}"
                                )));
                            }
                        }
                    } else {
                        frame.raw.clone()
                    };
                    // The recording keeps what the client got: masked values.
                    if let Err(e) = capture.row(&row, &columns) {
                        return Some(EndReason::Unmaskable(format!("unreadable result row: {e}")));
                    }
                    row
                }
                PgBackendMessage::CommandComplete { tag } => {
                    result_open = false;
                    let duration = finished(&expected, &mut last_done);
                    if let Err(e) = recorder.record(capture.finish(tag.clone(), duration)) {
                        return Some(down.fail(e.into()));
                    }
                    frame.raw.clone()
                }
                // PortalSuspended: an Execute with a row limit reached it.
                PgBackendMessage::Other { tag: b's' } => {
                    result_open = false;
                    let duration = finished(&expected, &mut last_done);
                    if let Err(e) =
                        recorder.record(capture.finish("(portal suspended)".into(), duration))
                    {
                        return Some(down.fail(e.into()));
                    }
                    frame.raw.clone()
                }
                PgBackendMessage::EmptyQueryResponse => {
                    result_open = false;
                    finished(&expected, &mut last_done);
                    frame.raw.clone()
                }
                PgBackendMessage::ErrorResponse { code, message } => {
                    result_open = false;
                    let duration = finished(&expected, &mut last_done);
                    let hit = denials.lock().ok().and_then(|mut d| {
                        let key = d.keys().find(|k| message.contains(k.as_str())).cloned();
                        key.and_then(|k| d.remove(&k))
                    });
                    let (bytes, code, recorded) = match hit {
                        Some((code, rule, reason)) => {
                            let message = denied_message(&rule, &reason);
                            let mut b = BytesMut::new();
                            out::error_response(
                                &mut b,
                                &PgNotice {
                                    severity: "ERROR",
                                    code,
                                    message: &message,
                                    detail: None,
                                    hint: None,
                                },
                            );
                            (b.freeze(), code.to_string(), message)
                        }
                        None if masker.is_active() => {
                            match crate::results::mask_notice(&frame.raw, masker.as_ref()) {
                                Ok(Some(b)) => {
                                    let b = b.freeze();
                                    let masked = crate::results::notice_message(&b)
                                        .unwrap_or_else(|_| "[redacted]".into());
                                    (b, code.clone(), masked)
                                }
                                Ok(None) => (frame.raw.clone(), code.clone(), message.clone()),
                                Err(e) => {
                                    return Some(EndReason::Unmaskable(format!(
                                        "unreadable error from the database: {e}"
                                    )));
                                }
                            }
                        }
                        None => (frame.raw.clone(), code.clone(), message.clone()),
                    };
                    capture.reset();
                    if let Err(e) = recorder.record(TimelineEvent::Error {
                        code,
                        message: recorded,
                        duration_us: duration,
                    }) {
                        return Some(down.fail(e.into()));
                    }
                    bytes
                }
                PgBackendMessage::Other { tag: b'A' } if masker.is_active() => {
                    match crate::results::mask_notification(&frame.raw, masker.as_ref()) {
                        Ok(Some(b)) => b.freeze(),
                        Ok(None) => frame.raw.clone(),
                        Err(e) => {
                            return Some(EndReason::Unmaskable(format!(
                                "unreadable notification from the database: {e}"
                            )));
                        }
                    }
                }
                PgBackendMessage::NoticeResponse if masker.is_active() => {
                    match crate::results::mask_notice(&frame.raw, masker.as_ref()) {
                        Ok(Some(b)) => b.freeze(),
                        Ok(None) => frame.raw.clone(),
                        Err(e) => {
                            return Some(EndReason::Unmaskable(format!(
                                "unreadable notice from the database: {e}"
                            )));
                        }
                    }
                }
                _ => frame.raw.clone(),
            };
            down.count_out(bytes.len() as u64);
            if client_out.send(&bytes).await.is_err() {
                return Some(EndReason::ClientGone);
            }
        }
    };
    // Either side ending ends the session.
    let reason = tokio::select! {
        r = upstream => r,
        r = downstream => r,
        r = ended.wait() => Some(EndReason::Ended(r)),
    };
    let reason = handle.failure().or(reason);
    if let Some(why) = reason.as_ref().filter(|r| **r != EndReason::ClientGone) {
        let code = match why {
            EndReason::Ended(_) => sqlstate::ADMIN_SHUTDOWN,
            EndReason::ClientProtocol(_) | EndReason::Refused(_) => sqlstate::PROTOCOL_VIOLATION,
            EndReason::BackendGone(_) | EndReason::BackendProtocol(_) => {
                sqlstate::CONNECTION_FAILURE
            }
            EndReason::Unmaskable(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
            EndReason::ClientGone | EndReason::Recording(_) | EndReason::Internal(_) => {
                sqlstate::SYSTEM_ERROR
            }
        };
        let mut b = BytesMut::new();
        out::error_response(
            &mut b,
            &PgNotice {
                severity: "FATAL",
                code,
                message: &why.to_string(),
                detail: None,
                hint: None,
            },
        );
        let _ = client_out_owned.send(&b).await;
        let _ = client_out_owned.flush().await;
    }
    reason
}

/// The message a denied statement is replaced with: one that fails at the server
/// with an error naming `marker`.
fn rewrite(message: &PgFrontendMessage, marker: &str) -> Bytes {
    let sql = stand_in(marker);
    let sql = sql.as_str();
    use crate::wire::{put_cstr, put_frame};
    let mut b = BytesMut::new();
    match message {
        PgFrontendMessage::Parse { statement, .. } => put_frame(&mut b, b'P', |b| {
            put_cstr(b, statement.as_bytes());
            put_cstr(b, sql.as_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }),
        // A Bind of a statement that does not exist fails like a parse error.
        PgFrontendMessage::Bind { portal, .. } => put_frame(&mut b, b'B', |b| {
            put_cstr(b, portal.as_bytes());
            put_cstr(b, marker.as_bytes());
            // No parameter formats, no parameters, no result formats.
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }),
        _ => put_frame(&mut b, b'Q', |b| put_cstr(b, sql.as_bytes())),
    }
    b.freeze()
}

/// Locks state shared by the two directions (a panic in one would end both).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the first request of the current cycle that `want` accepts.
fn take<T>(requests: &Mutex<Requests>, want: impl Fn(&Expect) -> Option<T>) -> Option<T> {
    requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take(want)
}

/// A statement's answer ended: how long it took from its request (or, for the later
/// statements of one simple query, from the previous answer).
fn finished(requests: &Mutex<Requests>, last_done: &mut Instant) -> Option<u64> {
    let since = take(requests, |e| match e {
        Expect::Execute(at, _) => Some(*at),
        _ => None,
    })
    .unwrap_or(*last_done);
    let now = Instant::now();
    *last_done = now;
    u64::try_from(now.saturating_duration_since(since).as_micros()).ok()
}

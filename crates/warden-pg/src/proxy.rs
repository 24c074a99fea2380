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
    Action, ConnectionKind, Decision, Guard, LoginRequest, Masker, RefusalKind, ReviewHold,
    ReviewOutcome, ReviewRequest, Secret, SessionEnd, SessionGrant, SessionHooks, SessionRecorder,
    SqlDialect, StatementRecord, TimelineEvent, Traffic, TunnelLogin,
};

use crate::backend::{self as out, PgNotice};
use crate::capture::{CopyCount, ResultCapture, memchr_count};
use crate::catalog::{Catalog, Described, column_masking};
use crate::copy::{CopyFormat, CopyOutPlan, mask_copy_row};
use crate::frontend::{FrontendDecoder, PgFrontendMessage, PgStartup};
use crate::login::login;
use crate::requests::{Expect, RequestLog, Requests};
use crate::results::{BackendDecoder, ColumnMasking, PgBackendMessage, mask_data_row};
use crate::sqlstate;
use crate::tls::{BackendTls, BoxedStream, TlsSetupError, connect_backend};
use warden_net::{Batched, SessionRegistry};

/// A granted session with its backend TLS built.
pub(crate) struct ProxySession {
    pub(crate) id: String,
    pub(crate) backend_addr: String,
    pub(crate) backend_user: String,
    pub(crate) backend_database: String,
    pub(crate) secret: Option<Secret<String>>,
    /// TLS towards the database; `None` is plain TCP.
    pub(crate) backend_tls: Option<BackendTls>,
    pub(crate) guard: Arc<dyn Guard>,
    pub(crate) masker: Arc<dyn Masker>,
    pub(crate) recorder: Arc<dyn SessionRecorder>,
    /// Fires when the gateway ends the session.
    pub(crate) ended: SessionEnd,
}

impl ProxySession {
    fn new(grant: SessionGrant) -> Result<Self, TlsSetupError> {
        let backend_tls = BackendTls::for_grant(&grant)?;
        Ok(Self {
            id: grant.id,
            backend_addr: grant.backend_addr,
            backend_user: grant.backend_user,
            backend_database: grant.backend_database,
            secret: grant.secret,
            backend_tls,
            guard: grant.guard,
            masker: grant.masker,
            recorder: grant.recorder,
            ended: grant.ended,
        })
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
/// The server's address and its own cancel key for a session.
type ServerCancel = (String, i32, i32);

/// Forwards a client's CancelRequest to the server session it names, if any.
async fn forward_cancel(map: &CancelMap, process_id: i32, secret_key: i32) {
    let Some((addr, pid, key)) = map.get(&(process_id, secret_key)) else {
        return;
    };
    if let Ok(mut s) = TcpStream::connect(&addr).await {
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
async fn end_at_login<H: SessionHooks>(
    hooks: &H,
    id: &str,
    client: &mut BoxedStream,
    reason: String,
    message: &str,
) {
    hooks.closed(id, Some(reason), Traffic::default()).await;
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
    let grant = match hooks.open(request).await {
        Ok(g) => g,
        Err(r) => return fatal(&mut client, refusal_sqlstate(r.kind), &r.message).await,
    };
    let id = grant.id.clone();
    let session = match ProxySession::new(grant) {
        Ok(s) => s,
        Err(e) => {
            return end_at_login(
                hooks.as_ref(),
                &id,
                &mut client,
                format!("backend TLS settings unusable: {e}"),
                &format!("the connection's TLS settings cannot be used: {e}"),
            )
            .await;
        }
    };
    let mut server =
        match connect_backend(&session.backend_addr, session.backend_tls.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                return end_at_login(
                    hooks.as_ref(),
                    &id,
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
    let server_session = match login(
        &mut server,
        &session.backend_user,
        &session.backend_database,
        session.secret.as_ref(),
        &app,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            // The server's message names the role, never the secret.
            return end_at_login(
                hooks.as_ref(),
                &id,
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
        (
            session.backend_addr.clone(),
            server_session.process_id,
            server_session.secret_key,
        ),
    );
    out::backend_key_data(&mut b, ours.0, ours.1);
    out::ready_for_query(&mut b, b'I');
    if client.write_all(&b).await.is_err() {
        config.cancels.remove(&ours);
        hooks
            .closed(
                &id,
                Some("client left during login".into()),
                Traffic::default(),
            )
            .await;
        return;
    }
    let cancels = config.cancels.clone();
    let (reason, traffic) = relay(client, server, buf, session, hooks.clone(), config).await;
    if reason.as_deref() == Some(CLIENT_GONE) {
        // A query may still be running for nobody: the server only notices a closed
        // socket when it next writes to it.
        forward_cancel(&cancels, ours.0, ours.1).await;
    }
    cancels.remove(&ours);
    hooks.closed(&id, reason, traffic).await;
}

/// Why a session ends when answers can no longer be matched to requests: masking
/// rows with the wrong columns must not follow.
const LOST_TRACK: &str = "the gateway lost track of the client's requests; the session was ended";

/// Why a session ended when its client went away without saying goodbye.
const CLIENT_GONE: &str = "client disconnected";

/// Marker → (rule, reason) for statements replaced by a failing stand-in.
type Denials = Arc<Mutex<HashMap<String, (String, String)>>>;

/// Bytes read ahead from a client while one of its statements waits for review.
const HELD_READ_LIMIT: usize = 1 << 20;

fn stand_in(marker: &str) -> String {
    format!("SELECT 1 FROM \"{marker}\"")
}

fn denied_message(rule: &str, reason: &str) -> String {
    format!("Warden denied this statement: {reason} (rule {rule})")
}

async fn relay<H: SessionHooks>(
    client: BoxedStream,
    server: BoxedStream,
    mut client_buf: BytesMut,
    session: ProxySession,
    hooks: Arc<H>,
    config: ProxyConfig,
) -> (Option<String>, Traffic) {
    let from_client = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let to_client = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (up_count, down_count) = (from_client.clone(), to_client.clone());
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
    let guard = session.guard.clone();
    let masker = session.masker.clone();
    let session_id = session.id.clone();

    let upstream_denials = denials.clone();
    let up_recorder = session.recorder.clone();
    let mut ended = session.ended.clone();
    let end_signal = session.ended.clone();
    // Messages the proxy itself sends the client between the server's (a held
    // statement's notice); the answering side writes them at a message boundary.
    let (notices, mut notices_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let recorder = session.recorder.clone();
    let upstream = async move {
        let decoder = FrontendDecoder::new(config.max_message);
        let mut copy_in = CopyCount::default();
        let mut requests = RequestLog::default();
        // Statements prepared with an allowed Parse, by name: their SQL for the
        // audit events of their executions.
        let mut prepared: HashMap<String, String> = HashMap::new();
        loop {
            let frame = loop {
                match decoder.decode(&mut client_buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {
                        // Every whole message read so far is handled: send them on
                        // in one write before waiting for more.
                        if server_out.flush().await.is_err() {
                            return Some("database connection lost".to_string());
                        }
                        match client_rd.read_buf(&mut client_buf).await {
                            Ok(0) | Err(_) => return Some(CLIENT_GONE.to_string()),
                            Ok(_) => {}
                        }
                    }
                    Err(e) => return Some(format!("client sent a bad message: {e}")),
                }
            };
            up_count.fetch_add(frame.raw.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some(statement) = requests.sent(&frame.message, &upstream_expected) {
                let mut d = BytesMut::new();
                crate::wire::put_frame(&mut d, b'D', |b| {
                    b.extend_from_slice(b"S");
                    crate::wire::put_cstr(b, statement.as_bytes());
                });
                if server_out.send(&d).await.is_err() {
                    return Some("database connection lost".to_string());
                }
            }
            match &frame.message {
                PgFrontendMessage::CopyData => {
                    copy_in.bytes += frame.raw.len().saturating_sub(5) as u64;
                    copy_in.rows += memchr_count(&frame.raw[5..]);
                }
                PgFrontendMessage::CopyDone | PgFrontendMessage::CopyFail { .. } => {
                    let done = std::mem::take(&mut copy_in);
                    if let Err(e) = up_recorder.record(TimelineEvent::Copy {
                        direction: "in".into(),
                        bytes: done.bytes,
                        rows: done.rows,
                    }) {
                        return Some(e.to_string());
                    }
                }
                _ => {}
            }
            // Query and Parse are decided here. An allowed Parse only prepares; each
            // Bind of it is an execution, audited (with its parameters summarized)
            // before it is forwarded.
            let (sql, via, decided, parameters) = match &frame.message {
                PgFrontendMessage::Query { sql } => (Some(sql.clone()), "Query", None, None),
                PgFrontendMessage::Parse { sql, .. } => (Some(sql.clone()), "Parse", None, None),
                PgFrontendMessage::Bind {
                    statement,
                    param_lengths,
                    ..
                } => match prepared.get(statement) {
                    Some(sql) => (
                        Some(sql.clone()),
                        "Bind",
                        Some(Decision::Allow),
                        Some(param_lengths.clone()),
                    ),
                    None => (None, "", None, None),
                },
                PgFrontendMessage::Close { target: b'S', name } => {
                    prepared.remove(name);
                    (None, "", None, None)
                }
                // It calls functions by OID, around every SQL rule: end the session.
                PgFrontendMessage::FunctionCall => {
                    return Some("function-call protocol refused".to_string());
                }
                _ => (None, "", None, None),
            };
            let Some(sql) = sql else {
                if matches!(frame.message, PgFrontendMessage::Terminate) {
                    let _ = server_out.send(&frame.raw).await;
                    let _ = server_out.flush().await;
                    return None;
                }
                if server_out.send(&frame.raw).await.is_err() {
                    return Some("database connection lost".to_string());
                }
                continue;
            };
            let mut decision = decided.unwrap_or_else(|| {
                guard.decide(&Action::Sql {
                    dialect: SqlDialect::Postgres,
                    text: &sql,
                })
            });
            let mut review = None;
            if let Decision::Review { rule } = &decision {
                // Statements already sent run while this one waits.
                if server_out.flush().await.is_err() {
                    return Some("database connection lost".to_string());
                }
                let rule = rule.clone();
                let held = hold_for_review(
                    hooks.as_ref(),
                    &session_id,
                    &sql,
                    &rule,
                    &notices,
                    up_recorder.as_ref(),
                );
                tokio::pin!(held);
                // A client that leaves while its statement waits ends the session:
                // an approval must not run it for nobody. What it sends meanwhile is
                // kept (up to a bound) for after the decision.
                let (outcome, id) = loop {
                    tokio::select! {
                        decided = &mut held => break decided,
                        read = client_rd.read_buf(&mut client_buf), if client_buf.len() < HELD_READ_LIMIT => {
                            if matches!(read, Ok(0) | Err(_)) {
                                return Some(CLIENT_GONE.to_string());
                            }
                        }
                    }
                };
                decision = outcome;
                review = id;
            }
            if let PgFrontendMessage::Parse { statement, .. } = &frame.message {
                // The server keeps a named statement until it is closed (a second
                // Parse of the name fails) but replaces the unnamed one at every
                // Parse, even one that fails: mirror that, so a Bind is always
                // audited with the SQL the server will run.
                let allowed = decision == Decision::Allow;
                if statement.is_empty() {
                    prepared.remove(statement);
                }
                if allowed {
                    prepared.entry(statement.clone()).or_insert(sql);
                    if server_out.send(&frame.raw).await.is_err() {
                        return Some("database connection lost".to_string());
                    }
                    continue;
                }
            }
            if let Err(e) = hooks
                .record(StatementRecord {
                    session: session_id.clone(),
                    sql: sql.clone(),
                    via,
                    decision: decision.clone(),
                    parameters,
                    review,
                })
                .await
            {
                decision = Decision::Deny {
                    rule: "audit".into(),
                    reason: format!("the audit log cannot record it ({e})"),
                };
            }
            // Not forwarded unless it is in the recording too.
            if let Err(e) = up_recorder.record(TimelineEvent::Statement {
                via: via.to_string(),
                sql,
                decision: decision.clone(),
            }) {
                return Some(e.to_string());
            }
            let bytes: Bytes = match &decision {
                Decision::Deny { rule, reason } => {
                    let mut raw = [0u8; 12];
                    let _ = aws_lc_rs::rand::fill(&mut raw);
                    let mut marker = String::from("warden-denied-");
                    crate::wire::push_hex(&mut marker, &raw);
                    if let Ok(mut d) = upstream_denials.lock() {
                        d.insert(marker.clone(), (rule.clone(), reason.clone()));
                    }
                    rewrite(&frame.message, &marker)
                }
                _ => frame.raw.clone(),
            };
            if server_out.send(&bytes).await.is_err() {
                return Some("database connection lost".to_string());
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
                            return Some(CLIENT_GONE.to_string());
                        }
                        tokio::select! {
                            read = server_rd.read_buf(&mut buf) => match read {
                                Ok(0) | Err(_) => {
                                    return Some("database closed the connection".to_string());
                                }
                                Ok(_) => {}
                            },
                            Some(notice) = notices_rx.recv() => {
                                if client_out.send(&notice).await.is_err() {
                                    return Some(CLIENT_GONE.to_string());
                                }
                            }
                        }
                    }
                    Err(e) => return Some(format!("database sent a bad message: {e}")),
                }
            };
            let bytes: Bytes = match &frame.message {
                PgBackendMessage::RowDescription { fields } => {
                    if masker.is_active() {
                        let oids: Vec<u32> = fields.iter().map(|f| f.table_oid).collect();
                        if let Err(e) = catalog.resolve(&oids, &session).await {
                            return Some(format!(
                                "column tables cannot be resolved for masking: {e}"
                            ));
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
                        return Some(LOST_TRACK.to_string());
                    };
                    // Every bound statement was described (by the client or the
                    // proxy); one that was not cannot be masked by column.
                    let Some(described) = statements.get(&statement) else {
                        return Some(LOST_TRACK.to_string());
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
                    expected
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .end_cycle();
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
                            return Some(format!(
                                "COPY TO cannot be masked ({why}); the session was ended before any data was sent"
                            ));
                        }
                        None => {
                            return Some("COPY TO from a statement the gateway could not read cannot be masked; the session was ended before any data was sent".to_string());
                        }
                    };
                    let fields = match catalog.describe(&select, &session).await {
                        Ok(f) => f,
                        Err(e) => {
                            return Some(format!(
                                "the columns of a COPY TO cannot be resolved for masking ({e}); the session was ended before any data was sent"
                            ));
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
                    return Some("COPY BOTH (replication) cannot be masked; the session was ended before any data was sent".to_string());
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
                                    return Some(format!("a copied row cannot be masked: {e}"));
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
                        return Some(e.to_string());
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
                                    return Some(LOST_TRACK.to_string());
                                };
                                columns = c.clone();
                                capture.start(described);
                            }
                            // A simple query whose RowDescription was not seen.
                            Some(None) | None => return Some(LOST_TRACK.to_string()),
                        }
                        result_open = true;
                    }
                    let row = if masker.is_active() {
                        match mask_data_row(&frame.raw, &columns, masker.as_ref()) {
                            Ok(Some(rewritten)) => rewritten.freeze(),
                            Ok(None) => frame.raw.clone(),
                            // A row that cannot be read is not passed on unmasked.
                            Err(e) => return Some(format!("unreadable result row: {e}")),
                        }
                    } else {
                        frame.raw.clone()
                    };
                    // The recording keeps what the client got: masked values.
                    if let Err(e) = capture.row(&row, &columns) {
                        return Some(format!("unreadable result row: {e}"));
                    }
                    row
                }
                PgBackendMessage::CommandComplete { tag } => {
                    result_open = false;
                    let duration = finished(&expected, &mut last_done);
                    if let Err(e) = recorder.record(capture.finish(tag.clone(), duration)) {
                        return Some(e.to_string());
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
                        return Some(e.to_string());
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
                        Some((rule, reason)) => {
                            let message = denied_message(&rule, &reason);
                            let mut b = BytesMut::new();
                            out::error_response(
                                &mut b,
                                &PgNotice {
                                    severity: "ERROR",
                                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                                    message: &message,
                                    detail: None,
                                    hint: None,
                                },
                            );
                            (
                                b.freeze(),
                                sqlstate::INSUFFICIENT_PRIVILEGE.to_string(),
                                message,
                            )
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
                                    return Some(format!(
                                        "unreadable error from the database: {e}"
                                    ));
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
                        return Some(e.to_string());
                    }
                    bytes
                }
                PgBackendMessage::Other { tag: b'A' } if masker.is_active() => {
                    match crate::results::mask_notification(&frame.raw, masker.as_ref()) {
                        Ok(Some(b)) => b.freeze(),
                        Ok(None) => frame.raw.clone(),
                        Err(e) => {
                            return Some(format!("unreadable notification from the database: {e}"));
                        }
                    }
                }
                PgBackendMessage::NoticeResponse if masker.is_active() => {
                    match crate::results::mask_notice(&frame.raw, masker.as_ref()) {
                        Ok(Some(b)) => b.freeze(),
                        Ok(None) => frame.raw.clone(),
                        Err(e) => return Some(format!("unreadable notice from the database: {e}")),
                    }
                }
                _ => frame.raw.clone(),
            };
            down_count.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if client_out.send(&bytes).await.is_err() {
                return Some("client disconnected".to_string());
            }
        }
    };
    // Either side ending ends the session.
    let reason = tokio::select! {
        r = upstream => r,
        r = downstream => r,
        r = ended.wait() => Some(r),
    };
    if let Some(why) = reason.as_deref().filter(|r| *r != CLIENT_GONE) {
        let code = if end_signal.reason().as_deref() == Some(why) {
            sqlstate::ADMIN_SHUTDOWN
        } else if why.starts_with("client sent") || why.starts_with("function-call") {
            sqlstate::PROTOCOL_VIOLATION
        } else if why.starts_with("database") {
            sqlstate::CONNECTION_FAILURE
        } else if why.contains("mask") {
            sqlstate::INSUFFICIENT_PRIVILEGE
        } else {
            sqlstate::SYSTEM_ERROR
        };
        let mut b = BytesMut::new();
        out::error_response(
            &mut b,
            &PgNotice {
                severity: "FATAL",
                code,
                message: why,
                detail: None,
                hint: None,
            },
        );
        let _ = client_out_owned.send(&b).await;
        let _ = client_out_owned.flush().await;
    }
    let traffic = Traffic {
        from_client: from_client.load(std::sync::atomic::Ordering::Relaxed),
        to_client: to_client.load(std::sync::atomic::Ordering::Relaxed),
    };
    (reason, traffic)
}

/// Holds a statement a review rule matched until its review is decided: opens the
/// review, tells the client where it is approved (a NoticeResponse) and waits.
/// Returns the decision to apply and the review that allowed it.
async fn hold_for_review<H: SessionHooks>(
    hooks: &H,
    session: &str,
    sql: &str,
    rule: &str,
    notices: &tokio::sync::mpsc::UnboundedSender<Bytes>,
    recorder: &dyn SessionRecorder,
) -> (Decision, Option<String>) {
    let request = ReviewRequest {
        session,
        command: sql,
        rule,
    };
    match hooks.request_review(request).await {
        Ok(ReviewHold::PreApproved { id }) => (Decision::Allow, Some(id)),
        Ok(ReviewHold::Held { id, message }) => {
            let mut b = BytesMut::new();
            out::notice_response(
                &mut b,
                &PgNotice {
                    severity: "NOTICE",
                    code: sqlstate::WARNING,
                    message: &message,
                    detail: None,
                    hint: None,
                },
            );
            let _ = notices.send(b.freeze());
            let _ = recorder.record(TimelineEvent::Activity {
                what: "review".into(),
                detail: serde_json::json!({"review": id, "message": message}),
                decision: Some(Decision::Review {
                    rule: rule.to_string(),
                }),
            });
            let outcome = hooks.await_review(&id).await;
            let approved = matches!(outcome, ReviewOutcome::Approved { .. });
            (outcome.decision(rule), approved.then_some(id))
        }
        Err(e) => (
            Decision::Deny {
                rule: rule.to_string(),
                reason: format!("this statement needs a review, which cannot be held: {e}"),
            },
            None,
        ),
    }
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

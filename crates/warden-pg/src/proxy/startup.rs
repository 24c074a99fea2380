//! A PostgreSQL session's start: the startup packet (TLS when the listener has a
//! certificate, cancel requests), the token as the password (or the tunnel's), the
//! session opened through the hooks, and the backend login with the held
//! credential, each bounded by the listener's login timeout; then the relay.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warden_core::{
    ConnectionKind, EndReason, LoginRequest, SessionHandle, SessionHooks, TunnelLogin,
};

use super::cancel::{ServerCancel, forward_cancel, random_i32};
use super::relay::relay;
use super::{ProxyConfig, ProxySession, refusal_sqlstate};
use crate::backend::{self as out, PgNotice};
use crate::frontend::{FrontendDecoder, PgFrontendMessage, PgStartup};
use crate::login::login;
use crate::sqlstate;
use crate::tls::{BoxedStream, connect_backend};

pub(super) async fn fatal(stream: &mut (impl AsyncWrite + Unpin), code: &str, message: &str) {
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
    let _ = warden_net::write_flushed(stream, &b).await;
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

/// The largest message a client may send before it has logged in (a startup packet,
/// a password message carrying a token): PostgreSQL's own startup limit is 10,000
/// bytes; JWTs with many groups reach a few KiB.
pub const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

pub(super) async fn serve_stream<H: SessionHooks>(
    mut client: BoxedStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
    tunnel: Option<TunnelLogin>,
) {
    let mut encrypted = false;
    // Before it has logged in, a client sends what a startup packet and a token
    // need, not what `max_message` allows a session.
    let decoder = FrontendDecoder::new(MAX_LOGIN_MESSAGE.min(config.max_message));
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
                    if warden_net::write_flushed(&mut client, b"S").await.is_err() {
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
                    if warden_net::write_flushed(&mut client, b"N").await.is_err() {
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
    warden_net::write_flushed(client, &b).await.ok()?;
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
    let ours = config.cancels.insert_unique(
        || (random_i32() & i32::MAX, random_i32()),
        ServerCancel {
            dialer: handle.dialer(),
            addr: target.addr.clone(),
            process_id: server_session.process_id,
            secret_key: server_session.secret_key,
        },
    );
    out::backend_key_data(&mut b, ours.0, ours.1);
    out::ready_for_query(&mut b, b'I');
    if warden_net::write_flushed(&mut client, &b).await.is_err() {
        config.cancels.remove(&ours);
        handle
            .close(Some(EndReason::Internal("client left during login".into())))
            .await;
        return;
    }
    let cancels = config.cancels.clone();
    let reason = relay(client, server, buf, session, config).await;
    let backend_alive = !matches!(
        reason,
        None | Some(EndReason::BackendGone(_) | EndReason::BackendProtocol(_))
    );
    if backend_alive {
        // A query may still be running for nobody (the client left, or the gateway
        // ended the session: a revoked identity's UPDATE must not run on): the
        // server only notices a closed socket when it next writes to it.
        forward_cancel(&cancels, ours.0, ours.1).await;
    }
    cancels.remove(&ours);
    handle.close(reason).await;
}

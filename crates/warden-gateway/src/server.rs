//! The API listener: plain HTTP or HTTPS (rustls), HTTP/1.1 and HTTP/2.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ClientAddr;
use crate::{Door, GatewayError, REFUSAL_TIMEOUT};

/// The connection's place within the listener's limits, held by each of its
/// requests: a tunnel keeps it for as long as it carries a session.
#[derive(Clone)]
pub struct ConnectionPermit(#[allow(dead_code)] std::sync::Arc<warden_net::Permit>);

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may take to send its first request, TLS included.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings, so that a peer gone silent is found and its place freed.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Loads a certificate chain and key into a TLS acceptor offering h2 and http/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, GatewayError> {
    tls_acceptor_with_alpn(cert, key, &[b"h2", b"http/1.1"])
}

/// Loads a certificate chain and key into a TLS acceptor offering `alpn` (none: any).
pub fn tls_acceptor_with_alpn(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, GatewayError> {
    warden_net::server_tls(cert, key, alpn).map_err(GatewayError::Tls)
}

/// Accepts connections until `shutdown` changes, within the door's limits (beyond
/// them a client is answered `503` with the reason). Each connection is served on its
/// own task; a failing connection (bad TLS, bad HTTP) ends alone.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    door: Door,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Agent tunnels and `warden connect` carry interactive protocols here: small
        // writes must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let (app, permit) = match door.admit("api", peer) {
            Ok(permit) => (
                app.clone(),
                Some(ConnectionPermit(std::sync::Arc::new(permit))),
            ),
            Err(overload) => {
                let refusal = refusal(&overload);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        REFUSAL_TIMEOUT,
                        serve_connection(stream, peer, tls, refusal, None),
                    )
                    .await;
                });
                continue;
            }
        };
        tokio::spawn(serve_connection(stream, peer, tls, app, permit));
    }
}

/// Answers every request with `503` naming why the connection was turned away.
fn refusal(overload: &warden_net::Overload) -> Router {
    let body = axum::Json(serde_json::json!({
        "error": overload.code(),
        "message": overload.to_string(),
    }));
    Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::CONNECTION, "close")],
                body,
            )
        }
    })
}

/// Serves one connection (TLS first, when configured) to its end.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    permit: Option<ConnectionPermit>,
) {
    // Until its first request a connection is anonymous, and hyper waits for the
    // bytes that tell HTTP/1 from HTTP/2 without a limit: one that sends nothing (or
    // only HTTP/2's preface) in FIRST_REQUEST_TIMEOUT is closed, freeing its place.
    let requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = requested.clone();
    let svc = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        req.extensions_mut().insert(ClientAddr(peer));
        if let Some(permit) = &permit {
            req.extensions_mut().insert(permit.clone());
        }
        req
    });
    let svc = TowerToHyperService::new(svc);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEP_ALIVE))
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    let serving = async move {
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                }
            }
            None => {
                builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
            }
        }
    };
    let first_request = async {
        tokio::time::sleep(FIRST_REQUEST_TIMEOUT).await;
        if requested.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = serving => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        },
        () = first_request => tracing::debug!(%peer, "no request in time: connection closed"),
    }
}

//! The listener side: one client connection (HTTP/1.1 or HTTP/2, TLS when the
//! listener has a certificate), the Warden sessions opened on it, and the routing of
//! each request to its session.
//!
//! A client names the connection as the first path segment
//! (`https://gw:8443/prod-k8s/api/v1/pods`) and sends its Warden token as a bearer
//! token; a client that came through `warden connect` names neither. Each distinct
//! (connection, token) on a client connection is one Warden session, opened on its
//! first request and closed when the client connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use uuid::Uuid;
use warden_core::{
    BoxedStream, ConnectionKind, EndReason, LoginRequest, RefusalKind, SessionHandle, SessionHooks,
    TunnelLogin,
};

use crate::body::Body;
use crate::forward;
use crate::reply::{Flavor, Refused, refusal};
use crate::upstream::Upstream;

/// Limits of the HTTP and Kubernetes listeners.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Request line and headers of one request, in bytes.
    pub max_header_bytes: usize,
    /// How long a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Warden sessions (connection and token pairs) one client connection may open.
    pub sessions_per_client: usize,
    /// An answer Warden must read whole to mask it (or one line of a watch stream).
    pub max_masked_bytes: usize,
    /// HTTP/2 requests one client connection may have open at once.
    pub max_streams: u32,
    /// Bytes of answers held to be masked at once, over the whole listener.
    pub masked_bytes_in_flight: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(30),
            sessions_per_client: 8,
            max_masked_bytes: 64 * 1024 * 1024,
            max_streams: 128,
            masked_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

/// The proxy for one kind (`kubernetes` or `http`).
pub struct HttpProxy<H> {
    pub(crate) hooks: Arc<H>,
    pub(crate) kind: ConnectionKind,
    pub(crate) flavor: Flavor,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) limits: ProxyLimits,
    /// Kibibytes of answers that may be held for masking at once.
    pub(crate) masking_budget: Arc<tokio::sync::Semaphore>,
}

/// One Warden session on a client connection: its handle and its target.
pub(crate) struct HttpSession {
    pub handle: SessionHandle,
    pub upstream: Upstream,
    /// Numbers the session's recorded terminals (exec and attach streams).
    terminals: std::sync::atomic::AtomicU32,
    /// Admissions and outcomes under way: the session closes after them.
    pending: std::sync::atomic::AtomicUsize,
    recorded: tokio::sync::Notify,
    /// Upgraded streams (exec, attach, port-forward) still open, and whether the
    /// client connection they came from is over: the last of them closes the session.
    streams: Mutex<(usize, bool)>,
}

/// Work in a session that its close waits for; done when dropped.
pub(crate) struct Busy(Arc<HttpSession>);

impl Busy {
    pub fn session(&self) -> &HttpSession {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.recorded.notify_waiters();
    }
}

/// How long closing a session waits for its last outcomes to be recorded.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl HttpSession {
    /// Marks work the session's close must wait for (an admission, an outcome being
    /// recorded) until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Records the outcome `event` of the request audited as `statement` without
    /// making the caller wait; closing the session waits for it.
    pub fn record_later(self: &Arc<Self>, statement: Uuid, event: warden_core::TimelineEvent) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let busy = self.busy();
        rt.spawn(async move {
            let _ = busy.0.handle.record_outcome(Some(statement), event).await;
            drop(busy);
        });
    }

    /// An upgraded stream starts: the session stays open until it ends, even after
    /// the client connection that asked for it is over (the upgrade took it).
    pub fn stream_opened(&self) {
        self.streams_state().0 += 1;
    }

    /// An upgraded stream ended; the last one closes a session whose client
    /// connection is over.
    pub async fn stream_closed(&self) {
        let last = {
            let mut s = self.streams_state();
            s.0 = s.0.saturating_sub(1);
            s.0 == 0 && s.1
        };
        if last {
            self.close(None).await;
        }
    }

    /// The client connection is over: the session closes now, or when its last
    /// upgraded stream ends.
    async fn client_done(&self) {
        let now = {
            let mut s = self.streams_state();
            s.1 = true;
            s.0 == 0
        };
        if now {
            self.close(None).await;
        }
    }

    fn streams_state(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the session once its admissions and outcomes are done (bounded).
    pub async fn close(&self, reason: Option<EndReason>) {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while self.pending.load(Ordering::SeqCst) > 0 {
            let notified = self.recorded.notified();
            if self.pending.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.handle.close(reason).await;
    }

    /// The next terminal number of the session.
    pub fn next_channel(&self) -> u32 {
        self.terminals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A client connection: who it is, and the sessions it opened.
pub(crate) struct Client<H> {
    pub proxy: Arc<HttpProxy<H>>,
    pub peer: SocketAddr,
    /// Set for clients that came through `warden connect`.
    pub tunnel: Option<TunnelLogin>,
    sessions: Mutex<Sessions>,
}

/// The sessions of a client connection, those being opened, and whether the
/// connection is over (nothing more opens then).
#[derive(Default)]
struct Sessions {
    open: HashMap<(String, String), Arc<HttpSession>>,
    opening: usize,
    closed: bool,
}

/// A session being opened: counted against the client connection's limit until
/// it is in the map or failed.
struct Opening<'a, H>(&'a Client<H>);

impl<H> Drop for Opening<'_, H> {
    fn drop(&mut self) {
        let mut s = self
            .0
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.opening = s.opening.saturating_sub(1);
    }
}

impl<H: SessionHooks> HttpProxy<H> {
    pub fn new(
        hooks: Arc<H>,
        kind: ConnectionKind,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: ProxyLimits,
    ) -> Self {
        let flavor = match kind {
            ConnectionKind::Kubernetes => Flavor::Kubernetes,
            _ => Flavor::Http,
        };
        let kib =
            (limits.masked_bytes_in_flight / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            hooks,
            kind,
            flavor,
            tls,
            limits,
            masking_budget: Arc::new(tokio::sync::Semaphore::new(kib)),
        }
    }

    /// Serves a client of the listener until it leaves.
    pub async fn serve(self: &Arc<Self>, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        match &self.tls {
            Some(acceptor) => {
                let accepted =
                    tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)).await;
                match accepted {
                    Ok(Ok(tls)) => self.serve_stream(Box::new(tls), peer, None).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
            None => self.serve_stream(Box::new(stream), peer, None).await,
        }
    }

    /// Serves a client that came through a tunnel naming the connection and token.
    pub async fn serve_tunnel(
        self: &Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: TunnelLogin,
    ) {
        self.serve_stream(stream, peer, Some(tunnel)).await;
    }

    async fn serve_stream(
        self: &Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: Option<TunnelLogin>,
    ) {
        let client = Arc::new(Client {
            proxy: self.clone(),
            peer,
            tunnel,
            sessions: Mutex::new(Sessions::default()),
        });
        let service = {
            let client = client.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move { Ok::<_, std::convert::Infallible>(client.handle(req).await) }
            })
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.limits.max_streams);
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
        client.close_all().await;
    }
}

impl<H: SessionHooks> Client<H> {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let flavor = self.proxy.flavor;
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // The connection: the tunnel's, or the path's first segment.
        let (connection, token, target) = match &self.tunnel {
            Some(t) => (t.connection.clone(), t.token.expose().clone(), target),
            None => {
                let Some((name, rest)) = split_connection(&target) else {
                    return refusal(
                        flavor,
                        Refused::NotFound,
                        "name the Warden connection as the first path segment: /<connection>/...",
                    );
                };
                let Some(token) = bearer(&req) else {
                    return refusal(
                        flavor,
                        Refused::Unauthenticated,
                        "send your Warden token as a bearer token (Authorization: Bearer <token>)",
                    );
                };
                // A browser sends the credentials it cached with requests other sites
                // make it send: those are refused.
                if cross_site(&req) {
                    return refusal(
                        flavor,
                        Refused::Forbidden,
                        "a request another site made the browser send is refused",
                    );
                }
                (name, token, rest)
            }
        };
        let session = match self.session(&connection, token).await {
            Ok(s) => s,
            Err(response) => return *response,
        };
        let response = forward::request(&self, &session, req, &target).await;
        // A session that failed, or that the gateway ended (its token revoked or
        // expired), is closed now; a later request opens a new one if it may.
        let over = session.handle.failure().or_else(|| {
            session
                .handle
                .ended()
                .reason()
                .map(warden_core::EndReason::Ended)
        });
        if let Some(reason) = over {
            self.end(&connection, &session, reason).await;
        }
        response
    }

    /// The session for `connection` and `token` on this client connection, opened on
    /// first use.
    async fn session(
        &self,
        connection: &str,
        token: String,
    ) -> Result<Arc<HttpSession>, Box<Response<Body>>> {
        let flavor = self.proxy.flavor;
        let key = (connection.to_string(), token);
        let opening = {
            let mut sessions = self.lock();
            if let Some(s) = sessions.open.get(&key) {
                return Ok(s.clone());
            }
            // Sessions being opened count too: concurrent first requests (HTTP/2)
            // cannot open more than the limit.
            if sessions.closed
                || sessions.open.len() + sessions.opening >= self.proxy.limits.sessions_per_client
            {
                return Err(Box::new(refusal(
                    flavor,
                    Refused::TooMany,
                    &format!(
                        "one client connection may open {} sessions (connection and token pairs)",
                        self.proxy.limits.sessions_per_client
                    ),
                )));
            }
            sessions.opening += 1;
            Opening(self)
        };
        let handle = self
            .proxy
            .hooks
            .open(LoginRequest {
                protocol: self.proxy.kind,
                connection,
                user: "",
                token: &key.1,
                client: self.peer,
            })
            .await
            .map_err(|r| {
                let why = match r.kind {
                    RefusalKind::BadCredentials => Refused::Unauthenticated,
                    RefusalKind::NoAccess | RefusalKind::PolicyUnusable => Refused::Forbidden,
                    RefusalKind::Unavailable => Refused::Unavailable,
                };
                Box::new(refusal(flavor, why, &r.message))
            })?;
        if let Some(who) = &handle.target.http.impersonate
            && let Err(e) = crate::upstream::identity_headers(who)
        {
            let message = e.to_string();
            handle
                .close(Some(EndReason::Refused(message.clone())))
                .await;
            return Err(Box::new(refusal(flavor, Refused::Forbidden, &message)));
        }
        let upstream = match Upstream::new(&handle.target, handle.dialer()) {
            Ok(u) => u,
            Err(e) => {
                let message = format!("the connection's target cannot be used: {e}");
                handle
                    .close(Some(EndReason::BackendGone(message.clone())))
                    .await;
                return Err(Box::new(refusal(flavor, Refused::BadGateway, &message)));
            }
        };
        let session = Arc::new(HttpSession {
            handle,
            upstream,
            terminals: std::sync::atomic::AtomicU32::new(0),
            pending: std::sync::atomic::AtomicUsize::new(0),
            recorded: tokio::sync::Notify::new(),
            streams: Mutex::new((0, false)),
        });
        // Two first requests may race; one session per key stays, the other closes.
        let (kept, extra) = {
            let mut sessions = self.lock();
            if sessions.closed {
                (None, Some(session))
            } else {
                match sessions.open.get(&key) {
                    Some(existing) => (Some(existing.clone()), Some(session)),
                    None => {
                        sessions.open.insert(key, session.clone());
                        (Some(session), None)
                    }
                }
            }
        };
        drop(opening);
        if let Some(extra) = extra {
            extra.close(None).await;
        }
        kept.ok_or_else(|| {
            Box::new(refusal(
                flavor,
                Refused::Unavailable,
                "the client connection is closing",
            ))
        })
    }

    /// Ends one session (its failure, or the gateway ended it); later requests with
    /// the same token open a new one, if the token is still good.
    pub(crate) async fn end(
        &self,
        connection: &str,
        session: &Arc<HttpSession>,
        reason: EndReason,
    ) {
        self.lock()
            .open
            .retain(|(c, _), s| !(c == connection && Arc::ptr_eq(s, session)));
        session.close(Some(reason)).await;
    }

    async fn close_all(&self) {
        let sessions: Vec<_> = {
            let mut all = self.lock();
            all.closed = true;
            all.open.drain().map(|(_, s)| s).collect()
        };
        for s in sessions {
            s.client_done().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `/<connection>/rest` → (`connection`, `/rest`); the name's charset needs no
/// decoding (see `validate_connection_name`).
fn split_connection(target: &str) -> Option<(String, String)> {
    let rest = target.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let name = &rest[..end];
    warden_core::validate_connection_name(name).ok()?;
    let tail = &rest[end..];
    let tail = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Some((name.to_string(), tail))
}

/// Whether a browser says another site made it send the request: `Sec-Fetch-Site`,
/// or, for browsers without it, an `Origin` that is not the gateway's own address.
/// Only credentials a browser sends by itself (Basic) need this.
fn cross_site<B>(req: &Request<B>) -> bool {
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..6)
                .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
        });
    if !basic {
        return false;
    }
    let fetch_site = req
        .headers()
        .get_all("sec-fetch-site")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            !v.trim().eq_ignore_ascii_case("same-origin") && !v.trim().eq_ignore_ascii_case("none")
        });
    if fetch_site {
        return true;
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    req.headers()
        .get_all(hyper::header::ORIGIN)
        .iter()
        .any(|origin| {
            let origin = origin.to_str().unwrap_or("null");
            let authority = origin
                .split_once("://")
                .map(|(_, a)| a.trim_end_matches('/'));
            authority.is_none_or(|a| host.as_deref() != Some(a))
        })
}

/// The Warden token of a request: a bearer token, or the password of HTTP Basic
/// credentials (any user name) — what a browser sends once the gateway asks for them.
fn bearer<B>(req: &Request<B>) -> Option<String> {
    use base64::Engine as _;
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        token.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        pair.split_once(':')?.1.to_string()
    } else {
        return None;
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_as_bearer_or_as_a_basic_password() {
        let with = |v: &str| {
            let req = Request::builder()
                .header(hyper::header::AUTHORIZATION, v)
                .body(())
                .unwrap_or_else(|_| unreachable!());
            bearer(&req)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        // `me:wk_token` in base64.
        assert_eq!(with("Basic bWU6d2tfdG9rZW4=").as_deref(), Some("wk_token"));
        assert_eq!(with("Basic bWU6").as_deref(), None);
        assert_eq!(with("Digest x").as_deref(), None);
    }

    #[test]
    fn the_first_segment_names_the_connection() {
        assert_eq!(
            split_connection("/prod-k8s/api/v1/pods?watch=1"),
            Some(("prod-k8s".into(), "/api/v1/pods?watch=1".into()))
        );
        assert_eq!(
            split_connection("/wiki?x=1"),
            Some(("wiki".into(), "/?x=1".into()))
        );
        assert_eq!(split_connection("/wiki"), Some(("wiki".into(), "/".into())));
        assert_eq!(split_connection("/Bad/x"), None);
        assert_eq!(split_connection("/"), None);
        assert_eq!(split_connection("/%70rod/x"), None);
    }
}

//! The gateway side of agent tunnels: which agents are connected, and a [`Dialer`]
//! that opens a backend connection through one of them.
//!
//! Each connected agent process is one [`Tunnel`]: an HTTP/2 client connection over
//! the upgraded API connection, driven on its own task. A dial picks the tunnel of the
//! named agent carrying the fewest streams and sends `CONNECT host:port`; the agent
//! answers `200` (the stream is then the backend connection) or refuses with its
//! reason. With no tunnel for the agent a dial waits up to the hub's `dial_wait` for
//! one to connect, so a session started while an agent reconnects still succeeds.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use warden_core::{BoxFuture, BoxedStream, DialError, Dialer};

use crate::wire::{CONNECTION_WINDOW, DIAL_ERROR_HEADER, KEEP_ALIVE, MAX_FRAME, STREAM_WINDOW};

/// Who a connected agent process is, as its tunnel was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPeer {
    /// The registered agent's name (what connections name).
    pub agent: String,
    /// The key it authenticated with (revoking or rotating it closes the tunnel).
    pub key_id: String,
    /// The process's own random id, host name and version, as it reports them.
    pub instance: String,
    pub host: String,
    pub version: String,
    /// Where its connection came from, as the gateway sees it.
    pub address: SocketAddr,
}

/// A connected agent process, for the API.
#[derive(Debug, Clone)]
pub struct TunnelStatus {
    pub peer: AgentPeer,
    pub connected_at: SystemTime,
    /// Backend connections open through it now.
    pub open_streams: usize,
    /// Backend connections it has opened since it connected.
    pub dials: u64,
}

/// Who asked for a dial, for its audit event.
#[derive(Debug, Clone, Default)]
pub struct DialContext {
    pub session: Option<uuid::Uuid>,
    pub connection: String,
}

/// How a dial through an agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialOutcome {
    Connected,
    /// The agent refused it (outside its allowlist) or could not reach the target.
    Refused,
    /// No agent of that name connected in time.
    Offline,
}

impl DialOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DialOutcome::Connected => "connected",
            DialOutcome::Refused => "refused",
            DialOutcome::Offline => "offline",
        }
    }
}

/// What the hub reports; the gateway turns these into audit events.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Connected(AgentPeer),
    Disconnected {
        peer: AgentPeer,
        reason: String,
        dials: u64,
    },
    Dialed {
        agent: String,
        /// The process that carried (or refused) it; none when no agent was online.
        peer: Option<AgentPeer>,
        addr: String,
        context: DialContext,
        outcome: DialOutcome,
        message: Option<String>,
        /// The session's first connected dial (its later ones are extra legs).
        new_session: bool,
    },
}

/// Where the hub's events go. `record` is awaited before the dial it reports
/// returns, and says whether the event was kept: a dial that cannot be audited is
/// not used (fail closed).
pub trait HubEvents: Send + Sync {
    fn record(&self, event: HubEvent) -> BoxFuture<'_, bool>;
}

/// Every agent connected to this gateway.
pub struct AgentHub {
    state: Mutex<HubState>,
    /// Woken when a tunnel connects.
    connected: Notify,
    /// Woken when a tunnel has ended (and its disconnect was recorded).
    removed: Notify,
    events: Arc<dyn HubEvents>,
    /// How long a dial waits for an agent of the name to be connected.
    dial_wait: Duration,
    /// How long the agent may take to answer a dial (it dials the target meanwhile).
    dial_timeout: Duration,
    next_id: AtomicU64,
}

#[derive(Default)]
struct HubState {
    /// Connected processes by agent name.
    tunnels: HashMap<String, Vec<Arc<Tunnel>>>,
    /// Logins admitted (key checked) whose tunnels are not in `tunnels` yet.
    pending: HashMap<String, usize>,
    /// Keys revoked, replaced or deleted while this gateway runs: a login checked
    /// just before that must not slip in after the tunnels were closed.
    closed_keys: HashSet<String>,
    stopping: bool,
}

/// Why a tunnel login is turned away before its tunnel starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("agent `{agent}` already has {max} processes connected to this gateway")]
    TooMany { agent: String, max: usize },
    #[error("this agent key was just revoked or replaced")]
    KeyClosed,
    #[error("the gateway is stopping")]
    Stopping,
}

/// A login's place among its agent's processes, held from the key check until its
/// tunnel is in the hub (or the login fails).
pub struct Reservation {
    hub: Arc<AgentHub>,
    agent: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut state = self.hub.lock();
            if let Some(n) = state.pending.get_mut(&self.agent) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.pending.remove(&self.agent);
                }
            }
        }
        self.hub.removed.notify_waiters();
    }
}

/// A tunnel's place in the hub: dropping it cuts the tunnel and takes it out.
struct Registered<'a> {
    hub: &'a AgentHub,
    tunnel: Arc<Tunnel>,
    kill: warden_net::KillSwitch,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.kill.kill();
        self.hub.remove(&self.tunnel);
        self.hub.removed.notify_waiters();
    }
}

struct Tunnel {
    id: u64,
    peer: AgentPeer,
    connected_at: SystemTime,
    sender: http2::SendRequest<Empty<Bytes>>,
    open_streams: Arc<AtomicUsize>,
    dials: AtomicU64,
    /// Set with the reason when the gateway closes the tunnel (revocation).
    closing: Mutex<Option<String>>,
    close: Notify,
}

/// The most of an agent's refusal text that is kept.
const MAX_DIAL_ERROR: usize = 200;

enum OpenError {
    /// The tunnel is gone; another may serve the dial.
    Gone,
    Refused(String),
    TimedOut,
}

impl AgentHub {
    pub fn new(events: Arc<dyn HubEvents>, dial_wait: Duration, dial_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(HubState::default()),
            connected: Notify::new(),
            removed: Notify::new(),
            events,
            dial_wait,
            dial_timeout,
            next_id: AtomicU64::new(1),
        }
    }

    /// A dialer for sessions of a connection that names `agent`.
    pub fn dialer(self: &Arc<Self>, agent: &str, context: DialContext) -> Arc<dyn Dialer> {
        Arc::new(AgentDialer {
            hub: self.clone(),
            agent: agent.to_string(),
            context,
            carried: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Admits a login of `agent` with key `key_id` if fewer than `max` of its
    /// processes are connected or logging in (counted together, so simultaneous logins
    /// cannot pass the limit), the key was not closed meanwhile, and the gateway is
    /// not stopping.
    pub fn reserve(
        self: &Arc<Self>,
        agent: &str,
        key_id: &str,
        max: usize,
    ) -> Result<Reservation, ReserveError> {
        let mut state = self.lock();
        if state.stopping {
            return Err(ReserveError::Stopping);
        }
        if state.closed_keys.contains(key_id) {
            return Err(ReserveError::KeyClosed);
        }
        let connected = state.tunnels.get(agent).map_or(0, Vec::len);
        let pending = state.pending.entry(agent.to_string()).or_default();
        if connected + *pending >= max {
            return Err(ReserveError::TooMany {
                agent: agent.to_string(),
                max,
            });
        }
        *pending += 1;
        Ok(Reservation {
            hub: self.clone(),
            agent: agent.to_string(),
        })
    }

    /// Every connected agent process.
    pub fn status(&self) -> Vec<TunnelStatus> {
        let state = self.lock();
        let mut out: Vec<TunnelStatus> = state
            .tunnels
            .values()
            .flatten()
            .map(|t| TunnelStatus {
                peer: t.peer.clone(),
                connected_at: t.connected_at,
                open_streams: t.open_streams.load(Ordering::Relaxed),
                dials: t.dials.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| (&a.peer.agent, a.connected_at).cmp(&(&b.peer.agent, b.connected_at)));
        out
    }

    /// Closes at once every tunnel `which` selects (a revoked or rotated key, a
    /// deleted agent); the sessions they carry end with them.
    pub fn close_where(&self, which: impl Fn(&AgentPeer) -> bool, reason: &str) -> usize {
        let state = self.lock();
        Self::close_in(&state, which, reason)
    }

    /// Closes the tunnels of key `key_id` and refuses its logins from now on, even
    /// one whose key was checked a moment ago.
    pub fn close_key(&self, key_id: &str, reason: &str) -> usize {
        let mut state = self.lock();
        state.closed_keys.insert(key_id.to_string());
        Self::close_in(&state, |p| p.key_id == key_id, reason)
    }

    fn close_in(state: &HubState, which: impl Fn(&AgentPeer) -> bool, reason: &str) -> usize {
        let mut closed = 0;
        for t in state.tunnels.values().flatten().filter(|t| which(&t.peer)) {
            if let Ok(mut closing) = t.closing.lock() {
                closing.get_or_insert_with(|| reason.to_string());
            }
            t.close.notify_one();
            closed += 1;
        }
        closed
    }

    /// Closes every tunnel and waits (at most `wait`) until each has recorded its
    /// end: a stopping gateway leaves no tunnel unaccounted for in the audit log.
    pub async fn shut_down(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        self.lock().stopping = true;
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            let closed = self.close_where(|_| true, "the gateway is stopping");
            if closed == 0 && self.lock().pending.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                tracing::warn!("agent tunnels still open at shutdown");
                return;
            }
        }
    }

    /// Carries dials over `io` (an upgraded, authenticated agent connection) until it
    /// ends or the gateway closes it.
    pub async fn serve<I>(&self, io: I, peer: AgentPeer, reservation: Reservation)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // hyper drives the HTTP/2 connection on a task of its own, which dropping
        // `connection` below does not stop: closing the tunnel cuts its I/O instead.
        let (io, kill) = warden_net::Killable::new(io);
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await;
        let (sender, connection) = match handshake {
            Ok(parts) => parts,
            Err(e) => {
                kill.kill();
                tracing::warn!(agent = %peer.agent, error = %e, "agent tunnel handshake failed");
                return;
            }
        };
        let tunnel = Arc::new(Tunnel {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer: peer.clone(),
            connected_at: SystemTime::now(),
            sender,
            open_streams: Arc::new(AtomicUsize::new(0)),
            dials: AtomicU64::new(0),
            closing: Mutex::new(None),
            close: Notify::new(),
        });
        if !self.events.record(HubEvent::Connected(peer.clone())).await {
            // Unaudited tunnels carry nothing; the agent will try again.
            kill.kill();
            return;
        }
        let refused = {
            let mut state = self.lock();
            if state.stopping {
                Some("the gateway is stopping")
            } else if state.closed_keys.contains(&peer.key_id) {
                Some("the agent's key was revoked or replaced as it connected")
            } else {
                state
                    .tunnels
                    .entry(peer.agent.clone())
                    .or_default()
                    .push(tunnel.clone());
                None
            }
        };
        if let Some(reason) = refused {
            kill.kill();
            self.events
                .record(HubEvent::Disconnected {
                    peer,
                    reason: reason.to_string(),
                    dials: 0,
                })
                .await;
            // Held until now: `shut_down` waits for pending logins' events too.
            drop(reservation);
            return;
        }
        drop(reservation);
        // Leaves the map however this task ends (a panic, a dropped future).
        let registered = Registered {
            hub: self,
            tunnel: tunnel.clone(),
            kill: kill.clone(),
        };
        self.connected.notify_waiters();
        tracing::info!(agent = %peer.agent, instance = %peer.instance, address = %peer.address, "agent connected");
        let reason = tokio::select! {
            ended = connection => match ended {
                Ok(()) => "the agent closed its tunnel".to_string(),
                Err(e) => format!("the tunnel failed: {e}"),
            },
            () = tunnel.close.notified() => tunnel
                .closing
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_else(|| "closed by the gateway".to_string()),
        };
        kill.kill();
        tracing::info!(agent = %peer.agent, instance = %peer.instance, %reason, "agent disconnected");
        // Recorded before the tunnel leaves the map, so `shut_down` waits for it.
        self.events
            .record(HubEvent::Disconnected {
                peer,
                reason,
                dials: tunnel.dials.load(Ordering::Relaxed),
            })
            .await;
        drop(registered);
    }

    fn remove(&self, tunnel: &Tunnel) {
        let mut state = self.lock();
        if let Some(list) = state.tunnels.get_mut(&tunnel.peer.agent) {
            list.retain(|t| t.id != tunnel.id);
            if list.is_empty() {
                state.tunnels.remove(&tunnel.peer.agent);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live tunnel of `agent` carrying the fewest streams, skipping `tried`.
    fn pick(&self, agent: &str, tried: &[u64]) -> Option<Arc<Tunnel>> {
        self.lock()
            .tunnels
            .get(agent)?
            .iter()
            .filter(|t| {
                !tried.contains(&t.id)
                    && !t.sender.is_closed()
                    && t.closing.lock().map_or(true, |c| c.is_none())
            })
            .min_by_key(|t| t.open_streams.load(Ordering::Relaxed))
            .cloned()
    }

    async fn dial(
        &self,
        agent: &str,
        addr: &str,
        context: &DialContext,
        new_session: bool,
    ) -> Result<BoxedStream, DialError> {
        let deadline = tokio::time::Instant::now() + self.dial_wait;
        let mut tried = Vec::new();
        loop {
            let connected = self.connected.notified();
            tokio::pin!(connected);
            connected.as_mut().enable();
            let Some(tunnel) = self.pick(agent, &tried) else {
                if tokio::time::timeout_at(deadline, connected).await.is_err() {
                    return Err(self.offline(agent, addr, context).await);
                }
                continue;
            };
            let outcome = tunnel.open(addr, self.dial_timeout).await;
            let (outcome, message, result) = match outcome {
                Ok(stream) => (DialOutcome::Connected, None, Ok(stream)),
                Err(OpenError::Gone) => {
                    tried.push(tunnel.id);
                    continue;
                }
                Err(OpenError::Refused(message)) => (
                    DialOutcome::Refused,
                    Some(message.clone()),
                    Err(DialError::Refused {
                        addr: addr.to_string(),
                        message: format!("agent `{agent}`: {message}"),
                    }),
                ),
                Err(OpenError::TimedOut) => (
                    DialOutcome::Refused,
                    Some("timed out".to_string()),
                    Err(DialError::TimedOut {
                        addr: addr.to_string(),
                        secs: self.dial_timeout.as_secs(),
                    }),
                ),
            };
            let recorded = self
                .events
                .record(HubEvent::Dialed {
                    agent: agent.to_string(),
                    peer: Some(tunnel.peer.clone()),
                    addr: addr.to_string(),
                    context: context.clone(),
                    outcome,
                    message,
                    new_session: new_session && outcome == DialOutcome::Connected,
                })
                .await;
            if !recorded && result.is_ok() {
                return Err(DialError::Refused {
                    addr: addr.to_string(),
                    message: "the dial could not be recorded in the audit log".to_string(),
                });
            }
            return result;
        }
    }

    async fn offline(&self, agent: &str, addr: &str, context: &DialContext) -> DialError {
        self.events
            .record(HubEvent::Dialed {
                agent: agent.to_string(),
                peer: None,
                addr: addr.to_string(),
                context: context.clone(),
                outcome: DialOutcome::Offline,
                message: None,
                new_session: false,
            })
            .await;
        DialError::AgentOffline {
            agent: agent.to_string(),
            secs: self.dial_wait.as_secs(),
        }
    }
}

impl Tunnel {
    async fn open(&self, addr: &str, timeout: Duration) -> Result<BoxedStream, OpenError> {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(addr)
            .body(Empty::<Bytes>::new())
            .map_err(|_| OpenError::Refused(format!("`{addr}` is not a host:port address")))?;
        let mut sender = self.sender.clone();
        // Waiting for a free stream (the agent's `max_streams`) counts in the timeout.
        let asked = tokio::time::timeout(timeout, async {
            sender.ready().await?;
            sender.send_request(request).await
        });
        let response = match asked.await {
            Err(_) => return Err(OpenError::TimedOut),
            Ok(Err(_)) if sender.is_closed() => return Err(OpenError::Gone),
            Ok(Err(e)) => return Err(OpenError::Refused(format!("the tunnel refused it: {e}"))),
            Ok(Ok(response)) => response,
        };
        if response.status() != StatusCode::OK {
            // The agent's words reach the client and the audit log: short and printable.
            let reason = response
                .headers()
                .get(DIAL_ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| crate::wire::printable(v, MAX_DIAL_ERROR))
                .unwrap_or_else(|| format!("answered {}", response.status()));
            return Err(OpenError::Refused(reason));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|_| OpenError::Gone)?;
        self.dials.fetch_add(1, Ordering::Relaxed);
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(CarriedStream {
            io: TokioIo::new(upgraded),
            open_streams: self.open_streams.clone(),
        }))
    }
}

/// A backend connection carried by a tunnel; counted while open.
struct CarriedStream {
    io: TokioIo<hyper::upgrade::Upgraded>,
    open_streams: Arc<AtomicUsize>,
}

impl Drop for CarriedStream {
    fn drop(&mut self) {
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CarriedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CarriedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Opens a session's backend connections through the agent its connection names.
struct AgentDialer {
    hub: Arc<AgentHub>,
    agent: String,
    context: DialContext,
    /// Whether a dial of this session has connected (counts sessions carried).
    carried: std::sync::atomic::AtomicBool,
}

impl Dialer for AgentDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<BoxedStream, DialError>> {
        Box::pin(async move {
            // Claimed before dialing, so two first dials at once count one session.
            let first = !self.carried.swap(true, Ordering::Relaxed);
            let dialed = self.hub.dial(&self.agent, addr, &self.context, first).await;
            if first && dialed.is_err() {
                self.carried.store(false, Ordering::Relaxed);
            }
            dialed
        })
    }
}

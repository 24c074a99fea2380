//! The agent: dials out to each gateway, keeps its tunnel up, and serves the dials
//! the gateway sends through it.
//!
//! One loop per gateway address: connect (TLS, the gateway's certificate verified),
//! ask for the tunnel with the agent key, then serve HTTP/2 `CONNECT host:port`
//! streams until the tunnel ends; then reconnect after a backoff with jitter. A dial
//! is checked against the [`Allowlist`] before anything is resolved or connected, and
//! its stream is spliced to the target's TCP connection. Nothing listens here.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use warden_core::{BoxedStream, Secret};
use warden_net::BackendTls;

use crate::allow::Allowlist;
use crate::wire::{
    CONNECTION_WINDOW, DIAL_ERROR_HEADER, HOST_HEADER, INSTANCE_HEADER, KEEP_ALIVE, MAX_FRAME,
    STREAM_WINDOW, TUNNEL_PATH, UPGRADE_PROTOCOL, VERSION_HEADER,
};

/// Name lookups in flight at once, per gateway link.
const MAX_LOOKUPS: usize = 32;
/// How long connecting to a gateway and opening the tunnel may take.
const TUNNEL_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the agent reaches its gateways and what it may dial for them.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub gateways: Vec<GatewayAddress>,
    pub key: Secret<String>,
    /// PEM CA certificates the gateways' certificates must chain to (else the system's).
    pub ca_pem: Option<String>,
    pub allow: Allowlist,
    /// Backend connections one tunnel carries at once.
    pub max_streams: u32,
    /// How long dialing a target may take.
    pub dial_timeout: Duration,
    /// Reported to the gateway (its `agents` list shows it).
    pub host: String,
    pub version: String,
}

/// A gateway's API address: `https://host:port`, or `http://` to a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("gateway address `{0}`: {1}")]
    BadGateway(String, String),
    #[error("TLS towards the gateway: {0}")]
    Tls(String),
    #[error("no gateway address given")]
    NoGateway,
}

/// Why one attempt at a tunnel ended.
#[derive(Debug, thiserror::Error)]
enum TunnelError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the gateway refused the tunnel ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Http(String),
}

impl GatewayAddress {
    /// Reads `https://host[:port]` (port 8009 by default). Plain `http://` is accepted
    /// only to a loopback address: the agent key must not cross a network in clear.
    pub fn parse(url: &str) -> Result<Self, AgentError> {
        let bad = |why: &str| AgentError::BadGateway(url.to_string(), why.to_string());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("must start with https://"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') || authority.is_empty() {
            return Err(bad("expected scheme://host[:port] and nothing else"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) => {
                (h, p.parse().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, 8009),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !tls {
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(bad(
                    "plain http is only for a gateway on this machine: the agent key \
                     would cross the network in clear (use https)",
                ));
            }
        }
        Ok(Self { tls, host, port })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Reconnection delays: doubling from `FIRST` to `MOST`, each with ±50 % jitter so
/// that many agents cut off together do not return together.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MOST: Duration = Duration::from_secs(30);
    /// A tunnel that stayed up this long starts the delays over.
    const STABLE: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        base.mul_f64(0.5 + random_fraction())
    }
}

/// A number in [0, 1) that differs between calls and processes (jitter, not secrets).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random id for this agent process.
pub fn instance_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_string()
}

/// Runs the agent until `shutdown` turns true: one tunnel per gateway, each
/// reconnecting on its own.
pub async fn run(
    settings: AgentSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if settings.gateways.is_empty() {
        return Err(AgentError::NoGateway);
    }
    if settings.allow.is_empty() {
        tracing::warn!("the allowlist is empty: every dial will be refused (see --allow)");
    }
    let instance = instance_id();
    let mut tasks = tokio::task::JoinSet::new();
    for gateway in &settings.gateways {
        let tls = match gateway.tls {
            true => Some(
                BackendTls::verified(settings.ca_pem.as_deref(), &gateway.host)
                    .map_err(|e| AgentError::Tls(e.to_string()))?,
            ),
            false => None,
        };
        let link = Arc::new(Link {
            gateway: gateway.clone(),
            tls,
            settings: settings.clone(),
            instance: instance.clone(),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
        });
        tasks.spawn(link.keep_up(shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One gateway and how to reach it.
struct Link {
    gateway: GatewayAddress,
    tls: Option<BackendTls>,
    settings: AgentSettings,
    instance: String,
    /// Name lookups run on blocking threads and outlive a cancelled dial: bounded.
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Link {
    async fn keep_up(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        let gateway = self.gateway.to_string();
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                r = self.clone().tunnel() => r,
                _ = shutdown.changed() => return,
            };
            match attempt {
                Ok(()) => tracing::warn!(%gateway, "tunnel closed"),
                Err(e @ TunnelError::Refused { .. }) => {
                    tracing::error!(%gateway, error = %e, "tunnel refused")
                }
                Err(e) => tracing::warn!(%gateway, error = %e, "tunnel failed"),
            }
            if started.elapsed() >= Backoff::STABLE {
                backoff = Backoff::new();
            }
            let delay = backoff.delay();
            tracing::info!(%gateway, delay_ms = delay.as_millis() as u64, "reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One tunnel, from connecting to its end.
    async fn tunnel(self: Arc<Self>) -> Result<(), TunnelError> {
        // A gateway (or a middlebox) that accepts and then says nothing must not hold
        // the link: pings only start once the tunnel is open.
        let upgraded = tokio::time::timeout(TUNNEL_SETUP_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                TunnelError::Connect(format!(
                    "no tunnel within {} s",
                    TUNNEL_SETUP_TIMEOUT.as_secs()
                ))
            })??;
        tracing::info!(gateway = %self.gateway, instance = %self.instance, "tunnel open");
        let dials = self.clone();
        let service = hyper::service::service_fn(move |req| dials.clone().serve_dial(req));
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(self.settings.max_streams)
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .serve_connection(upgraded, service)
            .await
            .map_err(|e| TunnelError::Http(e.to_string()))
    }

    /// Connects, logs in with the key and upgrades: the connection the tunnel runs on.
    async fn open(&self) -> Result<hyper::upgrade::Upgraded, TunnelError> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| TunnelError::Http(e.to_string()))?;
        tokio::spawn(connection.with_upgrades());
        let request = Request::builder()
            .method(Method::GET)
            .uri(TUNNEL_PATH)
            .header(HOST, self.gateway.authority())
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, UPGRADE_PROTOCOL)
            .header(
                AUTHORIZATION,
                format!("Bearer {}", self.settings.key.expose()),
            )
            .header(VERSION_HEADER, &self.settings.version)
            .header(HOST_HEADER, &self.settings.host)
            .header(INSTANCE_HEADER, &self.instance)
            .body(Empty::<Bytes>::new())
            .map_err(|e| TunnelError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| TunnelError::Http(e.to_string()))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), 4096).collect().await;
            let message = body
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(TunnelError::Refused { status, message });
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| TunnelError::Http(e.to_string()))
    }

    async fn connect(&self) -> Result<BoxedStream, TunnelError> {
        let authority = self.gateway.authority();
        let tcp = tokio::time::timeout(
            self.settings.dial_timeout,
            TcpStream::connect((self.gateway.host.as_str(), self.gateway.port)),
        )
        .await
        .map_err(|_| TunnelError::Connect(format!("{authority}: timed out")))?
        .map_err(|e| TunnelError::Connect(format!("{authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| TunnelError::Connect(format!("TLS with {authority}: {e}")))?;
                Ok(Box::new(stream))
            }
        }
    }

    /// Answers one `CONNECT host:port`: refused (`403`), unreachable (`502`), timed
    /// out (`504`), or `200` and the stream spliced to the target.
    async fn serve_dial(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        if req.method() != Method::CONNECT {
            return Ok(refusal(StatusCode::METHOD_NOT_ALLOWED, "only CONNECT"));
        }
        let Some((host, port)) = req
            .uri()
            .authority()
            .and_then(|a| a.port_u16().map(|p| (a.host().to_string(), p)))
        else {
            return Ok(refusal(
                StatusCode::BAD_REQUEST,
                "expected CONNECT host:port",
            ));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let target = match self.dial(&host, port).await {
            Ok(tcp) => tcp,
            Err((status, message)) => {
                tracing::warn!(%host, port, %message, "dial refused");
                return Ok(refusal(status, &message));
            }
        };
        tracing::info!(%host, port, "dial");
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut stream = TokioIo::new(upgraded);
            let mut target = target;
            const BUF: usize = 64 * 1024;
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut target, BUF, BUF).await;
        });
        Ok(Response::new(Full::new(Bytes::new())))
    }

    /// Dials `host:port` if the allowlist lets it, only at addresses it checked, all
    /// within one deadline (name lookup included).
    async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, (StatusCode, String)> {
        let deadline = self.settings.dial_timeout;
        match tokio::time::timeout(deadline, self.dial_checked(host, port)).await {
            Ok(result) => result,
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "reaching {host}:{port} took longer than {} s",
                    deadline.as_secs()
                ),
            )),
        }
    }

    async fn dial_checked(&self, host: &str, port: u16) -> Result<TcpStream, (StatusCode, String)> {
        let allow = &self.settings.allow;
        let not_allowed = || {
            (
                StatusCode::FORBIDDEN,
                "not in the agent's allowlist".to_string(),
            )
        };
        // A zone id would let the gateway pick the interface.
        if host.contains('%') || host.is_empty() {
            return Err(not_allowed());
        }
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) if allow.allows_addr(ip, port) => vec![SocketAddr::new(ip, port)],
            Ok(_) => return Err(not_allowed()),
            Err(_) => {
                let by_name = allow.allows_name(host, port);
                // Nothing to check an address against: no lookup (no DNS query made
                // on the gateway's behalf for a name that cannot be allowed).
                if !by_name && !allow.has_networks_for(port) {
                    return Err(not_allowed());
                }
                // The permit goes with the blocking lookup, which outlives a cancelled
                // dial: at most MAX_LOOKUPS run, whatever the gateway asks.
                let slot = self
                    .lookups
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| not_allowed())?;
                let name = host.to_string();
                let resolved = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))
                        .map(Iterator::collect::<Vec<SocketAddr>>)
                })
                .await
                .map_err(|_| not_allowed())?;
                let resolved = resolved.map_err(|e| {
                    if by_name {
                        (
                            StatusCode::BAD_GATEWAY,
                            format!("cannot resolve {host}: {e}"),
                        )
                    } else {
                        not_allowed()
                    }
                })?;
                // A name entry trusts DNS, but not to point at this host's own
                // loopback or link-local services unless a network entry allows them.
                resolved
                    .into_iter()
                    .filter(|a| {
                        allow.allows_addr(a.ip(), port)
                            || (by_name && !a.ip().is_unspecified() && !is_local(a.ip()))
                    })
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Err(not_allowed());
        }
        let mut last = String::new();
        for addr in candidates {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err((StatusCode::BAD_GATEWAY, last))
    }
}

/// Addresses of this host or its link, and cloud metadata services: loopback,
/// link-local (169.254.169.254 among them), unspecified, Alibaba's 100.100.100.200,
/// AWS's fd00:ec2::254, and those written as NAT64 (`64:ff9b::/96`) or
/// IPv4-compatible IPv6.
fn is_local(ip: IpAddr) -> bool {
    let v4_local = |v4: std::net::Ipv4Addr| {
        v4.is_loopback()
            || v4.is_link_local()
            || v4.is_unspecified()
            || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
    };
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_local(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = std::net::Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32);
            let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let compatible = seg[..6] == [0, 0, 0, 0, 0, 0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || ((nat64 || compatible) && v4_local(embedded))
        }
    }
}

fn refusal(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    // Header values cannot hold every character a message may: keep what can be sent.
    let clean = crate::wire::printable(message, message.len());
    if let Ok(value) = hyper::header::HeaderValue::from_str(&clean) {
        response.headers_mut().insert(DIAL_ERROR_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        let a = GatewayAddress::parse("https://gw.example:9000").unwrap();
        assert_eq!((a.tls, a.host.as_str(), a.port), (true, "gw.example", 9000));
        assert_eq!(GatewayAddress::parse("https://gw/").unwrap().port, 8009);
        let v6 = GatewayAddress::parse("https://[fd00::1]:8009").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.to_string(), "https://[fd00::1]:8009");
        assert!(GatewayAddress::parse("http://127.0.0.1:8009").is_ok());
        assert!(GatewayAddress::parse("http://localhost").is_ok());
        for bad in [
            "http://gw.example:8009",
            "http://10.0.0.1:8009",
            "gw:8009",
            "https://gw/api",
            "https://user@gw",
            "https://",
        ] {
            assert!(GatewayAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_and_metadata_addresses_are_recognised() {
        for local in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.1",
            "8.8.8.8",
            "fd00::1",
            "fec0::1",
            "64:ff9b::808:808",
        ] {
            assert!(!is_local(remote.parse().unwrap()), "{remote}");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.delay();
        assert!(first >= Backoff::FIRST / 2 && first < Backoff::FIRST * 3 / 2);
        for _ in 0..20 {
            let d = b.delay();
            assert!(d < Backoff::MOST * 3 / 2);
        }
        assert_eq!(b.next, Backoff::MOST);
    }
}

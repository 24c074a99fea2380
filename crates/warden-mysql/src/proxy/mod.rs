//! One client session through the MySQL proxy: greeting, TLS upgrade when
//! configured, the token through `mysql_clear_password`, the backend login with the
//! held credential, then the command relay.
//!
//! The classic protocol is strictly request/response, so the relay is one loop: read
//! a command, run it through the session's admission path (decided, audited before
//! it is forwarded, recorded), forward it, then relay its whole answer, masking every
//! row of every result set. A denied command never reaches the server; the client gets an `ERR`
//! (1227, naming the rule) and the session goes on. While an answer is awaited the
//! client socket is watched too: a client that vanishes ends the session and its
//! running query is killed on the server.
//!
//! Here: [`startup`] (login on both legs, and the end), [`relay`] (the loop, its I/O
//! and the admission of statements), [`commands`] (each command a client sends) and
//! [`results`] (each answer the server sends back).

mod commands;
mod relay;
mod results;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use warden_core::{RefusalKind, SessionHooks, TunnelLogin};
use warden_net::{BoxedStream, SessionRegistry};

use crate::errno;

use startup::serve_stream;

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
/// An id is reserved (`None`) when the greeting names it, before the server thread
/// behind it is known.
pub type ThreadMap = SessionRegistry<u32, Option<ServerThread>>;

/// A connection id this session holds in the [`ThreadMap`]; given back when dropped,
/// however the session ends.
pub(super) struct ConnectionId {
    pub(super) id: u32,
    threads: ThreadMap,
}

impl ConnectionId {
    /// An id no other session of the listener holds.
    pub(super) fn reserve(threads: &ThreadMap) -> Self {
        let id = threads.insert_unique(
            || u32::from_le_bytes(random_bytes::<4>()) & 0x7FFF_FFFF,
            None,
        );
        Self {
            id,
            threads: threads.clone(),
        }
    }

    /// The server thread behind it, once logged in.
    pub(super) fn bind(&self, thread: ServerThread) {
        self.threads.insert(self.id, Some(thread));
    }
}

impl Drop for ConnectionId {
    fn drop(&mut self) {
        self.threads.remove(&self.id);
    }
}

/// A server thread: where, as which account, which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerThread {
    addr: String,
    user: String,
    thread: u32,
}

/// `KILL [CONNECTION | QUERY] <id>` as a whole statement: (query only, id).
pub(super) fn kill_statement(sql: &str) -> Option<(bool, u32)> {
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

pub(super) const SERVER_GONE: &str = "database connection lost";

pub(super) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// A nonce without NUL bytes (the greeting NUL-terminates its second part).
pub(super) fn scramble() -> Vec<u8> {
    random_bytes::<20>().iter().map(|b| 1 + b % 126).collect()
}

pub(super) fn refusal_errno(kind: RefusalKind) -> (u16, &'static str) {
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

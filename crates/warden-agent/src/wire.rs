//! What the agent and the gateway agree on: the upgrade that opens a tunnel, the
//! headers that describe the agent, and how a refused dial is answered.
//!
//! The agent sends `GET` [`TUNNEL_PATH`] over HTTP/1.1 with `Upgrade:`
//! [`UPGRADE_PROTOCOL`] and its key as a bearer token. After `101` the roles turn
//! around: the gateway speaks HTTP/2 as the client, the agent as the server. Each dial
//! is one HTTP/2 `CONNECT host:port` stream, so every stream has HTTP/2's own flow
//! control and the connection's memory is bounded by its windows.

/// Where the agent asks for its tunnel, on the gateway's API port.
pub const TUNNEL_PATH: &str = "/api/agent-tunnel";
/// The `Upgrade` token; the number changes when the tunnel's protocol does.
pub const UPGRADE_PROTOCOL: &str = "warden-agent/1";
/// The agent's version (`warden` package version).
pub const VERSION_HEADER: &str = "warden-agent-version";
/// The agent's host name, as the agent reports it (informational only).
pub const HOST_HEADER: &str = "warden-agent-host";
/// A random id the agent process picks at start, telling apart agents that share a name.
pub const INSTANCE_HEADER: &str = "warden-agent-instance";
/// On a refused dial: why, in words meant for the person whose client sees it.
pub const DIAL_ERROR_HEADER: &str = "warden-dial-error";

/// `text` as one side may show what the other sent (a header, an error): printable
/// ASCII and spaces only, at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// Per-stream receive window: what one backend connection may have in flight in one
/// direction. Large enough that bulk copies (scp, big results) are not window-bound
/// on a fast network, small enough that many streams fit in memory.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Per-tunnel receive window: the most one agent connection buffers in all.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 frame either side accepts: bulk copies move in frames this big
/// rather than in HTTP/2's default 16 KiB ones: fewer wake-ups per MiB on both sides.
pub const MAX_FRAME: u32 = 256 * 1024;
/// HTTP/2 pings in both directions; a peer that misses one for this long is gone.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

//! The PostgreSQL side of backend TLS: a client asks for TLS with an `SSLRequest`
//! before its startup packet and the server answers `S` (then the handshake) or `N`.
//! The proxy does the same towards the database; when the connection asks for TLS and
//! the server answers `N`, the session fails rather than falling back to plain text.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
pub use warden_net::{BackendTls, BoxedStream, TlsSetupError};

/// Opens a connection to the database at `addr`, over TLS when `tls` is given.
pub async fn connect_backend(addr: &str, tls: Option<&BackendTls>) -> Result<BoxedStream, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    // Frames are written as they are decided; without this, Nagle and delayed ACKs
    // add ~40 ms to each small request/response exchange.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let mut request = BytesMut::with_capacity(8);
    request.put_i32(8);
    request.put_i32(80_877_103);
    tcp.write_all(&request)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if answer != b'S' {
        return Err("the database does not offer TLS, which this connection requires".into());
    }
    let stream = tls
        .connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS with the database failed: {e}"))?;
    Ok(Box::new(stream))
}

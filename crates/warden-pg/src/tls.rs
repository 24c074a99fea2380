//! The PostgreSQL side of backend TLS: a client asks for TLS with an `SSLRequest`
//! before its startup packet and the server answers `S` (then the handshake) or `N`.
//! The proxy does the same towards the database; when the connection asks for TLS and
//! the server answers `N`, the session fails rather than falling back to plain text.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use warden_core::SessionHandle;
pub use warden_net::{BackendTls, BoxedStream, TlsSetupError};

/// Opens a connection to the session's database through its dialer, over TLS when
/// `tls` is given.
pub async fn connect_backend(
    session: &SessionHandle,
    tls: Option<&BackendTls>,
) -> Result<BoxedStream, String> {
    let mut tcp = session.dial().await.map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return Ok(tcp);
    };
    let mut request = BytesMut::with_capacity(8);
    request.put_i32(8);
    request.put_i32(80_877_103);
    warden_net::write_flushed(&mut tcp, &request)
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
        .map_err(|e| {
            format!(
                "TLS with the database failed: {}",
                warden_net::handshake_failure(&e)
            )
        })?;
    Ok(Box::new(stream))
}

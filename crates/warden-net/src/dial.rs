//! The direct dialer: plain TCP to the backend's address, within a connect timeout,
//! with Nagle off (proxies write whole messages as they are decided).

use std::time::Duration;

use tokio::net::TcpStream;
use warden_core::{BoxFuture, BoxedStream, DialError, Dialer};

/// Dials backends directly over TCP.
#[derive(Debug, Clone, Copy)]
pub struct TcpDialer {
    pub connect_timeout: Duration,
}

impl TcpDialer {
    /// Connects to `addr` within the timeout; the stream as TCP, for protocols that
    /// need its type (none yet) or box it.
    pub async fn connect(&self, addr: &str) -> Result<TcpStream, DialError> {
        let connecting = TcpStream::connect(addr);
        let tcp = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(DialError::Refused {
                    addr: addr.to_string(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(DialError::TimedOut {
                    addr: addr.to_string(),
                    secs: self.connect_timeout.as_secs(),
                });
            }
        };
        // Without this, Nagle and delayed ACKs add ~40 ms to each small exchange.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl Dialer for TcpDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<BoxedStream, DialError>> {
        Box::pin(async move {
            let tcp = self.connect(addr).await?;
            Ok(Box::new(tcp) as BoxedStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_and_reached() {
        let dialer = TcpDialer {
            connect_timeout: Duration::from_secs(5),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(dialer.dial(&addr).await.is_ok());
        drop(listener);
        let err = dialer.dial(&addr).await.err().unwrap();
        assert!(matches!(err, DialError::Refused { .. }), "{err}");
        assert!(err.to_string().contains(&addr));
    }
}

//! Cancel requests: clients get cancel keys of the gateway's own (never the server's),
//! and a cancel with one of them reaches the server session it names, through that
//! session's dialer. A guessed key matches nothing.

use bytes::BytesMut;
use std::sync::Arc;
use warden_core::Dialer;
use warden_net::SessionRegistry;

/// Cancel keys the gateway handed to clients → where and how to cancel on the server.
/// Clients never see the server's keys, and a guessed key matches nothing.
pub type CancelMap = SessionRegistry<CancelKey, ServerCancel>;

/// A (process id, secret key) pair as in `BackendKeyData`.
type CancelKey = (i32, i32);
/// How to reach the server (its session's dialer and address) and its own cancel
/// key for a session.
#[derive(Clone)]
pub struct ServerCancel {
    pub(super) dialer: Arc<dyn Dialer>,
    pub(super) addr: String,
    pub(super) process_id: i32,
    pub(super) secret_key: i32,
}

/// Forwards a client's CancelRequest to the server session it names, if any.
pub(super) async fn forward_cancel(map: &CancelMap, process_id: i32, secret_key: i32) {
    let Some(server) = map.get(&(process_id, secret_key)) else {
        return;
    };
    let (pid, key) = (server.process_id, server.secret_key);
    if let Ok(mut s) = server.dialer.dial(&server.addr).await {
        let mut b = BytesMut::new();
        b.extend_from_slice(&16i32.to_be_bytes());
        b.extend_from_slice(&80_877_102i32.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&key.to_be_bytes());
        let _ = warden_net::write_flushed(&mut s, &b).await;
    }
}

pub(super) fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    i32::from_be_bytes(b)
}

//! Forwarded ports (`ssh -L`, `direct-tcpip` channels): admitted per connection,
//! audited, then relayed through the target as plain bytes.
use std::sync::Arc;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure};
use serde_json::json;
use warden_core::{Action, Admission, Command, Unwatched};

use super::client::Live;

/// Refused port forwards one client connection may ask for before it is
/// disconnected: each refusal is a durable audit write, so a client cannot make the
/// gateway write them without end.
pub(super) const MAX_REFUSED_FORWARDS: usize = 64;

/// A `direct-tcpip` channel (`ssh -L`): allowed per connection, audited, relayed
/// through the target.
pub(super) struct Forward {
    pub(super) host: String,
    pub(super) port: u32,
    pub(super) originator: String,
    pub(super) originator_port: u32,
}

impl Forward {
    pub(super) async fn run(
        self,
        live: Arc<Live>,
        timeout: Duration,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        client: russh::server::Handle,
    ) {
        let detail = json!({"host": self.host, "port": self.port,
                            "originator": format!("{}:{}", self.originator, self.originator_port)});
        let command = Command::new(
            Action::Forward {
                host: &self.host,
                port: self.port,
            },
            "forward",
        )
        .with_detail(detail);
        if !matches!(
            live.session.admit(command, &mut Unwatched).await,
            Admission::Admitted { .. }
        ) {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            let refused = live
                .refused_forwards
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if refused >= MAX_REFUSED_FORWARDS {
                // The session ends for this reason (recorded with its end).
                live.session.fail(warden_core::EndReason::Refused(format!(
                    "{refused} port forwards were refused; the connection was closed"
                )));
                let _ = client
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        format!("warden: {refused} port forwards were refused; disconnecting"),
                        "en".into(),
                    )
                    .await;
            }
            return;
        }
        let opened = match live.backend(timeout).await {
            Ok(b) => {
                b.channel_open_direct_tcpip(
                    self.host.clone(),
                    self.port,
                    self.originator.clone(),
                    self.originator_port,
                )
                .await
            }
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        let target = match opened {
            Ok(t) => t,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        reply.accept().await;
        let (from_client, to_client) = channel.split();
        let (from_target, to_target) = target.split();
        // A close from either side ends the forward (and frees its channel).
        tokio::select! {
            () = pump_bytes(from_client, &to_target, |n| live.session.count_in(n)) => {
                let _ = to_client.close().await;
            }
            () = pump_bytes(from_target, &to_client, |n| live.session.count_out(n)) => {
                let _ = to_target.close().await;
            }
        }
    }
}

/// Relays a byte stream one way (a forwarded port: data and EOF, nothing else),
/// counting it, until either side closes; then closes the other side.
pub(super) async fn pump_bytes<S>(
    mut from: russh::ChannelReadHalf,
    to: &russh::ChannelWriteHalf<S>,
    count: impl Fn(u64),
) where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(msg) = from.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                count(data.len() as u64);
                if to.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = to.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = to.close().await;
}

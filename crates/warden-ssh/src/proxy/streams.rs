//! The bytes of a running session channel, both ways: relayed as they come,
//! streamed to the terminal recording, and watched for typed lines, SFTP operations
//! and scp transfers.
use std::sync::{Arc, Mutex};

use russh::server::{self, Msg};
use russh::{ChannelId, ChannelMsg};
use serde_json::json;

use super::channel::{ExitSeen, Watch, sftp_detail, terminal_of};
use super::client::Live;

pub(super) struct ClientToTarget {
    pub(super) live: Arc<Live>,
    pub(super) watch: Arc<Mutex<Watch>>,
}

impl ClientToTarget {
    pub(super) async fn run(
        self,
        mut from_client: russh::ChannelReadHalf,
        to_target: russh::ChannelWriteHalf<russh::client::Msg>,
    ) {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    self.live.session.count_in(data.len() as u64);
                    let (typed, ok) = self.watch_input(&data).await;
                    for line in typed {
                        self.live
                            .note("ssh.command", json!({"command": line, "typed": true}))
                            .await;
                    }
                    if !ok || to_target.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = to_target.eof().await;
                }
                ChannelMsg::Close => break,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if let Some(recorder) = terminal_of(&self.watch) {
                        let _ = recorder.resize(col_width, row_height).await;
                    }
                    let _ = to_target
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await;
                }
                ChannelMsg::Signal { signal } => {
                    let _ = to_target.signal(signal).await;
                }
                _ => {}
            }
        }
        let _ = to_target.close().await;
    }

    /// Feeds client bytes to the watcher; false when the channel must end.
    pub(super) async fn watch_input(&self, data: &[u8]) -> (Vec<String>, bool) {
        // A terminal's recorder is awaited without the watch's lock held.
        if let Some(recorder) = terminal_of(&self.watch)
            && let Err(e) = recorder.input(data).await
        {
            tracing::error!(error = %e, "terminal recording failed");
            return (Vec::new(), false);
        }
        let events = {
            let Ok(mut watch) = self.watch.lock() else {
                return (Vec::new(), false);
            };
            match &mut *watch {
                Watch::Terminal { typed, .. } => {
                    return (
                        typed.as_mut().map(|t| t.feed(data)).unwrap_or_default(),
                        true,
                    );
                }
                Watch::Sftp(o) => match o.from_client(data) {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(error = %e, "SFTP stream not understood; channel closed");
                        return (Vec::new(), false);
                    }
                },
                Watch::Scp(_, up, _) => {
                    *up += data.len() as u64;
                    return (Vec::new(), true);
                }
            }
        };
        // In order, before more of the stream is relayed.
        for e in events {
            let (kind, detail) = sftp_detail(e);
            self.live.note(kind, detail).await;
        }
        (Vec::new(), true)
    }
}

pub(super) struct TargetToClient {
    pub(super) live: Arc<Live>,
    pub(super) handle: server::Handle,
    pub(super) id: ChannelId,
    pub(super) watch: Arc<Mutex<Watch>>,
}

impl TargetToClient {
    pub(super) async fn run(
        self,
        early: Vec<ChannelMsg>,
        mut from_target: russh::ChannelReadHalf,
        to_client: russh::ChannelWriteHalf<Msg>,
    ) -> ExitSeen {
        let mut exit = ExitSeen::default();
        let mut early = early.into_iter();
        loop {
            let msg = match early.next() {
                Some(m) => m,
                None => match from_target.wait().await {
                    Some(m) => m,
                    None => break,
                },
            };
            match msg {
                ChannelMsg::Data { data } => {
                    if !self.watch_output(&data).await {
                        break;
                    }
                    self.live.session.count_out(data.len() as u64);
                    if to_client.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    if !self.watch_output(&data).await {
                        break;
                    }
                    self.live.session.count_out(data.len() as u64);
                    if to_client.extended_data_bytes(ext, data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exit.status = Some(exit_status);
                    let _ = to_client.exit_status(exit_status).await;
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    exit.signal = Some(format!("{signal_name:?}"));
                    let _ = self
                        .handle
                        .exit_signal_request(
                            self.id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await;
                }
                ChannelMsg::Eof => {
                    let _ = to_client.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = to_client.close().await;
        exit
    }

    /// Feeds target bytes to the watcher; false when the channel must end.
    pub(super) async fn watch_output(&self, data: &[u8]) -> bool {
        if let Some(recorder) = terminal_of(&self.watch) {
            return match recorder.output(data).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "terminal recording failed");
                    false
                }
            };
        }
        let Ok(mut watch) = self.watch.lock() else {
            return false;
        };
        match &mut *watch {
            Watch::Terminal { .. } => true,
            Watch::Sftp(o) => match o.from_server(data) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "SFTP stream not understood; channel closed");
                    false
                }
            },
            Watch::Scp(_, _, down) => {
                *down += data.len() as u64;
                true
            }
        }
    }
}

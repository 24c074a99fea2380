//! The relay of an open MySQL session: the client's commands and the server's
//! packets in sequence, the admission path every statement goes through, and the
//! session's I/O (batched writes to the client, a client watched while it waits).

use bytes::BytesMut;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use uuid::Uuid;
use warden_core::{
    Action, Admission, ClientWatch, Command, Decision, DenialCause, EndReason, SessionHandle,
    SqlDialect, TimelineEvent,
};
use warden_net::BoxedStream;

use super::{SERVER_GONE, ServerThread, ThreadMap};
use crate::MysqlProtocolError;
use crate::command::MysqlCommand;
use crate::errno;
use crate::handshake::err_packet;
use crate::packet::{Packet, PacketDecoder, put_packet};

/// A statement prepared through the proxy.
pub(super) struct Prepared {
    pub(super) sql: String,
    pub(super) params: usize,
    /// Parameter types as last bound by an execution.
    pub(super) types: Option<Vec<u8>>,
    /// Bytes sent per parameter with `COM_STMT_SEND_LONG_DATA` since the last
    /// execution (the server forgets them at each execution and reset).
    pub(super) long_data: HashMap<u16, u64>,
}

/// How rows of a result set are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowFormat {
    Text,
    Binary,
}

/// Why the relay ends: `None` when the client quit.
pub(super) type End = Option<EndReason>;

pub(super) fn protocol_end(who: &str, e: &MysqlProtocolError) -> End {
    Some(if who == "client" {
        EndReason::ClientProtocol(e.to_string())
    } else {
        EndReason::BackendProtocol(e.to_string())
    })
}

pub(super) fn server_gone() -> End {
    Some(EndReason::BackendGone(SERVER_GONE.into()))
}

/// The client's side of a statement held for review: MySQL has no message to show
/// meanwhile; its socket is read (up to a bound) to notice it leaving.
struct HeldClient<'a> {
    stream: &'a mut BoxedStream,
    buf: &'a mut BytesMut,
}

impl ClientWatch for HeldClient<'_> {
    async fn held(&mut self, _notice: &str) {}

    async fn gone(&mut self) {
        // What the client sends meanwhile is kept for after the decision, up to a
        // bound: a client that sends more while it waits is treated as gone (the
        // session ends; nothing it held runs).
        while self.buf.len() < 1 << 20 {
            if matches!(self.stream.read_buf(self.buf).await, Ok(0) | Err(_)) {
                return;
            }
        }
    }
}

pub(super) fn denied_message(rule: &str, reason: &str) -> String {
    format!("Warden denied this statement: {reason} (rule {rule})")
}

/// Most bytes held for the client before a write.
pub(super) const CLIENT_BATCH: usize = 64 * 1024;

/// Room made in a read buffer before each read, so a large answer is taken in a few
/// reads rather than many small ones.
pub(super) const READ_CHUNK: usize = 32 * 1024;

/// Reads what is available right now without waiting: `None` when nothing is.
pub(super) async fn read_now(
    stream: &mut BoxedStream,
    buf: &mut BytesMut,
) -> Option<std::io::Result<usize>> {
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

pub(super) struct Relay {
    pub(super) client: BoxedStream,
    pub(super) client_buf: BytesMut,
    pub(super) client_out: BytesMut,
    pub(super) client_seq: u8,
    pub(super) server: BoxedStream,
    pub(super) server_buf: BytesMut,
    pub(super) server_seq: u8,
    pub(super) decoder: PacketDecoder,
    /// Whether each side uses DEPRECATE_EOF (the server may lack it; then the
    /// proxy turns its EOFs into what the client expects).
    pub(super) client_eof: bool,
    pub(super) server_eof: bool,
    pub(super) local_infile: bool,
    pub(super) session: Arc<SessionHandle>,
    /// How statements are read: as MariaDB reads them when the server is MariaDB.
    pub(super) dialect: SqlDialect,
    pub(super) prepared: HashMap<u32, Prepared>,
    pub(super) last_prepared: Option<u32>,
    /// A command is at the server and its answer not yet complete.
    pub(super) awaiting: bool,
    pub(super) threads: ThreadMap,
    /// This session's server thread.
    pub(super) this_thread: ServerThread,
    /// The audit event of the command being answered: its outcomes name it.
    pub(super) statement: Option<Uuid>,
}

impl Relay {
    pub(super) async fn run(&mut self) -> End {
        loop {
            let packet = match self.client_command().await {
                Ok(p) => p,
                Err(end) => return end,
            };
            let command = match MysqlCommand::decode(&packet.payload) {
                Ok(c) => c,
                Err(e) => {
                    self.refuse(errno::GATEWAY, &format!("malformed packet: {e}"));
                    let _ = self.flush_client().await;
                    return protocol_end("client", &e);
                }
            };
            if let Err(end) = self.command(command, &packet.payload).await {
                return end;
            }
        }
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if !self.client_out.is_empty() {
            if warden_net::write_flushed(&mut self.client, &self.client_out)
                .await
                .is_err()
            {
                return Err(Some(EndReason::ClientGone));
            }
            self.client_out.clear();
        }
        Ok(())
    }

    pub(super) fn send_client(&mut self, payload: &[u8]) {
        let before = self.client_out.len();
        put_packet(&mut self.client_out, &mut self.client_seq, payload);
        self.session
            .count_out((self.client_out.len() - before) as u64);
    }

    pub(super) async fn send_client_batched(&mut self, payload: &[u8]) -> Result<(), End> {
        self.send_client(payload);
        if self.client_out.len() >= CLIENT_BATCH {
            self.flush_client().await?;
        }
        Ok(())
    }

    pub(super) async fn send_server(&mut self, payload: &[u8]) -> Result<(), End> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        put_packet(&mut out, &mut self.server_seq, payload);
        warden_net::write_flushed(&mut self.server, &out)
            .await
            .map_err(|_| server_gone())
    }

    /// The next command: a packet with sequence id 0.
    pub(super) async fn client_command(&mut self) -> Result<Packet, End> {
        loop {
            match self.decoder.decode(&mut self.client_buf) {
                Ok(Some(p)) if p.seq == 0 => {
                    self.statement = None;
                    self.session.count_in(p.wire_len());
                    self.client_seq = p.next_seq();
                    self.server_seq = 0;
                    return Ok(p);
                }
                Ok(Some(p)) => {
                    let e = MysqlProtocolError::Sequence {
                        got: p.seq,
                        expected: 0,
                    };
                    self.client_seq = p.next_seq();
                    self.refuse(errno::OUT_OF_ORDER, &e.to_string());
                    let _ = self.flush_client().await;
                    return Err(protocol_end("client", &e));
                }
                Ok(None) => {}
                Err(e) => {
                    let code = match e {
                        MysqlProtocolError::TooLarge { .. } => errno::PACKET_TOO_LARGE,
                        MysqlProtocolError::Sequence { .. } => errno::OUT_OF_ORDER,
                        MysqlProtocolError::Malformed { .. } => errno::GATEWAY,
                    };
                    self.client_seq = 1;
                    self.refuse(code, &e.to_string());
                    let _ = self.flush_client().await;
                    return Err(protocol_end("client", &e));
                }
            }
            self.flush_client().await?;
            self.client_buf.reserve(READ_CHUNK);
            match self.client.read_buf(&mut self.client_buf).await {
                Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                Ok(_) => {}
            }
        }
    }

    /// The next packet of the server's answer, in sequence. Rows handled so far go
    /// to the client before waiting; the client is watched meanwhile so a vanished
    /// client ends the session at once.
    pub(super) async fn server_packet(&mut self) -> Result<Packet, End> {
        loop {
            match self.decoder.decode(&mut self.server_buf) {
                Ok(Some(p)) if p.seq == self.server_seq => {
                    self.server_seq = p.next_seq();
                    return Ok(p);
                }
                Ok(Some(p)) => {
                    return Err(protocol_end(
                        "the database",
                        &MysqlProtocolError::Sequence {
                            got: p.seq,
                            expected: self.server_seq,
                        },
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(protocol_end("the database", &e)),
            }
            // Rows handled so far wait for the client only while more of the
            // answer is already here: one write per answer, not one per segment.
            self.server_buf.reserve(READ_CHUNK);
            match read_now(&mut self.server, &mut self.server_buf).await {
                Some(Ok(0) | Err(_)) => return Err(server_gone()),
                Some(Ok(_)) => continue,
                None => {}
            }
            self.flush_client().await?;
            // A client that keeps sending while its answer is pending is not read
            // further until the answer is through (bounded memory).
            let watch_client = self.client_buf.len() < 1 << 20;
            self.client_buf.reserve(READ_CHUNK);
            self.server_buf.reserve(READ_CHUNK);
            tokio::select! {
                r = self.server.read_buf(&mut self.server_buf) => match r {
                    Ok(0) | Err(_) => return Err(server_gone()),
                    Ok(_) => {}
                },
                r = self.client.read_buf(&mut self.client_buf), if watch_client => match r {
                    Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Records a timeline entry; a result or error is the outcome of the command
    /// being answered (the protocol answers one command at a time).
    pub(super) async fn record_timeline(&mut self, event: TimelineEvent) -> Result<(), End> {
        self.session
            .record_outcome(self.statement, event)
            .await
            .map_err(Some)
    }

    /// Refuses a statement: the client's error, also in the recording.
    pub(super) async fn deny(
        &mut self,
        (code, state): (u16, &str),
        message: &str,
    ) -> Result<(), End> {
        self.record_timeline(TimelineEvent::Error {
            code: code.to_string(),
            message: message.to_string(),
            duration_us: None,
        })
        .await?;
        self.refuse((code, state), message);
        Ok(())
    }

    /// Answers the client with the gateway's own error.
    pub(super) fn refuse(&mut self, (code, state): (u16, &str), message: &str) {
        self.send_client(&err_packet(code, state, message));
    }

    pub(super) async fn forward(&mut self, payload: &[u8]) -> Result<(), End> {
        self.send_server(payload).await?;
        self.awaiting = true;
        Ok(())
    }

    /// Runs an action through the session's admission path; `Ok(true)` when it may
    /// be forwarded. A refused one is answered here (`deny_code`, or the gateway's
    /// own error when it could not be audited) and is in the recording.
    pub(super) async fn admit(
        &mut self,
        command: Command<'_>,
        deny_code: (u16, &str),
    ) -> Result<bool, End> {
        let decision = command
            .decided
            .clone()
            .unwrap_or_else(|| self.session.guard.decide(&command.action));
        if matches!(decision, Decision::Review { .. }) {
            // Answers already handled reach the client before the wait.
            let _ = self.flush_client().await;
        }
        self.statement = Some(command.id);
        let session = self.session.clone();
        let mut client = HeldClient {
            stream: &mut self.client,
            buf: &mut self.client_buf,
        };
        match session.admit(command.decided(decision), &mut client).await {
            Admission::Admitted { .. } => Ok(true),
            Admission::Denied(denial) => {
                let code = match denial.cause {
                    DenialCause::AuditUnavailable => errno::GATEWAY,
                    _ => deny_code,
                };
                self.deny(code, &denied_message(&denial.rule, &denial.reason))
                    .await?;
                Ok(false)
            }
            Admission::End(reason) => Err(Some(reason)),
        }
    }

    pub(super) fn sql<'a>(&self, sql: &'a str, via: &'static str) -> Command<'a> {
        Command::new(
            Action::Sql {
                dialect: self.dialect,
                text: sql,
            },
            via,
        )
    }
}

//! The client's side of a PostgreSQL session: decodes each message, asks the
//! session's admission path about every `Query`, `Parse`, `Bind` and function call,
//! keeps the prepared-statement names attributable, and forwards what was admitted —
//! or, in place of what was refused, a stand-in that fails at the server with a
//! one-time marker, so the server keeps the order of answers and the transaction
//! state of a real error (the server side swaps the marker's error for the denial).

use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use uuid::Uuid;
use warden_core::{
    Action, Admission, ClientWatch, Command, Decision, DenialCause, EndReason, SessionHandle,
    SqlDialect, TimelineEvent,
};
use warden_net::Batched;

use super::relay::{Denials, Denied, lock};
use crate::backend::{self as out, PgNotice};
use crate::capture::{CopyCount, memchr_count};
use crate::frontend::{FrontendDecoder, PgFrontendMessage};
use crate::prepared::{Bound, PreparedStatements};
use crate::requests::{RequestLog, Requests};
use crate::sqlstate;
use crate::tls::BoxedStream;

/// Bytes read ahead from a client while one of its statements waits for review.
const HELD_READ_LIMIT: usize = 1 << 20;

/// What the client side works with.
pub(super) struct ClientSide {
    pub(super) rd: ReadHalf<BoxedStream>,
    /// Bytes read from the client and not yet decoded.
    pub(super) buf: BytesMut,
    pub(super) server_out: Batched<WriteHalf<BoxedStream>>,
    pub(super) expected: Arc<Mutex<Requests>>,
    pub(super) session: Arc<SessionHandle>,
    /// Messages for the client between the server's (a held statement's notice).
    pub(super) notices: tokio::sync::mpsc::UnboundedSender<Bytes>,
    pub(super) denials: Denials,
    pub(super) prepared: Arc<Mutex<PreparedStatements>>,
    /// Signalled by the server side whenever a cycle's answers are all in.
    pub(super) answered: Arc<Notify>,
    pub(super) max_message: usize,
}

/// The client's side of a statement held for review: the notice goes out between the
/// server's messages; its socket is read (up to a bound) to notice it leaving.
struct HeldClient<'a> {
    rd: &'a mut ReadHalf<BoxedStream>,
    buf: &'a mut BytesMut,
    notices: &'a tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl ClientWatch for HeldClient<'_> {
    async fn held(&mut self, notice: &str) {
        let mut b = BytesMut::new();
        out::notice_response(
            &mut b,
            &PgNotice {
                severity: "NOTICE",
                code: sqlstate::WARNING,
                message: notice,
                detail: None,
                hint: None,
            },
        );
        let _ = self.notices.send(b.freeze());
    }

    async fn gone(&mut self) {
        // What the client sends meanwhile is kept for after the decision, up to a
        // bound: a client that sends more while it waits is treated as gone (the
        // session ends; nothing it held runs).
        while self.buf.len() < HELD_READ_LIMIT {
            if matches!(self.rd.read_buf(self.buf).await, Ok(0) | Err(_)) {
                return;
            }
        }
    }
}

fn database_lost() -> EndReason {
    EndReason::BackendGone("database connection lost".into())
}

/// A statement name as SQL writes it: a double-quoted identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Relays the client's messages until the session ends; `None` when the client
/// said goodbye.
pub(super) async fn run(side: ClientSide) -> Option<EndReason> {
    let ClientSide {
        rd: mut client_rd,
        buf: mut client_buf,
        mut server_out,
        expected: upstream_expected,
        session: up,
        notices,
        denials: upstream_denials,
        prepared,
        answered,
        max_message,
    } = side;
    let decoder = FrontendDecoder::new(max_message);
    let mut copy_in = CopyCount::default();
    let mut requests = RequestLog::default();
    // A stand-in of a denied extended-protocol message was sent: the server
    // fails it and skips everything until the next Sync.
    let mut skipping_until_sync = false;
    loop {
        let frame = loop {
            match decoder.decode(&mut client_buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {
                    // Every whole message read so far is handled: send them on
                    // in one write before waiting for more.
                    if server_out.flush().await.is_err() {
                        return Some(database_lost());
                    }
                    match warden_net::read_more(&mut client_rd, &mut client_buf).await {
                        Ok(0) | Err(_) => return Some(EndReason::ClientGone),
                        Ok(_) => {}
                    }
                }
                Err(e) => return Some(EndReason::ClientProtocol(e.to_string())),
            }
        };
        up.count_in(frame.raw.len() as u64);
        match &frame.message {
            PgFrontendMessage::CopyData => {
                copy_in.bytes += frame.raw.len().saturating_sub(5) as u64;
                copy_in.rows += memchr_count(&frame.raw[5..]);
            }
            PgFrontendMessage::CopyDone | PgFrontendMessage::CopyFail { .. } => {
                let done = std::mem::take(&mut copy_in);
                if let Err(e) = up
                    .record(TimelineEvent::Copy {
                        direction: "in".into(),
                        bytes: done.bytes,
                        rows: done.rows,
                    })
                    .await
                {
                    return Some(e);
                }
            }
            PgFrontendMessage::Query { .. } if requests.extended_open() => {
                return Some(EndReason::ClientProtocol(
                    "a simple Query arrived before the Sync of the extended-protocol messages sent before it; send Sync first".into(),
                ));
            }
            PgFrontendMessage::Sync | PgFrontendMessage::Query { .. } => {
                skipping_until_sync = false;
            }
            _ => {}
        }
        // What a Bind runs, once the answers it depends on are in.
        let bound = match &frame.message {
            PgFrontendMessage::Bind { statement, .. } => {
                let mut bound = lock(&prepared).bound(statement);
                if bound == Bound::Unanswered {
                    if server_out.flush().await.is_err() {
                        return Some(database_lost());
                    }
                    earlier_cycles_answered(&upstream_expected, &answered).await;
                    bound = lock(&prepared).bound(statement);
                }
                Some(bound)
            }
            _ => None,
        };
        let generation = match &frame.message {
            PgFrontendMessage::Parse { .. } => lock(&prepared).next_generation(),
            _ => 0,
        };
        let bound_sql = match &bound {
            Some(Bound::Sql(sql)) => Some(sql.as_str()),
            _ => None,
        };
        // The audit event a Query or Bind becomes (a Bind the server skips is not
        // audited): the outcomes of what it runs name it.
        let statement = match (&frame.message, &bound) {
            (PgFrontendMessage::Query { .. }, _)
            | (PgFrontendMessage::Bind { .. }, Some(Bound::Sql(_))) => Some(Uuid::now_v7()),
            (PgFrontendMessage::Bind { .. }, _) if !skipping_until_sync => Some(Uuid::now_v7()),
            _ => None,
        };
        if let Some(statement) = requests.sent(
            &frame.message,
            &upstream_expected,
            generation,
            bound_sql,
            statement,
        ) {
            let mut d = BytesMut::new();
            crate::wire::put_frame(&mut d, b'D', |b| {
                b.extend_from_slice(b"S");
                crate::wire::put_cstr(b, &crate::wire::name_bytes(&statement));
            });
            if server_out.send(&d).await.is_err() {
                return Some(database_lost());
            }
        }
        // Query and Parse are decided here. An allowed Parse only prepares; each
        // Bind of it is an execution, audited (with its parameters summarized)
        // before it is forwarded.
        let bind_sql: String;
        let command = match &frame.message {
            PgFrontendMessage::Query { sql } => Command::new(
                Action::Sql {
                    dialect: SqlDialect::Postgres,
                    text: sql,
                },
                "Query",
            ),
            PgFrontendMessage::Parse { sql, .. } => Command::new(
                Action::Sql {
                    dialect: SqlDialect::Postgres,
                    text: sql,
                },
                "Parse",
            ),
            PgFrontendMessage::Bind {
                statement,
                param_lengths,
                ..
            } => match bound {
                Some(Bound::Sql(sql)) => {
                    bind_sql = sql;
                    Command::new(
                        Action::Sql {
                            dialect: SqlDialect::Postgres,
                            text: &bind_sql,
                        },
                        "Bind",
                    )
                    .decided(Decision::Allow)
                    .with_parameters(param_lengths.clone())
                }
                // The server skips it: nothing runs, nothing to decide. Should it
                // not be skipping after all, the stand-in fails there.
                _ if skipping_until_sync => {
                    if server_out
                        .send(&rewrite(&frame.message, &marker()))
                        .await
                        .is_err()
                    {
                        return Some(database_lost());
                    }
                    continue;
                }
                // A statement the proxy cannot attribute (SQL-level PREPARE,
                // server-side code, a name parsed twice): not run.
                _ => {
                    bind_sql = format!("EXECUTE {}", quoted(statement));
                    Command::new(
                        Action::Sql {
                            dialect: SqlDialect::Postgres,
                            text: &bind_sql,
                        },
                        "Bind",
                    )
                    .decided(Decision::Deny {
                        rule: "pg.unattributed_statement".into(),
                        reason: format!(
                            "the prepared statement {} was not prepared by a statement Warden decided (SQL-level PREPARE, server-side code, or a name parsed twice); prepare it with Parse after closing the name",
                            quoted(statement)
                        ),
                    })
                    .with_parameters(param_lengths.clone())
                }
            },
            PgFrontendMessage::Close { target: b'S', name } => {
                lock(&prepared).closing(name);
                if server_out.send(&frame.raw).await.is_err() {
                    return Some(database_lost());
                }
                continue;
            }
            // It calls functions by OID, around every SQL rule.
            PgFrontendMessage::FunctionCall => Command::new(
                Action::Feature {
                    name: "function_call",
                },
                "function_call",
            ),
            PgFrontendMessage::Terminate => {
                let _ = server_out.send(&frame.raw).await;
                let _ = server_out.flush().await;
                return None;
            }
            other => {
                if matches!(other, PgFrontendMessage::Sync) {
                    lock(&prepared).cycle_sent();
                }
                if server_out.send(&frame.raw).await.is_err() {
                    return Some(database_lost());
                }
                continue;
            }
        };
        let command = match statement {
            Some(id) => command.with_id(id),
            None => command,
        };
        let decision = command
            .decided
            .clone()
            .unwrap_or_else(|| up.guard.decide(&command.action));
        if matches!(decision, Decision::Review { .. }) && server_out.flush().await.is_err() {
            // Statements already sent run while this one waits.
            return Some(database_lost());
        }
        let parse_only = matches!(
            (&frame.message, &decision),
            (PgFrontendMessage::Parse { .. }, Decision::Allow)
        );
        let admission = if parse_only {
            // Allowed and only prepared: audited at each execution.
            Admission::Admitted { review: None }
        } else {
            let mut client = HeldClient {
                rd: &mut client_rd,
                buf: &mut client_buf,
                notices: &notices,
            };
            up.admit(command.clone().decided(decision), &mut client)
                .await
        };
        let text = match &command.action {
            Action::Sql { text, .. } => Some(*text),
            _ => None,
        };
        let bytes: Bytes = match admission {
            Admission::Admitted { .. } => {
                match &frame.message {
                    PgFrontendMessage::Parse { statement, .. } => {
                        let mut prepared = lock(&prepared);
                        prepared.statement(text.unwrap_or_default());
                        prepared.parsed(statement, text, generation);
                    }
                    PgFrontendMessage::Query { sql } => lock(&prepared).statement(sql),
                    _ => {}
                }
                frame.raw.clone()
            }
            Admission::Denied(denial) => {
                if matches!(command.action, Action::Feature { .. }) {
                    return Some(EndReason::Refused(format!(
                        "function-call protocol refused: {}",
                        denial.reason
                    )));
                }
                if let PgFrontendMessage::Parse { statement, .. } = &frame.message {
                    lock(&prepared).parsed(statement, None, generation);
                }
                if !matches!(frame.message, PgFrontendMessage::Query { .. }) {
                    skipping_until_sync = true;
                }
                let code = match denial.cause {
                    DenialCause::AuditUnavailable => sqlstate::SYSTEM_ERROR,
                    _ => sqlstate::INSUFFICIENT_PRIVILEGE,
                };
                let marker = marker();
                if let Ok(mut d) = upstream_denials.lock() {
                    d.insert(
                        marker.clone(),
                        Denied {
                            code,
                            rule: denial.rule,
                            reason: denial.reason,
                            statement: command.id,
                        },
                    );
                }
                rewrite(&frame.message, &marker)
            }
            Admission::End(reason) => return Some(reason),
        };
        if server_out.send(&bytes).await.is_err() {
            return Some(database_lost());
        }
        if matches!(frame.message, PgFrontendMessage::Query { .. }) {
            lock(&prepared).cycle_sent();
        }
    }
}

/// A one-time name that appears in the error of a stand-in at the server.
fn marker() -> String {
    let mut raw = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    let mut marker = String::from("warden-denied-");
    crate::wire::push_hex(&mut marker, &raw);
    marker
}

/// Waits until every cycle sent before now is answered (its `ReadyForQuery` is in).
async fn earlier_cycles_answered(expected: &Mutex<Requests>, answered: &Notify) {
    loop {
        let notified = answered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !lock(expected).awaits_cycle_end() {
            return;
        }
        notified.await;
    }
}

/// The message a denied statement is replaced with: one that fails at the server
/// with an error naming `marker`.
fn rewrite(message: &PgFrontendMessage, marker: &str) -> Bytes {
    let sql = stand_in(marker);
    let sql = sql.as_str();
    use crate::wire::{put_cstr, put_frame};
    let mut b = BytesMut::new();
    match message {
        PgFrontendMessage::Parse { statement, .. } => put_frame(&mut b, b'P', |b| {
            put_cstr(b, &crate::wire::name_bytes(statement));
            put_cstr(b, sql.as_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }),
        // A Bind of a statement that does not exist fails like a parse error.
        PgFrontendMessage::Bind { portal, .. } => put_frame(&mut b, b'B', |b| {
            put_cstr(b, &crate::wire::name_bytes(portal));
            put_cstr(b, marker.as_bytes());
            // No parameter formats, no parameters, no result formats.
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }),
        _ => put_frame(&mut b, b'Q', |b| put_cstr(b, sql.as_bytes())),
    }
    b.freeze()
}

/// The SQL a denied statement is replaced with: it fails at parse time, naming
/// `marker`.
fn stand_in(marker: &str) -> String {
    format!("SELECT 1 FROM \"{marker}\"")
}

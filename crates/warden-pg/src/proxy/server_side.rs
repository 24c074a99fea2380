//! The server's side of a PostgreSQL session: matches each answer to its request,
//! masks rows, COPY data, notices and notifications with the session's masker,
//! replaces the errors of denied statements' stand-ins with the denial, records
//! results in the session's timeline, and confirms which `Parse`s the server took.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::Notify;
use warden_core::{EndReason, SessionHandle, TimelineEvent};
use warden_net::Batched;

use super::ProxySession;
use super::relay::{Answering, Denials, LOST_TRACK, denied_message, lock, take};
use crate::backend::{self as out, PgNotice};
use crate::capture::{CopyCount, ResultCapture, memchr_count};
use crate::catalog::{Catalog, Described, column_masking};
use crate::copy::{CopyFormat, CopyOutPlan, mask_copy_row};
use crate::prepared::PreparedStatements;
use crate::requests::{Expect, Requests};
use crate::results::{BackendDecoder, ColumnMasking, PgBackendMessage, mask_data_row};
use crate::tls::BoxedStream;

/// What the server side works with.
pub(super) struct ServerSide<'a> {
    pub(super) rd: ReadHalf<BoxedStream>,
    /// Borrowed: after the session ends, the relay tells the client why through it.
    pub(super) client_out: &'a mut Batched<WriteHalf<BoxedStream>>,
    pub(super) notices: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    pub(super) expected: Arc<Mutex<Requests>>,
    pub(super) session: &'a ProxySession,
    pub(super) denials: Denials,
    pub(super) prepared: Arc<Mutex<PreparedStatements>>,
    /// Signalled whenever a cycle's answers are all in.
    pub(super) answered: Arc<Notify>,
    pub(super) max_message: usize,
}

/// Relays the server's answers until the session ends.
pub(super) async fn run(side: ServerSide<'_>) -> Option<EndReason> {
    let ServerSide {
        rd: mut server_rd,
        client_out,
        notices: mut notices_rx,
        expected,
        session,
        denials,
        prepared: down_prepared,
        answered,
        max_message,
    } = side;
    let down: &SessionHandle = &session.handle;
    let masker = down.masker.clone();
    let recorder = down.recorder().clone();
    let decoder = BackendDecoder::new(max_message);
    let mut buf = BytesMut::new();
    // How the rows of the result being sent are masked, and whether they have
    // been chosen for it yet (at its RowDescription or first row).
    let mut columns: Vec<ColumnMasking> = Vec::new();
    let mut result_open = false;
    // Bound portals: how their rows are masked and what their columns are named.
    let mut portals: HashMap<String, (Vec<ColumnMasking>, Described)> = HashMap::new();
    // Columns of described prepared statements: plan, type OID, format.
    let mut statements: HashMap<String, Described> = HashMap::new();
    // A ParameterDescription means the next RowDescription/NoData describes a
    // statement; `Some(true)` when the proxy asked (the client does not see it).
    let mut describing_statement: Option<bool> = None;
    let mut catalog = Catalog::default();
    let mut capture = ResultCapture::new(recorder.rows_per_result());
    let mut copy_out = CopyCount::default();
    // The COPY-out in progress, when its rows are masked: format, column plans,
    // whether the header line is still to come.
    let mut copy_masking: Option<(CopyFormat, Vec<warden_core::ColumnPlan>, bool)> = None;
    // Which statement the answers belong to, and since when.
    let mut answering = Answering::new();
    loop {
        let frame = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {
                    if client_out.flush().await.is_err() {
                        return Some(EndReason::ClientGone);
                    }
                    tokio::select! {
                        read = warden_net::read_more(&mut server_rd, &mut buf) => match read {
                            Ok(0) | Err(_) => {
                                return Some(EndReason::BackendGone("database closed the connection".into()));
                            }
                            Ok(_) => {}
                        },
                        Some(notice) = notices_rx.recv() => {
                            if client_out.send(&notice).await.is_err() {
                                return Some(EndReason::ClientGone);
                            }
                        }
                    }
                }
                Err(e) => return Some(EndReason::BackendProtocol(e.to_string())),
            }
        };
        let bytes: Bytes = match &frame.message {
            PgBackendMessage::RowDescription { fields } => {
                if masker.is_active()
                    && let Err(e) = catalog.resolve_fields(fields, session).await
                {
                    return Some(EndReason::Unmaskable(format!(
                        "column tables cannot be resolved for masking: {e}"
                    )));
                }
                let described = catalog.describe_columns(fields, masker.as_ref());
                match describing_statement.take() {
                    // A statement's shape: its rows come later, in the Bind's formats.
                    Some(ours) => {
                        if let Some(name) = take(&expected, |e| match e {
                            Expect::DescribeStatement(n, _) => Some(n.clone()),
                            _ => None,
                        }) {
                            statements.insert(name, described);
                        }
                        if ours {
                            continue;
                        }
                    }
                    None => match take(&expected, |e| match e {
                        Expect::DescribePortal(p) => Some(p.clone()),
                        _ => None,
                    }) {
                        // A portal's shape, in the formats its Bind asked for; its
                        // rows come with its Execute.
                        Some(portal) => {
                            portals.insert(portal, (column_masking(&described, None), described));
                        }
                        // A simple query's rows follow now, in these formats.
                        None => {
                            columns = column_masking(&described, None);
                            capture.start(&described);
                            result_open = true;
                        }
                    },
                }
                frame.raw.clone()
            }
            PgBackendMessage::Other { tag: b't' } => {
                let ours = expected
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next_describe_is_ours();
                describing_statement = Some(ours);
                if ours {
                    continue;
                }
                frame.raw.clone()
            }
            PgBackendMessage::Other { tag: b'n' } => {
                if let Some(ours) = describing_statement.take() {
                    let name = take(&expected, |e| match e {
                        Expect::DescribeStatement(n, _) => Some(n.clone()),
                        _ => None,
                    });
                    if let Some(name) = name {
                        statements.insert(name, Vec::new());
                    }
                    if ours {
                        continue;
                    }
                }
                frame.raw.clone()
            }
            // CloseComplete: a closed statement's name holds nothing now.
            PgBackendMessage::Other { tag: b'3' } => {
                if let Some(Some(name)) = take(&expected, |e| match e {
                    Expect::Close(n) => Some(n.clone()),
                    _ => None,
                }) {
                    lock(&down_prepared).closed(&name);
                }
                frame.raw.clone()
            }
            // ParseComplete: the statement name now holds new SQL; what was known
            // of its columns is gone.
            PgBackendMessage::Other { tag: b'1' } => {
                if let Some((name, generation)) = take(&expected, |e| match e {
                    Expect::Parse(n, g) => Some((n.clone(), *g)),
                    _ => None,
                }) {
                    lock(&down_prepared).confirmed(&name, generation);
                    statements.remove(&name);
                }
                frame.raw.clone()
            }
            // BindComplete: this portal's rows have its statement's columns in the
            // formats the Bind asked for (the proxy describes statements the
            // client did not).
            PgBackendMessage::Other { tag: b'2' } => {
                // Every BindComplete answers a Bind; none to match means the
                // proxy lost track of the requests, and masking with the wrong
                // columns must not follow.
                let Some((statement, portal, formats)) = take(&expected, |e| match e {
                    Expect::Bind {
                        statement,
                        portal,
                        formats,
                    } => Some((statement.clone(), portal.clone(), formats.clone())),
                    _ => None,
                }) else {
                    return Some(EndReason::Internal(LOST_TRACK.into()));
                };
                // Every bound statement was described (by the client or the
                // proxy); one that was not cannot be masked by column.
                let Some(described) = statements.get(&statement) else {
                    return Some(EndReason::Internal(LOST_TRACK.into()));
                };
                portals.insert(
                    portal,
                    (column_masking(described, Some(&formats)), described.clone()),
                );
                frame.raw.clone()
            }
            PgBackendMessage::ReadyForQuery { .. } => {
                copy_masking = None;
                result_open = false;
                answering.cycle_ended();
                // Requests the server skipped after an error end with this cycle.
                let unanswered = lock(&expected).end_cycle();
                {
                    let mut prepared = lock(&down_prepared);
                    for (name, generation) in unanswered.parses {
                        prepared.failed(&name, generation);
                    }
                    for name in unanswered.closes {
                        prepared.not_closed(&name);
                    }
                }
                answered.notify_waiters();
                describing_statement = None;
                frame.raw.clone()
            }
            // Copied-out rows are masked like result rows; what cannot be masked
            // ends the session before any data leaves (fail closed).
            PgBackendMessage::CopyResponse { kind: b'H', .. } if masker.is_active() => {
                let plan = take(&expected, |e| match e {
                    Expect::CopyOut(p) => Some(p.clone()),
                    _ => None,
                });
                let (select, format) = match plan {
                    Some(CopyOutPlan::Maskable { select, format }) => (select, format),
                    Some(CopyOutPlan::Unmaskable(why)) => {
                        return Some(EndReason::Unmaskable(format!(
                            "COPY TO cannot be masked ({why}); the session was ended before any data was sent"
                        )));
                    }
                    None => {
                        return Some(EndReason::Unmaskable("COPY TO from a statement the gateway could not read cannot be masked; the session was ended before any data was sent".into()));
                    }
                };
                let described = match catalog.check_unambiguous(&select, session).await {
                    Ok(()) => catalog.describe(&select, session).await,
                    Err(e) => Err(e),
                };
                let fields = match described {
                    Ok(f) => f,
                    Err(e) => {
                        return Some(EndReason::Unmaskable(format!(
                            "the columns of a COPY TO cannot be resolved for masking ({e}); the session was ended before any data was sent"
                        )));
                    }
                };
                let plans = catalog
                    .describe_columns(&fields, masker.as_ref())
                    .into_iter()
                    .map(|c| c.plan)
                    .collect();
                let header = matches!(format, CopyFormat::Csv { header: true, .. });
                copy_masking = Some((format, plans, header));
                frame.raw.clone()
            }
            PgBackendMessage::CopyResponse { kind: b'G', .. } => {
                // Syncs sent during the COPY are ignored: no answer is awaited.
                lock(&expected).copy_in_started();
                answered.notify_waiters();
                frame.raw.clone()
            }
            PgBackendMessage::CopyResponse { kind: b'W', .. } if masker.is_active() => {
                return Some(EndReason::Unmaskable("COPY BOTH (replication) cannot be masked; the session was ended before any data was sent".into()));
            }
            PgBackendMessage::CopyData => {
                copy_out.bytes += frame.raw.len().saturating_sub(5) as u64;
                copy_out.rows += memchr_count(&frame.raw[5..]);
                match &mut copy_masking {
                    Some((_, _, header @ true)) => {
                        *header = false;
                        frame.raw.clone()
                    }
                    Some((format, plans, false)) => {
                        match mask_copy_row(&frame.raw[5..], format, plans, masker.as_ref()) {
                            Ok(Some(row)) => {
                                let mut b = BytesMut::with_capacity(row.len() + 5);
                                crate::wire::put_frame(&mut b, b'd', |b| b.extend_from_slice(&row));
                                b.freeze()
                            }
                            Ok(None) => frame.raw.clone(),
                            Err(e) => {
                                return Some(EndReason::Unmaskable(format!(
                                    "a copied row cannot be masked: {e}"
                                )));
                            }
                        }
                    }
                    None => frame.raw.clone(),
                }
            }
            PgBackendMessage::CopyDone => {
                copy_masking = None;
                let done = std::mem::take(&mut copy_out);
                if let Err(e) = recorder
                    .record(TimelineEvent::Copy {
                        direction: "out".into(),
                        bytes: done.bytes,
                        rows: done.rows,
                    })
                    .await
                {
                    return Some(down.fail(e.into()));
                }
                frame.raw.clone()
            }
            PgBackendMessage::DataRow => {
                // The first row of an Execute's result: its portal's columns.
                if !result_open {
                    match expected
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .executing()
                    {
                        Some(Some(portal)) => {
                            let Some((c, described)) = portals.get(&portal) else {
                                return Some(EndReason::Internal(LOST_TRACK.into()));
                            };
                            columns = c.clone();
                            capture.start(described);
                        }
                        // A simple query whose RowDescription was not seen.
                        Some(None) | None => {
                            return Some(EndReason::Internal(LOST_TRACK.into()));
                        }
                    }
                    result_open = true;
                }
                let row = if masker.is_active() {
                    match mask_data_row(&frame.raw, &columns, masker.as_ref()) {
                        Ok(Some(rewritten)) => rewritten.freeze(),
                        Ok(None) => frame.raw.clone(),
                        // A row that cannot be read is not passed on unmasked.
                        Err(e) => {
                            return Some(EndReason::Unmaskable(format!(
                                "unreadable result row: {e}"
                            )));
                        }
                    }
                } else {
                    frame.raw.clone()
                };
                // The recording keeps what the client got: masked values.
                if let Err(e) = capture.row(&row, &columns) {
                    return Some(EndReason::Unmaskable(format!("unreadable result row: {e}")));
                }
                row
            }
            PgBackendMessage::CommandComplete { tag } => {
                result_open = false;
                let (duration, statement) = answering.finished(&expected, false);
                if let Err(e) = recorder
                    .record_outcome(statement, capture.finish(tag.clone(), duration))
                    .await
                {
                    return Some(down.fail(e.into()));
                }
                frame.raw.clone()
            }
            // PortalSuspended: an Execute with a row limit reached it.
            PgBackendMessage::Other { tag: b's' } => {
                result_open = false;
                let (duration, statement) = answering.finished(&expected, false);
                if let Err(e) = recorder
                    .record_outcome(
                        statement,
                        capture.finish("(portal suspended)".into(), duration),
                    )
                    .await
                {
                    return Some(down.fail(e.into()));
                }
                frame.raw.clone()
            }
            PgBackendMessage::EmptyQueryResponse => {
                result_open = false;
                answering.finished(&expected, false);
                frame.raw.clone()
            }
            PgBackendMessage::ErrorResponse { code, message } => {
                result_open = false;
                let (duration, mut statement) = answering.finished(&expected, true);
                let hit = denials.lock().ok().and_then(|mut d| {
                    let key = d.keys().find(|k| message.contains(k.as_str())).cloned();
                    key.and_then(|k| d.remove(&k))
                });
                let (bytes, code, recorded) = match hit {
                    Some(denied) => {
                        // The stand-in's error is the denied statement's outcome,
                        // whichever request it arrived for.
                        statement = Some(denied.statement);
                        let code = denied.code;
                        let message = denied_message(&denied.rule, &denied.reason);
                        let mut b = BytesMut::new();
                        out::error_response(
                            &mut b,
                            &PgNotice {
                                severity: "ERROR",
                                code,
                                message: &message,
                                detail: None,
                                hint: None,
                            },
                        );
                        (b.freeze(), code.to_string(), message)
                    }
                    None if masker.is_active() => {
                        match crate::results::mask_notice(&frame.raw, masker.as_ref()) {
                            Ok(Some(b)) => {
                                let b = b.freeze();
                                let masked = crate::results::notice_message(&b)
                                    .unwrap_or_else(|_| "[redacted]".into());
                                (b, code.clone(), masked)
                            }
                            Ok(None) => (frame.raw.clone(), code.clone(), message.clone()),
                            Err(e) => {
                                return Some(EndReason::Unmaskable(format!(
                                    "unreadable error from the database: {e}"
                                )));
                            }
                        }
                    }
                    None => (frame.raw.clone(), code.clone(), message.clone()),
                };
                capture.reset();
                if let Err(e) = recorder
                    .record_outcome(
                        statement,
                        TimelineEvent::Error {
                            code,
                            message: recorded,
                            duration_us: duration,
                        },
                    )
                    .await
                {
                    return Some(down.fail(e.into()));
                }
                bytes
            }
            PgBackendMessage::Other { tag: b'A' } if masker.is_active() => {
                match crate::results::mask_notification(&frame.raw, masker.as_ref()) {
                    Ok(Some(b)) => b.freeze(),
                    Ok(None) => frame.raw.clone(),
                    Err(e) => {
                        return Some(EndReason::Unmaskable(format!(
                            "unreadable notification from the database: {e}"
                        )));
                    }
                }
            }
            PgBackendMessage::NoticeResponse if masker.is_active() => {
                match crate::results::mask_notice(&frame.raw, masker.as_ref()) {
                    Ok(Some(b)) => b.freeze(),
                    Ok(None) => frame.raw.clone(),
                    Err(e) => {
                        return Some(EndReason::Unmaskable(format!(
                            "unreadable notice from the database: {e}"
                        )));
                    }
                }
            }
            _ => frame.raw.clone(),
        };
        down.count_out(bytes.len() as u64);
        if client_out.send(&bytes).await.is_err() {
            return Some(EndReason::ClientGone);
        }
    }
}

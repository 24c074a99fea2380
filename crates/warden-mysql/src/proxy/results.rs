//! The server's answers to a MySQL command: OK, ERR (masked), column definitions and
//! result sets in the text and binary row formats, masked row by row and kept in
//! the session's timeline.

use bytes::{Bytes, BytesMut};
use std::time::Instant;
use warden_core::{ColumnPlan, EndReason, TimelineEvent};

use super::relay::{End, Relay, RowFormat, protocol_end};
use crate::handshake::{ServerError, status};
use crate::resultset::{
    ColumnDef, OkInfo, ResponseHead, binary_row_values, eof_to_ok, is_terminator, mask_binary_row,
    mask_error, mask_text_row, terminator_status, text_row_values,
};

impl Relay {
    /// Relays a one-packet answer (OK, ERR or EOF).
    pub(super) async fn simple(&mut self) -> Result<(), End> {
        let started = Instant::now();
        let p = self.server_packet().await?;
        self.awaiting = false;
        if p.payload.first() == Some(&0xFF) {
            return self.server_error(&p.payload, started).await;
        }
        self.send_client(&p.payload);
        Ok(())
    }

    /// Relays a server `ERR`, masked, and records it.
    pub(super) async fn server_error(
        &mut self,
        payload: &[u8],
        started: Instant,
    ) -> Result<(), End> {
        let masked = if self.session.masker.is_active() {
            mask_error(payload, self.session.masker.as_ref())
                .map_err(|e| protocol_end("the database", &e))?
        } else {
            None
        };
        let shown = masked.as_deref().unwrap_or(payload);
        if let Ok(e) = ServerError::decode(shown) {
            self.record_timeline(TimelineEvent::Error {
                code: e.code.to_string(),
                message: e.message,
                duration_us: Some(started.elapsed().as_micros() as u64),
            })
            .await?;
        }
        self.send_client(shown);
        Ok(())
    }

    /// Reads `n` column definitions, forwarding each, and the EOF after them when
    /// the server sends one (dropped when the client asked for DEPRECATE_EOF).
    pub(super) async fn column_definitions(&mut self, n: u64) -> Result<Vec<ColumnDef>, End> {
        let mut columns = Vec::with_capacity(n.min(4096) as usize);
        for _ in 0..n {
            let p = self.server_packet().await?;
            columns
                .push(ColumnDef::decode(&p.payload).map_err(|e| protocol_end("the database", &e))?);
            self.send_client_batched(&p.payload).await?;
        }
        if n > 0 && !self.server_eof {
            let p = self.server_packet().await?;
            if !is_terminator(&p.payload) {
                return Err(Some(EndReason::BackendProtocol(
                    "no EOF after the column definitions".into(),
                )));
            }
            if !self.client_eof {
                self.send_client(&p.payload);
            }
        }
        Ok(columns)
    }

    /// Relays a result set's terminator, converted for the client if need be;
    /// returns its status flags.
    pub(super) fn terminator(&mut self, payload: &[u8]) -> Result<u16, End> {
        let status = terminator_status(payload, self.server_eof)
            .map_err(|e| protocol_end("the database", &e))?;
        if self.client_eof && !self.server_eof {
            let ok = eof_to_ok(payload).map_err(|e| protocol_end("the database", &e))?;
            self.send_client(&ok);
        } else {
            self.send_client(payload);
        }
        Ok(status)
    }

    /// Relays the answer to a query or an execution: any number of OKs and result
    /// sets (multi-statements, procedures), until one says no more follow.
    pub(super) async fn results(&mut self, format: RowFormat) -> Result<(), End> {
        let keep = self.session.recorder().rows_per_result();
        loop {
            let started = Instant::now();
            let p = self.server_packet().await?;
            let head =
                ResponseHead::decode(&p.payload).map_err(|e| protocol_end("the database", &e))?;
            match head {
                ResponseHead::Ok(ok) => {
                    self.send_client(&p.payload);
                    self.record_ok(&ok, started).await?;
                    if ok.status & status::MORE_RESULTS_EXISTS == 0 {
                        break;
                    }
                }
                ResponseHead::Err => {
                    self.server_error(&p.payload, started).await?;
                    break;
                }
                ResponseHead::Eof { .. } => {
                    self.send_client(&p.payload);
                    break;
                }
                ResponseHead::LocalInfile => {
                    self.local_infile(&p.payload).await?;
                }
                ResponseHead::ResultSet { columns } => {
                    self.send_client(&p.payload);
                    let defs = self.column_definitions(columns).await?;
                    let plans: Vec<ColumnPlan> = if self.session.masker.is_active() {
                        defs.iter()
                            .map(|c| self.session.masker.plan(&c.column_ref()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
                    let mut total = 0u64;
                    let more = loop {
                        let row = self.server_packet().await?;
                        if row.payload.first() == Some(&0xFF) {
                            self.server_error(&row.payload, started).await?;
                            break false;
                        }
                        if is_terminator(&row.payload) {
                            let status = self.terminator(&row.payload)?;
                            self.record_timeline(TimelineEvent::Result {
                                tag: format!("SELECT {total}"),
                                columns: defs.iter().map(|c| c.name.clone()).collect(),
                                rows: std::mem::take(&mut rows),
                                rows_total: total,
                                rows_affected: None,
                                duration_us: Some(started.elapsed().as_micros() as u64),
                            })
                            .await?;
                            break status & status::MORE_RESULTS_EXISTS != 0;
                        }
                        total += 1;
                        let masked = if plans.is_empty() {
                            None
                        } else {
                            match format {
                                RowFormat::Text => mask_text_row(
                                    &row.payload,
                                    &plans,
                                    self.session.masker.as_ref(),
                                ),
                                RowFormat::Binary => mask_binary_row(
                                    &row.payload,
                                    &defs,
                                    &plans,
                                    self.session.masker.as_ref(),
                                ),
                            }
                            .map_err(|e| protocol_end("the database", &e))?
                        };
                        let shown: Bytes = masked.map_or(row.payload, BytesMut::freeze);
                        if rows.len() < keep {
                            let values = match format {
                                RowFormat::Text => text_row_values(&shown),
                                RowFormat::Binary => binary_row_values(&shown, &defs),
                            }
                            .map_err(|e| protocol_end("the database", &e))?;
                            rows.push(values);
                        }
                        self.send_client_batched(&shown).await?;
                    };
                    if !more {
                        break;
                    }
                }
            }
        }
        self.awaiting = false;
        Ok(())
    }

    pub(super) async fn record_ok(&mut self, ok: &OkInfo, started: Instant) -> Result<(), End> {
        self.record_timeline(TimelineEvent::Result {
            tag: format!("OK {}", ok.affected_rows),
            columns: Vec::new(),
            rows: Vec::new(),
            rows_total: 0,
            rows_affected: Some(ok.affected_rows),
            duration_us: Some(started.elapsed().as_micros() as u64),
        })
        .await
    }
}

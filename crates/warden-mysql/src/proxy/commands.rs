//! The commands a MySQL client sends, each decoded and admitted (or refused) before
//! it is forwarded: queries (with `KILL` of the gateway's own connection ids),
//! `COM_INIT_DB`, prepared statements, `LOAD DATA LOCAL INFILE` and the rest.

use bytes::Bytes;
use std::collections::HashMap;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use warden_core::{Action, Command, Decision, EndReason, TimelineEvent};

use super::kill_statement;
use super::relay::{End, Prepared, Relay, RowFormat, protocol_end};
use crate::MysqlProtocolError;
use crate::command::{LAST_PREPARED, MysqlCommand, StmtExecute};
use crate::errno;
use crate::resultset::is_terminator;

impl Relay {
    pub(super) async fn command(
        &mut self,
        command: MysqlCommand,
        payload: &Bytes,
    ) -> Result<(), End> {
        match command {
            MysqlCommand::Quit => {
                let _ = self.send_server(payload).await;
                Err(None)
            }
            MysqlCommand::Query { sql } => {
                let kill = kill_statement(&sql).and_then(|(query, id)| {
                    self.threads.get(&id).flatten().map(|t| (query, id, t))
                });
                if !self
                    .admit(self.sql(&sql, "COM_QUERY"), errno::DENIED)
                    .await?
                {
                    return Ok(());
                }
                match kill {
                    // One of our ids: kill its server thread, if it runs on the same
                    // server as the same account (as the server itself would allow).
                    Some((query, id, target)) => {
                        if target.addr != self.this_thread.addr
                            || target.user != self.this_thread.user
                        {
                            self.deny(
                                errno::KILL_DENIED,
                                &format!("You are not owner of thread {id}"),
                            )
                            .await?;
                            return Ok(());
                        }
                        let what = if query { "QUERY " } else { "" };
                        let rewritten = format!("\x03KILL {what}{}", target.thread);
                        self.forward(rewritten.as_bytes()).await?;
                    }
                    None => self.forward(payload).await?,
                }
                self.results(RowFormat::Text).await
            }
            MysqlCommand::InitDb { database } => {
                // The connection's database pin is the guard's to apply.
                let command = Command::new(Action::UseDatabase { name: &database }, "COM_INIT_DB");
                if !self.admit(command, errno::DB_ACCESS_DENIED).await? {
                    return Ok(());
                }
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::StmtPrepare { sql } => {
                // Decided here; an allowed statement is audited at each execution.
                let decision = self.session.guard.decide(&Action::Sql {
                    dialect: self.dialect,
                    text: &sql,
                });
                if decision != Decision::Allow {
                    let command = self.sql(&sql, "COM_STMT_PREPARE").decided(decision);
                    if !self.admit(command, errno::DENIED).await? {
                        return Ok(());
                    }
                }
                self.forward(payload).await?;
                self.prepare(sql).await
            }
            MysqlCommand::StmtExecute(execute) => self.execute(execute, payload).await,
            MysqlCommand::StmtSendLongData {
                statement,
                param,
                len,
            } => {
                // No answer comes; an unknown statement is the server's to ignore.
                if let Some(p) = self.prepared.get_mut(&statement) {
                    *p.long_data.entry(param).or_default() += len as u64;
                }
                self.send_server(payload).await
            }
            MysqlCommand::StmtClose { statement } => {
                self.prepared.remove(&statement);
                self.send_server(payload).await
            }
            MysqlCommand::StmtFetch { .. } => {
                self.refuse(
                    errno::NOT_SUPPORTED,
                    "cursors (COM_STMT_FETCH) are not relayed by Warden",
                );
                Ok(())
            }
            MysqlCommand::ResetConnection => {
                self.prepared.clear();
                self.last_prepared = None;
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::StmtReset { statement } => {
                if let Some(p) = self.prepared.get_mut(&statement) {
                    p.long_data.clear();
                }
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::Ping | MysqlCommand::SetOption { .. } => {
                self.forward(payload).await?;
                self.simple().await
            }
            MysqlCommand::Statistics => {
                self.forward(payload).await?;
                let p = self.server_packet().await?;
                self.awaiting = false;
                self.send_client(&p.payload);
                Ok(())
            }
            MysqlCommand::FieldList { .. } => {
                self.forward(payload).await?;
                self.field_list().await
            }
            other @ MysqlCommand::Other { .. } => {
                let message = format!("Warden does not relay {}", other.name());
                self.refuse(errno::UNKNOWN_COMMAND, &message);
                Ok(())
            }
        }
    }

    pub(super) async fn execute(
        &mut self,
        execute: StmtExecute,
        payload: &Bytes,
    ) -> Result<(), End> {
        let id = if execute.statement == LAST_PREPARED {
            self.last_prepared.unwrap_or(LAST_PREPARED)
        } else {
            execute.statement
        };
        let Some(prepared) = self.prepared.get(&id) else {
            self.refuse(
                errno::UNKNOWN_STATEMENT,
                &format!("unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
            );
            return Ok(());
        };
        if execute.flags != 0 {
            self.refuse(
                errno::NOT_SUPPORTED,
                "cursors (COM_STMT_EXECUTE with a cursor type) are not relayed by Warden",
            );
            return Ok(());
        }
        let sql = prepared.sql.clone();
        let summary = execute.parameter_lengths(
            prepared.params,
            prepared.types.as_deref(),
            &prepared.long_data,
        );
        let parameters = match summary {
            Ok((lengths, types)) => {
                if let (Some(t), Some(p)) = (types, self.prepared.get_mut(&id)) {
                    p.types = Some(t);
                }
                Some(lengths)
            }
            // The server will reject what cannot be read; audit without a summary.
            Err(_) => None,
        };
        if let Some(p) = self.prepared.get_mut(&id) {
            p.long_data.clear();
        }
        // Decided when it was prepared (only allowed statements are kept): the
        // session's guard does not change, so each execution is only audited.
        let mut command = self.sql(&sql, "COM_STMT_EXECUTE").decided(Decision::Allow);
        command.parameters = parameters;
        if !self.admit(command, errno::DENIED).await? {
            return Ok(());
        }
        self.forward(payload).await?;
        self.results(RowFormat::Binary).await
    }

    /// `LOAD DATA LOCAL INFILE`: the server asks the client for a file. Relayed only
    /// when the listener allows it; otherwise the server gets "no file" and the
    /// client never sees the request.
    pub(super) async fn local_infile(&mut self, request: &[u8]) -> Result<(), End> {
        if !self.local_infile {
            self.send_server(&[]).await?;
            self.record_timeline(TimelineEvent::Error {
                code: errno::NOT_ALLOWED.0.to_string(),
                message: "LOAD DATA LOCAL INFILE refused by the gateway".into(),
                duration_us: None,
            })
            .await?;
            return Ok(());
        }
        self.send_client(request);
        self.flush_client().await?;
        let (mut bytes, mut packets) = (0u64, 0u64);
        loop {
            let p = loop {
                match self.decoder.decode(&mut self.client_buf) {
                    Ok(Some(p)) if p.seq == self.client_seq => break p,
                    Ok(Some(p)) => {
                        return Err(protocol_end(
                            "client",
                            &MysqlProtocolError::Sequence {
                                got: p.seq,
                                expected: self.client_seq,
                            },
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(protocol_end("client", &e)),
                }
                match self.client.read_buf(&mut self.client_buf).await {
                    Ok(0) | Err(_) => return Err(Some(EndReason::ClientGone)),
                    Ok(_) => {}
                }
            };
            self.client_seq = p.next_seq();
            self.session.count_in(p.wire_len());
            bytes += p.payload.len() as u64;
            packets += 1;
            self.send_server(&p.payload).await?;
            if p.payload.is_empty() {
                break;
            }
        }
        self.server_seq = self.client_seq;
        self.record_timeline(TimelineEvent::Copy {
            direction: "in".into(),
            bytes,
            rows: packets.saturating_sub(1),
        })
        .await?;
        Ok(())
    }

    /// Relays the answer to `COM_STMT_PREPARE` and remembers the statement.
    pub(super) async fn prepare(&mut self, sql: String) -> Result<(), End> {
        let started = Instant::now();
        let p = self.server_packet().await?;
        if p.payload.first() == Some(&0xFF) {
            self.awaiting = false;
            return self.server_error(&p.payload, started).await;
        }
        let bad = |d| {
            protocol_end(
                "the database",
                &MysqlProtocolError::Malformed {
                    what: "COM_STMT_PREPARE answer",
                    detail: d,
                },
            )
        };
        if p.payload.len() < 12 || p.payload[0] != 0 {
            return Err(bad("too short"));
        }
        let id = u32::from_le_bytes([p.payload[1], p.payload[2], p.payload[3], p.payload[4]]);
        let columns = u16::from_le_bytes([p.payload[5], p.payload[6]]);
        let params = u16::from_le_bytes([p.payload[7], p.payload[8]]);
        self.send_client(&p.payload);
        self.column_definitions(u64::from(params)).await?;
        self.column_definitions(u64::from(columns)).await?;
        self.awaiting = false;
        self.prepared.insert(
            id,
            Prepared {
                sql,
                params: usize::from(params),
                types: None,
                long_data: HashMap::new(),
            },
        );
        self.last_prepared = Some(id);
        Ok(())
    }

    /// Relays the answer to `COM_FIELD_LIST`: column definitions up to an EOF.
    pub(super) async fn field_list(&mut self) -> Result<(), End> {
        let started = Instant::now();
        loop {
            let p = self.server_packet().await?;
            if p.payload.first() == Some(&0xFF) {
                self.awaiting = false;
                return self.server_error(&p.payload, started).await;
            }
            if is_terminator(&p.payload) {
                self.terminator(&p.payload)?;
                self.awaiting = false;
                return Ok(());
            }
            self.send_client_batched(&p.payload).await?;
        }
    }
}

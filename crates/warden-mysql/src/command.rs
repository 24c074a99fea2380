//! Commands a client sends in the command phase, decoded as far as the proxy must
//! understand them to decide, audit and match answers.

use crate::MysqlProtocolError;
use crate::wire::Reader;

/// Command bytes.
pub mod code {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PING: u8 = 0x0E;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1A;
    pub const SET_OPTION: u8 = 0x1B;
    pub const STMT_FETCH: u8 = 0x1C;
    pub const RESET_CONNECTION: u8 = 0x1F;
}

/// MariaDB's statement id meaning "the statement prepared last" (lets a client send
/// PREPARE and EXECUTE back to back).
pub const LAST_PREPARED: u32 = u32::MAX;

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlCommand {
    Quit,
    InitDb {
        database: String,
    },
    Query {
        sql: String,
    },
    /// Columns of a table (deprecated, still sent by some clients for completion).
    FieldList {
        table: String,
    },
    Statistics,
    Ping,
    StmtPrepare {
        sql: String,
    },
    StmtExecute(StmtExecute),
    /// A chunk of one parameter's value, sent before the execution; no answer.
    StmtSendLongData {
        statement: u32,
        param: u16,
        /// Bytes in this chunk.
        len: usize,
    },
    /// No answer.
    StmtClose {
        statement: u32,
    },
    StmtReset {
        statement: u32,
    },
    SetOption {
        option: u16,
    },
    StmtFetch {
        statement: u32,
    },
    ResetConnection,
    /// Everything else (`COM_CHANGE_USER`, `COM_PROCESS_KILL`, replication, ...):
    /// refused by the proxy.
    Other {
        code: u8,
    },
}

impl MysqlCommand {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "command");
        let code = r.u8()?;
        let text = |r: &mut Reader<'_>| String::from_utf8_lossy(r.rest()).into_owned();
        Ok(match code {
            code::QUIT => Self::Quit,
            code::INIT_DB => Self::InitDb {
                database: text(&mut r),
            },
            code::QUERY => Self::Query { sql: text(&mut r) },
            code::FIELD_LIST => Self::FieldList {
                table: String::from_utf8_lossy(r.nul_str().unwrap_or_default()).into_owned(),
            },
            code::STATISTICS => Self::Statistics,
            code::PING => Self::Ping,
            code::STMT_PREPARE => Self::StmtPrepare { sql: text(&mut r) },
            code::STMT_EXECUTE => Self::StmtExecute(StmtExecute {
                statement: r.u32()?,
                flags: r.u8()?,
                params: r.rest().to_vec(),
            }),
            code::STMT_SEND_LONG_DATA => Self::StmtSendLongData {
                statement: r.u32()?,
                param: r.u16()?,
                len: r.remaining(),
            },
            code::STMT_CLOSE => Self::StmtClose {
                statement: r.u32()?,
            },
            code::STMT_RESET => Self::StmtReset {
                statement: r.u32()?,
            },
            code::SET_OPTION => Self::SetOption { option: r.u16()? },
            code::STMT_FETCH => Self::StmtFetch {
                statement: r.u32()?,
            },
            code::RESET_CONNECTION => Self::ResetConnection,
            code => Self::Other { code },
        })
    }

    /// The protocol's name for the command, for errors and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Quit => "COM_QUIT",
            Self::InitDb { .. } => "COM_INIT_DB",
            Self::Query { .. } => "COM_QUERY",
            Self::FieldList { .. } => "COM_FIELD_LIST",
            Self::Statistics => "COM_STATISTICS",
            Self::Ping => "COM_PING",
            Self::StmtPrepare { .. } => "COM_STMT_PREPARE",
            Self::StmtExecute(_) => "COM_STMT_EXECUTE",
            Self::StmtSendLongData { .. } => "COM_STMT_SEND_LONG_DATA",
            Self::StmtClose { .. } => "COM_STMT_CLOSE",
            Self::StmtReset { .. } => "COM_STMT_RESET",
            Self::SetOption { .. } => "COM_SET_OPTION",
            Self::StmtFetch { .. } => "COM_STMT_FETCH",
            Self::ResetConnection => "COM_RESET_CONNECTION",
            Self::Other { code } => match *code {
                code::CHANGE_USER => "COM_CHANGE_USER",
                0x0C => "COM_PROCESS_KILL",
                0x0A => "COM_PROCESS_INFO",
                0x12 => "COM_BINLOG_DUMP",
                0x15 => "COM_REGISTER_SLAVE",
                0xFA => "COM_STMT_BULK_EXECUTE",
                _ => "an unsupported command",
            },
        }
    }
}

/// Each parameter's byte length (`None`: NULL), and the parameter types an execution
/// bound, if it bound new ones.
pub type ParameterSummary = (Vec<Option<u32>>, Option<Vec<u8>>);

/// `COM_STMT_EXECUTE`, its parameter block kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StmtExecute {
    pub statement: u32,
    /// Cursor type (0: none).
    pub flags: u8,
    /// Iteration count, NULL bitmap, bound-types flag, types and values.
    pub params: Vec<u8>,
}

impl StmtExecute {
    /// The byte length of each parameter's value (`None`: NULL) for the audit log,
    /// given the statement's parameter count, the types last bound and the bytes of
    /// each parameter sent before with `COM_STMT_SEND_LONG_DATA` (those have no value
    /// here). Returns the types this execution binds, if it binds new ones.
    pub fn parameter_lengths(
        &self,
        count: usize,
        bound: Option<&[u8]>,
        long_data: &std::collections::HashMap<u16, u64>,
    ) -> Result<ParameterSummary, MysqlProtocolError> {
        let mut r = Reader::new(&self.params, "COM_STMT_EXECUTE");
        r.u32()?; // iteration count, always 1
        if count == 0 {
            return Ok((Vec::new(), None));
        }
        let nulls = r.take(count.div_ceil(8))?;
        let mut new_types = None;
        if r.u8()? == 1 {
            new_types = Some(r.take(2 * count)?.to_vec());
        }
        let types = new_types
            .as_deref()
            .or(bound)
            .ok_or_else(|| r.err("parameter types never bound"))?;
        let mut lengths = Vec::with_capacity(count);
        for i in 0..count {
            if nulls[i / 8] & (1 << (i % 8)) != 0 {
                lengths.push(None);
                continue;
            }
            if let Some(&n) = u16::try_from(i).ok().and_then(|i| long_data.get(&i)) {
                lengths.push(Some(u32::try_from(n).unwrap_or(u32::MAX)));
                continue;
            }
            let n = crate::resultset::binary_value_len(types[2 * i], &mut r)?;
            r.take(n)?;
            lengths.push(Some(u32::try_from(n).unwrap_or(u32::MAX)));
        }
        Ok((lengths, new_types))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode() {
        assert_eq!(
            MysqlCommand::decode(b"\x03SELECT 1").unwrap(),
            MysqlCommand::Query {
                sql: "SELECT 1".into()
            }
        );
        assert_eq!(
            MysqlCommand::decode(&[0x19, 5, 0, 0, 0]).unwrap(),
            MysqlCommand::StmtClose { statement: 5 }
        );
        assert_eq!(
            MysqlCommand::decode(&[0x11, 1, 2]).unwrap().name(),
            "COM_CHANGE_USER"
        );
        assert!(MysqlCommand::decode(&[]).is_err());
        assert!(MysqlCommand::decode(&[0x17, 1, 0]).is_err());
    }

    #[test]
    fn execute_parameters_are_summarized_by_length() {
        // Two params: a LONGLONG 7 and a VAR_STRING "hello"; a third NULL.
        let mut p = vec![1, 0, 0, 0];
        p.push(0b100); // NULL bitmap: third is NULL
        p.push(1); // new types bound
        p.extend_from_slice(&[8, 0, 253, 0, 253, 0]);
        p.extend_from_slice(&7i64.to_le_bytes());
        p.push(5);
        p.extend_from_slice(b"hello");
        let e = StmtExecute {
            statement: 1,
            flags: 0,
            params: p,
        };
        let (lengths, types) = e.parameter_lengths(3, None, &Default::default()).unwrap();
        assert_eq!(lengths, vec![Some(8), Some(5), None]);
        assert_eq!(types.unwrap(), vec![8, 0, 253, 0, 253, 0]);
        // Types not rebound and never bound: an error, not a guess.
        let mut q = vec![1, 0, 0, 0, 0, 0];
        q.extend_from_slice(&7i64.to_le_bytes());
        let e = StmtExecute {
            statement: 1,
            flags: 0,
            params: q,
        };
        assert!(e.parameter_lengths(1, None, &Default::default()).is_err());
        assert_eq!(
            e.parameter_lengths(1, Some(&[8, 0]), &Default::default())
                .unwrap()
                .0,
            vec![Some(8)]
        );
        // A value sent as long data has no bytes here; its size comes from there.
        let e = StmtExecute {
            statement: 1,
            flags: 0,
            params: vec![1, 0, 0, 0, 0, 1, 253, 0],
        };
        let long = std::collections::HashMap::from([(0u16, 30u64)]);
        assert_eq!(
            e.parameter_lengths(1, None, &long).unwrap().0,
            vec![Some(30)]
        );
    }
}

//! Any bytes as a MySQL packet stream from either side: framing, handshakes,
//! commands, result-set heads, column definitions and rows (text and binary) decode
//! or are refused, never panic, and a masked row reads back with as many values as
//! the original.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warden_core::{ColumnPlan, ColumnRef, ColumnRuleId, Masked, Masker};
use warden_mysql::command::MysqlCommand;
use warden_mysql::handshake::{ClientHello, Greeting, ServerError};
use warden_mysql::packet::PacketDecoder;
use warden_mysql::resultset::{
    ColumnDef, ResponseHead, binary_row_values, mask_binary_row, mask_text_row, text_row_values,
};

/// Replaces any value holding `@`, nulls any holding `#`.
struct Marks;

impl Masker for Marks {
    fn plan(&self, _: &ColumnRef<'_>) -> ColumnPlan {
        ColumnPlan::Detect
    }
    fn mask(&self, plan: ColumnPlan, v: &[u8]) -> Masked {
        if matches!(plan, ColumnPlan::Rule(_)) || v.contains(&b'@') {
            Masked::Replaced(vec![b'x'; v.len() % 300])
        } else if v.contains(&b'#') {
            Masked::Null
        } else {
            Masked::Unchanged
        }
    }
    fn is_active(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let decoder = PacketDecoder::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(p)) = decoder.decode(&mut buf) {
        assert!(p.payload.len() <= data.len());
        let payload = &p.payload[..];
        let _ = ClientHello::decode(payload);
        let _ = Greeting::decode(payload);
        let _ = ServerError::decode(payload);
        let _ = ResponseHead::decode(payload);
        if let Ok(MysqlCommand::StmtExecute(e)) = MysqlCommand::decode(payload) {
            let n = usize::from(e.statement as u8 % 8);
            let long = std::collections::HashMap::from([(1u16, 9u64)]);
            let _ = e.parameter_lengths(n, None, &long);
            let types = [253, 0, 8, 0, 10, 0, 1, 0, 5, 0, 246, 0, 3, 0, 12, 0];
            let _ = e.parameter_lengths(n, Some(&types), &Default::default());
        }
        let _ = ColumnDef::decode(payload);
        // Columns whose types come from the first bytes, rows from the rest.
        let (head, row) = payload.split_at(payload.len().min(6));
        let columns: Vec<ColumnDef> = head
            .iter()
            .map(|&t| ColumnDef {
                column_type: t,
                flags: u16::from(t & 0x20),
                ..ColumnDef::default()
            })
            .collect();
        let plans: Vec<ColumnPlan> = head
            .iter()
            .map(|&t| match t % 3 {
                0 => ColumnPlan::Detect,
                1 => ColumnPlan::Rule(ColumnRuleId(0)),
                _ => ColumnPlan::Skip,
            })
            .collect();
        if let Ok(Some(masked)) = mask_text_row(row, &plans, &Marks) {
            assert_eq!(text_row_values(&masked).map(|v| v.len()).ok(), Some(columns.len()));
        }
        if let Ok(Some(masked)) = mask_binary_row(row, &columns, &plans, &Marks) {
            assert_eq!(
                binary_row_values(&masked, &columns).map(|v| v.len()).ok(),
                Some(columns.len())
            );
        }
    }
});

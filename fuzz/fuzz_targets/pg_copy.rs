//! Any bytes as a copied row and as a COPY statement: finding COPY statements and
//! masking a row never panic, and a rewritten row reads back as the same number of
//! values in the same format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_core::{ColumnPlan, ColumnRef, Masked, Masker};
use warden_pg::copy::{CopyFormat, copy_statements, mask_copy_row};

/// Replaces any value holding `@`, and nulls any holding `#`.
struct Marks;

impl Masker for Marks {
    fn plan(&self, _: &ColumnRef<'_>) -> ColumnPlan {
        ColumnPlan::Detect
    }
    fn mask(&self, _: ColumnPlan, v: &[u8]) -> Masked {
        if v.contains(&b'#') {
            Masked::Null
        } else if v.contains(&b'@') {
            Masked::Replaced(b"[x\t,\"\\]".to_vec())
        } else {
            Masked::Unchanged
        }
    }
    fn is_active(&self) -> bool {
        true
    }
}

/// Leaves everything.
struct Nothing;

impl Masker for Nothing {
    fn plan(&self, _: &ColumnRef<'_>) -> ColumnPlan {
        ColumnPlan::Detect
    }
    fn mask(&self, _: ColumnPlan, _: &[u8]) -> Masked {
        Masked::Unchanged
    }
    fn is_active(&self) -> bool {
        false
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = copy_statements(&String::from_utf8_lossy(data));
    let Some((&pick, row)) = data.split_first() else {
        return;
    };
    let format = match pick % 3 {
        0 => CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        },
        1 => CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: false,
        },
        _ => CopyFormat::Csv {
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"NULL".to_vec(),
            header: false,
        },
    };
    // Enough columns for rows with a few fields to get past the count check.
    for columns in 1..=4 {
        let plans = vec![ColumnPlan::Detect; columns];
        if let Ok(Some(out)) = mask_copy_row(row, &format, &plans, &Marks) {
            assert!(
                mask_copy_row(&out, &format, &plans, &Nothing).is_ok(),
                "rewritten row does not read back: {out:?}"
            );
        }
    }
});

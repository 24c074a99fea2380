//! What a session's recording keeps of the results and COPYs the client received.

use bytes::Bytes;
use warden_core::TimelineEvent;

use crate::catalog::DescribedColumn;
use crate::results::ColumnMasking;

/// Rows and bytes of one COPY, for the recording.
#[derive(Debug, Default)]
pub(crate) struct CopyCount {
    pub(crate) bytes: u64,
    pub(crate) rows: u64,
}

/// Newlines in COPY data: rows, in the text and CSV formats.
pub(crate) fn memchr_count(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}

/// Longest value kept in a recording, in characters.
const RECORDED_VALUE_MAX: usize = 1024;

/// The result being streamed to the client: its column names and first rows, as the
/// client received them, for the recording.
pub(crate) struct ResultCapture {
    limit: usize,
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    total: u64,
}

impl ResultCapture {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            columns: Vec::new(),
            rows: Vec::new(),
            total: 0,
        }
    }

    pub(crate) fn start(&mut self, described: &[DescribedColumn]) {
        self.reset();
        self.columns = described.iter().map(|c| c.name.clone()).collect();
    }

    pub(crate) fn reset(&mut self) {
        self.columns.clear();
        self.rows.clear();
        self.total = 0;
    }

    /// Counts a row sent to the client and keeps it while under the limit.
    pub(crate) fn row(
        &mut self,
        raw: &Bytes,
        columns: &[ColumnMasking],
    ) -> Result<(), crate::PgProtocolError> {
        self.total += 1;
        if self.rows.len() >= self.limit {
            return Ok(());
        }
        let values = crate::results::data_row_values(raw)?;
        let row = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(|v| {
                    let binary = matches!(columns.get(i), Some(ColumnMasking::Binary { .. }));
                    render_value(&v, binary)
                })
            })
            .collect();
        self.rows.push(row);
        Ok(())
    }

    pub(crate) fn finish(&mut self, tag: String, duration_us: Option<u64>) -> TimelineEvent {
        let event = TimelineEvent::Result {
            rows_affected: rows_affected(&tag),
            tag,
            columns: std::mem::take(&mut self.columns),
            rows: std::mem::take(&mut self.rows),
            rows_total: self.total,
            duration_us,
        };
        self.total = 0;
        event
    }
}

/// The rows a command tag says were changed: `INSERT oid n`, `UPDATE n`,
/// `DELETE n`, `MERGE n`.
fn rows_affected(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    match words.next()? {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => words.next_back()?.parse().ok(),
        _ => None,
    }
}

/// A value as text for the recording: text as is, binary values as `\x` hex;
/// long values cut with `…`.
fn render_value(v: &[u8], binary: bool) -> String {
    let mut text = if binary {
        let mut t = String::from("\\x");
        crate::wire::push_hex(&mut t, &v[..v.len().min(RECORDED_VALUE_MAX / 2)]);
        t
    } else {
        String::from_utf8_lossy(v).into_owned()
    };
    if text.chars().count() > RECORDED_VALUE_MAX || (binary && v.len() > RECORDED_VALUE_MAX / 2) {
        text = text.chars().take(RECORDED_VALUE_MAX).collect();
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_say_how_many_rows_changed() {
        use super::rows_affected;
        assert_eq!(rows_affected("INSERT 0 5"), Some(5));
        assert_eq!(rows_affected("UPDATE 2"), Some(2));
        assert_eq!(rows_affected("DELETE 0"), Some(0));
        assert_eq!(rows_affected("MERGE 7"), Some(7));
        assert_eq!(rows_affected("SELECT 3"), None);
        assert_eq!(rows_affected("CREATE TABLE"), None);
    }
}

//! Aligned text tables for the CLI: each column as wide as its widest cell, nothing
//! cut, so long identities and full times stay readable and columns stay in line.

/// A table being filled, printed once complete.
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// A cell's text on one line: whitespace runs (newlines included) become one space and
/// other control characters are dropped, so a value cannot break the table's lines.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Columns whose cells are numbers, aligned to the right.
    pub fn numeric(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows
            .push(cells.into_iter().map(|c| cell(c.as_ref())).collect());
    }

    /// The table as lines: two spaces between columns, the last one unpadded.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let text = row.get(i).map_or("", String::as_str);
                let pad = width.saturating_sub(text.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(text);
                } else {
                    line.push_str(text);
                    if i + 1 < columns {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_nothing_is_cut() {
        let mut t = Table::new(&["ID", "SUBJECT", "N"]).numeric(&[2]);
        t.row(["1", "a-very-long-subject@example.com", "7"]);
        t.row(["22", "bob", "1234"]);
        t.row(["3", "two\nlines\u{1b}[31m", "5"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // The last column is numeric: every line ends at the same place.
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count()),
            "{text}"
        );
        // The second column starts at the same place on every line.
        assert!(
            lines
                .iter()
                .all(|l| l.chars().nth(3) == Some(' ') && l.chars().nth(4) != Some(' ')),
            "{text}"
        );
        assert!(lines[1].contains("a-very-long-subject@example.com"));
        assert!(lines[2].ends_with("1234") && lines[3].contains("two lines[31m"));
        assert!(!text.contains('\u{1b}'));
    }
}

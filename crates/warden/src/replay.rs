//! `warden replay`: prints a session's recording as a readable timeline, at once or
//! with its original pacing. SSH terminals (asciicast recordings) are played in
//! place: their output goes to the terminal as it was seen.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use warden_core::{Decision, TimelineEntry, TimelineEvent};
use warden_gateway::recording::Recording;
use warden_gateway::terminal::Cast;

/// Where a session's terminal recordings come from.
pub enum Terminals<'a> {
    /// The gateway's recordings directory (replay on the gateway's host).
    Local(&'a Path),
    /// Fetched from the API beforehand, by channel.
    Fetched(HashMap<u32, Result<Cast, String>>),
}

impl Terminals<'_> {
    pub fn get(&self, session: &str, channel: u32) -> Result<Cast, String> {
        match self {
            Terminals::Local(dir) => warden_gateway::terminal::read_cast(dir, session, channel)
                .map_err(|e| e.to_string()),
            Terminals::Fetched(casts) => casts
                .get(&channel)
                .cloned()
                .unwrap_or_else(|| Err(format!("terminal {channel} was not fetched"))),
        }
    }
}

/// Writes the recording to `out`; with `speed`, waits between entries as the session
/// did, `speed` times faster.
pub async fn replay(
    rec: &Recording,
    terminals: &Terminals<'_>,
    speed: Option<f64>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let h = &rec.header;
    writeln!(
        out,
        "session {}  {} `{}`  by {}  started {}",
        h.session, h.protocol, h.connection, h.subject, h.started_at
    )?;
    let mut last_t = 0u64;
    for entry in &rec.entries {
        if let Some(speed) = speed.filter(|s| *s > 0.0) {
            let gap = entry.t.saturating_sub(last_t) as f64 / speed;
            out.flush()?;
            tokio::time::sleep(Duration::from_micros(gap as u64)).await;
        }
        last_t = entry.t;
        write_entry(entry, out)?;
        if let TimelineEvent::Terminal { channel, .. } = &entry.event {
            match terminals.get(&h.session, *channel) {
                Ok(cast) => play_terminal(&cast, *channel, speed, out).await?,
                Err(e) => writeln!(out, "    ({e})")?,
            }
        }
    }
    if rec.truncated {
        writeln!(
            out,
            "(the recording ends mid-entry: the gateway stopped while writing it)"
        )?;
    }
    Ok(())
}

/// Writes one terminal's output, paced by `speed` when given. The terminal runs
/// alongside the rest of the session, so its own clock restarts at zero.
pub async fn play_terminal(
    cast: &Cast,
    channel: u32,
    speed: Option<f64>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    writeln!(out, "----- terminal {channel} -----")?;
    let mut last = 0.0f64;
    for (t, code, data) in &cast.events {
        if code != "o" {
            continue;
        }
        if let Some(speed) = speed.filter(|s| *s > 0.0) {
            let gap = ((t - last) / speed).clamp(0.0, 5.0);
            out.flush()?;
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        last = *t;
        out.write_all(data.as_bytes())?;
    }
    if cast.truncated {
        writeln!(
            out,
            "\r\n(the terminal recording ends early: the gateway stopped while writing it)"
        )?;
    }
    writeln!(out, "\r\n----- end of terminal {channel} -----")?;
    Ok(())
}

fn stamp(t: u64) -> String {
    format!("[{:>9.3}s]", t as f64 / 1e6)
}

fn took(duration_us: Option<u64>) -> String {
    duration_us.map_or(String::new(), |d| format!(", {:.1} ms", d as f64 / 1000.0))
}

fn write_entry(entry: &TimelineEntry, out: &mut impl Write) -> std::io::Result<()> {
    let at = stamp(entry.t);
    let pad = " ".repeat(at.chars().count() + 1);
    match &entry.event {
        TimelineEvent::Statement { via, sql, decision } => {
            let verdict = match decision {
                Decision::Allow => "allowed".to_string(),
                Decision::Deny { rule, reason } => format!("DENIED by {rule}: {reason}"),
                Decision::Review { rule } => format!("review required by {rule}"),
            };
            let mut lines = sql.lines();
            let first = match lines.next() {
                None if via == "shell" => "(interactive shell)",
                first => first.unwrap_or(""),
            };
            writeln!(out, "{at} > {first}")?;
            for l in lines {
                writeln!(out, "{pad}  {l}")?;
            }
            writeln!(out, "{pad}  ({via}, {verdict})")?;
        }
        TimelineEvent::Result {
            tag,
            columns,
            rows,
            rows_total,
            rows_affected,
            duration_us,
        } => {
            // Rows returned for a result with columns, else the rows it changed.
            let count = match (columns.is_empty(), rows_affected) {
                (false, _) => Some(format!("{rows_total} rows")),
                (true, Some(n)) => Some(format!("{n} rows affected")),
                (true, None) => None,
            };
            match (count, took(*duration_us)) {
                (Some(c), t) => writeln!(out, "{at} {tag} ({c}{t})")?,
                (None, t) if t.is_empty() => writeln!(out, "{at} {tag}")?,
                (None, t) => writeln!(out, "{at} {tag} ({})", t.trim_start_matches(", "))?,
            }
            if !columns.is_empty() {
                writeln!(out, "{pad}  {}", columns.join(" | "))?;
                for row in rows {
                    let cells: Vec<&str> =
                        row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                    writeln!(out, "{pad}  {}", cells.join(" | "))?;
                }
                let kept = rows.len() as u64;
                if *rows_total > kept {
                    writeln!(out, "{pad}  … {} more rows not recorded", rows_total - kept)?;
                }
            }
        }
        TimelineEvent::Error {
            code,
            message,
            duration_us,
        } => match duration_us {
            Some(d) => writeln!(
                out,
                "{at} ERROR {code}: {message} ({:.1} ms)",
                *d as f64 / 1000.0
            )?,
            None => writeln!(out, "{at} ERROR {code}: {message}")?,
        },
        TimelineEvent::Copy {
            direction,
            bytes,
            rows,
        } => writeln!(out, "{at} COPY {direction}: {rows} rows, {bytes} bytes")?,
        TimelineEvent::Terminal {
            channel, command, ..
        } => match command {
            Some(c) => writeln!(out, "{at} terminal {channel}: `{c}`")?,
            None => writeln!(out, "{at} terminal {channel}: interactive shell")?,
        },
        TimelineEvent::Activity {
            what,
            detail,
            decision,
        } => {
            let verdict = match decision {
                None | Some(Decision::Allow) => String::new(),
                Some(Decision::Deny { rule, reason }) => format!(" DENIED by {rule}: {reason}"),
                Some(Decision::Review { rule }) => format!(" review required by {rule}"),
            };
            writeln!(out, "{at} {what} {detail}{verdict}")?;
        }
        TimelineEvent::Response {
            status,
            bytes,
            duration_us,
        } => writeln!(
            out,
            "{at} answered {status}, {bytes} bytes{}",
            took(*duration_us)
        )?,
        TimelineEvent::Exit {
            channel,
            status,
            signal,
        } => match (status, signal) {
            (_, Some(sig)) => writeln!(out, "{at} channel {channel} killed by signal {sig}")?,
            (Some(code), None) => writeln!(out, "{at} channel {channel} exited with {code}")?,
            (None, None) => writeln!(out, "{at} channel {channel} closed")?,
        },
        TimelineEvent::End { reason } => match reason {
            Some(r) => writeln!(out, "{at} session ended: {r}")?,
            None => writeln!(out, "{at} session ended by the client")?,
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: TimelineEvent) -> String {
        let mut out = Vec::new();
        write_entry(
            &TimelineEntry {
                t: 1_500_000,
                event,
            },
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn result(tag: &str, columns: &[&str], total: u64, affected: Option<u64>) -> TimelineEvent {
        TimelineEvent::Result {
            tag: tag.into(),
            columns: columns.iter().map(|c| (*c).to_string()).collect(),
            rows: Vec::new(),
            rows_total: total,
            rows_affected: affected,
            duration_us: Some(2500),
        }
    }

    #[test]
    fn results_count_rows_returned_or_rows_changed() {
        assert!(
            line(result("DELETE 3", &[], 0, Some(3)))
                .contains("DELETE 3 (3 rows affected, 2.5 ms)")
        );
        assert!(line(result("SELECT 2", &["a"], 2, None)).contains("SELECT 2 (2 rows, 2.5 ms)"));
        assert!(line(result("CREATE TABLE", &[], 0, None)).contains("CREATE TABLE (2.5 ms)"));
        // RETURNING: rows come back, and the tag says how many changed.
        assert!(
            line(result("UPDATE 4", &["id"], 4, Some(4))).contains("UPDATE 4 (4 rows, 2.5 ms)")
        );
    }
}

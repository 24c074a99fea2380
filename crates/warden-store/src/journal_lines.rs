//! The journal's lines and how they are checked when read back.
//!
//! Each line carries its event, the journal run it was written in, its sequence
//! number in that run, and an HMAC over all three under a key derived from the master
//! key (which the journal's files never hold). Each segment starts with a header
//! line (run, segment number, first sequence number), MACed the same way. Reading a
//! segment back therefore finds every alteration (a MAC that does not verify),
//! forgery (no key), deletion inside the journal (a gap in the sequence) and
//! reordering (a sequence going backwards). What it cannot find by itself is the
//! removal of whole segments at the head or lines at the tail: that needs a record
//! kept elsewhere.

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use warden_core::Event;

use crate::util::hex;

/// The journal's MAC key.
pub(crate) struct LineKey(hmac::Key);

impl LineKey {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        hex(ctx.sign().as_ref())
    }

    fn verify(&self, parts: &[&[u8]], mac: &str) -> bool {
        let expected = self.tag(parts);
        expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// One event's line (ending in a newline), for tests that build journals.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn line(&self, run: &str, seq: u64, event_json: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(event_json.len() + 160);
        self.line_into(run, seq, event_json, &mut out);
        out
    }

    /// [`Self::line`], appended to `out` (the writer's batch: no line of its own).
    pub(crate) fn line_into(&self, run: &str, seq: u64, event_json: &[u8], out: &mut Vec<u8>) {
        use std::io::Write;
        let mac = self.tag(&[run.as_bytes(), &seq.to_be_bytes(), event_json]);
        out.extend_from_slice(b"{\"run\":\"");
        out.extend_from_slice(run.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = write!(out, "\",\"seq\":{seq},\"mac\":\"{mac}\",\"event\":");
        out.extend_from_slice(event_json);
        out.extend_from_slice(b"}\n");
    }

    /// A segment's header line.
    pub(crate) fn header(&self, run: &str, segment: u64, first_seq: u64) -> Vec<u8> {
        let mac = self.tag(&[
            run.as_bytes(),
            b"segment",
            &segment.to_be_bytes(),
            &first_seq.to_be_bytes(),
        ]);
        let mut line = serde_json::to_vec(&Header {
            run: run.to_string(),
            segment,
            first_seq,
            mac,
        })
        .unwrap_or_default();
        line.push(b'\n');
        line
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    run: String,
    segment: u64,
    first_seq: u64,
    mac: String,
}

#[derive(Deserialize)]
struct Line<'a> {
    run: String,
    seq: u64,
    mac: String,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// What a segment read back holds: its run and sequence span, its authentic events
/// in order, and what was wrong with it.
#[derive(Debug, Default)]
pub(crate) struct SegmentRead {
    pub run: Option<String>,
    pub first_seq: Option<u64>,
    /// The sequence number the next segment of the run must start at.
    pub next_seq: Option<u64>,
    /// With their sequence numbers.
    pub events: Vec<(u64, Event)>,
    pub problems: Vec<String>,
}

/// Reads one segment's bytes (up to its zero fill). A last line cut short by a crash
/// mid-write (no newline) was never acknowledged and is dropped without complaint.
pub(crate) fn read(key: &LineKey, number: u64, data: &[u8]) -> SegmentRead {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let data = &data[..end];
    let complete = match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => &[][..],
    };
    let mut out = SegmentRead::default();
    let mut lines = complete.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return out;
    };
    match serde_json::from_slice::<Header>(first) {
        Ok(h)
            if h.segment == number
                && key.verify(
                    &[
                        h.run.as_bytes(),
                        b"segment",
                        &h.segment.to_be_bytes(),
                        &h.first_seq.to_be_bytes(),
                    ],
                    &h.mac,
                ) =>
        {
            out.run = Some(h.run);
            out.first_seq = Some(h.first_seq);
        }
        _ => {
            out.problems.push(format!(
                "segment {number}: its header is missing or not authentic; none of its lines are trusted"
            ));
            return out;
        }
    }
    let run = out.run.clone().unwrap_or_default();
    let mut expected = out.first_seq.unwrap_or(1);
    for (i, raw) in lines.enumerate() {
        let Ok(line) = serde_json::from_slice::<Line<'_>>(raw) else {
            out.problems.push(format!(
                "segment {number}: line {} is not a journal line",
                i + 2
            ));
            continue;
        };
        let event_json = line.event.get().as_bytes();
        if line.run != run
            || !key.verify(
                &[line.run.as_bytes(), &line.seq.to_be_bytes(), event_json],
                &line.mac,
            )
        {
            out.problems.push(format!(
                "segment {number}: line {} (seq {}) fails its MAC: altered or forged",
                i + 2,
                line.seq
            ));
            continue;
        }
        if line.seq < expected {
            out.problems.push(format!(
                "segment {number}: seq {} comes after seq {}: lines were reordered or repeated",
                line.seq,
                expected - 1
            ));
            continue;
        }
        if line.seq > expected {
            out.problems.push(format!(
                "segment {number}: seq {} to {} are missing: lines were deleted",
                expected,
                line.seq - 1
            ));
        }
        match serde_json::from_slice::<Event>(event_json) {
            Ok(event) => out.events.push((line.seq, event)),
            Err(e) => out
                .problems
                .push(format!("segment {number}: seq {}: {e}", line.seq)),
        }
        expected = line.seq + 1;
    }
    out.next_seq = Some(expected);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segment(key: &LineKey, events: &[Event]) -> Vec<u8> {
        let mut data = key.header("run-1", 7, 1);
        for (i, e) in events.iter().enumerate() {
            data.extend(key.line("run-1", i as u64 + 1, &serde_json::to_vec(e).unwrap()));
        }
        data
    }

    #[test]
    fn intact_segments_read_back_and_every_kind_of_damage_is_named() {
        let key = LineKey::new(b"k");
        let events: Vec<Event> = (0..4)
            .map(|i| Event::new("test", json!({"i": i})))
            .collect();
        let data = segment(&key, &events);
        let intact = read(&key, 7, &data);
        assert!(intact.problems.is_empty(), "{:?}", intact.problems);
        assert_eq!(intact.events.len(), 4);
        assert_eq!(intact.next_seq, Some(5));

        // A torn last line is not damage.
        let mut torn = data.clone();
        torn.extend_from_slice(b"{\"run\":\"run-1\",\"se");
        assert!(read_ok(&key, &torn));

        let text = String::from_utf8(data.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let join = |ls: Vec<&str>| format!("{}\n", ls.join("\n")).into_bytes();
        // Deleted, reordered, altered, forged with another key.
        let deleted = join(vec![lines[0], lines[1], lines[3], lines[4]]);
        assert!(problems(&key, &deleted).contains("seq 2 to 2 are missing"));
        let reordered = join(vec![lines[0], lines[1], lines[3], lines[2], lines[4]]);
        assert!(problems(&key, &reordered).contains("reordered"));
        let altered = join(vec![
            lines[0],
            &lines[1].replace("\"i\":0", "\"i\":9"),
            lines[2],
        ]);
        assert!(problems(&key, &altered).contains("fails its MAC"));
        let other = LineKey::new(b"not the key");
        let forged_line = other.line("run-1", 2, &serde_json::to_vec(&events[1]).unwrap());
        let forged_text = String::from_utf8(forged_line).unwrap();
        let forged = join(vec![lines[0], lines[1], forged_text.trim_end(), lines[3]]);
        assert!(problems(&key, &forged).contains("fails its MAC"));
        let headless = join(vec![lines[1], lines[2]]);
        assert!(problems(&key, &headless).contains("header"));
        assert!(read(&key, 7, &headless).events.is_empty());
    }

    fn read_ok(key: &LineKey, data: &[u8]) -> bool {
        read(key, 7, data).problems.is_empty()
    }

    fn problems(key: &LineKey, data: &[u8]) -> String {
        read(key, 7, data).problems.join("; ")
    }
}

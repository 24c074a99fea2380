//! One chained row per statement. A statement's outcome (`pg.outcome`, `ssh.outcome`,
//! ...) is journaled as its own line after the statement's event, and names it
//! (`payload.statement`, the statement event's id). When both are chained in the same
//! shipment, the outcome is folded into the statement's row as `payload.outcome`
//! instead of taking a row of its own: half the chain's work for a statement that
//! finishes within a shipment interval, which is nearly every one.
//!
//! Folding is done where every shipment passes, from memory or read back from the
//! journal after a crash, so events recovered from disk are folded too. An outcome
//! stays a row of its own, still naming its statement, when:
//! - its statement was chained in an earlier shipment (a long query, a shell);
//! - its statement already has an outcome (a simple query with several statements,
//!   a portal executed in parts);
//! - it names no statement (the proxy could not tell which one it answers);
//! - the named event is not a statement of the same session and protocol.

use std::collections::HashMap;

use uuid::Uuid;
use warden_core::Event;

/// The suffix of outcome event kinds.
const OUTCOME: &str = ".outcome";

/// `events` with each foldable outcome moved into its statement's payload; order is
/// otherwise kept.
pub(crate) fn fold_outcomes(events: Vec<Event>) -> Vec<Event> {
    if !events.iter().any(is_outcome) {
        return events;
    }
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    // Statements chained in this shipment that have no outcome yet, by event id.
    let mut open: HashMap<Uuid, usize> = HashMap::new();
    for mut event in events {
        if is_outcome(&event) {
            let named = event
                .payload
                .get("statement")
                .and_then(serde_json::Value::as_str)
                .and_then(|s| s.parse::<Uuid>().ok());
            if let Some(id) = named
                && let Some(&i) = open.get(&id)
                && let Some(statement) = out.get_mut(i)
                && same_family(statement, &event)
                && let Some(body) = event.payload.as_object_mut()
            {
                open.remove(&id);
                body.remove("statement");
                // When it ended (an SSH exit has no duration of its own).
                body.insert(
                    "time".into(),
                    serde_json::json!(warden_core::timefmt::rfc3339(event.time)),
                );
                statement.payload["outcome"] = std::mem::take(&mut event.payload);
                continue;
            }
            out.push(event);
            continue;
        }
        if event.session_id.is_some() && event.payload.get("outcome").is_none() {
            open.insert(event.id, out.len());
        }
        out.push(event);
    }
    out
}

fn is_outcome(event: &Event) -> bool {
    event.kind.ends_with(OUTCOME)
}

/// Whether `outcome` may be folded into `statement`: same session, same protocol
/// (`pg.query` and `pg.outcome`), and the statement is an object to add to.
fn same_family(statement: &Event, outcome: &Event) -> bool {
    let family = |kind: &str| kind.split_once('.').map(|(f, _)| f.to_string());
    statement.session_id.is_some()
        && statement.session_id == outcome.session_id
        && !is_outcome(statement)
        && family(&statement.kind) == family(&outcome.kind)
        && statement.payload.is_object()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn statement(session: Uuid, sql: &str) -> Event {
        Event::new("pg.query", json!({"sql": sql, "via": "Query"})).in_session(session)
    }

    fn outcome(session: Uuid, of: Option<Uuid>, tag: &str) -> Event {
        let mut body = json!({"tag": tag, "rows": 1});
        if let Some(id) = of {
            body["statement"] = json!(id);
        }
        Event::new("pg.outcome", body).in_session(session)
    }

    #[test]
    fn an_outcome_folds_into_its_statement_once_within_a_shipment() {
        let s = Uuid::now_v7();
        let (a, b) = (statement(s, "SELECT 1"), statement(s, "SELECT 2"));
        let a_done = outcome(s, Some(a.id), "SELECT 1");
        let events = vec![
            a.clone(),
            b.clone(),
            // Out of order: b's outcome first, then a's, then a second one for a.
            outcome(s, Some(b.id), "SELECT 2"),
            a_done.clone(),
            outcome(s, Some(a.id), "SELECT 1 again"),
        ];
        let folded = fold_outcomes(events);
        assert_eq!(folded.len(), 3, "{folded:#?}");
        assert_eq!(folded[0].id, a.id);
        // Its payload less the link, plus when it ended.
        assert_eq!(
            folded[0].payload["outcome"],
            json!({"tag": "SELECT 1", "rows": 1,
                   "time": warden_core::timefmt::rfc3339(a_done.time)})
        );
        assert_eq!(folded[1].payload["outcome"]["tag"], "SELECT 2");
        // The second outcome of `a` stays a row, still naming it.
        assert_eq!(folded[2].kind, "pg.outcome");
        assert_eq!(folded[2].payload["statement"], json!(a.id));
        assert_eq!(folded[2].payload["tag"], "SELECT 1 again");
    }

    #[test]
    fn outcomes_that_cannot_be_joined_stay_rows_of_their_own() {
        let (s, other) = (Uuid::now_v7(), Uuid::now_v7());
        let earlier = Uuid::now_v7();
        let a = statement(s, "SELECT 1");
        let mut ssh = Event::new("ssh.exec", json!({"command": "id"})).in_session(s);
        ssh.id = Uuid::now_v7();
        let not_a_session = Event::new("connection.update", json!({}));
        let events = vec![
            // Before its statement (never so in a journal, but not folded backwards).
            outcome(s, Some(a.id), "early"),
            a.clone(),
            ssh.clone(),
            not_a_session.clone(),
            // Its statement was chained in an earlier shipment.
            outcome(s, Some(earlier), "late"),
            // Names no statement.
            outcome(s, None, "unknown"),
            // Another session's outcome naming this session's statement (which
            // still takes its own outcome afterwards).
            outcome(other, Some(a.id), "foreign"),
            // Another protocol's statement.
            outcome(s, Some(ssh.id), "cross"),
            // Not a session event.
            outcome(s, Some(not_a_session.id), "global"),
        ];
        let mut with_own = events.clone();
        let own = outcome(s, Some(a.id), "own");
        with_own.push(own.clone());
        let folded = fold_outcomes(with_own);
        let mut expected = events;
        expected[1].payload["outcome"] = json!({"tag": "own", "rows": 1,
            "time": warden_core::timefmt::rfc3339(own.time)});
        assert_eq!(folded, expected);
    }

    #[test]
    fn a_shipment_without_outcomes_is_returned_as_is() {
        let s = Uuid::now_v7();
        let events = vec![statement(s, "SELECT 1"), statement(s, "SELECT 2")];
        assert_eq!(fold_outcomes(events.clone()), events);
    }
}

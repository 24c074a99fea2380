//! The canonical text of a chained event — what its hash covers: the event's fields
//! plus `seq` and `prev_hash`, object keys sorted, no insignificant whitespace.
//! Written in one pass from the event's fields in sorted order, by hand (the hot path:
//! every chained event; see `warden_core::event_json`); a payload whose keys are not in
//! order goes through a `Value` tree.

use serde_json::Value;
use warden_core::{Decision, Event, EventIdentity};

use crate::Result;

/// The canonical text of a chained event.
pub fn canonical_body(seq: i64, prev_hash: &str, event: &Event) -> Result<String> {
    if !keys_sorted(&event.payload) {
        return canonical_via_value(seq, prev_hash, event);
    }
    // Every field named, so that one added to `Event` breaks the build here instead
    // of being left out of what the hash covers.
    let Event {
        id,
        time,
        session_id,
        identity,
        connection,
        kind,
        decision,
        payload,
    } = event;
    use warden_core::event_json::{
        write_int, write_opt_str, write_opt_uuid, write_str, write_strs, write_time, write_uuid,
        write_value,
    };
    let mut out = Vec::with_capacity(384);
    out.extend_from_slice(b"{\"connection\":");
    write_opt_str(&mut out, connection.as_deref());
    out.extend_from_slice(b",\"decision\":");
    match decision {
        None => out.extend_from_slice(b"null"),
        Some(Decision::Allow) => out.extend_from_slice(b"{\"outcome\":\"allow\"}"),
        Some(Decision::Deny { rule, reason }) => {
            out.extend_from_slice(b"{\"outcome\":\"deny\",\"reason\":");
            write_str(&mut out, reason);
            out.extend_from_slice(b",\"rule\":");
            write_str(&mut out, rule);
            out.push(b'}');
        }
        Some(Decision::Review { rule }) => {
            out.extend_from_slice(b"{\"outcome\":\"review\",\"rule\":");
            write_str(&mut out, rule);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"id\":");
    write_uuid(&mut out, id);
    out.extend_from_slice(b",\"identity\":");
    match identity {
        Some(EventIdentity { subject, groups }) => {
            out.extend_from_slice(b"{\"groups\":");
            write_strs(&mut out, groups);
            out.extend_from_slice(b",\"subject\":");
            write_str(&mut out, subject);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"kind\":");
    write_str(&mut out, kind);
    out.extend_from_slice(b",\"payload\":");
    write_value(&mut out, payload);
    out.extend_from_slice(b",\"prev_hash\":");
    write_str(&mut out, prev_hash);
    out.extend_from_slice(b",\"seq\":");
    write_int(&mut out, seq);
    out.extend_from_slice(b",\"session_id\":");
    write_opt_uuid(&mut out, session_id.as_ref());
    out.extend_from_slice(b",\"time\":");
    write_time(&mut out, *time).map_err(|e| crate::StoreError::AppendFailed(e.to_string()))?;
    out.push(b'}');
    // Every byte written is ASCII or copied from a `str`.
    String::from_utf8(out).map_err(|e| crate::StoreError::AppendFailed(e.to_string()))
}

/// The same text through a `Value` tree: the path for payloads whose keys are not in
/// order (a serde_json built with `preserve_order`), and the reference the fast path
/// is tested against.
fn canonical_via_value(seq: i64, prev_hash: &str, event: &Event) -> Result<String> {
    let mut value = serde_json::to_value(event)?;
    if let Value::Object(map) = &mut value {
        map.insert("seq".into(), Value::from(seq));
        map.insert("prev_hash".into(), Value::from(prev_hash));
    }
    // serde_json's default map keeps keys sorted, and its compact writer then
    // prints exactly the canonical text in one pass; a build whose maps keep
    // insertion order takes the slow path.
    if keys_sorted(&value) {
        return Ok(serde_json::to_string(&value)?);
    }
    let mut out = String::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

/// Whether every object in `value` lists its keys in sorted order.
fn keys_sorted(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.keys().is_sorted() && map.values().all(keys_sorted),
        Value::Array(items) => items.iter().all(keys_sorted),
        _ => true,
    }
}

/// Writes JSON with object keys in sorted order, whatever map type serde_json was
/// built with, so the hashed text is the same on every build.
fn write_canonical(value: &Value, out: &mut String) -> Result<()> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key)?);
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS_HASH;
    use serde_json::json;
    use uuid::Uuid;
    use warden_core::timefmt;

    #[test]
    fn canonical_body_sorts_keys_and_is_stable() {
        let mut e = Event::new(
            "test.kind",
            json!({"z": 1, "a": {"y": [2, {"d": 1, "c": 0}], "b": null}}),
        );
        e.id = Uuid::nil();
        e.time = timefmt::from_micros(0).unwrap_or_else(|| unreachable!());
        let body = canonical_body(7, GENESIS_HASH, &e).unwrap_or_default();
        assert!(
            body.starts_with("{\"connection\":null,\"decision\":null,\"id\":"),
            "{body}"
        );
        assert!(
            body.contains("\"payload\":{\"a\":{\"b\":null,\"y\":[2,{\"c\":0,\"d\":1}]},\"z\":1}"),
            "{body}"
        );
        assert!(body.contains("\"seq\":7"));
        assert_eq!(
            body,
            canonical_body(7, GENESIS_HASH, &e).unwrap_or_default()
        );
        assert_ne!(
            body,
            canonical_body(8, GENESIS_HASH, &e).unwrap_or_default()
        );
    }

    /// The one-pass text is byte for byte the `Value` path's, for every shape of
    /// event: hashes of events chained before it keep verifying.
    #[test]
    fn the_one_pass_text_is_the_value_paths() {
        let payloads = [
            json!({}),
            json!({"z": 1, "a": {"y": [2, {"d": 1.5, "c": "q\"uo\u{1}te\n"}], "b": null}}),
            json!({"sql": "SELECT 'é' -- \u{2028}", "rows": 3, "f": -0.0, "big": 1e300}),
        ];
        let decisions = [
            None,
            Some(Decision::Allow),
            Some(Decision::Deny {
                rule: "no-ddl".into(),
                reason: "DDL \"forbidden\"".into(),
            }),
            Some(Decision::Review {
                rule: "prod".into(),
            }),
        ];
        for payload in &payloads {
            for decision in &decisions {
                for with_identity in [false, true] {
                    let mut e = Event::new("pg.query", payload.clone());
                    e.decision = decision.clone();
                    if with_identity {
                        e.identity = Some(EventIdentity {
                            subject: "ana@example.com".into(),
                            groups: vec!["dba".into(), "on-call".into()],
                        });
                        e.connection = Some("billing".into());
                        e.session_id = Some(Uuid::now_v7());
                    }
                    e.time = timefmt::from_micros(1_733_000_000_123_456)
                        .unwrap_or_else(|| unreachable!());
                    assert_eq!(
                        canonical_body(42, GENESIS_HASH, &e).unwrap_or_default(),
                        canonical_via_value(42, GENESIS_HASH, &e).unwrap_or_default(),
                    );
                }
            }
        }
    }

    #[test]
    fn canonical_text_is_the_same_on_both_paths() {
        let value = json!({"z": 1, "a": {"y": [2, {"d": 1.5, "c": "q\"uo\u{1}te\n"}], "b": null},
                           "é": [true, false, -3, 1e300, "\u{2028}"]});
        assert!(keys_sorted(&value));
        let mut slow = String::new();
        write_canonical(&value, &mut slow).unwrap_or_default();
        assert_eq!(serde_json::to_string(&value).unwrap_or_default(), slow);
    }
}

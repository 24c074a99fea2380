#![allow(clippy::unwrap_used)]
use super::*;
use crate::{TimelineEntry, TimelineEvent};
use proptest::prelude::*;
use serde_json::json;

/// Strings with what serde_json escapes (quotes, backslashes, every control
/// character), DEL, and non-ASCII text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.:@-]{0,40}",
        proptest::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        proptest::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('\u{7f}'),
                Just('é'),
                (0u8..0x20).prop_map(char::from),
                Just('x')
            ],
            0..16
        )
        .prop_map(String::from_iter),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn time() -> impl Strategy<Value = OffsetDateTime> {
    // Years 0 to 9999, and whole seconds, milliseconds, microseconds and nanoseconds.
    let secs = -62_167_219_200i64..253_402_300_799i64;
    let nanos = prop_oneof![
        Just(0u32),
        (0u32..1000).prop_map(|ms| ms * 1_000_000),
        (0u32..1_000_000).prop_map(|us| us * 1000),
        0u32..1_000_000_000,
    ];
    (secs, nanos).prop_map(|(s, n)| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(s) * 1_000_000_000 + i128::from(n))
            .unwrap()
    })
}

fn decision() -> impl Strategy<Value = Option<Decision>> {
    prop_oneof![
        Just(None),
        Just(Some(Decision::Allow)),
        (text(), text()).prop_map(|(rule, reason)| Some(Decision::Deny { rule, reason })),
        text().prop_map(|rule| Some(Decision::Review { rule })),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        (any::<u128>(), time(), proptest::option::of(any::<u128>())),
        proptest::option::of((text(), proptest::collection::vec(text(), 0..4))),
        (proptest::option::of(text()), text(), decision(), value()),
    )
        .prop_map(
            |((id, time, session), identity, (connection, kind, decision, payload))| Event {
                id: uuid::Uuid::from_u128(id),
                time,
                session_id: session.map(uuid::Uuid::from_u128),
                identity: identity.map(|(subject, groups)| EventIdentity { subject, groups }),
                connection,
                kind,
                decision,
                payload,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn writes_what_serde_json_writes(event in event()) {
        prop_assert_eq!(
            String::from_utf8(event.to_json().unwrap()).unwrap(),
            serde_json::to_string(&event).unwrap()
        );
    }

    #[test]
    fn times_as_serde_writes_them(t in time()) {
        let mut out = Vec::new();
        write_time(&mut out, t).unwrap();
        prop_assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&t.format(&Rfc3339).unwrap()).unwrap()
        );
    }
}

#[test]
fn a_statement_and_its_outcome() {
    let statement = Event::new(
        "pg.query",
        json!({"sql": "SELECT 1 WHERE a = 'x\"y'\n", "via": "Query"}),
    )
    .with_decision(Decision::Allow)
    .in_session(uuid::Uuid::now_v7())
    .on_connection("billing");
    let outcome = Event::new(
        "pg.outcome",
        json!({"tag": "SELECT 1", "rows": 1, "rows_affected": null, "duration_us": 180, "ratio": 0.25}),
    );
    for e in [statement, outcome] {
        assert_eq!(e.to_json().unwrap(), serde_json::to_vec(&e).unwrap());
        let back: Event = serde_json::from_slice(&e.to_json().unwrap()).unwrap();
        assert_eq!(back, e);
    }
}

#[test]
fn a_time_with_an_offset_goes_through_time_itself() {
    let t = OffsetDateTime::from_unix_timestamp(1_700_000_000)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
    let mut out = Vec::new();
    write_time(&mut out, t).unwrap();
    assert_eq!(
        out,
        serde_json::to_vec(&t.format(&Rfc3339).unwrap()).unwrap()
    );
}

#[test]
fn a_time_without_an_rfc3339_form_fails_as_with_serde() {
    let mut e = Event::new("test.far", json!({}));
    e.time = time::macros::datetime!(-0001-01-01 0:00 UTC);
    assert!(serde_json::to_vec(&e).is_err());
    assert!(e.to_json().is_err());
    let mut out = b"kept".to_vec();
    assert!(e.write_json(&mut out).is_err());
    assert_eq!(out, b"kept");
}

fn timeline_event() -> impl Strategy<Value = TimelineEvent> {
    let decided = decision().prop_map(|d| d.unwrap_or(Decision::Allow));
    let cells = proptest::collection::vec(proptest::option::of(text()), 0..4);
    prop_oneof![
        (text(), text(), decided).prop_map(|(via, sql, decision)| TimelineEvent::Statement {
            via,
            sql,
            decision
        }),
        (
            text(),
            proptest::collection::vec(text(), 0..4),
            proptest::collection::vec(cells, 0..4),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(tag, columns, rows, rows_total, rows_affected, duration_us)| {
                    TimelineEvent::Result {
                        tag,
                        columns,
                        rows,
                        rows_total,
                        rows_affected,
                        duration_us,
                    }
                }
            ),
        (text(), text(), proptest::option::of(any::<u64>())).prop_map(
            |(code, message, duration_us)| TimelineEvent::Error {
                code,
                message,
                duration_us
            }
        ),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(direction, bytes, rows)| {
            TimelineEvent::Copy {
                direction,
                bytes,
                rows,
            }
        }),
        (
            value(),
            proptest::option::of(decision().prop_map(|d| d.unwrap_or(Decision::Allow)))
        )
            .prop_map(|(detail, decision)| TimelineEvent::Activity {
                what: "forward".into(),
                detail,
                decision
            }),
        proptest::option::of(text()).prop_map(|reason| TimelineEvent::End { reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn timeline_entries_as_serde_json_writes_them(t in any::<u64>(), event in timeline_event()) {
        let entry = TimelineEntry { t, event };
        prop_assert_eq!(
            String::from_utf8(entry.to_json().unwrap()).unwrap(),
            serde_json::to_string(&entry).unwrap()
        );
    }
}

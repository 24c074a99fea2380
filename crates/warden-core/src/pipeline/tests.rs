//! The admission path's outcomes and their order, on in-memory sinks: the same table
//! the protocol conformance tests run through real clients.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::testing::{MemorySink, MemoryTimeline, ReviewScript, SinkEvent};
use crate::{
    Action, Admission, BackendTarget, ClientWatch, ColumnPlan, ColumnRef, Command, Decision,
    DenialCause, EndReason, Guard, Masked, Masker, SessionEnd, SessionHandle, TimelineEvent,
    Unwatched,
};

/// Allows `SELECT`, holds `DELETE` for review, denies the rest.
struct Rules;
impl Guard for Rules {
    fn decide(&self, action: &Action<'_>) -> Decision {
        match action.text() {
            t if t.starts_with("SELECT") => Decision::Allow,
            t if t.starts_with("DELETE") => Decision::Review {
                rule: "hold-deletes".into(),
            },
            _ => Decision::Deny {
                rule: "only-reads".into(),
                reason: "not a read".into(),
            },
        }
    }
}

struct NoMasking;
impl Masker for NoMasking {
    fn plan(&self, _: &ColumnRef<'_>) -> ColumnPlan {
        ColumnPlan::Skip
    }
    fn mask(&self, _: ColumnPlan, _: &[u8]) -> Masked {
        Masked::Unchanged
    }
    fn is_active(&self) -> bool {
        false
    }
}

fn session(reviews: ReviewScript) -> (SessionHandle, Arc<MemorySink>, Arc<MemoryTimeline>) {
    let sink = Arc::new(MemorySink::default());
    *sink.reviews.lock().unwrap() = reviews;
    let timeline = Arc::new(MemoryTimeline::new(2));
    let target = BackendTarget {
        addr: "db:5432".into(),
        user: "app".into(),
        database: "app".into(),
        secret: None,
        secret_kind: None,
        ssh: Default::default(),
        tls: Default::default(),
        http: Default::default(),
    };
    let handle = sink.open(
        target,
        Arc::new(Rules),
        Arc::new(NoMasking),
        timeline.clone(),
        SessionEnd::never(),
    );
    (handle, sink, timeline)
}

fn sql(text: &str) -> Command<'_> {
    Command::new(
        Action::Sql {
            dialect: crate::SqlDialect::Postgres,
            text,
        },
        "Query",
    )
}

/// A client that leaves as soon as its statement is held.
struct Leaves {
    told: Vec<String>,
}
impl ClientWatch for Leaves {
    async fn held(&mut self, notice: &str) {
        self.told.push(notice.to_string());
    }
    async fn gone(&mut self) {}
}

fn kinds(sink: &MemorySink) -> Vec<&'static str> {
    sink.events()
        .iter()
        .map(|e| match e {
            SinkEvent::Audit(_) => "audit",
            SinkEvent::Note(_) => "note",
            SinkEvent::ReviewHeld(_) => "held",
            SinkEvent::ReviewAbandoned(_) => "abandoned",
            SinkEvent::Closed(_) => "closed",
        })
        .collect()
}

#[tokio::test]
async fn allowed_and_denied_actions_are_audited_then_recorded() {
    let (s, sink, timeline) = session(ReviewScript::Unavailable);
    assert_eq!(
        s.admit(sql("SELECT 1"), &mut Unwatched).await,
        Admission::Admitted { review: None }
    );
    let denied = s.admit(sql("DROP TABLE t"), &mut Unwatched).await;
    assert!(
        matches!(denied, Admission::Denied(d) if d.cause == DenialCause::Policy && d.rule == "only-reads")
    );
    assert_eq!(kinds(&sink), ["audit", "audit"]);
    let recorded: Vec<Decision> = timeline
        .events()
        .into_iter()
        .filter_map(|e| match e {
            TimelineEvent::Statement { decision, .. } => Some(decision),
            _ => None,
        })
        .collect();
    assert!(matches!(
        recorded.as_slice(),
        [Decision::Allow, Decision::Deny { .. }]
    ));
}

#[tokio::test]
async fn reviews_end_as_their_reviewers_decide() {
    for (script, expect) in [
        (ReviewScript::Approve, None),
        (ReviewScript::Reject, Some(DenialCause::ReviewRejected)),
        (ReviewScript::Expire, Some(DenialCause::ReviewExpired)),
        (
            ReviewScript::Unavailable,
            Some(DenialCause::ReviewUnavailable),
        ),
    ] {
        let (s, sink, _) = session(script);
        let answer = s.admit(sql("DELETE FROM t"), &mut Unwatched).await;
        match (expect, answer) {
            (None, Admission::Admitted { review: Some(_) }) => {}
            (Some(cause), Admission::Denied(d)) => {
                assert_eq!(d.cause, cause, "{script:?}");
                assert_eq!(d.rule, "hold-deletes");
            }
            (e, a) => panic!("{script:?}: expected {e:?}, got {a:?}"),
        }
        let order = kinds(&sink);
        if script == ReviewScript::Unavailable {
            assert_eq!(order, ["audit"]);
        } else {
            // Held first, audited with its outcome after the decision.
            assert_eq!(order, ["held", "audit"], "{script:?}");
        }
        let audited = sink.audited();
        assert_eq!(audited[0].review.is_some(), script == ReviewScript::Approve);
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_held_ends_the_session_and_abandons_the_review() {
    let (s, sink, _) = session(ReviewScript::Never);
    let mut client = Leaves { told: Vec::new() };
    let answer = s.admit(sql("DELETE FROM t"), &mut client).await;
    assert_eq!(answer, Admission::End(EndReason::ClientGone));
    assert_eq!(client.told.len(), 1, "told where to approve");
    assert_eq!(kinds(&sink), ["held", "abandoned", "audit"]);
    assert!(matches!(sink.audited()[0].decision, Decision::Deny { .. }));
    s.close(None).await;
    // The session's own reason wins over the client's "quit".
    assert_eq!(
        sink.events().last(),
        Some(&SinkEvent::Closed(Some(EndReason::ClientGone)))
    );
}

#[tokio::test]
async fn an_unwritable_audit_refuses_and_an_unwritable_recording_ends() {
    let (s, sink, timeline) = session(ReviewScript::Unavailable);
    sink.audit_down.store(true, Ordering::SeqCst);
    let answer = s.admit(sql("SELECT 1"), &mut Unwatched).await;
    assert!(matches!(answer, Admission::Denied(d) if d.cause == DenialCause::AuditUnavailable));
    // A denial stays a denial (for its own reason) when its event cannot be written.
    let answer = s.admit(sql("DROP TABLE t"), &mut Unwatched).await;
    assert!(matches!(answer, Admission::Denied(d) if d.cause == DenialCause::Policy));
    sink.audit_down.store(false, Ordering::SeqCst);
    timeline.down.store(true, Ordering::SeqCst);
    let answer = s.admit(sql("SELECT 1"), &mut Unwatched).await;
    assert!(matches!(answer, Admission::End(EndReason::Recording(_))));
    // Audited before the recording failed: the event says what was decided.
    assert_eq!(kinds(&sink), ["audit"]);
}

#[tokio::test]
async fn a_dropped_handle_closes_its_session() {
    let (s, sink, _) = session(ReviewScript::Unavailable);
    drop(s);
    for _ in 0..100 {
        if sink
            .events()
            .iter()
            .any(|e| matches!(e, SinkEvent::Closed(_)))
        {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the session was not closed: {:?}", sink.events());
}

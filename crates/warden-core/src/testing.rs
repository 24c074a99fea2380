//! Test support shared by every protocol crate (feature `testing`): an in-memory
//! gateway side of a session ([`MemorySink`]) and timeline ([`MemoryTimeline`]),
//! each able to fail on demand, and reviews decided by a script. Protocol tests build
//! their hooks from these instead of each writing its own fake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::gate::{ReviewHold, ReviewOutcome, SessionEnd, Traffic};
use crate::{
    AuditEntry, AuditError, BackendTarget, BoxFuture, BoxedStream, Decision, DialError, Dialer,
    EndReason, Guard, Masker, RecordingError, SessionHandle, SessionParts, SessionRecorder,
    SessionSink, TerminalRecorder, TerminalSpec, TimelineEvent,
};

/// A session's timeline kept in memory; `down` makes every write fail.
pub struct MemoryTimeline {
    pub events: Mutex<Vec<TimelineEvent>>,
    /// Outcomes recorded with [`SessionRecorder::record_outcome`], with the audit
    /// event id each named (also in `events`).
    pub outcomes: Mutex<Vec<(Option<Uuid>, TimelineEvent)>>,
    pub down: AtomicBool,
    pub rows_per_result: usize,
}

impl MemoryTimeline {
    pub fn new(rows_per_result: usize) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            outcomes: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            rows_per_result,
        }
    }

    pub fn events(&self) -> Vec<TimelineEvent> {
        self.events.lock().unwrap().clone()
    }

    pub fn outcomes(&self) -> Vec<(Option<Uuid>, TimelineEvent)> {
        self.outcomes.lock().unwrap().clone()
    }
}

impl SessionRecorder for MemoryTimeline {
    fn record(&self, event: TimelineEvent) -> BoxFuture<'_, Result<(), RecordingError>> {
        let written = if self.down.load(Ordering::SeqCst) {
            Err(RecordingError("disk full".into()))
        } else {
            self.events.lock().unwrap().push(event);
            Ok(())
        };
        Box::pin(std::future::ready(written))
    }
    fn record_outcome(
        &self,
        statement: Option<Uuid>,
        event: TimelineEvent,
    ) -> BoxFuture<'_, Result<(), RecordingError>> {
        if !self.down.load(Ordering::SeqCst) {
            self.outcomes
                .lock()
                .unwrap()
                .push((statement, event.clone()));
        }
        self.record(event)
    }
    fn rows_per_result(&self) -> usize {
        self.rows_per_result
    }
}

/// One audit event as the memory sink keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    /// The event id (the command's).
    pub id: Uuid,
    pub text: String,
    pub via: String,
    pub decision: Decision,
    pub parameters: Option<Vec<Option<u32>>>,
    pub review: Option<String>,
}

/// How the memory sink answers review requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReviewScript {
    /// Reviews cannot be held.
    #[default]
    Unavailable,
    Approve,
    Reject,
    Expire,
    /// Held until the client leaves.
    Never,
}

/// Everything a session did, in order, as a test reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    Audit(Audited),
    Note(String),
    ReviewHeld(String),
    ReviewAbandoned(String),
    Closed(Option<EndReason>),
}

/// The gateway's side of sessions, in memory: keeps what they audit, note and how
/// they close; `audit_down` makes every audit write fail.
#[derive(Default)]
pub struct MemorySink {
    pub events: Mutex<Vec<SinkEvent>>,
    pub audit_down: AtomicBool,
    pub reviews: Mutex<ReviewScript>,
}

impl MemorySink {
    pub fn events(&self) -> Vec<SinkEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The audit events only.
    pub fn audited(&self) -> Vec<Audited> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SinkEvent::Audit(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn push(&self, e: SinkEvent) {
        self.events.lock().unwrap().push(e);
    }

    /// A session handle on this sink.
    pub fn open(
        self: &Arc<Self>,
        target: BackendTarget,
        guard: Arc<dyn Guard>,
        masker: Arc<dyn Masker>,
        recorder: Arc<dyn SessionRecorder>,
        ended: SessionEnd,
    ) -> SessionHandle {
        SessionHandle::new(SessionParts {
            id: Uuid::now_v7(),
            target,
            guard,
            masker,
            recorder,
            sink: self.clone(),
            dialer: Arc::new(DirectDialer),
            ended,
            verbatim_statements: false,
        })
    }
}

impl SessionSink for MemorySink {
    fn audit<'a>(&'a self, entry: AuditEntry<'a>) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            if self.audit_down.load(Ordering::SeqCst) {
                return Err(AuditError("store unavailable".into()));
            }
            self.push(SinkEvent::Audit(Audited {
                id: entry.id,
                text: entry.text.to_string(),
                via: entry.via.to_string(),
                decision: entry.decision.clone(),
                parameters: entry.parameters.map(<[_]>::to_vec),
                review: entry.review.map(str::to_string),
            }));
            Ok(())
        })
    }

    fn note(&self, kind: &'static str, _payload: serde_json::Value) {
        self.push(SinkEvent::Note(kind.to_string()));
    }

    fn request_review<'a>(
        &'a self,
        _command: &'a str,
        _rule: &'a str,
    ) -> BoxFuture<'a, Result<ReviewHold, String>> {
        Box::pin(async move {
            if *self.reviews.lock().unwrap() == ReviewScript::Unavailable {
                return Err("this gateway holds no reviews".into());
            }
            let id = Uuid::now_v7().to_string();
            self.push(SinkEvent::ReviewHeld(id.clone()));
            Ok(ReviewHold::Held {
                message: format!("held for review {id}"),
                id,
            })
        })
    }

    fn await_review<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ReviewOutcome> {
        Box::pin(async move {
            let id = id.to_string();
            let script = *self.reviews.lock().unwrap();
            match script {
                ReviewScript::Approve => ReviewOutcome::Approved { id },
                ReviewScript::Reject => ReviewOutcome::Rejected {
                    reason: format!("review {id} was rejected by bob"),
                    id,
                },
                ReviewScript::Expire | ReviewScript::Unavailable => ReviewOutcome::Expired {
                    reason: format!("review {id} timed out"),
                    id,
                },
                ReviewScript::Never => std::future::pending().await,
            }
        })
    }

    fn abandon_review(&self, id: &str) {
        self.push(SinkEvent::ReviewAbandoned(id.to_string()));
    }

    fn terminal(
        &self,
        _spec: TerminalSpec,
    ) -> BoxFuture<'_, Result<Arc<dyn TerminalRecorder>, RecordingError>> {
        Box::pin(std::future::ready(Ok(
            Arc::new(crate::NoRecording) as Arc<dyn TerminalRecorder>
        )))
    }

    fn pin_host_key<'a>(&'a self, _host_key: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn close<'a>(&'a self, reason: Option<&'a EndReason>, _traffic: Traffic) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.push(SinkEvent::Closed(reason.cloned())) })
    }
}

/// Dials backends directly, without a timeout (tests against local servers).
pub struct DirectDialer;

impl Dialer for DirectDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<BoxedStream, DialError>> {
        Box::pin(async move {
            let tcp =
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| DialError::Refused {
                        addr: addr.to_string(),
                        message: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(tcp) as BoxedStream)
        })
    }
}

/// The scenarios every protocol proxy must pass the same way (the conformance
/// test): each protocol's test runs them with its real client against its real
/// server, on a [`MemorySink`] and [`MemoryTimeline`], and checks what the client saw
/// and what the sink holds against [`Scenario::expected`].
pub mod conformance {
    use super::{MemorySink, MemoryTimeline, ReviewScript, SinkEvent};
    use crate::{Action, Decision, EndReason, Guard};
    use std::sync::atomic::Ordering;

    /// One thing that happens to one command.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Scenario {
        Allow,
        Deny,
        ReviewApproved,
        ReviewRejected,
        ReviewTimedOut,
        /// The client leaves while its command waits for review.
        ClientGoneDuringReview,
        AuditUnavailable,
        RecordingUnwritable,
    }

    /// What the client saw, in the protocol's terms mapped to one vocabulary.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Outcome {
        /// The command ran and its result came back.
        Ran,
        /// Refused by a rule or a reviewer: the protocol's policy error.
        Refused,
        /// Refused because the gateway could not audit it: the protocol's gateway
        /// fault; the session goes on.
        Unavailable,
        /// The session ended.
        Ended,
        /// The client left (nothing to see).
        Left,
    }

    /// What each scenario's command says, so [`ConformanceGuard`] decides it.
    pub const ALLOWED: &str = "allowed";
    pub const DENIED: &str = "denied";
    pub const HELD: &str = "held";

    impl Scenario {
        pub const ALL: [Scenario; 8] = [
            Scenario::Allow,
            Scenario::Deny,
            Scenario::ReviewApproved,
            Scenario::ReviewRejected,
            Scenario::ReviewTimedOut,
            Scenario::ClientGoneDuringReview,
            Scenario::AuditUnavailable,
            Scenario::RecordingUnwritable,
        ];

        /// The marker the command must contain.
        pub fn marker(self) -> &'static str {
            match self {
                Scenario::Allow | Scenario::AuditUnavailable | Scenario::RecordingUnwritable => {
                    ALLOWED
                }
                Scenario::Deny => DENIED,
                _ => HELD,
            }
        }

        /// Sets the sink and timeline up for the scenario (after the login, whose
        /// events are forgotten).
        pub fn arrange(self, sink: &MemorySink, timeline: &MemoryTimeline) {
            sink.events.lock().unwrap().clear();
            *sink.reviews.lock().unwrap() = match self {
                Scenario::ReviewApproved => ReviewScript::Approve,
                Scenario::ReviewRejected => ReviewScript::Reject,
                Scenario::ReviewTimedOut => ReviewScript::Expire,
                Scenario::ClientGoneDuringReview => ReviewScript::Never,
                _ => ReviewScript::Unavailable,
            };
            sink.audit_down
                .store(self == Scenario::AuditUnavailable, Ordering::SeqCst);
            timeline
                .down
                .store(self == Scenario::RecordingUnwritable, Ordering::SeqCst);
        }

        /// What the client sees, and what the sink holds for the command, in order.
        pub fn expected(self) -> (Outcome, &'static [&'static str]) {
            match self {
                Scenario::Allow => (Outcome::Ran, &["audit:allow"]),
                Scenario::Deny => (Outcome::Refused, &["audit:deny"]),
                Scenario::ReviewApproved => (Outcome::Ran, &["held", "audit:allow"]),
                Scenario::ReviewRejected | Scenario::ReviewTimedOut => {
                    (Outcome::Refused, &["held", "audit:deny"])
                }
                Scenario::ClientGoneDuringReview => (
                    Outcome::Left,
                    &["held", "abandoned", "audit:deny", "closed:client_gone"],
                ),
                Scenario::AuditUnavailable => (Outcome::Unavailable, &[]),
                Scenario::RecordingUnwritable => {
                    (Outcome::Ended, &["audit:allow", "closed:recording"])
                }
            }
        }
    }

    /// The sink's events as the scenarios name them.
    pub fn trace(sink: &MemorySink) -> Vec<String> {
        sink.events()
            .into_iter()
            .map(|e| match e {
                SinkEvent::Audit(a) => match a.decision {
                    Decision::Allow => "audit:allow".to_string(),
                    Decision::Deny { .. } => "audit:deny".to_string(),
                    Decision::Review { .. } => "audit:review".to_string(),
                },
                SinkEvent::Note(kind) => format!("note:{kind}"),
                SinkEvent::ReviewHeld(_) => "held".to_string(),
                SinkEvent::ReviewAbandoned(_) => "abandoned".to_string(),
                SinkEvent::Closed(None) => "closed".to_string(),
                SinkEvent::Closed(Some(r)) => format!("closed:{}", r.code()),
            })
            .collect()
    }

    /// Checks a scenario's run: what the client saw, and the sink's events for the
    /// command (for scenarios that end the session, wait for the close first).
    pub fn verify(scenario: Scenario, seen: Outcome, sink: &MemorySink) {
        let (outcome, events) = scenario.expected();
        assert_eq!(seen, outcome, "{scenario:?}: what the client saw");
        let trace = trace(sink);
        assert!(
            trace.len() >= events.len() && trace[..events.len()] == *events,
            "{scenario:?}: expected the events {events:?} first, got {trace:?}"
        );
    }

    /// Whether the sink shows the session closed.
    pub fn closed(sink: &MemorySink) -> bool {
        sink.events()
            .iter()
            .any(|e| matches!(e, SinkEvent::Closed(_)))
    }

    /// Whether the sink shows the session closed with `reason`.
    pub fn closed_with(sink: &MemorySink, reason: &EndReason) -> bool {
        sink.events()
            .iter()
            .any(|e| matches!(e, SinkEvent::Closed(Some(r)) if r == reason))
    }

    /// Decides by marker: `allowed` runs, `denied` is refused, `held` waits for
    /// review; anything else (the protocol's own chatter) runs.
    pub struct ConformanceGuard;

    impl Guard for ConformanceGuard {
        fn decide(&self, action: &Action<'_>) -> Decision {
            let text = action.text();
            if text.contains(HELD) {
                Decision::Review {
                    rule: "conformance-hold".into(),
                }
            } else if text.contains(DENIED) {
                Decision::Deny {
                    rule: "conformance-deny".into(),
                    reason: "the conformance test denies it".into(),
                }
            } else {
                Decision::Allow
            }
        }
    }
}

/// Waits (up to 10 s) until `probe` holds; panics naming `what` otherwise.
pub async fn eventually(what: &str, probe: impl Fn() -> bool) {
    for _ in 0..400 {
        if probe() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    #[allow(clippy::panic)]
    {
        panic!("timed out waiting for {what}");
    }
}

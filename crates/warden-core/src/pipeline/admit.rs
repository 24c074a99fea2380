//! The admission path, the same for every protocol: guard → review hold (watching
//! for the client to leave) → durable audit event → recording entry. A protocol
//! decodes an [`Action`], calls [`SessionHandle::admit`] and renders the answer.
//!
//! One meaning per failure: an audit event that cannot be written refuses the action
//! ([`DenialCause::AuditUnavailable`]); a recording entry that cannot be written ends
//! the session ([`EndReason::Recording`]); a client that leaves while its action waits
//! for review ends the session ([`EndReason::ClientGone`]) and its review is
//! abandoned, so an approval afterwards runs nothing.

use std::future::Future;

use uuid::Uuid;

use crate::gate::{ReviewHold, ReviewOutcome};
use crate::{Action, Decision, TimelineEvent};

use super::{AuditEntry, EndReason, SessionHandle};

/// An action a proxy asks to run, with what the audit event keeps of it.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    /// The id its audit event gets, minted with the command: the proxy passes it
    /// back with the action's outcome ([`SessionHandle::record_outcome`]), which is
    /// how the audit log joins the two.
    pub id: Uuid,
    pub action: Action<'a>,
    /// How it arrived, in the protocol's words (`Query`, `COM_QUERY`, `exec`, ...).
    pub via: &'static str,
    /// For executions of prepared statements: each parameter's byte length
    /// (`None`: NULL). The values themselves are not recorded.
    pub parameters: Option<Vec<Option<u32>>>,
    /// A decision made earlier for the same text (the `Parse` a `Bind` executes):
    /// the guard is not asked again.
    pub decided: Option<Decision>,
    /// Protocol detail kept with the event.
    pub detail: Option<serde_json::Value>,
}

impl<'a> Command<'a> {
    pub fn new(action: Action<'a>, via: &'static str) -> Self {
        Self {
            id: Uuid::now_v7(),
            action,
            via,
            parameters: None,
            decided: None,
            detail: None,
        }
    }

    /// Audited as event `id` (minted earlier, when the protocol must know it before
    /// the command is built).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    pub fn with_parameters(mut self, parameters: Vec<Option<u32>>) -> Self {
        self.parameters = Some(parameters);
        self
    }

    pub fn decided(mut self, decision: Decision) -> Self {
        self.decided = Some(decision);
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialCause {
    /// A guardrail (or a connection rule) denied it.
    Policy,
    /// A reviewer rejected it.
    ReviewRejected,
    /// Nobody decided its review in time.
    ReviewExpired,
    /// It needs a review that cannot be held.
    ReviewUnavailable,
    /// Its audit event cannot be written, so it must not run.
    AuditUnavailable,
}

/// A refused action: the rule and reason the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rule: String,
    pub reason: String,
    pub cause: DenialCause,
}

/// What the admission path answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Recorded: forward it. `review` names the approval that let it run.
    Admitted { review: Option<String> },
    /// Recorded as refused: answer the client with the protocol's error.
    Denied(Denial),
    /// The session must end.
    End(EndReason),
}

/// The protocol's side of a review hold: how the client is told, and how the proxy
/// notices that it left.
pub trait ClientWatch: Send {
    /// Tells the client its action waits for review; `notice` says where to approve.
    fn held(&mut self, notice: &str) -> impl Future<Output = ()> + Send;
    /// Resolves when the client has gone (its connection closed).
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// A client whose departure the proxy cannot watch while it waits and that is told
/// nothing (tests, internal callers).
pub struct Unwatched;

impl ClientWatch for Unwatched {
    async fn held(&mut self, _notice: &str) {}
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

impl SessionHandle {
    /// Runs `command` through the admission path; see the module documentation.
    pub async fn admit<C: ClientWatch>(&self, command: Command<'_>, client: &mut C) -> Admission {
        let Command {
            id,
            action,
            via,
            parameters,
            decided,
            detail,
        } = command;
        // Ended by the gateway (identity or grant revoked or expired) while this
        // arrived: nothing more runs, whatever the proxy has not noticed yet.
        if let Some(reason) = self.ended().reason() {
            return Admission::End(EndReason::Ended(reason));
        }
        // Decided on the text as sent; kept (audited, recorded, reviewed) masked.
        let mut decision = decided.unwrap_or_else(|| self.guard.decide(&action));
        let text = self.recorded_text(action.text());
        let mut cause = DenialCause::Policy;
        let mut review = None;
        let mut client_gone = false;
        if let Decision::Review { rule } = &decision {
            let rule = rule.clone();
            let held = self.hold(&text, &rule, client).await;
            match held {
                Ok(h) => {
                    decision = h.decision;
                    cause = h.cause;
                    review = h.review;
                    client_gone = h.client_gone;
                }
                Err(end) => return Admission::End(end),
            }
        }
        let audited = self
            .sink()
            .audit(AuditEntry {
                id,
                action: &action,
                text: &text,
                via,
                decision: &decision,
                parameters: parameters.as_deref(),
                review: review.as_deref(),
                detail: detail.as_ref(),
            })
            .await;
        // A denial stands whether or not its event could be written; an action
        // that cannot be audited does not run.
        if let (Err(e), Decision::Allow) = (&audited, &decision) {
            tracing::error!(session = %self.id(), error = %e, "audit write failed; action refused");
            decision = Decision::Deny {
                rule: "audit".into(),
                reason: format!("the audit log cannot record it ({e})"),
            };
            cause = DenialCause::AuditUnavailable;
        }
        let entry = if action.is_command() {
            TimelineEvent::Statement {
                via: via.to_string(),
                sql: text,
                decision: decision.clone(),
            }
        } else {
            TimelineEvent::Activity {
                what: via.to_string(),
                detail: detail.unwrap_or_else(|| serde_json::json!({"target": text})),
                decision: Some(decision.clone()),
            }
        };
        if let Err(end) = self.record(entry).await {
            return Admission::End(end);
        }
        if client_gone {
            return Admission::End(self.fail(EndReason::ClientGone));
        }
        match decision {
            Decision::Allow => Admission::Admitted { review },
            Decision::Deny { rule, reason } => Admission::Denied(Denial {
                rule,
                reason,
                cause,
            }),
            // A guard answers Review only for what a review decides; one left
            // undecided here is refused.
            Decision::Review { rule } => Admission::Denied(Denial {
                reason: format!("rule `{rule}` requires a review"),
                rule,
                cause: DenialCause::ReviewUnavailable,
            }),
        }
    }

    /// Holds an action for review until it is decided, or the client leaves.
    async fn hold<C: ClientWatch>(
        &self,
        text: &str,
        rule: &str,
        client: &mut C,
    ) -> Result<Held, EndReason> {
        let deny = |reason: String, cause| Held {
            decision: Decision::Deny {
                rule: rule.to_string(),
                reason,
            },
            cause,
            review: None,
            client_gone: false,
        };
        let (id, message) = match self.sink().request_review(text, rule).await {
            Ok(ReviewHold::PreApproved { id }) => {
                return Ok(Held {
                    decision: Decision::Allow,
                    cause: DenialCause::Policy,
                    review: Some(id),
                    client_gone: false,
                });
            }
            Ok(ReviewHold::Held { id, message }) => (id, message),
            Err(e) => {
                return Ok(deny(
                    format!("this needs a review, which cannot be held: {e}"),
                    DenialCause::ReviewUnavailable,
                ));
            }
        };
        client.held(&message).await;
        self.record(TimelineEvent::Activity {
            what: "review".into(),
            detail: serde_json::json!({"review": id, "message": message}),
            decision: Some(Decision::Review {
                rule: rule.to_string(),
            }),
        })
        .await?;
        // However the wait ends without a decision — the client left, the session
        // was ended, or the proxy dropped this future — the review is abandoned,
        // so an approval afterwards cannot claim the command runs.
        let mut pending = PendingReview {
            sink: self.sink(),
            id: &id,
            decided: false,
        };
        let mut ended = self.ended();
        let outcome = tokio::select! {
            outcome = self.sink().await_review(&id) => outcome,
            reason = ended.wait() => return Err(EndReason::Ended(reason)),
            () = client.gone() => {
                let mut held = deny(
                    "the client left while it waited for review".into(),
                    DenialCause::ReviewRejected,
                );
                held.client_gone = true;
                return Ok(held);
            }
        };
        pending.decided = true;
        drop(pending);
        let cause = match &outcome {
            ReviewOutcome::Approved { .. } => DenialCause::Policy,
            ReviewOutcome::Rejected { .. } => DenialCause::ReviewRejected,
            ReviewOutcome::Expired { .. } => DenialCause::ReviewExpired,
        };
        let approved = matches!(outcome, ReviewOutcome::Approved { .. });
        Ok(Held {
            decision: outcome.decision(rule),
            cause,
            review: approved.then_some(id),
            client_gone: false,
        })
    }
}

/// A review the admission path waits on; abandoned when dropped undecided.
struct PendingReview<'a> {
    sink: &'a dyn super::SessionSink,
    id: &'a str,
    decided: bool,
}

impl Drop for PendingReview<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.sink.abandon_review(self.id);
        }
    }
}

/// How a review hold ended.
struct Held {
    decision: Decision,
    cause: DenialCause,
    review: Option<String>,
    client_gone: bool,
}

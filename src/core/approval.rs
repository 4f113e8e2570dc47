//! Approvals: the rules for a human decision on a plan that waits in `awaiting_approval`.
//!
//! Pure: [`decide`] checks a decision against the fault's request and records it on the fault;
//! the store runs it atomically and the engine, woken afterwards, acts on the outcome (approved
//! → patching, rejected → failed `rejected`, expired → failed `approval_expired`).

use crate::core::fault::{Decision, Fault, FaultState, Timestamp};

/// Why a decision was refused. Nothing is recorded in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionError {
    /// The fault is not waiting for approval (never was, or already moved on).
    #[error("fault {id} is not awaiting approval (it is {state})")]
    NotWaiting { id: String, state: &'static str },
    /// The request expired before this decision.
    #[error("the approval request of fault {0} has expired")]
    Expired(String),
    /// Someone already rejected it, or enough people already approved it.
    #[error("the approval request of fault {0} is already decided")]
    AlreadyDecided(String),
    /// This person already decided on it.
    #[error("`{0}` has already decided on this request")]
    AlreadyDecidedBy(String),
    /// The policy forbids the patch's author to approve it.
    #[error("`{0}` wrote this patch, and the policy forbids its author to approve it")]
    AuthorMayNotApprove(String),
    /// The decision is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Longest name of who decides or operates, in characters (the API's schema says the same).
const MAX_ACTOR_CHARS: usize = 128;
/// Longest comment on a decision, in characters.
const MAX_COMMENT_CHARS: usize = 4096;

/// Whether `by` names who decides or operates: 1-128 characters once trimmed (the rule for
/// approvals, breaker operations and rollbacks alike).
pub fn is_actor_name(by: &str) -> bool {
    let by = by.trim();
    !by.is_empty() && by.chars().count() <= MAX_ACTOR_CHARS
}

/// Records `decision` on `fault`'s approval request; returns the history line for it.
pub fn decide(
    fault: &mut Fault,
    decision: Decision,
    now: Timestamp,
) -> Result<String, DecisionError> {
    let by = decision.by.trim();
    if !is_actor_name(by) {
        return Err(DecisionError::Invalid(
            "`by` must name who decides (1-128 characters)".into(),
        ));
    }
    if decision.comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(DecisionError::Invalid(
            "`comment` is longer than 4096 characters".into(),
        ));
    }
    let id = fault.id.clone();
    let state = fault.state;
    let request = match (&mut fault.run, state) {
        (Some(run), FaultState::AwaitingApproval) => run.approval.as_mut(),
        _ => None,
    };
    let Some(request) = request else {
        return Err(DecisionError::NotWaiting {
            id,
            state: state.name(),
        });
    };
    if request.granted() || request.rejected_by().is_some() {
        return Err(DecisionError::AlreadyDecided(id));
    }
    if request.expired(now) {
        return Err(DecisionError::Expired(id));
    }
    if request.decisions.iter().any(|d| d.by == by) {
        return Err(DecisionError::AlreadyDecidedBy(by.to_owned()));
    }
    if decision.approve && !request.author_may_approve && by == request.patch_author {
        return Err(DecisionError::AuthorMayNotApprove(by.to_owned()));
    }
    let verb = if decision.approve {
        "approved"
    } else {
        "rejected"
    };
    let comment = if decision.comment.is_empty() {
        String::new()
    } else {
        format!(": {}", decision.comment)
    };
    request.decisions.push(Decision {
        by: by.to_owned(),
        at: now,
        ..decision
    });
    let tally = if request.decisions.last().is_some_and(|d| d.approve) {
        format!(" ({} of {} approvals)", request.approvers(), request.quorum)
    } else {
        String::new()
    };
    Ok(format!("{verb} by {by}{tally}{comment}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fault::{ApprovalRequest, Report, Run, Source};

    fn waiting(quorum: u32, author_may_approve: bool) -> Fault {
        let mut fault = Fault::new(
            "F1".into(),
            Report::sample("web", "drift", &[]),
            Source::Api,
            Timestamp(0),
        );
        fault.state = FaultState::AwaitingApproval;
        let policy: crate::core::policy::Policy = toml::from_str(
            "name = \"p\"\n[match]\napp = \"web\"\n[patch]\nname = \"x\"\n[verify]\ncommand = [\"true\"]\n",
        )
        .unwrap();
        fault.run = Some(Run {
            attempt: 1,
            policy: "p".into(),
            patch_name: "x".into(),
            patch_version: "1".into(),
            patch_hash: "h".into(),
            plan: vec![],
            policy_hash: String::new(),
            policy_snapshot: Some(serde_json::to_value(policy).unwrap()),
            approval: Some(ApprovalRequest {
                reason: "production".into(),
                requested_at: Timestamp(0),
                expires_at: Timestamp(1000),
                quorum,
                patch_author: "mallory".into(),
                author_may_approve,
                patch_confidence: 0.9,
                decisions: vec![],
            }),
            actions_started: 0,
            actions_done: 0,
            undo: vec![],
            budget: None,
        });
        fault
    }

    fn vote(by: &str, approve: bool) -> Decision {
        Decision {
            by: by.into(),
            approve,
            comment: String::new(),
            at: Timestamp(0),
        }
    }

    fn request(fault: &Fault) -> &ApprovalRequest {
        fault.run.as_ref().unwrap().approval.as_ref().unwrap()
    }

    #[test]
    fn a_quorum_of_distinct_approvers_grants() {
        let mut fault = waiting(2, true);
        assert_eq!(
            decide(&mut fault, vote("alice", true), Timestamp(1)),
            Ok("approved by alice (1 of 2 approvals)".into())
        );
        assert!(!request(&fault).granted());
        assert_eq!(
            decide(&mut fault, vote("alice", true), Timestamp(2)),
            Err(DecisionError::AlreadyDecidedBy("alice".into()))
        );
        assert!(decide(&mut fault, vote("bob", true), Timestamp(3)).is_ok());
        assert!(request(&fault).granted());
        assert_eq!(
            decide(&mut fault, vote("carol", true), Timestamp(4)),
            Err(DecisionError::AlreadyDecided("F1".into()))
        );
    }

    #[test]
    fn a_rejection_ends_the_request() {
        let mut fault = waiting(2, true);
        let comment = Decision {
            comment: "not at 3am".into(),
            ..vote("alice", false)
        };
        assert_eq!(
            decide(&mut fault, comment, Timestamp(1)),
            Ok("rejected by alice: not at 3am".into())
        );
        assert_eq!(request(&fault).rejected_by().unwrap().by, "alice");
        assert!(matches!(
            decide(&mut fault, vote("bob", true), Timestamp(2)),
            Err(DecisionError::AlreadyDecided(_))
        ));
    }

    #[test]
    fn expired_foreign_and_author_decisions_are_refused() {
        let mut fault = waiting(1, false);
        assert_eq!(
            decide(&mut fault, vote("alice", true), Timestamp(1000)),
            Err(DecisionError::Expired("F1".into()))
        );
        assert_eq!(
            decide(&mut fault, vote("mallory", true), Timestamp(1)),
            Err(DecisionError::AuthorMayNotApprove("mallory".into()))
        );
        assert!(
            decide(&mut fault, vote("mallory", false), Timestamp(1)).is_ok(),
            "the author may still reject"
        );
        let mut healed = waiting(1, true);
        healed.state = FaultState::Healed;
        assert!(matches!(
            decide(&mut healed, vote("alice", true), Timestamp(1)),
            Err(DecisionError::NotWaiting { .. })
        ));
        assert!(matches!(
            decide(&mut waiting(1, true), vote(" ", true), Timestamp(1)),
            Err(DecisionError::Invalid(_))
        ));
    }

    #[test]
    fn names_and_comments_are_limited_in_characters_not_bytes() {
        // 128 two-byte characters are a name; 129 are not. Likewise a comment of 4096.
        assert!(
            decide(
                &mut waiting(1, true),
                vote(&"é".repeat(128), true),
                Timestamp(1)
            )
            .is_ok()
        );
        assert!(matches!(
            decide(
                &mut waiting(1, true),
                vote(&"é".repeat(129), true),
                Timestamp(1)
            ),
            Err(DecisionError::Invalid(_))
        ));
        for (chars, fits) in [(4096, true), (4097, false)] {
            let mut decision = vote("alice", true);
            decision.comment = "é".repeat(chars);
            let outcome = decide(&mut waiting(1, true), decision, Timestamp(1));
            assert_eq!(outcome.is_ok(), fits, "{chars} characters: {outcome:?}");
        }
    }
}

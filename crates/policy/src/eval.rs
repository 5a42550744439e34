//! Evaluation: a call → a [`Decision`], in the order of POLICY.md ("Evaluation, in order").
//!
//! The engine is pure, so it stops where state begins: it returns the limits to reserve
//! (step 5) and the approval to wait for (step 6) inside [`Decision::Proceed`]; the gateway does
//! both, then forwards (step 7).

use std::time::Duration;

use serde_json::Value;

use crate::condition::Outcome;
use crate::policy::{Action, ChangedTools, DefaultAction, Limit, Policy, Rule};
use crate::window::{format_duration, format_window};

/// Reason of a hidden tool, and of a call to one.
pub const HIDDEN_REASON: &str = "tool not available";
/// Reason of a call to a tool without a rule under `"default": "deny"`.
pub const DEFAULT_DENY_REASON: &str = "denied by default policy";
/// Reason of a call to a changed tool under `"changed_tools": "deny"`.
pub const CHANGED_REASON: &str = "tool definition changed since the policy was published";
/// Reason of `"action": "deny"` without `reason`.
pub const ACTION_DENY_REASON: &str = "tool denied by policy";
/// Reason of a matched `deny_if` entry without `on_deny` (and a rule without `reason`).
pub const DENY_IF_REASON: &str = "call denied by a policy condition";

/// Pointer of the `changed_tools` decision (also when the field is absent: its default).
const CHANGED_POINTER: &str = "/changed_tools";
const DEFAULT_POINTER: &str = "/default";

/// One `tools/call` to decide.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `params.name`.
    pub tool: &'a str,
    /// `params.arguments` (`null` or `{}` when absent); condition paths resolve against it.
    pub arguments: &'a Value,
    /// The tool's definition differs from the one reviewed when this policy version was
    /// published. A tool that did not exist then is not "changed": it falls under `default`.
    pub changed: bool,
}

/// What the policy decided about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Step 1: the tool is hidden; the agent sees "tool not available".
    Hidden {
        /// `/hide/{i}` or `/changed_tools`.
        rule: String,
    },
    /// Steps 1–5: denied.
    Deny {
        /// The rule that denied (`/default`, `/tools/x`, `/tools/x/require/0`, ...).
        rule: String,
        /// Shown to the agent after `[POLICY DENIED] `.
        reason: String,
    },
    /// The policy lets the call through, subject to limits and approval.
    Proceed {
        /// The rule that allowed: `/tools/{key}`, or `/default`.
        rule: String,
        /// Reserve all together (step 5); if any is exhausted, reserve none: rate-limited.
        limits: Vec<LimitRequest>,
        /// Then, if present, wait for a person (step 6).
        approval: Option<ApprovalRequest>,
    },
}

/// The kind of a [`Decision`], for logs and the simulate API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// `Proceed` without approval.
    Allow,
    /// `Proceed` with approval.
    Approval,
    /// `Deny`.
    Deny,
    /// `Hidden`.
    Hidden,
}

impl DecisionKind {
    /// `"allow"`, `"approval"`, `"deny"`, `"hidden"` (the words of the simulate API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Approval => "approval",
            Self::Deny => "deny",
            Self::Hidden => "hidden",
        }
    }
}

impl Decision {
    /// The JSON pointer of the rule that decided.
    pub fn rule(&self) -> &str {
        match self {
            Self::Hidden { rule } | Self::Deny { rule, .. } | Self::Proceed { rule, .. } => rule,
        }
    }

    /// The kind of decision.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Self::Hidden { .. } => DecisionKind::Hidden,
            Self::Deny { .. } => DecisionKind::Deny,
            Self::Proceed { approval: None, .. } => DecisionKind::Allow,
            Self::Proceed {
                approval: Some(_), ..
            } => DecisionKind::Approval,
        }
    }

    /// Why the call is refused (`None` for `Proceed`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Hidden { .. } => Some(HIDDEN_REASON),
            Self::Deny { reason, .. } => Some(reason),
            Self::Proceed { .. } => None,
        }
    }

    /// The text the agent sees for a refused call: `[POLICY DENIED] <reason>` (`None` for
    /// `Proceed`).
    pub fn agent_text(&self) -> Option<String> {
        self.reason()
            .map(|reason| format!("[POLICY DENIED] {reason}"))
    }
}

/// Who shares a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One MCP session of one agent.
    Session,
    /// All sessions of one agent key (the default).
    Agent,
    /// Every agent together.
    Server,
}

impl Scope {
    /// `"session"`, `"agent"`, `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Agent => "agent",
            Self::Server => "server",
        }
    }
}

/// A limit the gateway must reserve before forwarding a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitRequest {
    /// The counter: `counter`, else `"calls"` for `all_tools.limits`, else the rule's key in
    /// `tools` (the tool name or glob).
    pub counter: String,
    /// At most this much per window.
    pub max: u64,
    /// The window.
    pub window: Duration,
    /// Who shares the counter.
    pub scope: Scope,
    /// How much this call adds: 1, or the value at `increment_from` (rounded up).
    pub increment: u64,
    /// The limit's pointer (`/all_tools/limits/0`, `/tools/x/rate_limit`, `/tools/x/limits/1`).
    pub rule: String,
}

impl LimitRequest {
    /// The counter's identity within one server's policy: `{scope}:{counter}`. Two limits with
    /// the same counter and scope have the same key and share their count, whatever their
    /// `max` and `window`. The caller prefixes org and server, and the agent id (scope `agent`)
    /// or session id (scope `session`).
    pub fn counter_key(&self) -> String {
        format!("{}:{}", self.scope.as_str(), self.counter)
    }

    /// The text the agent sees when this limit is exhausted:
    /// `[RATE LIMITED] <counter>: <max> per <window>; retry in <n>s`, with `n` rounded up and at
    /// least 1, and the window as [`format_window`] prints it.
    pub fn rate_limited_text(&self, retry_after: Duration) -> String {
        let secs = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
            .max(1);
        format!(
            "[RATE LIMITED] {}: {} per {}; retry in {secs}s",
            self.counter,
            self.max,
            format_window(self.window)
        )
    }
}

/// A person must approve the call before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApprovalRequest {
    /// `/tools/x/action` (`require_approval`) or `/tools/x/approve_if/{i}`.
    pub rule: String,
    /// How long the call waits (default 5 minutes, at most 24 hours).
    pub timeout: Duration,
    /// The matched `approve_if` entry's `reason`, for the approver.
    pub reason: Option<String>,
}

impl ApprovalRequest {
    /// `[APPROVAL DENIED] <note>` (or without the note).
    pub fn denied_text(note: Option<&str>) -> String {
        match note {
            Some(note) if !note.trim().is_empty() => format!("[APPROVAL DENIED] {note}"),
            _ => "[APPROVAL DENIED]".to_owned(),
        }
    }

    /// `[APPROVAL TIMED OUT] after <timeout>`, e.g. `after 5m`.
    pub fn timed_out_text(&self) -> String {
        format!(
            "[APPROVAL TIMED OUT] after {}",
            format_duration(self.timeout)
        )
    }
}

impl Policy {
    /// Step 1: whether `tool` is hidden, and by which rule: the first matching `hide` entry
    /// (`/hide/{i}`), else `/changed_tools` for a changed tool under `changed_tools: "hide"`.
    /// Hidden tools are removed from `tools/list`.
    pub fn is_hidden(&self, tool: &str, changed: bool) -> Option<String> {
        if let Some(index) = self.hide.find(tool) {
            return self.hide.pointers.get(index).cloned();
        }
        (changed && self.changed_tools == ChangedTools::Hide).then(|| CHANGED_POINTER.to_owned())
    }

    /// Whether the kind of decision for `tool` (allow, approval, deny, hidden) can depend on the
    /// call's argument values: conditions (`require`, `deny_if`, `approve_if`) or a limit whose
    /// increment is read from an argument. Replaying a call recorded without its values under
    /// such a rule cannot tell the outcome (the impact preview says "unknown").
    pub fn reads_argument_values(&self, tool: &str, changed: bool) -> bool {
        if self.is_hidden(tool, changed).is_some()
            || (changed && self.changed_tools == ChangedTools::Deny)
        {
            return false;
        }
        let reads_increment = |limits: &[Limit]| limits.iter().any(|l| l.increment_from.is_some());
        let all_tools = reads_increment(&self.all_tools_limits);
        match self.rules.find(tool) {
            None => self.default == DefaultAction::Allow && all_tools,
            Some(rule) if rule.action == Action::Deny => false,
            Some(rule) => {
                !rule.require.is_empty()
                    || !rule.deny_if.is_empty()
                    || (rule.action != Action::RequireApproval && !rule.approve_if.is_empty())
                    || all_tools
                    || reads_increment(&rule.limits)
            }
        }
    }

    /// Decides a call (steps 1–4 fully; steps 5 and 6 as requests in [`Decision::Proceed`]).
    pub fn evaluate(&self, call: &Call<'_>) -> Decision {
        // 1. Hidden; and changed tools under `changed_tools: "deny"`.
        if let Some(rule) = self.is_hidden(call.tool, call.changed) {
            return Decision::Hidden { rule };
        }
        if call.changed && self.changed_tools == ChangedTools::Deny {
            return deny(CHANGED_POINTER, CHANGED_REASON);
        }
        // 2. The rule, else the default.
        let Some(rule) = self.rules.find(call.tool) else {
            return match self.default {
                DefaultAction::Allow => self.proceed(DEFAULT_POINTER, None, call, None),
                DefaultAction::Deny => deny(DEFAULT_POINTER, DEFAULT_DENY_REASON),
            };
        };
        // 3. Denied outright.
        if rule.action == Action::Deny {
            return deny(
                &rule.pointer,
                rule.reason.as_deref().unwrap_or(ACTION_DENY_REASON),
            );
        }
        // 4. `require`, then `deny_if`. Indeterminate (missing, wrong type) fails closed.
        for (condition, pointer) in &rule.require {
            if condition.test(call.arguments) != Outcome::Holds {
                let reason = match &rule.reason {
                    Some(reason) => reason.clone(),
                    None => format!("required condition not met: {}", condition.explain()),
                };
                return Decision::Deny {
                    rule: pointer.clone(),
                    reason,
                };
            }
        }
        for entry in &rule.deny_if {
            if entry_matches(entry, call.arguments) {
                let reason = entry
                    .reason
                    .as_deref()
                    .or(rule.reason.as_deref())
                    .unwrap_or(DENY_IF_REASON);
                return deny(&entry.pointer, reason);
            }
        }
        // 6 (decided now, waited for after the limits): approval.
        let approval = if rule.action == Action::RequireApproval {
            Some(ApprovalRequest {
                rule: rule.action_pointer(),
                timeout: rule.approval_timeout,
                reason: None,
            })
        } else {
            rule.approve_if
                .iter()
                .find(|entry| entry_matches(entry, call.arguments))
                .map(|entry| ApprovalRequest {
                    rule: entry.pointer.clone(),
                    timeout: rule.approval_timeout,
                    reason: entry.reason.clone(),
                })
        };
        // 5. Limits.
        self.proceed(&rule.pointer, Some(rule), call, approval)
    }

    /// A `Proceed` with the limits of `all_tools` and of `rule`, or a `Deny` if an
    /// `increment_from` cannot be read.
    fn proceed(
        &self,
        pointer: &str,
        rule: Option<&Rule>,
        call: &Call<'_>,
        approval: Option<ApprovalRequest>,
    ) -> Decision {
        let rule_limits = rule.map_or(&[][..], |rule| &rule.limits);
        let mut limits = Vec::with_capacity(self.all_tools_limits.len() + rule_limits.len());
        for limit in self.all_tools_limits.iter().chain(rule_limits) {
            match limit_request(limit, call.arguments) {
                Ok(request) => limits.push(request),
                Err(decision) => return decision,
            }
        }
        Decision::Proceed {
            rule: pointer.to_owned(),
            limits,
            approval,
        }
    }
}

fn deny(rule: &str, reason: &str) -> Decision {
    Decision::Deny {
        rule: rule.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Every condition holds, or cannot be decided (fail closed).
fn entry_matches(entry: &crate::policy::Entry, arguments: &Value) -> bool {
    entry
        .conditions
        .iter()
        .all(|condition| condition.test(arguments) != Outcome::Fails)
}

fn limit_request(limit: &Limit, arguments: &Value) -> Result<LimitRequest, Decision> {
    let increment = match &limit.increment_from {
        None => 1,
        Some(path) => {
            let value = path.resolve(arguments);
            match value.and_then(increment) {
                Some(n) => n,
                None => {
                    return Err(Decision::Deny {
                        rule: limit.pointer.clone(),
                        reason: format!(
                            "`{}` must be a non-negative number: it is counted against the \
                             limit `{}`, got {}",
                            path.as_str(),
                            limit.counter,
                            value.map_or_else(|| "nothing".to_owned(), crate::describe)
                        ),
                    });
                }
            }
        }
    };
    Ok(LimitRequest {
        counter: limit.counter.clone(),
        max: limit.max,
        window: limit.window,
        scope: limit.scope,
        increment,
        rule: limit.pointer.clone(),
    })
}

/// A non-negative number, rounded up; saturates at `u64::MAX`.
fn increment(value: &Value) -> Option<u64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(n) = n.as_u64() {
        return Some(n);
    }
    let f = n.as_f64()?;
    if f.is_nan() || f < 0.0 {
        return None;
    }
    // `as` saturates for values above u64::MAX.
    Some(f.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_decision_reads_argument_values_only_through_conditions_or_increments() {
        let policy = Policy::from_value(&json!({
            "version": "1", "default": "allow", "hide": ["secret_*"],
            "tools": {
                "read_*": {"action": "allow"},
                "deploy": {"action": "allow", "deny_if": [{"conditions": [
                    {"path": "args.env", "op": "eq", "value": "prod"}]}]},
                "drop": {"action": "deny"},
                "pay": {"action": "require_approval", "approve_if": [{"conditions": [
                    {"path": "args.amount", "op": "gt", "value": 10}]}]},
                "refund": {"action": "allow", "approve_if": [{"conditions": [
                    {"path": "args.amount", "op": "gt", "value": 10}]}]},
                "send": {"action": "allow",
                         "limits": [{"max": 100, "window": "day", "increment_from": "args.count"}]}
            }
        }))
        .unwrap();
        for (tool, reads) in [
            ("read_file", false),
            ("unlisted", false),
            ("secret_x", false),
            ("drop", false),
            ("pay", false),
            ("deploy", true),
            ("refund", true),
            ("send", true),
        ] {
            assert_eq!(policy.reads_argument_values(tool, false), reads, "{tool}");
        }
    }

    #[test]
    fn increments_round_up_and_reject_negatives() {
        assert_eq!(increment(&json!(0)), Some(0));
        assert_eq!(increment(&json!(100)), Some(100));
        assert_eq!(increment(&json!(0.1)), Some(1));
        assert_eq!(increment(&json!(99.5)), Some(100));
        assert_eq!(increment(&json!(-0.0)), Some(0));
        assert_eq!(increment(&json!(1e300)), Some(u64::MAX));
        assert_eq!(increment(&json!(-1)), None);
        assert_eq!(increment(&json!(-0.5)), None);
        assert_eq!(increment(&json!("5")), None);
        assert_eq!(increment(&json!(null)), None);
    }

    fn limit(counter: &str, scope: Scope, window: u64) -> LimitRequest {
        LimitRequest {
            counter: counter.into(),
            max: 10,
            window: Duration::from_secs(window),
            scope,
            increment: 1,
            rule: "/tools/x/rate_limit".into(),
        }
    }

    #[test]
    fn counter_keys_depend_on_counter_and_scope_only() {
        let a = limit("calls", Scope::Agent, 60);
        let b = limit("calls", Scope::Agent, 3600);
        let c = limit("calls", Scope::Server, 60);
        let d = limit("other", Scope::Agent, 60);
        assert_eq!(a.counter_key(), "agent:calls");
        assert_eq!(a.counter_key(), b.counter_key());
        assert_ne!(a.counter_key(), c.counter_key());
        assert_ne!(a.counter_key(), d.counter_key());
        assert_eq!(limit("x", Scope::Session, 1).counter_key(), "session:x");
    }

    #[test]
    fn rate_limited_text() {
        let l = limit("search_logs", Scope::Agent, 60);
        assert_eq!(
            l.rate_limited_text(Duration::from_millis(41_200)),
            "[RATE LIMITED] search_logs: 10 per minute; retry in 42s"
        );
        assert_eq!(
            l.rate_limited_text(Duration::ZERO),
            "[RATE LIMITED] search_logs: 10 per minute; retry in 1s"
        );
        assert_eq!(
            limit("calls", Scope::Agent, 600).rate_limited_text(Duration::from_secs(7)),
            "[RATE LIMITED] calls: 10 per 10m; retry in 7s"
        );
    }

    #[test]
    fn approval_texts() {
        let request = ApprovalRequest {
            rule: "/tools/x/action".into(),
            timeout: Duration::from_secs(300),
            reason: None,
        };
        assert_eq!(request.timed_out_text(), "[APPROVAL TIMED OUT] after 5m");
        assert_eq!(
            ApprovalRequest::denied_text(Some("not today")),
            "[APPROVAL DENIED] not today"
        );
        assert_eq!(ApprovalRequest::denied_text(None), "[APPROVAL DENIED]");
    }

    #[test]
    fn decision_helpers() {
        let hidden = Decision::Hidden {
            rule: "/hide/1".into(),
        };
        assert_eq!(hidden.rule(), "/hide/1");
        assert_eq!(hidden.kind(), DecisionKind::Hidden);
        assert_eq!(
            hidden.agent_text().as_deref(),
            Some("[POLICY DENIED] tool not available")
        );
        let denied = deny("/default", DEFAULT_DENY_REASON);
        assert_eq!(denied.kind().as_str(), "deny");
        assert_eq!(
            denied.agent_text().as_deref(),
            Some("[POLICY DENIED] denied by default policy")
        );
        let allowed = Decision::Proceed {
            rule: "/tools/x".into(),
            limits: vec![],
            approval: None,
        };
        assert_eq!(allowed.kind(), DecisionKind::Allow);
        assert_eq!(allowed.agent_text(), None);
        assert_eq!(allowed.reason(), None);
        let held = Decision::Proceed {
            rule: "/tools/x".into(),
            limits: vec![],
            approval: Some(ApprovalRequest {
                rule: "/tools/x/action".into(),
                timeout: Duration::from_secs(300),
                reason: None,
            }),
        };
        assert_eq!(held.kind().as_str(), "approval");
    }
}

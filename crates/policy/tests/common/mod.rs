//! Helpers shared by the integration tests.
#![allow(dead_code)]

use portcullis_policy::{Call, Decision, Policy};
use serde_json::{Value, json};

/// The example document of POLICY.md, verbatim.
pub const EXAMPLE: &str = r#"{
  "version": "1",
  "default": "deny",
  "hide": ["delete_image_set", "admin_*"],
  "changed_tools": "hide",
  "all_tools": {
    "limits": [{ "counter": "calls", "max": 600, "window": "hour", "scope": "agent" }]
  },
  "tools": {
    "list_buckets": {},
    "delete_object": { "action": "deny", "reason": "Deletion is done by the storage team." },
    "deploy_webapp": { "action": "require_approval", "approval": { "timeout": "10m" } },
    "search_logs":   { "rate_limit": { "max": 10, "window": 60 } },
    "create_refund": {
      "require": [{ "path": "args.reason", "op": "exists" }],
      "deny_if": [{ "conditions": [{ "path": "args.amount", "op": "gt", "value": 10000 }],
                    "on_deny": "Refunds over 10000 are not allowed." }],
      "approve_if": [{ "conditions": [{ "path": "args.amount", "op": "gt", "value": 500 }] }],
      "limits": [{ "counter": "refund_total", "max": 50000, "window": "day",
                   "increment_from": "args.amount", "scope": "server" }]
    }
  }
}"#;

/// Parses a document that must be valid.
pub fn policy(document: Value) -> Policy {
    match Policy::from_value(&document) {
        Ok(policy) => policy,
        Err(errors) => panic!("{errors}\nin {document:#}"),
    }
}

/// A policy with `"default": "deny"` and one rule `x`.
pub fn with_rule(rule: Value) -> Policy {
    policy(json!({"version": "1", "default": "deny", "tools": {"x": rule}}))
}

/// Evaluates an unchanged tool.
pub fn eval(policy: &Policy, tool: &str, arguments: Value) -> Decision {
    policy.evaluate(&Call {
        tool,
        arguments: &arguments,
        changed: false,
    })
}

/// Evaluates a changed tool.
pub fn eval_changed(policy: &Policy, tool: &str, arguments: Value) -> Decision {
    policy.evaluate(&Call {
        tool,
        arguments: &arguments,
        changed: true,
    })
}

pub fn deny(rule: &str, reason: &str) -> Decision {
    Decision::Deny {
        rule: rule.into(),
        reason: reason.into(),
    }
}

pub fn hidden(rule: &str) -> Decision {
    Decision::Hidden { rule: rule.into() }
}

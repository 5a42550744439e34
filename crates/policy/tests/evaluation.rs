//! Evaluation: every rule of POLICY.md's "Evaluation, in order", with the rule pointers.

mod common;

use std::time::Duration;

use common::{deny, eval, eval_changed, hidden, policy, with_rule};
use portcullis_policy::{
    ACTION_DENY_REASON, ApprovalRequest, CHANGED_REASON, Call, DENY_IF_REASON, Decision,
    DecisionKind, LimitRequest, Scope,
};
use serde_json::{Value, json};

fn allowed(rule: &str) -> Decision {
    Decision::Proceed {
        rule: rule.into(),
        limits: vec![],
        approval: None,
    }
}

fn approval(decision: &Decision) -> Option<&ApprovalRequest> {
    match decision {
        Decision::Proceed { approval, .. } => approval.as_ref(),
        other => panic!("expected Proceed, got {other:?}"),
    }
}

fn limits(decision: &Decision) -> &[LimitRequest] {
    match decision {
        Decision::Proceed { limits, .. } => limits,
        other => panic!("expected Proceed, got {other:?}"),
    }
}

fn limit(
    counter: &str,
    max: u64,
    window: u64,
    scope: Scope,
    increment: u64,
    rule: &str,
) -> LimitRequest {
    LimitRequest {
        counter: counter.into(),
        max,
        window: Duration::from_secs(window),
        scope,
        increment,
        rule: rule.into(),
    }
}

// ---- step 1: hidden ----

#[test]
fn hidden_tools_by_name_or_glob_name_the_hide_entry() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "hide": ["delete_image_set", "admin_*"],
        "tools": {"admin_users": {}, "delete_image_set": {}}
    }));
    assert_eq!(eval(&p, "delete_image_set", json!({})), hidden("/hide/0"));
    assert_eq!(eval(&p, "admin_users", json!({})), hidden("/hide/1"));
    assert_eq!(p.is_hidden("admin_", false).as_deref(), Some("/hide/1"));
    assert_eq!(p.is_hidden("admin", false), None);
    assert_eq!(eval(&p, "list_buckets", json!({})), allowed("/default"));
    assert_eq!(
        eval(&p, "admin_users", json!({})).agent_text().as_deref(),
        Some("[POLICY DENIED] tool not available")
    );
}

#[test]
fn the_first_matching_hide_entry_is_named() {
    let p = policy(json!({"version": "1", "default": "allow", "hide": ["a*", "ab", "*b", "ab"]}));
    assert_eq!(p.is_hidden("ab", false).as_deref(), Some("/hide/0"));
    let p = policy(json!({"version": "1", "default": "allow", "hide": ["x", "ab", "*b", "a*"]}));
    assert_eq!(p.is_hidden("ab", false).as_deref(), Some("/hide/1"));
    assert_eq!(p.is_hidden("cb", false).as_deref(), Some("/hide/2"));
    assert_eq!(p.is_hidden("ac", false).as_deref(), Some("/hide/3"));
}

#[test]
fn star_hides_everything() {
    let p = policy(json!({"version": "1", "default": "allow", "hide": ["*"], "tools": {"x": {}}}));
    for tool in ["x", "y", "", "anything at all"] {
        assert_eq!(eval(&p, tool, json!({})), hidden("/hide/0"));
    }
}

// ---- step 1: changed tools ----

#[test]
fn changed_tools_are_hidden_by_default() {
    let p = policy(json!({"version": "1", "default": "allow", "tools": {"x": {}}}));
    assert_eq!(p.is_hidden("x", true).as_deref(), Some("/changed_tools"));
    assert_eq!(eval_changed(&p, "x", json!({})), hidden("/changed_tools"));
    assert_eq!(
        eval_changed(&p, "no_rule", json!({})),
        hidden("/changed_tools")
    );
    assert_eq!(p.is_hidden("x", false), None);
    assert_eq!(eval(&p, "x", json!({})), allowed("/tools/x"));
}

#[test]
fn changed_tools_hide() {
    let p = policy(json!({"version": "1", "default": "allow", "changed_tools": "hide"}));
    assert_eq!(p.is_hidden("x", true).as_deref(), Some("/changed_tools"));
    assert_eq!(eval_changed(&p, "x", json!({})), hidden("/changed_tools"));
}

#[test]
fn changed_tools_deny_lists_them_but_denies_calls() {
    let p = policy(json!({
        "version": "1", "default": "allow", "changed_tools": "deny", "tools": {"x": {}}
    }));
    assert_eq!(p.is_hidden("x", true), None);
    assert_eq!(
        eval_changed(&p, "x", json!({})),
        deny("/changed_tools", CHANGED_REASON)
    );
    assert_eq!(eval(&p, "x", json!({})), allowed("/tools/x"));
}

#[test]
fn changed_tools_allow_treats_them_normally() {
    let p = policy(json!({
        "version": "1", "default": "deny", "changed_tools": "allow",
        "tools": {"x": {}, "y": {"action": "deny"}}
    }));
    assert_eq!(p.is_hidden("x", true), None);
    assert_eq!(eval_changed(&p, "x", json!({})), allowed("/tools/x"));
    assert_eq!(
        eval_changed(&p, "y", json!({})),
        deny("/tools/y", ACTION_DENY_REASON)
    );
    assert_eq!(
        eval_changed(&p, "z", json!({})),
        deny("/default", "denied by default policy")
    );
}

#[test]
fn hide_wins_over_changed_tools_and_rules() {
    let p = policy(json!({
        "version": "1", "default": "allow", "changed_tools": "allow", "hide": ["x"],
        "tools": {"x": {}}
    }));
    assert_eq!(eval_changed(&p, "x", json!({})), hidden("/hide/0"));
    let p =
        policy(json!({"version": "1", "default": "allow", "changed_tools": "deny", "hide": ["x"]}));
    assert_eq!(eval_changed(&p, "x", json!({})), hidden("/hide/0"));
}

// ---- step 2: the rule, else the default ----

#[test]
fn default_deny_and_the_empty_entry() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"list_buckets": {}}}));
    let decision = eval(&p, "delete_bucket", json!({}));
    assert_eq!(decision, deny("/default", "denied by default policy"));
    assert_eq!(
        decision.agent_text().as_deref(),
        Some("[POLICY DENIED] denied by default policy")
    );
    assert_eq!(
        eval(&p, "list_buckets", json!({})),
        allowed("/tools/list_buckets")
    );
}

#[test]
fn default_allow() {
    let p = policy(json!({"version": "1", "default": "allow"}));
    assert_eq!(eval(&p, "anything", json!({})), allowed("/default"));
    assert_eq!(eval(&p, "anything", json!({})).kind(), DecisionKind::Allow);
}

#[test]
fn an_exact_name_wins_over_any_glob() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "delete_object_*": {"action": "deny"},
        "*": {"action": "deny"},
        "delete_object_v2": {},
    }}));
    assert_eq!(
        eval(&p, "delete_object_v2", json!({})),
        allowed("/tools/delete_object_v2")
    );
    assert_eq!(
        p.rule_for("delete_object_v2"),
        Some("/tools/delete_object_v2")
    );
}

#[test]
fn the_glob_with_most_literal_characters_wins() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "*": {"action": "deny", "reason": "catch-all"},
        "get_*": {},
        "get_secret*": {"action": "deny", "reason": "secrets"},
        "*_secret_*": {"action": "deny", "reason": "also secrets"},
    }}));
    assert_eq!(eval(&p, "get_user", json!({})), allowed("/tools/get_*"));
    assert_eq!(
        eval(&p, "get_secret_value", json!({})),
        deny("/tools/get_secret*", "secrets")
    );
    assert_eq!(
        eval(&p, "put_secret_value", json!({})),
        deny("/tools/*_secret_*", "also secrets")
    );
    assert_eq!(
        eval(&p, "put_user", json!({})),
        deny("/tools/*", "catch-all")
    );
    assert_eq!(p.rule_for("get_user"), Some("/tools/get_*"));
    assert_eq!(p.rule_for("put_user"), Some("/tools/*"));
}

#[test]
fn glob_ties_go_to_the_first_in_the_document() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "ab*": {"action": "deny", "reason": "first"},
        "*yz": {"action": "deny", "reason": "second"},
    }}));
    assert_eq!(eval(&p, "abxyz", json!({})), deny("/tools/ab*", "first"));
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "*yz": {"action": "deny", "reason": "second"},
        "ab*": {"action": "deny", "reason": "first"},
    }}));
    assert_eq!(eval(&p, "abxyz", json!({})), deny("/tools/*yz", "second"));
}

#[test]
fn no_rule_matches() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"get_*": {}}}));
    assert_eq!(p.rule_for("list"), None);
    assert_eq!(
        eval(&p, "list", json!({})),
        deny("/default", "denied by default policy")
    );
}

// ---- step 3: action deny ----

#[test]
fn action_deny_with_reason_or_on_deny_or_neither() {
    let p = with_rule(json!({"action": "deny", "reason": "Deletion is done by the storage team."}));
    let decision = eval(&p, "x", json!({}));
    assert_eq!(
        decision,
        deny("/tools/x", "Deletion is done by the storage team.")
    );
    assert_eq!(
        decision.agent_text().as_deref(),
        Some("[POLICY DENIED] Deletion is done by the storage team.")
    );
    let p = with_rule(json!({"action": "deny", "on_deny": "No."}));
    assert_eq!(eval(&p, "x", json!({})), deny("/tools/x", "No."));
    let p = with_rule(json!({"action": "deny"}));
    assert_eq!(
        eval(&p, "x", json!({})),
        deny("/tools/x", ACTION_DENY_REASON)
    );
}

#[test]
fn action_deny_comes_before_conditions() {
    let p = with_rule(json!({
        "action": "deny", "reason": "never",
        "require": [{"path": "args.a", "op": "exists"}],
    }));
    assert_eq!(eval(&p, "x", json!({})), deny("/tools/x", "never"));
}

// ---- step 4: require and deny_if ----

#[test]
fn require_names_the_failed_condition() {
    let p = with_rule(json!({"require": [
        {"path": "args.a", "op": "exists"},
        {"path": "args.b", "op": "lte", "value": 100},
    ]}));
    assert_eq!(
        eval(&p, "x", json!({"a": 1, "b": 100})),
        allowed("/tools/x")
    );
    assert_eq!(
        eval(&p, "x", json!({"b": 1})),
        deny(
            "/tools/x/require/0",
            "required condition not met: args.a exists"
        )
    );
    assert_eq!(
        eval(&p, "x", json!({"a": 1, "b": 101})),
        deny(
            "/tools/x/require/1",
            "required condition not met: args.b lte 100"
        )
    );
}

#[test]
fn require_uses_the_rule_reason() {
    let p = with_rule(json!({
        "reason": "Give a reason for every refund.",
        "require": [{"path": "args.reason", "op": "exists"}],
    }));
    assert_eq!(
        eval(&p, "x", json!({})),
        deny("/tools/x/require/0", "Give a reason for every refund.")
    );
}

#[test]
fn require_fails_closed_on_wrong_types_and_missing_values() {
    let p = with_rule(json!({"require": [{"path": "args.n", "op": "lt", "value": 10}]}));
    assert_eq!(eval(&p, "x", json!({"n": 5})), allowed("/tools/x"));
    assert_eq!(
        eval(&p, "x", json!({"n": "5"})).rule(),
        "/tools/x/require/0"
    );
    assert_eq!(eval(&p, "x", json!({})).rule(), "/tools/x/require/0");
    assert_eq!(
        eval(&p, "x", json!({"n": null})).rule(),
        "/tools/x/require/0"
    );
    assert_eq!(eval(&p, "x", Value::Null).rule(), "/tools/x/require/0");
    let p = with_rule(json!({"require": [{"path": "args.n", "op": "neq", "value": "prod"}]}));
    assert_eq!(eval(&p, "x", json!({})).kind(), DecisionKind::Deny);
}

#[test]
fn deny_if_uses_on_deny_then_the_rule_reason_then_a_default() {
    let gt = |v: u64| json!([{"path": "args.n", "op": "gt", "value": v}]);
    let p = with_rule(json!({"deny_if": [
        {"conditions": gt(100), "on_deny": "Over 100."},
        {"conditions": gt(10), "reason": "Over 10."},
    ]}));
    assert_eq!(
        eval(&p, "x", json!({"n": 101})),
        deny("/tools/x/deny_if/0", "Over 100.")
    );
    assert_eq!(
        eval(&p, "x", json!({"n": 11})),
        deny("/tools/x/deny_if/1", "Over 10.")
    );
    assert_eq!(eval(&p, "x", json!({"n": 10})), allowed("/tools/x"));
    let p = with_rule(json!({"reason": "Rule says no.", "deny_if": [{"conditions": gt(1)}]}));
    assert_eq!(
        eval(&p, "x", json!({"n": 2})),
        deny("/tools/x/deny_if/0", "Rule says no.")
    );
    let p = with_rule(json!({"deny_if": [{"conditions": gt(1)}]}));
    assert_eq!(
        eval(&p, "x", json!({"n": 2})),
        deny("/tools/x/deny_if/0", DENY_IF_REASON)
    );
}

#[test]
fn deny_if_needs_every_condition() {
    let p = with_rule(json!({"deny_if": [{"conditions": [
        {"path": "args.env", "op": "eq", "value": "prod"},
        {"path": "args.force", "op": "eq", "value": true},
    ]}]}));
    assert_eq!(
        eval(&p, "x", json!({"env": "prod", "force": true})).rule(),
        "/tools/x/deny_if/0"
    );
    assert_eq!(
        eval(&p, "x", json!({"env": "prod", "force": false})),
        allowed("/tools/x")
    );
    assert_eq!(
        eval(&p, "x", json!({"env": "dev", "force": true})),
        allowed("/tools/x")
    );
}

#[test]
fn deny_if_fails_closed_on_missing_values_and_wrong_types() {
    let p = with_rule(json!({"deny_if": [{"conditions": [
        {"path": "args.amount", "op": "gt", "value": 10000}
    ]}]}));
    assert_eq!(eval(&p, "x", json!({"amount": 5})), allowed("/tools/x"));
    assert_eq!(eval(&p, "x", json!({})).rule(), "/tools/x/deny_if/0");
    assert_eq!(
        eval(&p, "x", json!({"amount": "20000"})).rule(),
        "/tools/x/deny_if/0"
    );
    assert_eq!(
        eval(&p, "x", json!({"amount": [20000]})).rule(),
        "/tools/x/deny_if/0"
    );
    let p = with_rule(json!({"deny_if": [{"conditions": [
        {"path": "args.q", "op": "regex", "value": "(?i)drop"}
    ]}]}));
    assert_eq!(eval(&p, "x", json!({"q": "select"})), allowed("/tools/x"));
    assert_eq!(eval(&p, "x", json!({"q": 1})).rule(), "/tools/x/deny_if/0");
}

#[test]
fn an_exists_condition_scopes_a_deny_if_to_calls_that_give_the_argument() {
    let p = with_rule(json!({"deny_if": [{"conditions": [
        {"path": "args.force", "op": "exists"},
        {"path": "args.force", "op": "eq", "value": true},
    ]}]}));
    assert_eq!(eval(&p, "x", json!({})), allowed("/tools/x"));
    assert_eq!(
        eval(&p, "x", json!({"force": true})).rule(),
        "/tools/x/deny_if/0"
    );
}

#[test]
fn require_is_checked_before_deny_if() {
    let p = with_rule(json!({
        "require": [{"path": "args.a", "op": "exists"}],
        "deny_if": [{"conditions": [{"path": "args.b", "op": "exists"}]}],
    }));
    assert_eq!(eval(&p, "x", json!({"b": 1})).rule(), "/tools/x/require/0");
    assert_eq!(
        eval(&p, "x", json!({"a": 1, "b": 1})).rule(),
        "/tools/x/deny_if/0"
    );
}

#[test]
fn deep_paths_and_array_indexes() {
    let p = with_rule(json!({"deny_if": [{"conditions": [
        {"path": "args.items.1.price", "op": "gte", "value": 100}
    ]}]}));
    let items = |price: Value| json!({"items": [{"price": 1}, {"price": price}]});
    assert_eq!(eval(&p, "x", items(json!(99.99))), allowed("/tools/x"));
    assert_eq!(eval(&p, "x", items(json!(100))).kind(), DecisionKind::Deny);
    assert_eq!(
        eval(&p, "x", json!({"items": [{"price": 1}]})).kind(),
        DecisionKind::Deny
    );
}

// ---- step 6: approval ----

#[test]
fn require_approval_waits_with_the_default_or_given_timeout() {
    let p = with_rule(json!({"action": "require_approval"}));
    let decision = eval(&p, "x", json!({}));
    assert_eq!(decision.kind(), DecisionKind::Approval);
    assert_eq!(decision.rule(), "/tools/x");
    assert_eq!(
        approval(&decision),
        Some(&ApprovalRequest {
            rule: "/tools/x/action".into(),
            timeout: Duration::from_secs(300),
            reason: None,
        })
    );
    let p = with_rule(json!({"action": "require_approval", "approval": {"timeout": "10m"}}));
    assert_eq!(
        approval(&eval(&p, "x", json!({}))).unwrap().timeout,
        Duration::from_secs(600)
    );
}

#[test]
fn approve_if_names_the_first_matching_entry() {
    let p = with_rule(json!({
        "approval": {"timeout": 60},
        "approve_if": [
            {"conditions": [{"path": "args.n", "op": "gt", "value": 1000}], "reason": "Very large."},
            {"conditions": [{"path": "args.n", "op": "gt", "value": 500}]},
        ],
    }));
    assert_eq!(eval(&p, "x", json!({"n": 500})), allowed("/tools/x"));
    assert_eq!(
        approval(&eval(&p, "x", json!({"n": 501}))),
        Some(&ApprovalRequest {
            rule: "/tools/x/approve_if/1".into(),
            timeout: Duration::from_secs(60),
            reason: None,
        })
    );
    assert_eq!(
        approval(&eval(&p, "x", json!({"n": 1001}))),
        Some(&ApprovalRequest {
            rule: "/tools/x/approve_if/0".into(),
            timeout: Duration::from_secs(60),
            reason: Some("Very large.".into()),
        })
    );
    // Fail closed: an unreadable amount needs a person.
    assert_eq!(
        approval(&eval(&p, "x", json!({}))).unwrap().rule,
        "/tools/x/approve_if/0"
    );
    assert_eq!(
        approval(&eval(&p, "x", json!({"n": "9"}))).unwrap().rule,
        "/tools/x/approve_if/0"
    );
}

#[test]
fn require_approval_action_takes_precedence_over_approve_if() {
    let p = with_rule(json!({
        "action": "require_approval",
        "approve_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 1}], "reason": "r"}],
    }));
    assert_eq!(
        approval(&eval(&p, "x", json!({"n": 2}))).unwrap().rule,
        "/tools/x/action"
    );
}

#[test]
fn deny_if_comes_before_approval() {
    let p = with_rule(json!({
        "action": "require_approval",
        "deny_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 1}]}],
    }));
    assert_eq!(eval(&p, "x", json!({"n": 2})).kind(), DecisionKind::Deny);
}

// ---- step 5: limits ----

#[test]
fn limits_come_from_all_tools_then_rate_limit_then_limits() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "all_tools": {"limits": [
            {"max": 600, "window": "hour"},
            {"counter": "burst", "max": 20, "window": 10, "scope": "session"},
        ]},
        "tools": {
            "search_*": {
                "rate_limit": {"max": 10, "window": 60},
                "limits": [
                    {"max": 100, "window": "day", "scope": "server"},
                    {"counter": "shared", "max": 5, "window": "1d", "scope": "agent"},
                ],
            },
        },
    }));
    assert_eq!(
        limits(&eval(&p, "search_logs", json!({}))),
        [
            limit("calls", 600, 3600, Scope::Agent, 1, "/all_tools/limits/0"),
            limit("burst", 20, 10, Scope::Session, 1, "/all_tools/limits/1"),
            limit(
                "search_*",
                10,
                60,
                Scope::Agent,
                1,
                "/tools/search_*/rate_limit"
            ),
            limit(
                "search_*",
                100,
                86400,
                Scope::Server,
                1,
                "/tools/search_*/limits/0"
            ),
            limit(
                "shared",
                5,
                86400,
                Scope::Agent,
                1,
                "/tools/search_*/limits/1"
            ),
        ]
    );
    // A tool without a rule under default allow still counts against all_tools.
    assert_eq!(
        limits(&eval(&p, "other", json!({}))),
        [
            limit("calls", 600, 3600, Scope::Agent, 1, "/all_tools/limits/0"),
            limit("burst", 20, 10, Scope::Session, 1, "/all_tools/limits/1"),
        ]
    );
}

#[test]
fn increment_from_adds_the_value_rounded_up() {
    let p = with_rule(json!({"limits": [
        {"counter": "spend", "max": 1000, "window": "day", "increment_from": "args.cost.usd"}
    ]}));
    let increment = |args: Value| limits(&eval(&p, "x", args))[0].increment;
    assert_eq!(increment(json!({"cost": {"usd": 250}})), 250);
    assert_eq!(increment(json!({"cost": {"usd": 0}})), 0);
    assert_eq!(increment(json!({"cost": {"usd": 12.01}})), 13);
}

#[test]
fn increment_from_fails_closed() {
    let p = with_rule(json!({"limits": [
        {"counter": "spend", "max": 1000, "window": "day", "increment_from": "args.cost"}
    ]}));
    assert_eq!(
        eval(&p, "x", json!({})),
        deny(
            "/tools/x/limits/0",
            "`args.cost` must be a non-negative number: it is counted against the limit `spend`, got nothing"
        )
    );
    assert_eq!(
        eval(&p, "x", json!({"cost": "5"})),
        deny(
            "/tools/x/limits/0",
            "`args.cost` must be a non-negative number: it is counted against the limit `spend`, got \"5\""
        )
    );
    assert_eq!(
        eval(&p, "x", json!({"cost": -1})).rule(),
        "/tools/x/limits/0"
    );
    assert_eq!(
        eval(&p, "x", json!({"cost": null})).rule(),
        "/tools/x/limits/0"
    );
}

#[test]
fn all_tools_increment_from_applies_to_default_allowed_tools() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "bytes", "max": 1000000, "window": "hour", "increment_from": "args.size"}]},
    }));
    assert_eq!(
        limits(&eval(&p, "upload", json!({"size": 512})))[0].increment,
        512
    );
    assert_eq!(eval(&p, "upload", json!({})).rule(), "/all_tools/limits/0");
}

#[test]
fn denied_calls_reserve_nothing() {
    let p = policy(json!({
        "version": "1", "default": "deny",
        "all_tools": {"limits": [{"max": 1, "window": 1}]},
        "tools": {"x": {"action": "deny"}},
    }));
    assert!(matches!(eval(&p, "x", json!({})), Decision::Deny { .. }));
    assert!(matches!(eval(&p, "y", json!({})), Decision::Deny { .. }));
}

#[test]
fn limits_sharing_a_counter_and_scope_share_a_key() {
    let p = policy(json!({
        "version": "1", "default": "deny",
        "tools": {
            "refund": {"limits": [{"counter": "money", "max": 100, "window": "day", "scope": "server"}]},
            "credit": {"limits": [{"counter": "money", "max": 100, "window": "day", "scope": "server"}]},
            "other": {"limits": [{"counter": "money", "max": 100, "window": "day"}]},
        },
    }));
    let key = |tool| limits(&eval(&p, tool, json!({})))[0].counter_key();
    assert_eq!(key("refund"), key("credit"));
    assert_ne!(key("refund"), key("other"));
}

#[test]
fn call_is_copy_and_arguments_may_be_null() {
    let p = with_rule(json!({}));
    let arguments = Value::Null;
    let call = Call {
        tool: "x",
        arguments: &arguments,
        changed: false,
    };
    let copy = call;
    assert_eq!(p.evaluate(&call), p.evaluate(&copy));
    assert_eq!(p.evaluate(&call), allowed("/tools/x"));
}

#[test]
fn policies_and_decisions_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<portcullis_policy::Policy>();
    shareable::<Decision>();
    shareable::<portcullis_policy::ValidationErrors>();
}

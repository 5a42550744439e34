//! Validation: every field of POLICY.md, valid and invalid, with the exact pointer of each
//! problem.

mod common;

use common::EXAMPLE;
use portcullis_policy::{ChangedTools, DefaultAction, Policy, Problem};
use serde_json::{Value, json};

/// The problems of a document as (pointer, message) pairs; empty if valid.
fn problems(document: &Value) -> Vec<(String, String)> {
    match Policy::from_value(document) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .problems
            .into_iter()
            .map(|Problem { path, message }| (path, message))
            .collect(),
    }
}

/// The pointers of the problems of a document.
fn pointers(document: &Value) -> Vec<String> {
    problems(document)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

/// The single problem of a document.
fn one(document: &Value) -> (String, String) {
    let mut all = problems(document);
    assert_eq!(all.len(), 1, "expected one problem, got {all:?}");
    all.remove(0)
}

fn top(extra: Value) -> Value {
    let mut document = json!({"version": "1", "default": "deny"});
    for (k, v) in extra.as_object().unwrap() {
        document[k] = v.clone();
    }
    document
}

fn rule(rule: Value) -> Value {
    top(json!({"tools": {"x": rule}}))
}

fn limit(limit: Value) -> Value {
    rule(json!({"limits": [limit]}))
}

fn condition(condition: Value) -> Value {
    rule(json!({"require": [condition]}))
}

fn assert_valid(document: Value) {
    assert_eq!(
        problems(&document),
        Vec::<(String, String)>::new(),
        "{document}"
    );
}

// ---- the whole document ----

#[test]
fn the_seed_document_is_valid() {
    let policy =
        Policy::parse(r#"{"version":"1","default":"deny","hide":["delete_image_set"]}"#).unwrap();
    assert_eq!(policy.default(), DefaultAction::Deny);
    assert_eq!(policy.changed_tools(), ChangedTools::Hide);
    assert_eq!(policy.document()["hide"][0], "delete_image_set");
}

#[test]
fn the_example_document_is_valid() {
    let policy = Policy::parse(EXAMPLE).unwrap();
    assert_eq!(
        policy.document(),
        &serde_json::from_str::<Value>(EXAMPLE).unwrap()
    );
    assert_eq!(policy.rule_for("search_logs"), Some("/tools/search_logs"));
}

#[test]
fn malformed_json_is_one_problem_at_the_root_with_line_and_column() {
    let err = Policy::parse("{\"version\": \"1\",\n \"default\": }").unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].path, "");
    assert!(err.problems[0].message.contains("line 2 column"), "{err}");
    let err = Policy::parse("").unwrap_err();
    assert_eq!(err.problems[0].path, "");
    let err = Policy::parse(r#"{"version":"1","default":"deny"} x"#).unwrap_err();
    assert!(err.problems[0].message.contains("trailing"), "{err}");
}

#[test]
fn a_key_repeated_in_one_object_is_rejected() {
    let err =
        Policy::parse(r#"{"version":"1","default":"deny","tools":{"x":{"action":"deny"},"x":{}}}"#)
            .unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].path, "");
    assert!(
        err.problems[0]
            .message
            .starts_with("duplicate key \"x\" at line 1"),
        "{err}"
    );
}

#[test]
fn deep_nesting_is_a_problem_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = Policy::parse(&deep).unwrap_err();
    assert_eq!(err.problems[0].path, "");
    assert!(err.problems[0].message.contains("recursion limit"), "{err}");
}

#[test]
fn the_document_must_be_an_object() {
    assert_eq!(
        one(&json!([])),
        ("".into(), "a policy must be an object, got an array".into())
    );
    assert_eq!(one(&json!("x")).0, "");
    assert_eq!(one(&json!(null)).0, "");
}

#[test]
fn unknown_top_level_fields_are_rejected_naming_the_allowed_ones() {
    assert_eq!(
        one(&top(json!({"defaults": "allow"}))),
        (
            "/defaults".into(),
            "unknown field \"defaults\"; allowed fields are version, default, hide, changed_tools, all_tools, tools".into()
        )
    );
}

#[test]
fn every_problem_is_reported_at_once_in_document_order() {
    let document = json!({
        "version": 1,
        "default": "maybe",
        "hide": ["", "ok", 3],
        "changed_tools": "remove",
        "all_tools": {"limits": [{"max": 0, "window": "fortnight", "scope": "world"}]},
        "tools": {
            "a": {"action": "block"},
            "b": {"rate_limit": {"max": -1}},
        },
        "extra": true,
    });
    assert_eq!(
        pointers(&document),
        [
            "/version",
            "/default",
            "/hide/0",
            "/hide/2",
            "/changed_tools",
            "/all_tools/limits/0/max",
            "/all_tools/limits/0/window",
            "/all_tools/limits/0/scope",
            "/tools/a/action",
            "/tools/b/rate_limit/max",
            "/tools/b/rate_limit/window",
            "/extra",
        ]
    );
    let err = Policy::from_value(&document).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policy has 12 problems: /version: must be the string"),
        "{err}"
    );
}

#[test]
fn problems_follow_the_document_not_the_order_fields_are_checked_in() {
    let document: Value = serde_json::from_str(
        r#"{"tools": {"b": {"action": 1}, "a": {"zzz": 1, "action": 2}}, "hide": [1], "default": 0}"#,
    )
    .unwrap();
    assert_eq!(
        pointers(&document),
        [
            "/tools/b/action",
            "/tools/a/zzz",
            "/tools/a/action",
            "/hide/0",
            "/default",
            "/version"
        ]
    );
}

#[test]
fn display_counts_problems_and_lists_them() {
    let err = Policy::parse(r#"{"version":"1"}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy has 1 problem: /default: `default` is required"
    );
    let err = Policy::parse(r#"{}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy has 2 problems: /version: `version` is required; /default: `default` is required"
    );
    let err = Policy::parse("nope").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policy has 1 problem: (document): expected"),
        "{err}"
    );
    let as_error: &dyn std::error::Error = &err;
    assert!(as_error.source().is_none());
}

#[test]
fn problems_serialize_as_path_and_message() {
    let err = Policy::parse(r#"{"version":"1"}"#).unwrap_err();
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"problems": [{"path": "/default", "message": "`default` is required"}]})
    );
}

// ---- version, default ----

#[test]
fn version_is_required_and_must_be_the_string_1() {
    assert_eq!(
        one(&json!({"default": "deny"})),
        ("/version".into(), "`version` is required".into())
    );
    assert_eq!(
        one(&json!({"version": 1, "default": "deny"})),
        ("/version".into(), "must be the string \"1\", got 1".into())
    );
    assert_eq!(
        one(&json!({"version": "2", "default": "deny"})).0,
        "/version"
    );
    assert_eq!(
        one(&json!({"version": "1.0", "default": "deny"})).0,
        "/version"
    );
}

#[test]
fn default_is_required_and_must_be_allow_or_deny() {
    assert_eq!(one(&json!({"version": "1"})).0, "/default");
    assert_eq!(
        one(&json!({"version": "1", "default": "block"})),
        (
            "/default".into(),
            "must be one of \"allow\", \"deny\", got \"block\"".into()
        )
    );
    assert_eq!(
        one(&json!({"version": "1", "default": false})).0,
        "/default"
    );
    let allow = Policy::from_value(&json!({"version": "1", "default": "allow"})).unwrap();
    assert_eq!(allow.default(), DefaultAction::Allow);
}

// ---- hide ----

#[test]
fn hide_holds_names_and_globs() {
    assert_valid(top(json!({"hide": []})));
    assert_valid(top(
        json!({"hide": ["a", "admin_*", "*", "*_x_*", "ns/tool.v2-1"]}),
    ));
    assert_eq!(
        one(&top(json!({"hide": "admin_*"}))),
        ("/hide".into(), "must be an array, got \"admin_*\"".into())
    );
    assert_eq!(one(&top(json!({"hide": ["a", {}]}))).0, "/hide/1");
    assert_eq!(
        one(&top(json!({"hide": [""]}))),
        ("/hide/0".into(), "tool name must not be empty".into())
    );
    assert_eq!(one(&top(json!({"hide": ["delete image"]}))).0, "/hide/0");
    assert_eq!(one(&top(json!({"hide": ["admin_**"]}))).0, "/hide/0");
}

// ---- changed_tools ----

#[test]
fn changed_tools_is_hide_deny_or_allow() {
    for (word, mode) in [
        ("hide", ChangedTools::Hide),
        ("deny", ChangedTools::Deny),
        ("allow", ChangedTools::Allow),
    ] {
        let policy = Policy::from_value(&top(json!({ "changed_tools": word }))).unwrap();
        assert_eq!(policy.changed_tools(), mode);
    }
    assert_eq!(
        one(&top(json!({"changed_tools": "ignore"}))),
        (
            "/changed_tools".into(),
            "must be one of \"hide\", \"deny\", \"allow\", got \"ignore\"".into()
        )
    );
    assert_eq!(
        one(&top(json!({"changed_tools": null}))).0,
        "/changed_tools"
    );
}

// ---- all_tools ----

#[test]
fn all_tools_has_only_limits() {
    assert_valid(top(json!({"all_tools": {}})));
    assert_valid(top(json!({"all_tools": {"limits": []}})));
    assert_valid(top(
        json!({"all_tools": {"limits": [{"max": 1, "window": 1}]}}),
    ));
    assert_eq!(one(&top(json!({"all_tools": []}))).0, "/all_tools");
    assert_eq!(
        one(&top(
            json!({"all_tools": {"rate_limit": {"max": 1, "window": 1}}})
        )),
        (
            "/all_tools/rate_limit".into(),
            "unknown field \"rate_limit\"; allowed fields are limits".into()
        )
    );
    assert_eq!(
        one(&top(json!({"all_tools": {"limits": {}}}))).0,
        "/all_tools/limits"
    );
    assert_eq!(
        one(&top(json!({"all_tools": {"limits": [{"max": 1}]}}))),
        (
            "/all_tools/limits/0/window".into(),
            "`window` is required".into()
        )
    );
}

// ---- tools ----

#[test]
fn tools_is_an_object_of_names_or_globs() {
    assert_valid(top(json!({"tools": {}})));
    assert_valid(top(json!({"tools": {"a": {}, "a_*": {}, "*": {}}})));
    assert_eq!(one(&top(json!({"tools": []}))).0, "/tools");
    assert_eq!(
        one(&top(json!({"tools": {"": {}}}))),
        ("/tools/".into(), "tool name must not be empty".into())
    );
    assert_eq!(
        one(&top(json!({"tools": {"two words": {}}}))).0,
        "/tools/two words"
    );
    assert_eq!(one(&top(json!({"tools": {"x**": {}}}))).0, "/tools/x**");
    assert_eq!(one(&top(json!({"tools": {"x": true}}))).0, "/tools/x");
    assert_eq!(one(&top(json!({"tools": {"x": null}}))).0, "/tools/x");
}

#[test]
fn pointers_escape_slash_and_tilde() {
    assert_eq!(
        one(&top(json!({"tools": {"a/b": {"action": "no"}}}))).0,
        "/tools/a~1b/action"
    );
    assert_eq!(
        one(&top(json!({"tools": {"a~b": {"action": "no"}}}))).0,
        "/tools/a~0b/action"
    );
    assert_eq!(
        one(&top(json!({"tools": {"~/": {"x": 1}}}))).0,
        "/tools/~0~1/x"
    );
}

#[test]
fn unknown_rule_fields_are_rejected_naming_the_allowed_ones() {
    assert_eq!(
        one(&rule(json!({"allow": true}))),
        (
            "/tools/x/allow".into(),
            "unknown field \"allow\"; allowed fields are action, reason, on_deny, rate_limit, limits, require, deny_if, approve_if, approval".into()
        )
    );
}

#[test]
fn action_is_allow_deny_or_require_approval() {
    assert_valid(rule(json!({"action": "allow"})));
    assert_valid(rule(json!({"action": "deny"})));
    assert_valid(rule(json!({"action": "require_approval"})));
    assert_eq!(
        one(&rule(json!({"action": "approve"}))),
        (
            "/tools/x/action".into(),
            "must be one of \"allow\", \"deny\", \"require_approval\", got \"approve\"".into()
        )
    );
    assert_eq!(one(&rule(json!({"action": 1}))).0, "/tools/x/action");
}

#[test]
fn reason_and_its_synonym_on_deny() {
    assert_valid(rule(json!({"action": "deny", "reason": "No."})));
    assert_valid(rule(json!({"action": "deny", "on_deny": "No."})));
    assert_eq!(
        one(&rule(json!({"reason": 5}))),
        ("/tools/x/reason".into(), "must be a string, got 5".into())
    );
    assert_eq!(
        one(&rule(json!({"on_deny": "  "}))),
        ("/tools/x/on_deny".into(), "must not be empty".into())
    );
    assert_eq!(
        one(&rule(json!({"reason": "a", "on_deny": "b"}))),
        (
            "/tools/x/on_deny".into(),
            "`on_deny` is a synonym of `reason`; give only one of them".into()
        )
    );
}

// ---- rate_limit and limits ----

#[test]
fn rate_limit_is_max_window_and_scope() {
    assert_valid(rule(json!({"rate_limit": {"max": 10, "window": 60}})));
    assert_valid(rule(
        json!({"rate_limit": {"max": 10, "window": "minute", "scope": "session"}}),
    ));
    assert_eq!(
        one(&rule(json!({"rate_limit": 10}))).0,
        "/tools/x/rate_limit"
    );
    assert_eq!(
        one(&rule(
            json!({"rate_limit": {"max": 10, "window": 60, "counter": "c"}})
        )),
        (
            "/tools/x/rate_limit/counter".into(),
            "unknown field \"counter\"; allowed fields are max, window, scope".into()
        )
    );
    assert_eq!(
        one(&rule(json!({"rate_limit": {"window": 60}}))),
        ("/tools/x/rate_limit/max".into(), "`max` is required".into())
    );
    assert_eq!(
        one(&rule(json!({"rate_limit": {"max": 10}}))),
        (
            "/tools/x/rate_limit/window".into(),
            "`window` is required".into()
        )
    );
}

#[test]
fn max_must_be_a_positive_integer() {
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(10.0),
        json!("10"),
        json!(null),
    ] {
        let (path, message) = one(&rule(json!({"rate_limit": {"max": bad, "window": 60}})));
        assert_eq!(path, "/tools/x/rate_limit/max");
        assert!(
            message.starts_with("must be a positive integer, got "),
            "{message}"
        );
    }
    assert_eq!(
        one(&limit(json!({"max": -3, "window": 60}))).1,
        "must be a positive integer, got -3"
    );
    assert_valid(limit(json!({"max": 1, "window": 60})));
    assert_valid(limit(json!({"max": u64::MAX, "window": 60})));
}

#[test]
fn window_forms_and_range() {
    for good in [
        json!(1),
        json!(60),
        json!(2_678_400),
        json!("minute"),
        json!("hour"),
        json!("day"),
        json!("90s"),
        json!("10m"),
        json!("2h"),
        json!("1d"),
        json!("31d"),
    ] {
        assert_valid(limit(json!({"max": 1, "window": good})));
    }
    for bad in [
        json!(0),
        json!(2_678_401),
        json!("32d"),
        json!("0s"),
        json!("week"),
        json!("1h30m"),
        json!(1.5),
        json!(true),
    ] {
        assert_eq!(
            one(&limit(json!({"max": 1, "window": bad}))).0,
            "/tools/x/limits/0/window"
        );
    }
    assert_eq!(
        one(&limit(json!({"max": 1, "window": 0}))).1,
        "must be between 1s and 31d, got 0"
    );
}

#[test]
fn scope_is_session_agent_or_server() {
    for good in ["session", "agent", "server"] {
        assert_valid(limit(json!({"max": 1, "window": 60, "scope": good})));
    }
    assert_eq!(
        one(&limit(json!({"max": 1, "window": 60, "scope": "global"}))),
        (
            "/tools/x/limits/0/scope".into(),
            "must be one of \"session\", \"agent\", \"server\", got \"global\"".into()
        )
    );
}

#[test]
fn limits_fields() {
    assert_valid(rule(json!({"limits": []})));
    assert_valid(limit(json!({
        "counter": "refund_total", "max": 50000, "window": "day",
        "increment_from": "args.amount", "scope": "server"
    })));
    assert_eq!(
        one(&rule(json!({"limits": {"max": 1}}))).0,
        "/tools/x/limits"
    );
    assert_eq!(
        one(&rule(json!({"limits": [{"max": 1, "window": 1}, 7]}))).0,
        "/tools/x/limits/1"
    );
    assert_eq!(
        one(&limit(json!({"max": 1, "window": 1, "per": "agent"}))),
        (
            "/tools/x/limits/0/per".into(),
            "unknown field \"per\"; allowed fields are counter, max, window, scope, increment_from"
                .into()
        )
    );
    assert_eq!(
        one(&limit(json!({"counter": "", "max": 1, "window": 1}))),
        (
            "/tools/x/limits/0/counter".into(),
            "must not be empty".into()
        )
    );
    assert_eq!(
        one(&limit(json!({"counter": 3, "max": 1, "window": 1}))).0,
        "/tools/x/limits/0/counter"
    );
    assert_eq!(
        one(&limit(
            json!({"max": 1, "window": 1, "increment_from": "amount"})
        ))
        .0,
        "/tools/x/limits/0/increment_from"
    );
    assert_eq!(
        one(&limit(
            json!({"max": 1, "window": 1, "increment_from": ["args.amount"]})
        ))
        .0,
        "/tools/x/limits/0/increment_from"
    );
}

// ---- conditions ----

#[test]
fn every_op_with_a_valid_value() {
    for c in [
        json!({"path": "args.a", "op": "eq", "value": 1}),
        json!({"path": "args.a", "op": "neq", "value": {"k": [1]}}),
        json!({"path": "args.a", "op": "in", "value": [1, "a"]}),
        json!({"path": "args.a", "op": "not_in", "value": []}),
        json!({"path": "args.a", "op": "lt", "value": 1}),
        json!({"path": "args.a", "op": "lte", "value": -1.5}),
        json!({"path": "args.a", "op": "gt", "value": 0}),
        json!({"path": "args.a", "op": "gte", "value": 1e3}),
        json!({"path": "args.a", "op": "regex", "value": "^prod-[0-9]+$"}),
        json!({"path": "args.a", "op": "contains", "value": "x"}),
        json!({"path": "args.a", "op": "contains", "value": 3}),
        json!({"path": "args.a", "op": "starts_with", "value": "/tmp/"}),
        json!({"path": "args.a", "op": "exists"}),
        json!({"path": "args.a.b.0.c", "op": "not_exists"}),
    ] {
        assert_valid(condition(c));
    }
}

#[test]
fn condition_fields() {
    assert_eq!(one(&rule(json!({"require": {}}))).0, "/tools/x/require");
    assert_eq!(
        one(&rule(json!({"require": ["args.a"]}))).0,
        "/tools/x/require/0"
    );
    assert_eq!(
        one(&condition(
            json!({"path": "args.a", "op": "exists", "values": 1})
        )),
        (
            "/tools/x/require/0/values".into(),
            "unknown field \"values\"; allowed fields are path, op, value".into()
        )
    );
    assert_eq!(
        pointers(&condition(json!({}))),
        ["/tools/x/require/0/path", "/tools/x/require/0/op"]
    );
}

#[test]
fn a_condition_reports_its_path_op_and_value_problems_together() {
    assert_eq!(
        pointers(&condition(
            json!({"path": "amount", "op": "like", "value": 1})
        )),
        ["/tools/x/require/0/path", "/tools/x/require/0/op"]
    );
    assert_eq!(
        pointers(&condition(
            json!({"path": "amount", "op": "gt", "value": "1"})
        )),
        ["/tools/x/require/0/path", "/tools/x/require/0/value"]
    );
}

#[test]
fn paths_start_with_args() {
    assert_eq!(
        one(&condition(json!({"path": "amount", "op": "exists"}))),
        (
            "/tools/x/require/0/path".into(),
            "must start with `args.` (like `args.amount` or `args.items.0.price`), got \"amount\""
                .into()
        )
    );
    for bad in [
        json!("args"),
        json!("args."),
        json!("args.a..b"),
        json!("$.a"),
        json!(1),
    ] {
        assert_eq!(
            one(&condition(json!({"path": bad, "op": "exists"}))).0,
            "/tools/x/require/0/path"
        );
    }
}

#[test]
fn ops_are_the_thirteen_of_the_spec() {
    let (path, message) = one(&condition(
        json!({"path": "args.a", "op": "like", "value": "x"}),
    ));
    assert_eq!(path, "/tools/x/require/0/op");
    assert_eq!(
        message,
        "unknown op \"like\"; expected one of eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, starts_with, exists, not_exists"
    );
    assert_eq!(
        one(&condition(json!({"path": "args.a", "op": 1}))).0,
        "/tools/x/require/0/op"
    );
}

#[test]
fn value_must_match_the_op() {
    let case = |op: &str, value: Option<Value>| {
        let mut c = json!({"path": "args.a", "op": op});
        if let Some(value) = value {
            c["value"] = value;
        }
        one(&condition(c))
    };
    let at = "/tools/x/require/0/value".to_string();
    assert_eq!(
        case("eq", None),
        (at.clone(), "is required for op `eq`".into())
    );
    for op in [
        "neq",
        "in",
        "not_in",
        "lt",
        "lte",
        "gt",
        "gte",
        "regex",
        "contains",
        "starts_with",
    ] {
        assert_eq!(
            case(op, None),
            (at.clone(), format!("is required for op `{op}`"))
        );
    }
    assert_eq!(
        case("exists", Some(json!(true))),
        (at.clone(), "must be absent for op `exists`".into())
    );
    assert_eq!(case("not_exists", Some(json!(null))).0, at);
    assert_eq!(
        case("eq", Some(json!(null))),
        (
            at.clone(),
            "must not be null for op `eq`: null counts as absent, test it with `exists` or `not_exists`".into()
        )
    );
    assert_eq!(
        case("in", Some(json!("a"))),
        (at.clone(), "must be an array for op `in`, got \"a\"".into())
    );
    assert_eq!(case("not_in", Some(json!(1))).0, at);
    assert_eq!(
        case("gt", Some(json!("10"))),
        (
            at.clone(),
            "must be a number for op `gt`, got \"10\"".into()
        )
    );
    for op in ["lt", "lte", "gte"] {
        assert_eq!(case(op, Some(json!(null))).0, at);
    }
    assert_eq!(case("regex", Some(json!(1))).0, at);
    assert_eq!(case("starts_with", Some(json!(["a"]))).0, at);
}

#[test]
fn regexes_are_compiled_at_parse_time_with_limits() {
    let (path, message) = one(&condition(
        json!({"path": "args.a", "op": "regex", "value": "(unclosed"}),
    ));
    assert_eq!(path, "/tools/x/require/0/value");
    assert!(message.starts_with("invalid regex: "), "{message}");
    let (_, message) = one(&condition(
        json!({"path": "args.a", "op": "regex", "value": "a{1000}{1000}"}),
    ));
    assert!(message.contains("too large"), "{message}");
    let long = "a".repeat(portcullis_policy::MAX_REGEX_LEN + 1);
    let (_, message) = one(&condition(
        json!({"path": "args.a", "op": "regex", "value": long}),
    ));
    assert!(message.contains("too long"), "{message}");
}

#[test]
fn a_policy_holds_a_bounded_number_of_distinct_regexes() {
    let max = portcullis_policy::MAX_REGEXES;
    let regexes = |n: usize, distinct: bool| {
        let conditions: Vec<Value> = (0..n)
            .map(|i| {
                let pattern = if distinct {
                    format!("^x{i}$")
                } else {
                    "^x$".to_owned()
                };
                json!({"path": "args.a", "op": "regex", "value": pattern})
            })
            .collect();
        rule(json!({"require": conditions}))
    };
    assert_valid(regexes(max, true));
    assert_valid(regexes(max + 10, false));
    let (path, message) = one(&regexes(max + 1, true));
    assert_eq!(path, format!("/tools/x/require/{max}/value"));
    assert_eq!(
        message,
        format!("too many distinct regexes in one policy: at most {max}")
    );
}

// ---- require, deny_if, approve_if ----

#[test]
fn deny_if_entries() {
    let c = json!({"path": "args.a", "op": "gt", "value": 1});
    assert_valid(rule(
        json!({"deny_if": [{"conditions": [c], "on_deny": "No."}]}),
    ));
    assert_valid(rule(
        json!({"deny_if": [{"conditions": [c], "reason": "No."}]}),
    ));
    assert_valid(rule(json!({"deny_if": [{"conditions": [c]}]})));
    assert_eq!(one(&rule(json!({"deny_if": {}}))).0, "/tools/x/deny_if");
    assert_eq!(
        one(&rule(json!({"deny_if": [[c]]}))).0,
        "/tools/x/deny_if/0"
    );
    assert_eq!(
        one(&rule(json!({"deny_if": [{"on_deny": "No."}]}))),
        (
            "/tools/x/deny_if/0/conditions".into(),
            "`conditions` is required".into()
        )
    );
    assert_eq!(
        one(&rule(json!({"deny_if": [{"conditions": []}]}))).0,
        "/tools/x/deny_if/0/conditions"
    );
    assert_eq!(
        one(&rule(json!({"deny_if": [{"conditions": c}]}))).0,
        "/tools/x/deny_if/0/conditions"
    );
    assert_eq!(
        one(&rule(
            json!({"deny_if": [{"conditions": [c, {"path": "args.b", "op": "nope"}]}]})
        ))
        .0,
        "/tools/x/deny_if/0/conditions/1/op"
    );
    assert_eq!(
        one(&rule(
            json!({"deny_if": [{"conditions": [c], "on_deny": 1}]})
        ))
        .0,
        "/tools/x/deny_if/0/on_deny"
    );
    assert_eq!(
        one(&rule(
            json!({"deny_if": [{"conditions": [c], "on_deny": "a", "reason": "b"}]})
        ))
        .0,
        "/tools/x/deny_if/0/on_deny"
    );
    assert_eq!(
        one(&rule(
            json!({"deny_if": [{"conditions": [c], "message": "No."}]})
        )),
        (
            "/tools/x/deny_if/0/message".into(),
            "unknown field \"message\"; allowed fields are conditions, on_deny, reason".into()
        )
    );
}

#[test]
fn approve_if_entries() {
    let c = json!({"path": "args.a", "op": "gt", "value": 1});
    assert_valid(rule(
        json!({"approve_if": [{"conditions": [c], "reason": "Large."}]}),
    ));
    assert_eq!(
        one(&rule(json!({"approve_if": "x"}))).0,
        "/tools/x/approve_if"
    );
    assert_eq!(
        one(&rule(
            json!({"approve_if": [{"conditions": [c], "on_deny": "x"}]})
        ))
        .0,
        "/tools/x/approve_if/0/on_deny"
    );
    assert_eq!(
        one(&rule(
            json!({"approve_if": [{"conditions": [{"path": "args.a", "op": "gt"}]}]})
        ))
        .0,
        "/tools/x/approve_if/0/conditions/0/value"
    );
    assert_eq!(
        one(&rule(
            json!({"approve_if": [{"conditions": [c], "reason": ""}]})
        ))
        .0,
        "/tools/x/approve_if/0/reason"
    );
}

#[test]
fn require_may_be_empty() {
    assert_valid(rule(json!({"require": []})));
}

// ---- approval ----

#[test]
fn approval_timeout_defaults_to_5m_and_is_at_most_24h() {
    assert_valid(rule(json!({"action": "require_approval", "approval": {}})));
    assert_valid(rule(
        json!({"action": "require_approval", "approval": {"timeout": "24h"}}),
    ));
    assert_valid(rule(
        json!({"action": "require_approval", "approval": {"timeout": 30}}),
    ));
    assert_eq!(
        one(&rule(json!({"approval": {"timeout": "25h"}}))),
        (
            "/tools/x/approval/timeout".into(),
            "must be between 1s and 1d, got \"25h\"".into()
        )
    );
    assert_eq!(
        one(&rule(json!({"approval": {"timeout": 0}}))).0,
        "/tools/x/approval/timeout"
    );
    assert_eq!(
        one(&rule(json!({"approval": {"timeout": "soon"}}))).0,
        "/tools/x/approval/timeout"
    );
    assert_eq!(
        one(&rule(json!({"approval": "10m"}))).0,
        "/tools/x/approval"
    );
    assert_eq!(
        one(&rule(
            json!({"approval": {"timeout": "10m", "notify": "a@b"}})
        )),
        (
            "/tools/x/approval/notify".into(),
            "unknown field \"notify\"; allowed fields are timeout".into()
        )
    );
}

//! Properties of validation and evaluation, checked on generated documents and calls.

use portcullis_policy::{Call, Decision, Policy};
use proptest::collection::{btree_map, vec};
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Number, Value, json};

// ---- generators ----

/// Every word the validator knows, so random objects reach deep into validation.
const WORDS: &[&str] = &[
    "version",
    "default",
    "hide",
    "changed_tools",
    "all_tools",
    "tools",
    "limits",
    "action",
    "reason",
    "on_deny",
    "rate_limit",
    "require",
    "deny_if",
    "approve_if",
    "approval",
    "counter",
    "max",
    "window",
    "scope",
    "increment_from",
    "conditions",
    "path",
    "op",
    "value",
    "timeout",
    "1",
    "allow",
    "deny",
    "hide",
    "require_approval",
    "session",
    "agent",
    "server",
    "eq",
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
    "exists",
    "not_exists",
    "args.a",
    "args.",
    "minute",
    "hour",
    "day",
    "10m",
    "*",
    "a*",
    "",
    "/",
    "~",
];

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(WORDS).prop_map(str::to_owned),
        any::<String>(),
        "[a-z_*./~ ]{0,12}",
        "[(){}\\[\\]\\\\*+?|^$.a-z0-9]{0,16}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-2i64..100).prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(arb_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A document shaped like a policy whose leaves and subtrees are arbitrary.
fn arb_policy_like() -> impl Strategy<Value = Value> {
    let maybe = |s: BoxedStrategy<Value>| prop_oneof![Just(None), s.prop_map(Some)];
    let rule = btree_map(select(&WORDS[7..24]), arb_json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    (
        maybe(prop_oneof![Just(json!("1")), arb_json()].boxed()),
        maybe(prop_oneof![Just(json!("deny")), Just(json!("allow")), arb_json()].boxed()),
        maybe(arb_json().boxed()),
        btree_map(arb_string(), prop_oneof![rule, arb_json()], 0..5),
        maybe(arb_json().boxed()),
    )
        .prop_map(|(version, default, hide, tools, all_tools)| {
            let mut map = Map::new();
            for (key, value) in [("version", version), ("default", default), ("hide", hide)] {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
            map.insert("tools".into(), Value::Object(tools.into_iter().collect()));
            if let Some(all_tools) = all_tools {
                map.insert("all_tools".into(), json!({ "limits": all_tools }));
            }
            Value::Object(map)
        })
}

/// Tool names and globs over a tiny alphabet, so that rules, hides and calls collide.
const NAMES: &[&str] = &[
    "a", "b", "ab", "ba", "abc", "a*", "*b", "a*c", "*", "*a*", "b*",
];
const TOOLS: &[&str] = &["a", "b", "ab", "ba", "abc", "ac", "bb", "c", ""];

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..20).prop_map(Value::from),
        (-5.0f64..20.0).prop_map(Value::from),
        select(&["x", "ab", "prod", ""][..]).prop_map(Value::from),
    ]
}

fn arb_condition() -> impl Strategy<Value = Value> {
    let path = select(
        &[
            "args.a",
            "args.a",
            "args.b",
            "args.b",
            "args.a.b",
            "args.items.0",
            "args.items.1.x",
        ][..],
    );
    let test = prop_oneof![
        select(&["exists", "not_exists"][..]).prop_map(|op| json!({ "op": op })),
        (
            select(&["eq", "neq", "contains"][..]),
            arb_scalar().prop_filter("null is not an operand", |v| !v.is_null())
        )
            .prop_map(|(op, value)| json!({ "op": op, "value": value })),
        (select(&["in", "not_in"][..]), vec(arb_scalar(), 0..3))
            .prop_map(|(op, value)| json!({ "op": op, "value": value })),
        (select(&["lt", "lte", "gt", "gte"][..]), -5i64..20)
            .prop_map(|(op, value)| json!({ "op": op, "value": value })),
        select(&["^a", "b$", "(?i)X", "[0-9]+"][..])
            .prop_map(|value| json!({ "op": "regex", "value": value })),
        select(&["a", "pro"][..]).prop_map(|value| json!({ "op": "starts_with", "value": value })),
    ];
    (path, test).prop_map(|(path, mut test)| {
        test["path"] = json!(path);
        test
    })
}

fn arb_entry() -> impl Strategy<Value = Value> {
    // Mostly selective conditions (rarely true), so that many calls get past `deny_if`.
    let selective = (select(&["args.a", "args.b"][..]), 100i64..200)
        .prop_map(|(path, value)| json!({ "path": path, "op": "eq", "value": value }));
    let condition = prop_oneof![2 => selective, 1 => arb_condition()];
    (vec(condition, 1..3), any::<bool>()).prop_map(|(conditions, reason)| {
        let mut entry = json!({ "conditions": conditions });
        if reason {
            entry["reason"] = json!("because");
        }
        entry
    })
}

fn arb_limit() -> impl Strategy<Value = Value> {
    (
        1u64..100,
        select(vec![json!(60), json!("hour"), json!("10m")]),
        select(&["session", "agent", "server"][..]),
        prop_oneof![
            4 => Just(None),
            1 => Just(Some("args.a")),
            1 => Just(Some("args.items.0")),
        ],
    )
        .prop_map(|(max, window, scope, increment_from)| {
            let mut limit = json!({ "max": max, "window": window, "scope": scope });
            if let Some(path) = increment_from {
                limit["increment_from"] = json!(path);
            }
            limit
        })
}

fn arb_rule() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            3 => Just(None),
            1 => select(&["allow", "deny", "require_approval"][..]).prop_map(Some),
        ],
        prop_oneof![2 => Just(vec![]), 1 => vec(arb_condition(), 1..3)],
        vec(arb_entry(), 0..4),
        vec(arb_entry(), 0..2),
        vec(arb_limit(), 0..2),
    )
        .prop_map(|(action, require, deny_if, approve_if, limits)| {
            let mut rule = json!({
                "require": require, "deny_if": deny_if, "approve_if": approve_if, "limits": limits
            });
            if let Some(action) = action {
                rule["action"] = json!(action);
            }
            rule
        })
}

/// A valid policy over [`NAMES`].
fn arb_policy() -> impl Strategy<Value = Value> {
    (
        select(&["allow", "deny"][..]),
        select(&["hide", "deny", "allow"][..]),
        prop_oneof![1 => Just(vec![]), 1 => vec(select(NAMES), 1..3)],
        btree_map(select(NAMES), arb_rule(), 0..6),
        vec(arb_limit(), 0..2),
    )
        .prop_map(|(default, changed_tools, hide, tools, limits)| {
            json!({
                "version": "1",
                "default": default,
                "changed_tools": changed_tools,
                "hide": hide,
                "all_tools": { "limits": limits },
                "tools": tools,
            })
        })
}

fn arb_arguments() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        3 => arb_scalar(),
        1 => vec(arb_scalar(), 0..3).prop_map(Value::Array),
        1 => vec(btree_map(select(&["x", "b"][..]), arb_scalar(), 0..2), 0..3)
            .prop_map(|items| json!(items)),
        1 => btree_map(select(&["b"][..]), arb_scalar(), 0..2).prop_map(|m| json!(m)),
    ];
    // Mostly present, so that calls get past `require` and fail-closed `deny_if` entries.
    let field = move || weighted(0.85, value.clone());
    (field(), field(), field()).prop_map(|(a, b, items)| {
        let mut arguments = Map::new();
        for (key, value) in [("a", a), ("b", b), ("items", items)] {
            if let Some(value) = value {
                arguments.insert(key.into(), value);
            }
        }
        Value::Object(arguments)
    })
}

fn compile(document: &Value) -> Policy {
    Policy::from_value(document).unwrap_or_else(|e| panic!("generated an invalid policy: {e}"))
}

fn decide(policy: &Policy, tool: &str, arguments: &Value, changed: bool) -> Decision {
    policy.evaluate(&Call {
        tool,
        arguments,
        changed,
    })
}

fn is_proceed(decision: &Decision) -> bool {
    matches!(decision, Decision::Proceed { .. })
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn validation_never_panics_on_arbitrary_json(document in arb_json()) {
        check_any(&document);
    }

    #[test]
    fn validation_never_panics_on_policy_shaped_json(document in arb_policy_like()) {
        check_any(&document);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in any::<String>()) {
        let outcome = Policy::parse(&text);
        // Text that is not JSON is one problem at the document; text that happens to be JSON
        // (`{}`, `1`) is validated like any document.
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            let errors = outcome.expect_err("not JSON, not a policy");
            prop_assert_eq!(errors.problems.len(), 1);
            prop_assert_eq!(&errors.problems[0].path, "");
        }
    }

    #[test]
    fn parsing_agrees_with_from_value(document in arb_policy_like()) {
        // Compare outcomes and pointers: serde_json may reparse a float one ulp off.
        let outline = |result: Result<Policy, portcullis_policy::ValidationErrors>| {
            result
                .map(|_| ())
                .map_err(|e| e.problems.into_iter().map(|p| p.path).collect::<Vec<_>>())
        };
        prop_assert_eq!(
            outline(Policy::parse(&document.to_string())),
            outline(Policy::from_value(&document))
        );
    }

    #[test]
    fn a_hidden_tool_is_never_proceed(
        document in arb_policy(),
        tool in select(TOOLS),
        changed in any::<bool>(),
        arguments in arb_arguments(),
    ) {
        let policy = compile(&document);
        let decision = decide(&policy, tool, &arguments, changed);
        match policy.is_hidden(tool, changed) {
            Some(rule) => prop_assert_eq!(decision, Decision::Hidden { rule }),
            None => {
                let hidden = matches!(decision, Decision::Hidden { .. });
                prop_assert!(!hidden, "{decision:?} without a hiding rule");
            }
        }
    }

    #[test]
    fn adding_an_action_deny_rule_never_turns_a_deny_into_a_proceed(
        document in arb_policy(),
        key in select(NAMES),
        tool in select(TOOLS),
        changed in any::<bool>(),
        arguments in arb_arguments(),
    ) {
        let before = decide(&compile(&document), tool, &arguments, changed);
        let mut stricter = document.clone();
        stricter["tools"][key] = json!({ "action": "deny" });
        let after = decide(&compile(&stricter), tool, &arguments, changed);
        if !is_proceed(&before) {
            prop_assert!(!is_proceed(&after), "{before:?} became {after:?}");
        }
        if key == tool {
            prop_assert!(!is_proceed(&after), "an exact deny rule let {tool} through");
        }
    }

    #[test]
    fn adding_a_matching_deny_if_never_turns_a_deny_into_a_proceed(
        document in arb_policy(),
        key in select(NAMES),
        governing in any::<bool>(),
        position in any::<Index>(),
        tool in select(TOOLS),
        changed in weighted(0.2, Just(true)),
        arguments in arb_arguments(),
    ) {
        let changed = changed.is_some();
        let policy = compile(&document);
        let before = decide(&policy, tool, &arguments, changed);
        // Half the time, add the entry to the rule that governs the tool.
        let key = match policy.rule_for(tool) {
            Some(pointer) if governing => pointer.trim_start_matches("/tools/").to_owned(),
            _ => key.to_owned(),
        };
        let key = key.as_str();
        let mut stricter = document.clone();
        let always = json!({ "conditions": [{ "path": "args.never_given", "op": "not_exists" }] });
        let at = match stricter["tools"].get_mut(key) {
            Some(rule) => {
                let deny_if = rule["deny_if"].as_array_mut().unwrap();
                let at = position.index(deny_if.len() + 1);
                deny_if.insert(at, always);
                at
            }
            None => {
                stricter["tools"][key] = json!({ "deny_if": [always] });
                0
            }
        };
        let after = decide(&compile(&stricter), tool, &arguments, changed);
        if !is_proceed(&before) {
            prop_assert!(!is_proceed(&after), "{before:?} became {after:?}");
        }
        let pointer = format!("/tools/{key}");
        if is_proceed(&before) && before.rule() == pointer {
            // Nothing before the new entry matched, so the new entry decides.
            prop_assert_eq!(after.rule(), format!("{pointer}/deny_if/{at}"));
            prop_assert!(!is_proceed(&after), "{after:?}");
        }
    }

    #[test]
    fn adding_a_hide_entry_never_turns_a_deny_into_a_proceed(
        document in arb_policy(),
        name in select(NAMES),
        tool in select(TOOLS),
        changed in any::<bool>(),
        arguments in arb_arguments(),
    ) {
        let before = decide(&compile(&document), tool, &arguments, changed);
        let mut stricter = document.clone();
        stricter["hide"].as_array_mut().unwrap().push(json!(name));
        let after = decide(&compile(&stricter), tool, &arguments, changed);
        if !is_proceed(&before) {
            prop_assert!(!is_proceed(&after), "{before:?} became {after:?}");
        }
    }

    #[test]
    fn every_decision_names_a_rule_pointer(
        document in arb_policy(),
        tool in select(TOOLS),
        changed in any::<bool>(),
        arguments in arb_arguments(),
    ) {
        let policy = compile(&document);
        let decision = decide(&policy, tool, &arguments, changed);
        let rule = decision.rule();
        // `/changed_tools` and `/default` exist in generated documents, so every pointer resolves.
        prop_assert!(document.pointer(rule).is_some(), "{rule} is not in the document");
        if let Decision::Proceed { limits, approval, .. } = &decision {
            for limit in limits {
                prop_assert!(document.pointer(&limit.rule).is_some(), "{}", limit.rule);
            }
            if let Some(approval) = approval {
                prop_assert!(document.pointer(&approval.rule).is_some(), "{}", approval.rule);
            }
        }
    }
}

/// Validation of any document: no panic, problems have pointers, valid ones evaluate.
fn check_any(document: &Value) {
    match Policy::from_value(document) {
        Ok(policy) => {
            assert_eq!(policy.document(), document);
            let arguments = json!({ "a": 1, "b": "x" });
            for tool in ["a", "ab", "version", ""] {
                for changed in [false, true] {
                    let _ = decide(&policy, tool, &arguments, changed);
                }
            }
        }
        Err(errors) => {
            assert!(!errors.problems.is_empty());
            for problem in &errors.problems {
                assert!(problem.path.is_empty() || problem.path.starts_with('/'));
                assert!(!problem.message.is_empty());
            }
            let _ = errors.to_string();
        }
    }
}

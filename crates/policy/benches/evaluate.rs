//! Decision latency on a generated 1,000-rule policy with globs and conditions, and the cost of
//! parsing and validating that document.
//!
//! `cargo bench -p portcullis-policy -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_policy::{Call, Decision, Policy};
use serde_json::{Map, Value, json};

/// 1,000 rules: 780 exact names (plain, rate-limited, or with a condition), 150 globs, 70
/// condition-heavy rules (each with two regexes of its own, so parsing compiles 140 regexes);
/// 20 hide entries (5 globs); two `all_tools` limits.
fn document() -> Value {
    let mut tools = Map::new();
    for i in 0..780 {
        let rule = match i % 3 {
            0 => json!({}),
            1 => json!({"rate_limit": {"max": 30, "window": "minute"}}),
            _ => json!({"deny_if": [{"conditions": [
                {"path": "args.force", "op": "eq", "value": true}
            ], "on_deny": "No force."}]}),
        };
        tools.insert(format!("tool_{i}"), rule);
    }
    for i in 0..100 {
        tools.insert(
            format!("svc{i}_*"),
            json!({"rate_limit": {"max": 10, "window": 60}}),
        );
    }
    for i in 0..50 {
        tools.insert(format!("*_op{i}"), json!({"action": "require_approval"}));
    }
    for i in 0..70 {
        tools.insert(
            format!("refund_{i}"),
            json!({
                "reason": "Refunds need a reason and an order.",
                "require": [
                    {"path": "args.reason", "op": "exists"},
                    {"path": "args.order.id", "op": "regex", "value": format!("^ord_[a-z0-9]{{8,}}$|^legacy{i}_[0-9]+$")},
                    {"path": "args.currency", "op": "in", "value": ["usd", "eur", "gbp"]},
                ],
                "deny_if": [
                    {"conditions": [{"path": "args.amount", "op": "gt", "value": 10000}],
                     "on_deny": "Refunds over 10000 are not allowed."},
                    {"conditions": [{"path": "args.reason", "op": "regex", "value": format!("(?i)test|fraud|case{i}$")}]},
                    {"conditions": [{"path": "args.order.items.0.sku", "op": "starts_with", "value": "gift_"}]},
                    {"conditions": [
                        {"path": "args.tags", "op": "contains", "value": "blocked"},
                        {"path": "args.amount", "op": "gte", "value": 1},
                    ]},
                ],
                "approve_if": [
                    {"conditions": [{"path": "args.amount", "op": "gt", "value": 500}], "reason": "Large refund."},
                    {"conditions": [{"path": "args.currency", "op": "neq", "value": "usd"}]},
                ],
                "limits": [{"counter": "refund_total", "max": 50000, "window": "day",
                            "increment_from": "args.amount", "scope": "server"}],
            }),
        );
    }
    assert_eq!(tools.len(), 1000);
    let mut hide: Vec<Value> = (0..15).map(|i| json!(format!("danger_{i}"))).collect();
    hide.extend((0..5).map(|i| json!(format!("admin{i}_*"))));
    json!({
        "version": "1",
        "default": "deny",
        "hide": hide,
        "changed_tools": "hide",
        "all_tools": {"limits": [
            {"max": 600, "window": "hour"},
            {"counter": "burst", "max": 20, "window": 10, "scope": "session"},
        ]},
        "tools": tools,
    })
}

fn decisions(c: &mut Criterion) {
    let text = document().to_string();
    let policy = Policy::parse(&text).unwrap();
    let empty = json!({});
    let refund = json!({
        "reason": "duplicate charge",
        "amount": 120.5,
        "currency": "usd",
        "order": {"id": "ord_12345678", "items": [{"sku": "shirt_1"}]},
        "tags": ["vip"],
    });

    let cases = [
        ("exact name", "tool_499", &empty, "/tools/tool_499"),
        (
            "glob (most literal wins)",
            "svc42_restart",
            &empty,
            "/tools/svc42_*",
        ),
        (
            "glob (scan to the last)",
            "deploy_op49",
            &empty,
            "/tools/*_op49",
        ),
        ("no rule (default deny)", "unknown_tool", &empty, "/default"),
        ("hidden by glob", "admin3_reset", &empty, "/hide/18"),
        ("condition-heavy", "refund_42", &refund, "/tools/refund_42"),
    ];
    let mut group = c.benchmark_group("evaluate");
    for (name, tool, arguments, rule) in cases {
        let call = Call {
            tool,
            arguments,
            changed: false,
        };
        assert_eq!(policy.evaluate(&call).rule(), rule, "{name}");
        group.bench_function(name, |b| b.iter(|| policy.evaluate(black_box(&call))));
    }
    group.finish();

    let call = Call {
        tool: "refund_42",
        arguments: &refund,
        changed: false,
    };
    match policy.evaluate(&call) {
        Decision::Proceed {
            limits,
            approval: None,
            ..
        } => assert_eq!(limits.len(), 3),
        other => panic!("the condition-heavy call should pass every condition: {other:?}"),
    }

    c.bench_function("parse + validate 1,000 rules", |b| {
        b.iter(|| Policy::parse(black_box(&text)).unwrap())
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);

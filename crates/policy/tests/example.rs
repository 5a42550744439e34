//! The example document of POLICY.md behaves as the spec describes.

mod common;

use std::time::Duration;

use common::{EXAMPLE, deny, eval, eval_changed, hidden};
use portcullis_policy::{ApprovalRequest, Decision, LimitRequest, Policy, Scope};
use serde_json::json;

fn example() -> Policy {
    Policy::parse(EXAMPLE).unwrap()
}

fn calls_limit() -> LimitRequest {
    LimitRequest {
        counter: "calls".into(),
        max: 600,
        window: Duration::from_secs(3600),
        scope: Scope::Agent,
        increment: 1,
        rule: "/all_tools/limits/0".into(),
    }
}

fn refund_limit(increment: u64) -> LimitRequest {
    LimitRequest {
        counter: "refund_total".into(),
        max: 50000,
        window: Duration::from_secs(86400),
        scope: Scope::Server,
        increment,
        rule: "/tools/create_refund/limits/0".into(),
    }
}

#[test]
fn hidden_tools() {
    let p = example();
    assert_eq!(eval(&p, "delete_image_set", json!({})), hidden("/hide/0"));
    assert_eq!(eval(&p, "admin_reset", json!({})), hidden("/hide/1"));
    assert_eq!(
        p.is_hidden("admin_reset", false).as_deref(),
        Some("/hide/1")
    );
    assert_eq!(p.is_hidden("list_buckets", false), None);
    assert_eq!(
        p.is_hidden("list_buckets", true).as_deref(),
        Some("/changed_tools")
    );
    assert_eq!(
        eval_changed(&p, "list_buckets", json!({})),
        hidden("/changed_tools")
    );
}

#[test]
fn unlisted_tools_are_denied_by_default() {
    assert_eq!(
        eval(&example(), "drop_database", json!({})),
        deny("/default", "denied by default policy")
    );
}

#[test]
fn list_buckets_is_allowed_counting_calls() {
    assert_eq!(
        eval(&example(), "list_buckets", json!({})),
        Decision::Proceed {
            rule: "/tools/list_buckets".into(),
            limits: vec![calls_limit()],
            approval: None,
        }
    );
}

#[test]
fn delete_object_is_denied_with_its_reason() {
    let decision = eval(&example(), "delete_object", json!({"key": "a"}));
    assert_eq!(
        decision,
        deny(
            "/tools/delete_object",
            "Deletion is done by the storage team."
        )
    );
    assert_eq!(
        decision.agent_text().as_deref(),
        Some("[POLICY DENIED] Deletion is done by the storage team.")
    );
}

#[test]
fn deploy_webapp_waits_ten_minutes_for_a_person() {
    let decision = eval(&example(), "deploy_webapp", json!({}));
    assert_eq!(
        decision,
        Decision::Proceed {
            rule: "/tools/deploy_webapp".into(),
            limits: vec![calls_limit()],
            approval: Some(ApprovalRequest {
                rule: "/tools/deploy_webapp/action".into(),
                timeout: Duration::from_secs(600),
                reason: None,
            }),
        }
    );
    let Decision::Proceed {
        approval: Some(approval),
        ..
    } = decision
    else {
        unreachable!()
    };
    assert_eq!(approval.timed_out_text(), "[APPROVAL TIMED OUT] after 10m");
}

#[test]
fn search_logs_is_limited_to_10_per_minute_per_agent() {
    let decision = eval(&example(), "search_logs", json!({"q": "error"}));
    let search = LimitRequest {
        counter: "search_logs".into(),
        max: 10,
        window: Duration::from_secs(60),
        scope: Scope::Agent,
        increment: 1,
        rule: "/tools/search_logs/rate_limit".into(),
    };
    assert_eq!(
        decision,
        Decision::Proceed {
            rule: "/tools/search_logs".into(),
            limits: vec![calls_limit(), search.clone()],
            approval: None,
        }
    );
    assert_eq!(
        search.rate_limited_text(Duration::from_secs(5)),
        "[RATE LIMITED] search_logs: 10 per minute; retry in 5s"
    );
    assert_eq!(
        calls_limit().rate_limited_text(Duration::from_millis(2500)),
        "[RATE LIMITED] calls: 600 per hour; retry in 3s"
    );
}

#[test]
fn create_refund_without_a_reason_is_denied() {
    let decision = eval(&example(), "create_refund", json!({"amount": 100}));
    assert_eq!(
        decision,
        deny(
            "/tools/create_refund/require/0",
            "required condition not met: args.reason exists"
        )
    );
}

#[test]
fn create_refund_over_10000_is_denied_with_on_deny() {
    let decision = eval(
        &example(),
        "create_refund",
        json!({"amount": 20000, "reason": "dup"}),
    );
    assert_eq!(
        decision,
        deny(
            "/tools/create_refund/deny_if/0",
            "Refunds over 10000 are not allowed."
        )
    );
    assert_eq!(
        decision.agent_text().as_deref(),
        Some("[POLICY DENIED] Refunds over 10000 are not allowed.")
    );
}

#[test]
fn create_refund_over_500_needs_approval() {
    assert_eq!(
        eval(
            &example(),
            "create_refund",
            json!({"amount": 600, "reason": "dup"})
        ),
        Decision::Proceed {
            rule: "/tools/create_refund".into(),
            limits: vec![calls_limit(), refund_limit(600)],
            approval: Some(ApprovalRequest {
                rule: "/tools/create_refund/approve_if/0".into(),
                timeout: Duration::from_secs(300),
                reason: None,
            }),
        }
    );
}

#[test]
fn create_refund_of_100_proceeds_counting_the_amount() {
    let decision = eval(
        &example(),
        "create_refund",
        json!({"amount": 100, "reason": "dup"}),
    );
    assert_eq!(
        decision,
        Decision::Proceed {
            rule: "/tools/create_refund".into(),
            limits: vec![calls_limit(), refund_limit(100)],
            approval: None,
        }
    );
    let Decision::Proceed { limits, .. } = decision else {
        unreachable!()
    };
    assert_eq!(limits[0].counter_key(), "agent:calls");
    assert_eq!(limits[1].counter_key(), "server:refund_total");
}

#[test]
fn create_refund_with_a_non_numeric_amount_is_denied() {
    // deny_if fails closed first: an amount that cannot be compared counts as over 10000.
    let decision = eval(
        &example(),
        "create_refund",
        json!({"amount": "100", "reason": "dup"}),
    );
    assert_eq!(decision.rule(), "/tools/create_refund/deny_if/0");
}

//! The gateway end to end: a real MCP client (rmcp) through the gateway to a real MCP server
//! (rmcp), with policies published in a real database. Every policy feature is observed from the
//! client, and the upstream's call counts prove what never reached it.

use std::time::Duration;

use portcullis_tests::client::{self, result_text};
use portcullis_tests::gateway::{self, add_agent};
use portcullis_tests::upstream::TestUpstream;
use serde_json::{Value, json};

const SEED: &str = r#"{"version":"1","default":"deny","hide":["delete_image_set"]}"#;

fn seed() -> Value {
    serde_json::from_str(SEED).unwrap()
}

#[tokio::test]
async fn the_seed_policy_hides_and_denies_and_allow_keeps_the_rest_working() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(&upstream.url, Some(seed())).await;
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();

    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&"delete_image_set".to_owned()), "{names:?}");
    assert!(
        names.contains(&"echo".to_owned()) && names.contains(&"list_images".to_owned()),
        "{names:?}"
    );

    let hidden = client
        .call("delete_image_set", json!({"name": "prod"}))
        .await
        .unwrap();
    assert_eq!(hidden.is_error, Some(true));
    assert_eq!(result_text(&hidden), "[POLICY DENIED] tool not available");
    let denied = client.call("echo", json!({"text": "hi"})).await.unwrap();
    assert_eq!(
        result_text(&denied),
        "[POLICY DENIED] denied by default policy"
    );
    assert_eq!(
        upstream.calls("delete_image_set"),
        0,
        "a hidden tool never reaches the upstream"
    );
    assert_eq!(upstream.calls("echo"), 0);

    gw.publish(&json!({"version": "1", "default": "allow", "hide": ["delete_image_set"]}))
        .await;
    let echoed = client.call("echo", json!({"text": "hi"})).await.unwrap();
    assert_ne!(echoed.is_error, Some(true), "{echoed:?}");
    assert!(result_text(&echoed).contains("hi"), "{echoed:?}");
    let listed = client.call("list_images", json!({})).await.unwrap();
    assert!(result_text(&listed).contains("image-1"));
    let still_hidden = client
        .call("delete_image_set", json!({"name": "prod"}))
        .await
        .unwrap();
    assert_eq!(
        result_text(&still_hidden),
        "[POLICY DENIED] tool not available"
    );
    assert_eq!(upstream.calls("delete_image_set"), 0);
    assert_eq!(upstream.calls("echo"), 1);
}

#[tokio::test]
async fn deny_reasons_conditions_and_rate_limits_are_what_the_agent_sees() {
    let upstream = TestUpstream::start().await;
    let policy = json!({
        "version": "1",
        "default": "deny",
        "tools": {
            "echo": {"rate_limit": {"max": 2, "window": "minute"}},
            "deploy_webapp": {"action": "deny", "reason": "Deploys go through CI."},
            "create_refund": {
                "deny_if": [{"conditions": [{"path": "args.amount", "op": "gt", "value": 10000}],
                             "on_deny": "Refunds over 10000 are not allowed."}]
            }
        }
    });
    let gw = gateway::start(&upstream.url, Some(policy)).await;
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();

    let deploy = client
        .call("deploy_webapp", json!({"service": "api"}))
        .await
        .unwrap();
    assert_eq!(
        result_text(&deploy),
        "[POLICY DENIED] Deploys go through CI."
    );
    let big = client
        .call("create_refund", json!({"amount": 20000}))
        .await
        .unwrap();
    assert_eq!(
        result_text(&big),
        "[POLICY DENIED] Refunds over 10000 are not allowed."
    );
    let small = client
        .call("create_refund", json!({"amount": 20}))
        .await
        .unwrap();
    assert!(result_text(&small).contains("refunded"), "{small:?}");

    for _ in 0..2 {
        let ok = client.call("echo", json!({"text": "x"})).await.unwrap();
        assert_ne!(ok.is_error, Some(true));
    }
    let limited = client.call("echo", json!({"text": "x"})).await.unwrap();
    let text = result_text(&limited);
    assert!(
        text.starts_with("[RATE LIMITED] echo: 2 per minute; retry in "),
        "{text}"
    );
    assert_eq!(upstream.calls("echo"), 2);
    assert_eq!(upstream.calls("deploy_webapp"), 0);
    assert_eq!(upstream.calls("create_refund"), 1);
}

#[tokio::test]
async fn an_agent_policy_replaces_the_server_policy_for_that_agent_only() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(&upstream.url, Some(seed())).await;
    let (ci_id, ci_key) = add_agent(&gw.db, gw.org_id, "ci", None).await;
    gateway::publish_on(
        &gw.db,
        gw.org_id,
        gw.server_id,
        Some(ci_id),
        &json!({"version": "1", "default": "allow"}),
    )
    .await;
    gw.gateway.policies.load_all(&gw.db.pool).await.unwrap();

    let ci = client::connect(&gw.mcp_url(), Some(&ci_key)).await.unwrap();
    assert!(result_text(&ci.call("echo", json!({"text": "ci"})).await.unwrap()).contains("ci"));
    let other = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    assert_eq!(
        result_text(&other.call("echo", json!({"text": "x"})).await.unwrap()),
        "[POLICY DENIED] denied by default policy"
    );
}

#[tokio::test]
async fn progress_and_sampling_are_relayed_both_ways() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();

    let done = client.call("progress", json!({"steps": 3})).await.unwrap();
    assert!(result_text(&done).contains("done"), "{done:?}");
    assert!(
        client.wait_for_progress(3, Duration::from_secs(5)).await,
        "3 progress notifications relayed"
    );

    let sampled = client.call("sample", json!({})).await.unwrap();
    assert!(
        result_text(&sampled).contains("sampled-by-test-client"),
        "{sampled:?}"
    );
    assert_eq!(client.sampling_count(), 1);
}

#[tokio::test]
async fn tools_list_is_read_in_full_filtered_and_paginated_by_the_gateway() {
    let upstream = TestUpstream::start_paginated(7).await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow", "hide": ["inventory_1*"]})),
    )
    .await;
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let expected: Vec<String> = upstream
        .tool_names()
        .iter()
        .filter(|n| !n.starts_with("inventory_1"))
        .cloned()
        .collect();
    assert_eq!(
        names, expected,
        "every upstream page read, hidden ones removed, order kept"
    );
}

#[tokio::test]
async fn every_decision_is_an_activity_event() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(&upstream.url, Some(seed())).await;
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    client
        .call("delete_image_set", json!({"name": "prod", "force": true}))
        .await
        .unwrap();
    client.call("echo", json!({"text": "x"})).await.unwrap();

    let events = gw.activity(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let (echo, hidden) = (&events[0], &events[1]);
    assert_eq!(hidden.decision, "hidden");
    assert_eq!(hidden.rule.as_deref(), Some("/hide/0"));
    assert_eq!(hidden.tool.as_deref(), Some("delete_image_set"));
    let mut keys = hidden.argument_keys.clone();
    keys.sort();
    assert_eq!(keys, ["force", "name"]);
    assert_eq!(hidden.policy_version, Some(1));
    assert_eq!(echo.decision, "deny");
    assert_eq!(echo.rule.as_deref(), Some("/default"));
    assert_eq!(echo.agent_id, Some(gw.agent_id));
}

/// A server with no published policy shows no tools and refuses every call (fail closed).
#[tokio::test]
async fn a_server_without_a_published_policy_denies_everything() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(&upstream.url, None).await;
    let mcp = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    assert!(mcp.list_all_tools().await.unwrap().is_empty());
    let refused = mcp.call("echo", json!({"text": "hi"})).await.unwrap();
    assert_eq!(
        result_text(&refused),
        "[POLICY DENIED] no policy is published for this server"
    );
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(upstream.calls("echo"), 0);
    mcp.close().await.unwrap();
}

//! Two gateway processes on different ports sharing one database: a call held by the
//! `portcullis gateway` binary (a process of its own) is approved through the console of another
//! process, and completes. The decision crosses processes through PostgreSQL's NOTIFY.

use std::time::Duration;

use portcullis_tests::console::{TestApp, eventually};
use portcullis_tests::process::{Fleet, new_secret_key};
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_by_one_gateway_process_is_approved_through_another_and_completes() {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let admin = app.signup("ada@acme.test", "Acme").await;
    let server = app
        .register(&admin.token, "acme", "deploys", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap();
    app.put(
        &format!("/api/v1/orgs/acme/servers/{sid}/policy"),
        &admin.token,
        &json!({"version": "1", "default": "allow",
                "tools": {"deploy_webapp": {"action": "require_approval"}}}),
    )
    .await;
    app.post(
        &format!("/api/v1/orgs/acme/servers/{sid}/policy/publish"),
        &admin.token,
        &json!({}),
    )
    .await;
    let (_, agent) = app
        .post(
            "/api/v1/orgs/acme/agents",
            &admin.token,
            &json!({"name": "ci"}),
        )
        .await;
    let key = agent["key"].as_str().unwrap().to_owned();

    let other = Fleet {
        bin: env!("CARGO_BIN_EXE_portcullis").into(),
        database_url: app.db.url(),
        secret_key: new_secret_key(),
        redis_url: None,
    }
    .start("gateway")
    .await;
    let mcp_url = format!("{}/mcp/{sid}", other.url);
    let call = tokio::spawn(async move {
        let mcp = portcullis_tests::client::connect(&mcp_url, Some(&key))
            .await
            .unwrap();
        let result = mcp.call("deploy_webapp", json!({"service": "web"})).await;
        mcp.close().await.unwrap();
        result
    });
    let held: Value = eventually(
        "held by the other process",
        Duration::from_secs(15),
        || async {
            let (_, body) = app.get("/api/v1/orgs/acme/approvals", &admin.token).await;
            body["approvals"]
                .as_array()
                .and_then(|a| a.first().cloned())
        },
    )
    .await;
    let holder: String = sqlx::query_scalar("SELECT holder FROM approvals WHERE id = $1")
        .bind(held["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_ne!(
        holder, app.gateway.approvals.holder,
        "held by the binary, not this process"
    );
    let (status, _) = app
        .post(
            &format!(
                "/api/v1/orgs/acme/approvals/{}/approve",
                held["id"].as_str().unwrap()
            ),
            &admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the held call completes once approved")
        .unwrap()
        .unwrap();
    assert_eq!(
        portcullis_tests::client::result_text(&result),
        "deployed web"
    );
    assert_eq!(upstream.calls("deploy_webapp"), 1);
}

/// A gateway process killed (SIGKILL) while it holds a call for approval and has a session open:
/// the session continues on another gateway, and the approval becomes abandoned instead of
/// pending forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_sessions_continue_elsewhere_and_its_held_approvals_are_abandoned() {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let admin = app.signup("ada@acme.test", "Acme").await;
    let server = app
        .register(&admin.token, "acme", "deploys", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    app.publish_policy(
        &admin.token,
        "acme",
        &sid,
        None,
        &json!({"version": "1", "default": "allow",
                "tools": {"deploy_webapp": {"action": "require_approval",
                                            "approval": {"timeout": "1h"}}}}),
    )
    .await;
    let (_, key) = app.create_agent(&admin.token, "acme", "ci").await;
    let victim = Fleet {
        bin: env!("CARGO_BIN_EXE_portcullis").into(),
        database_url: app.db.url(),
        secret_key: app.secret_key.clone(),
        redis_url: None,
    }
    .start("gateway")
    .await;
    let on_victim = format!("{}/mcp/{sid}", victim.url);
    let session = portcullis_tests::gateway::initialize(&on_victim, &key).await;
    let held = tokio::spawn({
        let (url, key, session) = (on_victim.clone(), key.clone(), session.clone());
        // The process may die before or after the answer's headers leave: either way the call
        // ends, failed or cut short.
        async move {
            reqwest::Client::new()
                .post(&url)
                .header("accept", "application/json, text/event-stream")
                .bearer_auth(&key)
                .header("mcp-session-id", &session)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": "deploy_webapp", "arguments": {"service": "web"}}}))
                .send()
                .await?
                .text()
                .await
        }
    });
    let approval: Value = eventually("held by the victim", Duration::from_secs(15), || async {
        let (_, body) = app.get("/api/v1/orgs/acme/approvals", &admin.token).await;
        body["approvals"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await;
    let id = approval["id"].as_str().unwrap().to_owned();

    victim.kill().await;
    // The client's held call ends (its connection is gone); it is not answered as approved.
    let ended = tokio::time::timeout(Duration::from_secs(15), held)
        .await
        .expect("the held call ends with the process")
        .unwrap();
    assert!(ended.map_or(true, |text| !text.contains("deployed web")));

    // The session goes on through the surviving gateway.
    let on_survivor = format!("{}/mcp/{sid}", app.base_url);
    let listed = portcullis_tests::gateway::rpc(
        &on_survivor,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert!(listed.text().await.unwrap().contains("deploy_webapp"));

    // The approval is abandoned by the survivor's sweep, not left pending.
    let status: String = eventually(
        "the approval abandoned",
        Duration::from_secs(15),
        || async {
            let status: String = sqlx::query_scalar("SELECT status FROM approvals WHERE id = $1")
                .bind(id.parse::<uuid::Uuid>().unwrap())
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            (status != "pending").then_some(status)
        },
    )
    .await;
    assert_eq!(status, "abandoned");
    let (status, _) = app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an abandoned approval cannot be approved"
    );
    assert_eq!(upstream.calls("deploy_webapp"), 0);
}

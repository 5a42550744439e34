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

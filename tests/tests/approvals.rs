//! Human approval end to end: a real MCP client's call held by the gateway, decided through the
//! console API, and the client's answer; expiry, abandonment, progress, roles and tenants.

use std::time::Duration;

use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::{Account, TestApp, assert_error, eventually};
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A running app with one server whose `deploy_webapp` needs approval (timeout `timeout`),
/// and an agent key.
struct Setup {
    app: TestApp,
    upstream: TestUpstream,
    admin: Account,
    gateway_url: String,
    key: String,
}

async fn setup(timeout: &str) -> Setup {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let admin = app.signup("ada@acme.test", "Acme").await;
    let server = app
        .register(&admin.token, "acme", "deploys", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap();
    let policy = json!({"version": "1", "default": "allow",
                        "tools": {"deploy_webapp": {"action": "require_approval",
                                                    "approval": {"timeout": timeout}}}});
    let (status, _) = app
        .put(
            &format!("/api/v1/orgs/acme/servers/{sid}/policy"),
            &admin.token,
            &policy,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
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
            &json!({"name": "ci-runner"}),
        )
        .await;
    Setup {
        gateway_url: server["gateway_url"].as_str().unwrap().to_owned(),
        key: agent["key"].as_str().unwrap().to_owned(),
        app,
        upstream,
        admin,
    }
}

/// The one pending approval, once it is there.
async fn pending(app: &TestApp, token: &str) -> Value {
    eventually("a pending approval", Duration::from_secs(10), || async {
        let (status, body) = app
            .get("/api/v1/orgs/acme/approvals?status=pending", token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["approvals"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await
}

/// The approval's status, as `status=all` lists it.
async fn status_of(app: &TestApp, token: &str, id: &str) -> String {
    let (_, body) = app
        .get("/api/v1/orgs/acme/approvals?status=all", token)
        .await;
    body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The organization's activity decisions, oldest first, once `last` is among them.
async fn decisions(app: &TestApp, admin: &Account, last: &str) -> Vec<(String, Option<String>)> {
    let org: uuid::Uuid = admin.org_id.parse().unwrap();
    eventually("activity events", Duration::from_secs(5), || async {
        let events = portcullis_store::activity::recent(&app.db.pool, org, 100)
            .await
            .unwrap();
        let mut list: Vec<(String, Option<String>)> =
            events.into_iter().map(|e| (e.decision, e.reason)).collect();
        list.reverse();
        list.iter().any(|(d, _)| d == last).then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_call_is_forwarded_once_and_a_denied_one_never() {
    let s = setup("1m").await;
    let mcp = client::connect(&s.gateway_url, Some(&s.key)).await.unwrap();
    let call = tokio::spawn({
        let mcp_url = s.gateway_url.clone();
        let key = s.key.clone();
        async move {
            let mcp = client::connect(&mcp_url, Some(&key)).await.unwrap();
            let result = mcp
                .call("deploy_webapp", json!({"service": "web", "ref": "v2.4.1"}))
                .await;
            mcp.close().await.unwrap();
            result
        }
    });
    let held = pending(&s.app, &s.admin.token).await;
    // What the approver decides on: the call in full.
    assert_eq!(held["tool"], "deploy_webapp");
    assert_eq!(
        held["arguments"],
        json!({"service": "web", "ref": "v2.4.1"})
    );
    assert_eq!(held["agent"]["name"], "ci-runner");
    assert_eq!(held["server_name"], "deploys");
    assert_eq!(held["rule"], "/tools/deploy_webapp/action");
    assert_eq!(held["policy_version"], 1);
    assert_eq!(
        s.upstream.calls("deploy_webapp"),
        0,
        "nothing reaches the server while held"
    );
    let id = held["id"].as_str().unwrap();
    let (status, decided) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &s.admin.token,
            &json!({"note": "release window"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["decided_by"], "ada@acme.test");
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{}", result_text(&result));
    assert_eq!(s.upstream.calls("deploy_webapp"), 1);
    eventually("used", Duration::from_secs(5), || async {
        (status_of(&s.app, &s.admin.token, id).await == "used").then_some(())
    })
    .await;
    // Used once: deciding again is a conflict.
    let (status, body) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/deny"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "not_pending");

    // Denied: the agent reads the note, the server never sees the call.
    let call = tokio::spawn({
        let mcp_url = s.gateway_url.clone();
        let key = s.key.clone();
        async move {
            let mcp = client::connect(&mcp_url, Some(&key)).await.unwrap();
            let result = mcp.call("deploy_webapp", json!({"service": "db"})).await;
            mcp.close().await.unwrap();
            result
        }
    });
    let held = pending(&s.app, &s.admin.token).await;
    let id = held["id"].as_str().unwrap();
    // An empty body is fine (the note is optional); here it has one.
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/deny"),
            &s.admin.token,
            &json!({"note": "Not during the freeze."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert_eq!(
        result_text(&result),
        "[APPROVAL DENIED] Not during the freeze."
    );
    assert_eq!(s.upstream.calls("deploy_webapp"), 1);
    mcp.close().await.unwrap();

    let log = decisions(&s.app, &s.admin, "approval_denied").await;
    let steps: Vec<&str> = log
        .iter()
        .map(|(d, _)| d.as_str())
        .filter(|d| d.starts_with("approval"))
        .collect();
    assert_eq!(
        steps,
        [
            "approval_requested",
            "approval_granted",
            "approval_requested",
            "approval_denied"
        ]
    );
    let granted = log.iter().find(|(d, _)| d == "approval_granted").unwrap();
    assert_eq!(
        granted.1.as_deref(),
        Some("by ada@acme.test: release window")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_call_times_out_and_a_late_decision_is_refused() {
    let s = setup("2s").await;
    let mcp = client::connect(&s.gateway_url, Some(&s.key)).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        mcp.call("deploy_webapp", json!({"service": "web"})),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(result_text(&result), "[APPROVAL TIMED OUT] after 2s");
    assert_eq!(s.upstream.calls("deploy_webapp"), 0);
    let (_, all) = s
        .app
        .get("/api/v1/orgs/acme/approvals?status=all", &s.admin.token)
        .await;
    let id = all["approvals"][0]["id"].as_str().unwrap();
    assert_eq!(all["approvals"][0]["status"], "expired");
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, still) = s
        .app
        .get("/api/v1/orgs/acme/approvals", &s.admin.token)
        .await;
    assert_eq!(
        still["approvals"],
        json!([]),
        "expired calls are not offered"
    );
    decisions(&s.app, &s.admin, "approval_expired").await;
    mcp.close().await.unwrap();
}

/// A raw MCP session on the gateway: its session id.
async fn raw_session(http: &reqwest::Client, url: &str, key: &str) -> String {
    let response = http
        .post(url)
        .bearer_auth(key)
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "raw", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    http.post(url)
        .bearer_auth(key)
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    session
}

async fn raw_call(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: &str,
    params: Value,
) -> reqwest::Response {
    http.post(url)
        .bearer_auth(key)
        .header("Mcp-Session-Id", session)
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_sends_progress_and_is_abandoned_when_the_client_leaves() {
    let s = setup("5m").await;
    let http = reqwest::Client::new();
    let session = raw_session(&http, &s.gateway_url, &s.key).await;
    let mut response = raw_call(
        &http,
        &s.gateway_url,
        &s.key,
        &session,
        json!({"name": "deploy_webapp", "arguments": {"service": "web"}, "_meta": {"progressToken": "p-1"}}),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // Progress every interval (200 ms in tests) keeps clients from timing out.
    let mut seen = String::new();
    while seen.matches("notifications/progress").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("progress within 5 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"progressToken\":\"p-1\""), "{seen}");
    let held = pending(&s.app, &s.admin.token).await;
    let id = held["id"].as_str().unwrap().to_owned();
    // The client goes away: the approval is no longer offered.
    drop(response);
    eventually("abandoned", Duration::from_secs(5), || async {
        (status_of(&s.app, &s.admin.token, &id).await == "abandoned").then_some(())
    })
    .await;
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    decisions(&s.app, &s.admin, "approval_abandoned").await;
    assert_eq!(s.upstream.calls("deploy_webapp"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_of_a_gateway_that_died_is_abandoned_not_pending_forever() {
    let s = setup("5m").await;
    // A live hold survives the sweeps (every 300 ms in tests).
    let http = reqwest::Client::new();
    let session = raw_session(&http, &s.gateway_url, &s.key).await;
    let live = raw_call(
        &http,
        &s.gateway_url,
        &s.key,
        &session,
        json!({"name": "deploy_webapp", "arguments": {"service": "a"}}),
    )
    .await;
    let held = pending(&s.app, &s.admin.token).await;
    let live_id = held["id"].as_str().unwrap().to_owned();
    // A call held by a process that no longer exists (its holder has no connection).
    let org: uuid::Uuid = s.admin.org_id.parse().unwrap();
    let (server_id, agent_id): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT server_id, agent_id FROM approvals WHERE id = $1")
            .bind(live_id.parse::<uuid::Uuid>().unwrap())
            .fetch_one(&s.app.db.pool)
            .await
            .unwrap();
    let dead = uuid::Uuid::new_v4();
    portcullis_store::approvals::insert(
        &s.app.db.pool,
        &portcullis_store::approvals::NewApproval {
            id: dead,
            org_id: org,
            server_id,
            agent_id,
            session: "gone",
            tool: "deploy_webapp",
            arguments: &json!({"service": "b"}),
            arguments_hash: "x",
            rule: "/tools/deploy_webapp/action",
            reason: None,
            policy: None,
            expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
            holder: "portcullis-gw-a-process-that-died",
        },
    )
    .await
    .unwrap();
    eventually(
        "the dead holder's approval abandoned",
        Duration::from_secs(5),
        || async {
            (status_of(&s.app, &s.admin.token, &dead.to_string()).await == "abandoned")
                .then_some(())
        },
    )
    .await;
    let log = decisions(&s.app, &s.admin, "approval_abandoned").await;
    assert!(log.iter().any(|(d, r)| d == "approval_abandoned"
        && r.as_deref() == Some("the gateway holding the call stopped")));
    assert_eq!(status_of(&s.app, &s.admin.token, &live_id).await, "pending");
    drop(live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_managers_of_the_organization_decide() {
    let s = setup("5m").await;
    let http = reqwest::Client::new();
    let session = raw_session(&http, &s.gateway_url, &s.key).await;
    let held_call = raw_call(
        &http,
        &s.gateway_url,
        &s.key,
        &session,
        json!({"name": "deploy_webapp", "arguments": {}}),
    )
    .await;
    let held = pending(&s.app, &s.admin.token).await;
    let id = held["id"].as_str().unwrap();
    let viewer = s.app.signup("vi@acme.test", "Own").await;
    s.app
        .post(
            "/api/v1/orgs/acme/members",
            &s.admin.token,
            &json!({"email": "vi@acme.test", "role": "viewer"}),
        )
        .await;
    let (status, body) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &viewer.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, list) = s
        .app
        .get("/api/v1/orgs/acme/approvals", &viewer.token)
        .await;
    assert_eq!(status, StatusCode::OK, "viewers see what waits");
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1);
    let mallory = s.app.signup("m@evil.test", "Evil").await;
    for path in [
        format!("/api/v1/orgs/evil/approvals/{id}/approve"),
        format!("/api/v1/orgs/acme/approvals/{id}/approve"),
    ] {
        let (status, _) = s.app.post(&path, &mallory.token, &json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (_, theirs) = s
        .app
        .get("/api/v1/orgs/evil/approvals?status=all", &mallory.token)
        .await;
    assert_eq!(theirs["approvals"], json!([]));
    let (status, _) = s
        .app
        .get("/api/v1/orgs/acme/approvals?status=bogus", &s.admin.token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(status_of(&s.app, &s.admin.token, id).await, "pending");
    drop(held_call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_held_call_posts_the_webhook_and_failures_are_retried_and_shown() {
    use std::sync::{Arc, Mutex};
    let s = setup("5m").await;
    // A receiver that fails its first request, then accepts.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hits = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let hits = hits.clone();
            async move {
                let mut hits = hits.lock().unwrap();
                hits.push(body);
                if hits.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let (status, body) = s
        .app
        .put(
            "/api/v1/orgs/acme/settings",
            &s.admin.token,
            &json!({"approval_webhook_url": hook}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let http = reqwest::Client::new();
    let session = raw_session(&http, &s.gateway_url, &s.key).await;
    let held = raw_call(
        &http,
        &s.gateway_url,
        &s.key,
        &session,
        json!({"name": "deploy_webapp", "arguments": {"service": "web"}}),
    )
    .await;
    let payload = eventually(
        "the webhook, retried after a failure",
        Duration::from_secs(10),
        || async {
            let hits = received.lock().unwrap();
            (hits.len() >= 2).then(|| hits[1].clone())
        },
    )
    .await;
    let text = payload["text"].as_str().unwrap();
    assert!(
        text.contains("agent ci-runner wants to call deploy_webapp on deploys"),
        "{text}"
    );
    assert!(
        payload["url"]
            .as_str()
            .unwrap()
            .ends_with("/app/acme/approvals"),
        "{payload}"
    );
    assert_eq!(payload["approval"]["arguments"], json!({"service": "web"}));
    // The URL is a credential: only admins read it.
    let viewer = s.app.signup("vi@acme.test", "Own").await;
    s.app
        .post(
            "/api/v1/orgs/acme/members",
            &s.admin.token,
            &json!({"email": "vi@acme.test", "role": "viewer"}),
        )
        .await;
    let (_, seen) = s.app.get("/api/v1/orgs/acme/settings", &viewer.token).await;
    let masked = seen["approval_webhook_url"].as_str().unwrap();
    assert!(
        masked.starts_with("http://127.0.0.1/") && !masked.contains("/hook"),
        "{masked}"
    );
    let delivered = eventually("delivered", Duration::from_secs(5), || async {
        let (_, settings) = s
            .app
            .get("/api/v1/orgs/acme/settings", &s.admin.token)
            .await;
        let d = settings["webhook_deliveries"][0].clone();
        (d["status"] == "delivered").then_some(d)
    })
    .await;
    assert_eq!(delivered["attempts"], 2);
    drop(held);

    // A receiver that is down: the failure is visible in the settings, and the call still waits.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    s.app
        .put(
            "/api/v1/orgs/acme/settings",
            &s.admin.token,
            &json!({"approval_webhook_url": closed}),
        )
        .await;
    let session = raw_session(&http, &s.gateway_url, &s.key).await;
    let held = raw_call(
        &http,
        &s.gateway_url,
        &s.key,
        &session,
        json!({"name": "deploy_webapp", "arguments": {"service": "db"}}),
    )
    .await;
    let failing = eventually("a failed attempt", Duration::from_secs(5), || async {
        let (_, settings) = s
            .app
            .get("/api/v1/orgs/acme/settings", &s.admin.token)
            .await;
        let d = settings["webhook_deliveries"][0].clone();
        d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not connect"))
            .then_some(d)
    })
    .await;
    assert_eq!(
        failing["status"], "pending",
        "retried with backoff: {failing}"
    );
    let pending_now = pending(&s.app, &s.admin.token).await;
    assert_eq!(pending_now["arguments"], json!({"service": "db"}));
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_bound_to_its_call_and_its_arguments() {
    let s = setup("5m").await;
    let call = |service: &'static str| {
        let (url, key) = (s.gateway_url.clone(), s.key.clone());
        tokio::spawn(async move {
            let mcp = client::connect(&url, Some(&key)).await.unwrap();
            let result = mcp.call("deploy_webapp", json!({"service": service})).await;
            mcp.close().await.unwrap();
            result
        })
    };
    let harmless = call("docs-site");
    let first = pending(&s.app, &s.admin.token).await;
    assert_eq!(first["arguments"], json!({"service": "docs-site"}));
    // The same agent asks again with other arguments: a call of its own, waiting on its own.
    let dangerous = call("payments-db");
    let both = eventually("two pending approvals", Duration::from_secs(10), || async {
        let (_, body) = s
            .app
            .get("/api/v1/orgs/acme/approvals", &s.admin.token)
            .await;
        let list = body["approvals"].as_array().cloned().unwrap_or_default();
        (list.len() == 2).then_some(list)
    })
    .await;
    assert!(
        both.iter()
            .any(|a| a["arguments"] == json!({"service": "payments-db"}))
    );
    // The stored hash is of the exact arguments.
    let hash: String = sqlx::query_scalar("SELECT arguments_hash FROM approvals WHERE id = $1")
        .bind(first["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .fetch_one(&s.app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        hash,
        portcullis_store::servers::canonical_hash(&json!({"service": "docs-site"}))
    );
    let id = first["id"].as_str().unwrap();
    s.app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    let result = tokio::time::timeout(Duration::from_secs(10), harmless)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // What ran is what was approved, and only that.
    assert_eq!(result_text(&result), "deployed docs-site");
    assert_eq!(s.upstream.calls("deploy_webapp"), 1);
    let still = pending(&s.app, &s.admin.token).await;
    assert_eq!(still["arguments"], json!({"service": "payments-db"}));
    let other = still["id"].as_str().unwrap();
    s.app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{other}/deny"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    let refused = tokio::time::timeout(Duration::from_secs(10), dangerous)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result_text(&refused), "[APPROVAL DENIED]");
    assert_eq!(s.upstream.calls("deploy_webapp"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_agent_ends_its_held_calls_and_they_can_no_longer_be_approved() {
    let s = setup("5m").await;
    let call = tokio::spawn({
        let (url, key) = (s.gateway_url.clone(), s.key.clone());
        async move {
            let mcp = client::connect(&url, Some(&key)).await.unwrap();
            let result = mcp.call("deploy_webapp", json!({"service": "web"})).await;
            drop(mcp);
            result
        }
    });
    let held = pending(&s.app, &s.admin.token).await;
    let id = held["id"].as_str().unwrap().to_owned();
    let (_, agents) = s.app.get("/api/v1/orgs/acme/agents", &s.admin.token).await;
    let agent = agents["agents"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = s
        .app
        .delete(&format!("/api/v1/orgs/acme/agents/{agent}"), &s.admin.token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        result_text(&result),
        "[POLICY DENIED] this agent's key was revoked or changed while the call waited"
    );
    eventually("abandoned", Duration::from_secs(5), || async {
        (status_of(&s.app, &s.admin.token, &id).await == "abandoned").then_some(())
    })
    .await;
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/orgs/acme/approvals/{id}/approve"),
            &s.admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(s.upstream.calls("deploy_webapp"), 0);
}

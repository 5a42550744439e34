//! The activity log and the audit trail through the console: exactly the expected events for a
//! run of mixed calls, filters, keyset pages, exports, argument values with redaction, and who
//! changed what.

use std::time::Duration;

use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::{Account, TestApp, eventually};
use portcullis_tests::upstream::TestUpstream;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Setup {
    app: TestApp,
    _upstream: TestUpstream,
    admin: Account,
    sid: String,
    agent_id: String,
    gateway_url: String,
    key: String,
}

async fn setup(store_values: bool) -> Setup {
    let app = TestApp::start().await;
    let upstream = TestUpstream::start().await;
    let admin = app.signup("ada@acme.test", "Acme").await;
    if store_values {
        app.put(
            "/api/v1/orgs/acme/settings",
            &admin.token,
            &json!({"store_argument_values": true}),
        )
        .await;
    }
    let server = app
        .register(&admin.token, "acme", "images", &upstream.url)
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    let policy = json!({"version": "1", "default": "allow", "hide": ["delete_image_set"],
                        "tools": {"create_refund": {"action": "deny", "reason": "No refunds."},
                                  "echo": {"rate_limit": {"max": 1, "window": "hour"}}}});
    app.put(
        &format!("/api/v1/orgs/acme/servers/{sid}/policy"),
        &admin.token,
        &policy,
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
            &json!({"name": "bot"}),
        )
        .await;
    Setup {
        gateway_url: server["gateway_url"].as_str().unwrap().to_owned(),
        key: agent["key"].as_str().unwrap().to_owned(),
        agent_id: agent["id"].as_str().unwrap().to_owned(),
        app,
        _upstream: upstream,
        admin,
        sid,
    }
}

/// The `tools/call` events, newest first, once there are `n`.
async fn calls(s: &Setup, query: &str, n: usize) -> Vec<Value> {
    eventually("activity events", Duration::from_secs(5), || async {
        let (status, body) = s
            .app
            .get(
                &format!("/api/v1/orgs/acme/activity?limit=500{query}"),
                &s.admin.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events: Vec<Value> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["method"] == "tools/call")
            .cloned()
            .collect();
        (events.len() >= n).then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_mixed_calls_is_logged_exactly_filtered_paged_and_exported() {
    let s = setup(false).await;
    let mcp = client::connect(&s.gateway_url, Some(&s.key)).await.unwrap();
    for (tool, args) in [
        ("echo", json!({"text": "one", "api_token": "tok-123"})),
        ("echo", json!({"text": "two"})),
        ("create_refund", json!({"amount": 5})),
        ("delete_image_set", json!({"name": "prod"})),
        ("list_images", json!({})),
    ] {
        let result = mcp.call(tool, args).await.unwrap();
        let _ = result_text(&result);
    }
    mcp.close().await.unwrap();
    let events = calls(&s, "", 5).await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["tool"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["rule"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("list_images", "allow", "/default"),
            ("delete_image_set", "hidden", "/hide/0"),
            ("create_refund", "deny", "/tools/create_refund"),
            ("echo", "rate_limited", "/tools/echo/rate_limit"),
            ("echo", "allow", "/tools/echo"),
        ]
    );
    let first = events.last().unwrap();
    assert_eq!(first["agent"]["name"], "bot");
    assert_eq!(first["server_id"], s.sid.as_str());
    assert_eq!(first["policy_version"], 1);
    assert_eq!(first["argument_keys"], json!(["text", "api_token"]));
    assert_eq!(
        first["arguments"],
        Value::Null,
        "values are not stored by default"
    );
    assert!(first["latency_ms"].as_f64().is_some());
    assert_eq!(events[2]["reason"], "No refunds.");

    // Filters.
    assert_eq!(calls(&s, "&decision=deny", 1).await.len(), 1);
    assert_eq!(calls(&s, "&tool=echo", 2).await.len(), 2);
    assert_eq!(
        calls(&s, &format!("&agent={}&server={}", s.agent_id, s.sid), 5)
            .await
            .len(),
        5
    );
    let (status, _) = s
        .app
        .get("/api/v1/orgs/acme/activity?decision=maybe", &s.admin.token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Time: the last hour holds them all; since a minute from now, none.
    assert_eq!(calls(&s, "&period=1h", 5).await.len(), 5);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, none) = s
        .app
        .get(
            &format!("/api/v1/orgs/acme/activity?since={later}"),
            &s.admin.token,
        )
        .await;
    assert_eq!(none["events"], json!([]));
    let (status, _) = s
        .app
        .get("/api/v1/orgs/acme/activity?period=forever", &s.admin.token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Keyset pages: disjoint, complete, in order.
    let mut cursor = String::new();
    let mut paged = Vec::new();
    loop {
        let (_, body) = s
            .app
            .get(
                &format!("/api/v1/orgs/acme/activity?limit=2{cursor}"),
                &s.admin.token,
            )
            .await;
        paged.extend(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        match body["next"].as_str() {
            Some(next) => cursor = format!("&before={next}"),
            None => break,
        }
    }
    let (_, all) = s
        .app
        .get("/api/v1/orgs/acme/activity?limit=500", &s.admin.token)
        .await;
    let all: Vec<Value> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(paged, all);

    // Exports.
    let export = |format: &'static str| {
        let s = &s;
        async move {
            let response = s
                .app
                .http
                .get(format!(
                    "{}/api/v1/orgs/acme/activity/export?format={format}&decision=allow",
                    s.app.base_url
                ))
                .bearer_auth(&s.admin.token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(
                response.headers()["content-disposition"]
                    .to_str()
                    .unwrap()
                    .contains("attachment")
            );
            response.text().await.unwrap()
        }
    };
    let jsonl = export("jsonl").await;
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|e| e["decision"] == "allow"));
    assert!(lines.iter().any(|e| e["tool"] == "list_images"));
    let csv = export("csv").await;
    assert!(csv.starts_with("id,at,server_id,agent_id,agent_name,session,method,tool,"));
    assert_eq!(csv.lines().count(), lines.len() + 1);

    // Another organization sees none of it.
    let other = s.app.signup("m@evil.test", "Evil").await;
    let (_, theirs) = s.app.get("/api/v1/orgs/evil/activity", &other.token).await;
    assert_eq!(theirs["events"], json!([]));
    let (status, _) = s.app.get("/api/v1/orgs/acme/activity", &other.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The page shows them, newest first, with the rule.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    client
        .post(format!("{}/login", s.app.base_url))
        .form(&[
            ("email", "ada@acme.test"),
            ("password", s.admin.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let html = client
        .get(format!(
            "{}/app/acme/activity?decision=hidden",
            s.app.base_url
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("delete_image_set") && html.contains("<code>/hide/0</code>"));
    assert!(!html.contains("create_refund</strong>"), "filtered out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_values_are_stored_only_when_asked_and_secrets_are_redacted() {
    let s = setup(true).await;
    let mcp = client::connect(&s.gateway_url, Some(&s.key)).await.unwrap();
    mcp.call(
        "echo",
        json!({"text": "hello", "api_token": "tok-123", "auth": {"password": "pw"}}),
    )
    .await
    .unwrap();
    mcp.close().await.unwrap();
    let events = calls(&s, "", 1).await;
    assert_eq!(
        events[0]["arguments"],
        json!({"text": "hello", "api_token": "[redacted]", "auth": {"password": "[redacted]"}})
    );
    let row: String =
        sqlx::query_scalar("SELECT arguments::text FROM activity_events WHERE tool = 'echo'")
            .fetch_one(&s.app.db.pool)
            .await
            .unwrap();
    assert!(!row.contains("tok-123") && !row.contains("\"pw\""), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_says_who_changed_what() {
    let s = setup(false).await;
    let (status, _) = s
        .app
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(&json!({"email": "ada@acme.test", "password": s.admin.password})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.app
        .post(
            &format!("/api/v1/orgs/acme/agents/{}/rotate", s.agent_id),
            &s.admin.token,
            &json!({}),
        )
        .await;
    let (status, audit) = s.app.get("/api/v1/orgs/acme/audit", &s.admin.token).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "agent_key_rotated",
        "signed_in",
        "agent_created",
        "policy_published",
        "policy_saved",
        "server_registered",
        "account_created",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    assert!(entries.iter().all(|e| e["actor"] == "ada@acme.test"));
    let saved = entries
        .iter()
        .find(|e| e["action"] == "policy_saved")
        .unwrap();
    assert_eq!(
        saved["before"]["default"], "deny",
        "the recommended draft before"
    );
    assert_eq!(saved["after"]["default"], "allow");
    let published = entries
        .iter()
        .find(|e| e["action"] == "policy_published")
        .unwrap();
    assert_eq!(published["after"]["version"], 1);
    // No secret in the trail.
    let text = audit.to_string();
    assert!(!text.contains(&s.key) && !text.contains(&s.admin.password));
    // Admins only.
    let viewer = s.app.signup("vi@acme.test", "Own").await;
    s.app
        .post(
            "/api/v1/orgs/acme/members",
            &s.admin.token,
            &json!({"email": "vi@acme.test", "role": "viewer"}),
        )
        .await;
    let (status, _) = s.app.get("/api/v1/orgs/acme/audit", &viewer.token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_decisions_with_low_cardinality_labels() {
    let s = setup(false).await;
    let mcp = client::connect(&s.gateway_url, Some(&s.key)).await.unwrap();
    mcp.call("list_images", json!({})).await.unwrap();
    mcp.call("create_refund", json!({"amount": 1}))
        .await
        .unwrap();
    mcp.close().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", listener.local_addr().unwrap());
    let router = portcullis_gateway::admin_router(s.app.gateway.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    let text = s
        .app
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "portcullis_decisions_total{decision=\"allow\"} 1",
        "portcullis_decisions_total{decision=\"deny\"} 1",
        "portcullis_mcp_requests_total{method=\"tools/call\"} 2",
        "portcullis_mcp_requests_total{method=\"initialize\"} 1",
        "portcullis_upstream_latency_seconds_count 1",
        "portcullis_policies_loaded 1",
        "portcullis_approvals_held 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains("list_images") && !text.contains("create_refund"),
        "no tool names in labels"
    );
    let health = s
        .app
        .http
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

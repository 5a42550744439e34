//! The gateway's HTTP edge with a raw client: authentication, sessions, and bad input each get
//! the right status and JSON-RPC error, and the gateway keeps serving.

use portcullis_gateway::GatewayConfig;
use portcullis_tests::gateway::{self, TestGateway, add_agent};
use portcullis_tests::upstream::TestUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ACCEPT: &str = "application/json, text/event-stream";

fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"}}})
}

async fn post(
    gw: &TestGateway,
    key: Option<&str>,
    session: Option<&str>,
    body: &[u8],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.mcp_url())
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.unwrap()
}

/// The status of an `initialize` sent with one extra header.
async fn initialize_with(gw: &TestGateway, name: &str, value: &str) -> StatusCode {
    reqwest::Client::new()
        .post(gw.mcp_url())
        .header("accept", ACCEPT)
        .header(name, value)
        .bearer_auth(&gw.agent_key)
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap()
        .status()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, i64, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_i64().unwrap_or(0),
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

async fn open_session(gw: &TestGateway) -> String {
    let resp = post(
        gw,
        Some(&gw.agent_key),
        None,
        initialize_body().to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    token
}

#[tokio::test]
async fn keys_are_checked_on_every_request() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(&upstream.url, None).await;
    let init = initialize_body().to_string();

    let resp = post(&gw, None, None, init.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = post(&gw, Some("pcl_notarealkey"), None, init.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (_, revoked_key) = add_agent(&gw.db, gw.org_id, "old", None).await;
    let revoked = portcullis_store::agents::list(&gw.db.pool, gw.org_id)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.name == "old")
        .unwrap();
    assert_eq!(
        post(&gw, Some(&revoked_key), None, init.as_bytes())
            .await
            .status(),
        StatusCode::OK
    );
    portcullis_store::agents::revoke(&gw.db.pool, gw.org_id, revoked.id)
        .await
        .unwrap();
    // Revocation reaches the gateway through NOTIFY: effective within a second.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let status = post(&gw, Some(&revoked_key), None, init.as_bytes())
            .await
            .status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revoked key still works after 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Another organization's key: the server does not exist for it.
    let (other_user, other_org) = portcullis_store::orgs::create_account(
        &gw.db.pool,
        &portcullis_store::orgs::NewAccount {
            email: "other@example.com",
            password_hash: "x",
            org_slug: "other",
            org_name: "Other",
        },
    )
    .await
    .unwrap();
    let _ = other_user;
    let (_, foreign_key) = add_agent(&gw.db, other_org.id, "foreign", None).await;
    assert_eq!(
        post(&gw, Some(&foreign_key), None, init.as_bytes())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // An agent of this organization not granted this server: also 404.
    let (_, narrow_key) = add_agent(&gw.db, gw.org_id, "narrow", Some(&[])).await;
    assert_eq!(
        post(&gw, Some(&narrow_key), None, init.as_bytes())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn sessions_belong_to_their_agent() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let session = open_session(&gw).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();

    let ok = post(&gw, Some(&gw.agent_key), Some(&session), list.as_bytes()).await;
    assert_eq!(ok.status(), StatusCode::OK);

    let (_, other_key) = add_agent(&gw.db, gw.org_id, "other", None).await;
    let (status, _, message) =
        error_of(post(&gw, Some(&other_key), Some(&session), list.as_bytes()).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");

    let (status, _, _) = error_of(
        post(
            &gw,
            Some(&gw.agent_key),
            Some("pcs_forged"),
            list.as_bytes(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, message) =
        error_of(post(&gw, Some(&gw.agent_key), None, list.as_bytes()).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("Mcp-Session-Id"), "{message}");
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_error() {
    let upstream = TestUpstream::start().await;
    let config = GatewayConfig {
        max_body_bytes: 64 * 1024,
        allowed_origins: vec!["https://console.example.com".into()],
        ..gateway::test_config()
    };
    let gw = gateway::start_with(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
        config,
    )
    .await;
    let key = Some(gw.agent_key.as_str());

    let (status, code, _) = error_of(post(&gw, key, None, b"this is not json").await).await;
    assert_eq!((status, code), (StatusCode::BAD_REQUEST, -32700));
    let (status, code, _) = error_of(post(&gw, key, None, br#"{"hello": "world"}"#).await).await;
    assert_eq!((status, code), (StatusCode::BAD_REQUEST, -32600));
    let batch =
        json!([initialize_body(), {"jsonrpc": "2.0", "method": "notifications/initialized"}])
            .to_string();
    let (status, code, message) = error_of(post(&gw, key, None, batch.as_bytes()).await).await;
    assert_eq!(
        (status, code),
        (StatusCode::BAD_REQUEST, -32600),
        "{message}"
    );

    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"pad":"{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    assert_eq!(
        post(&gw, key, None, huge.as_bytes()).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The key-in-path route is bounded the same way, with the same JSON-RPC error.
    let by_path = reqwest::Client::new()
        .post(format!("{}/key/{}", gw.mcp_url(), gw.agent_key))
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(by_path).await;
    assert_eq!(
        (status, code),
        (StatusCode::PAYLOAD_TOO_LARGE, -32600),
        "{message}"
    );

    let bad_origin = initialize_with(&gw, "origin", "https://evil.example.com").await;
    assert_eq!(bad_origin, StatusCode::FORBIDDEN);
    let good_origin = initialize_with(&gw, "origin", "https://console.example.com").await;
    assert_eq!(good_origin, StatusCode::OK);

    let rebinding = initialize_with(&gw, "host", "evil.example.com").await;
    assert_eq!(
        rebinding,
        StatusCode::FORBIDDEN,
        "a foreign Host is refused"
    );
    let same_origin = initialize_with(&gw, "origin", &gw.base_url).await;
    assert_eq!(
        same_origin,
        StatusCode::OK,
        "the gateway's own origin is allowed"
    );

    let json_only = reqwest::Client::new()
        .post(gw.mcp_url())
        .header("accept", "application/json")
        .bearer_auth(&gw.agent_key)
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_only.status(), StatusCode::NOT_ACCEPTABLE);

    let mut big_init = initialize_body();
    big_init["params"]["clientInfo"]["name"] = json!("x".repeat(20 * 1024));
    let (status, code, message) =
        error_of(post(&gw, key, None, big_init.to_string().as_bytes()).await).await;
    assert_eq!((status, code), (StatusCode::OK, -32602), "{message}");

    // After all that, the gateway still serves.
    let session = open_session(&gw).await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "still here"}}});
    let resp = post(&gw, key, Some(&session), call.to_string().as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("still here"), "{text}");
}

#[tokio::test]
async fn a_dead_upstream_is_a_clear_json_rpc_error() {
    let upstream = TestUpstream::start().await;
    let url = upstream.url.clone();
    drop(upstream);
    let gw = gateway::start(&url, Some(json!({"version": "1", "default": "allow"}))).await;
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        None,
        initialize_body().to_string().as_bytes(),
    )
    .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert!(code < 0, "{code}");
    assert!(
        message.to_lowercase().contains("connect") || message.to_lowercase().contains("refused"),
        "{message}"
    );
}

#[tokio::test]
async fn an_expired_upstream_session_is_reopened_transparently() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let session = open_session(&gw).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    assert_eq!(
        post(
            &gw,
            Some(&gw.agent_key),
            Some(&session),
            initialized.as_bytes()
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );

    // End the upstream session behind the gateway's back (as an upstream restart would).
    let opened = portcullis_gateway::session::SessionSealer::new(&gw.key)
        .open(&session)
        .unwrap();
    let upstream_session = opened
        .upstream_session
        .clone()
        .expect("the upstream gave a session id");
    let deleted = reqwest::Client::new()
        .delete(&upstream.url)
        .header("mcp-session-id", &upstream_session)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "after expiry"}}});
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        call.to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("after expiry"), "{text}");
    assert_eq!(upstream.calls("echo"), 1);
}

#[tokio::test]
async fn an_unstorable_tool_name_does_not_stop_the_activity_log() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let session = open_session(&gw).await;
    let nul = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "rm\u{0}rf", "arguments": {"a\u{0}b": 1}}});
    post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        nul.to_string().as_bytes(),
    )
    .await;
    let echo = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "logged"}}});
    post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        echo.to_string().as_bytes(),
    )
    .await;

    let events = gw.activity(2).await;
    let tools: Vec<&str> = events.iter().filter_map(|e| e.tool.as_deref()).collect();
    assert!(tools.contains(&"echo"), "{tools:?}");
    assert!(tools.contains(&"rm\u{FFFD}rf"), "{tools:?}");
}

#[tokio::test]
async fn only_mcp_methods_reach_the_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "deny"})),
    )
    .await;
    let session = open_session(&gw).await;
    // A tools/call sent as a notification (no id) is not forwarded: nothing answers it and
    // nothing reaches the upstream.
    let sneaky = json!({"jsonrpc": "2.0", "method": "tools/call",
                        "params": {"name": "delete_image_set", "arguments": {"name": "prod"}}});
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        sneaky.to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // An unknown method is refused by the gateway itself.
    let odd = json!({"jsonrpc": "2.0", "id": 4, "method": "Tools/Call",
                     "params": {"name": "delete_image_set"}});
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        odd.to_string().as_bytes(),
    )
    .await;
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code), (StatusCode::OK, -32601));
    // A known method still passes.
    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "ping"});
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        Some(&session),
        ping.to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream.calls("delete_image_set"), 0);
}

#[tokio::test]
async fn upstreams_on_private_addresses_are_refused_unless_allowed() {
    let upstream = TestUpstream::start().await;
    let config = GatewayConfig {
        allow_private_upstreams: false,
        ..gateway::test_config()
    };
    let gw = gateway::start_with(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
        config,
    )
    .await;
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        None,
        initialize_body().to_string().as_bytes(),
    )
    .await;
    let (status, _, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    assert!(message.contains("private address"), "{message}");
    assert_eq!(upstream.total_calls(), 0);
    assert_eq!(upstream.list_tools_requests(), 0);

    // The same upstream by a name that resolves to loopback: refused after resolution.
    let by_name = upstream.url.replace("127.0.0.1", "localhost");
    let gw = gateway::start_with(
        &by_name,
        Some(json!({"version": "1", "default": "allow"})),
        GatewayConfig {
            allow_private_upstreams: false,
            ..gateway::test_config()
        },
    )
    .await;
    let resp = post(
        &gw,
        Some(&gw.agent_key),
        None,
        initialize_body().to_string().as_bytes(),
    )
    .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        code < 0 && message.to_lowercase().contains("private"),
        "{code} {message}"
    );
}

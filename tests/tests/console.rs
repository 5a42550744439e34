//! The console API end to end (API.md): the real router and gateway on a real database, real
//! upstream MCP servers (rmcp on loopback, and `@modelcontextprotocol/server-everything`), a
//! real MCP client through the gateway URL the console hands out.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::{TestApp, assert_error};
use portcullis_tests::everything;
use portcullis_tests::upstream::{TOOL_NAMES, TestUpstream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Bound on any one client operation, so a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn tool<'a>(server: &'a Value, name: &str) -> &'a Value {
    server["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not in the catalog: {server}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_from_sign_up_to_a_policy_enforced_on_the_gateway_url() {
    let app = TestApp::start().await;

    // Sign up: the user, an organization, a token.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/signup",
            None,
            Some(
                &json!({"email": "Alice@Example.com", "password": "correct horse battery",
                         "organization": "Acme Corp"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["organization"]["slug"], "acme-corp");
    assert_eq!(body["organization"]["name"], "Acme Corp");
    let org = "acme-corp";

    // Log in.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(&json!({"email": "alice@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(body["expires_at"].is_string());
    let (status, me) = app.get("/api/v1/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me["organizations"],
        json!([{"id": me["organizations"][0]["id"], "slug": org, "name": "Acme Corp", "role": "admin"}])
    );

    // Register a server: live discovery, classified tools, a gateway URL.
    let upstream = TestUpstream::start().await;
    let server = app.register(&token, org, "images", &upstream.url).await;
    let server_id = server["id"].as_str().unwrap().to_owned();
    assert_eq!(server["status"], "active");
    assert_eq!(server["transport"], "streamable_http");
    assert_eq!(
        server["gateway_url"],
        format!("{}/mcp/{server_id}", app.base_url)
    );
    let names = portcullis_tests::gateway::names_in(&server["tools"]);
    assert_eq!(names, TOOL_NAMES);
    assert_eq!(tool(&server, "list_images")["category"], "read");
    assert_eq!(tool(&server, "delete_image_set")["category"], "destructive");
    assert_eq!(tool(&server, "delete_image_set")["risk"], "critical");
    assert_eq!(
        tool(&server, "delete_image_set")["recommended"],
        json!({"hide": true})
    );
    assert_eq!(tool(&server, "create_refund")["category"], "financial");
    assert!(
        tool(&server, "echo")["evidence"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(
        tool(&server, "echo")["input_schema"]["required"],
        json!(["text"])
    );
    assert_eq!(tool(&server, "echo")["changed_since_publish"], false);

    // The list and the one server agree.
    let (status, list) = app
        .get(&format!("/api/v1/orgs/{org}/servers"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["servers"][0]["id"], server_id.as_str());
    assert_eq!(list["servers"][0]["tool_count"], TOOL_NAMES.len());
    assert!(list["servers"][0].get("tools").is_none());

    // An agent key, shown once.
    let (status, agent) = app
        .post(
            &format!("/api/v1/orgs/{org}/agents"),
            &token,
            &json!({"name": "claude-desktop", "servers": [server_id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let key = agent["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pcl_") && key.len() == 47, "{key}");
    assert_eq!(agent["servers"], json!([server_id]));
    let (_, agents) = app.get(&format!("/api/v1/orgs/{org}/agents"), &token).await;
    assert_eq!(agents["agents"][0]["key_prefix"], &key[..12]);
    assert!(agents["agents"][0].get("key").is_none());

    // The proposed draft: the recommended rules, nothing published.
    let policy_path = format!("/api/v1/orgs/{org}/servers/{server_id}/policy");
    let (status, policy) = app.get(&policy_path, &token).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(policy["published"], Value::Null);
    assert_eq!(policy["draft"]["default"], "deny");
    assert!(
        policy["draft"]["hide"]
            .as_array()
            .unwrap()
            .contains(&json!("delete_image_set"))
    );

    // A policy with mistakes: every problem, each with its pointer.
    let (status, body) = app
        .put(
            &policy_path,
            &token,
            &json!({"version": "1", "default": "deny",
                    "tools": {"echo": {"rate_limit": {"max": -3, "window": 60}},
                              "create_refund": {"deny_if": [{"conditions": [{"path": "args.amount", "op": "bigger", "value": 100}]}]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(&body, "invalid_policy");
    let paths: Vec<&str> = body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/tools/echo/rate_limit/max"), "{body}");
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/tools/create_refund/deny_if/0/conditions/0")),
        "{body}"
    );
    // Nothing was saved.
    let (_, unchanged) = app.get(&policy_path, &token).await;
    assert_eq!(unchanged["draft"], policy["draft"]);

    // Fixed, saved, published.
    let fixed = json!({"version": "1", "default": "deny", "hide": ["delete_*"],
                       "tools": {"echo": {"rate_limit": {"max": 100, "window": 60}},
                                 "list_images": {},
                                 "create_refund": {"deny_if": [{"conditions": [{"path": "args.amount", "op": "gt", "value": 100}],
                                                                "on_deny": "Refunds over 100 need the finance team."}]}}});
    let (status, body) = app.put(&policy_path, &token, &fixed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["draft"], fixed);
    let (status, published) = app
        .post(&format!("{policy_path}/publish"), &token, &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["version"], 1);
    let (_, versions) = app.get(&format!("{policy_path}/versions"), &token).await;
    assert_eq!(versions["versions"][0]["version"], 1);
    assert_eq!(versions["versions"][0]["published_by"], me["user"]["id"]);
    let (status, v1) = app.get(&format!("{policy_path}/versions/1"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["document"], fixed);
    let (status, _) = app.get(&format!("{policy_path}/versions/2"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Simulate against the published version.
    for (tool, arguments, decision, rule) in [
        ("echo", json!({"text": "hi"}), "allow", "/tools/echo"),
        (
            "delete_image_set",
            json!({"name": "prod"}),
            "hidden",
            "/hide/0",
        ),
        (
            "create_refund",
            json!({"amount": 500}),
            "deny",
            "/tools/create_refund/deny_if/0",
        ),
        (
            "create_refund",
            json!({"amount": 5}),
            "allow",
            "/tools/create_refund",
        ),
        (
            "deploy_webapp",
            json!({"service": "web"}),
            "deny",
            "/default",
        ),
    ] {
        let (status, body) = app
            .post(
                &format!("{policy_path}/simulate"),
                &token,
                &json!({"tool": tool, "arguments": arguments}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["decision"], decision, "{tool} {arguments}: {body}");
        assert_eq!(body["rule"], rule, "{tool}: {body}");
        assert_eq!(body["version"], 1);
    }
    let (_, refund) = app
        .post(
            &format!("{policy_path}/simulate"),
            &token,
            &json!({"tool": "create_refund", "arguments": {"amount": 500}}),
        )
        .await;
    assert_eq!(refund["reason"], "Refunds over 100 need the finance team.");
    let (_, echo) = app
        .post(
            &format!("{policy_path}/simulate"),
            &token,
            &json!({"tool": "echo", "arguments": {"text": "x"}, "agent_id": agent["id"]}),
        )
        .await;
    assert_eq!(echo["limits"][0]["max"], 100);
    assert_eq!(echo["limits"][0]["window_seconds"], 60);

    // The gateway URL works in a real MCP client with the agent key, under the policy.
    let gateway_url = server["gateway_url"].as_str().unwrap();
    let client = bounded("connect", client::connect(gateway_url, Some(&key)))
        .await
        .unwrap();
    let listed: Vec<String> = bounded("tools/list", client.list_all_tools())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        !listed.contains(&"delete_image_set".to_owned()),
        "{listed:?}"
    );
    assert!(listed.contains(&"echo".to_owned()));
    let echoed = bounded(
        "echo",
        client.call("echo", json!({"text": "through the gate"})),
    )
    .await
    .unwrap();
    assert_eq!(result_text(&echoed), "through the gate");
    let refused = bounded(
        "refund",
        client.call("create_refund", json!({"amount": 500})),
    )
    .await
    .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(
        result_text(&refused),
        "[POLICY DENIED] Refunds over 100 need the finance team."
    );
    assert_eq!(upstream.calls("create_refund"), 0);
    bounded("close", client.close()).await.unwrap();

    // The reference server registers too, with every tool classified.
    let everything = everything::start(&log_dir("journey")).await;
    let (status, reference) = app
        .post(
            &format!("/api/v1/orgs/{org}/servers"),
            &token,
            &json!({"name": "everything", "url": everything.url, "transport": "auto"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reference}");
    let tools = reference["tools"].as_array().unwrap();
    assert!(tools.len() >= 5, "{reference}");
    assert!(tools.iter().any(|t| t["name"] == "echo"), "{reference}");
    for t in tools {
        assert!(
            ["read", "write", "execute", "financial", "destructive"]
                .contains(&t["category"].as_str().unwrap()),
            "{t}"
        );
    }
    // Two servers with one name: 409.
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/servers"),
            &token,
            &json!({"name": "everything", "url": everything.url}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "name_taken");

    // Revoking the agent closes the gateway to its key.
    let (status, _) = app
        .delete(
            &format!(
                "/api/v1/orgs/{org}/agents/{}",
                agent["id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let refused = portcullis_tests::console::wait_until_refused(&app, gateway_url, &key).await;
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
}

fn log_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(test);
    drop(std::fs::remove_dir_all(&dir));
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_servers_register_only_where_allowed() {
    let toolchain = everything::toolchain();
    let command = json!([toolchain.node, toolchain.everything, "stdio"]);

    // The default refuses: a command runs on the Portcullis host.
    let app = TestApp::start().await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{}/servers", alice.slug),
            &alice.token,
            &json!({"name": "local", "command": command}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(&body, "stdio_disabled");

    // Self-hosted with --allow-stdio-servers: discovered over stdio like any other.
    let app = TestApp::start_with(portcullis_console::ConsoleConfig {
        allow_stdio_servers: true,
        ..portcullis_tests::console::test_config()
    })
    .await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let servers = format!("/api/v1/orgs/{}/servers", alice.slug);
    let (status, server) = app
        .post(
            &servers,
            &alice.token,
            &json!({"name": "local", "command": command, "env": {"EVERYTHING_TOKEN": "s3cr3t-value"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    assert_eq!(server["transport"], "stdio");
    assert_eq!(server["command"], command);
    assert!(!server.to_string().contains("s3cr3t-value"));
    let tools = server["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t["name"] == "echo"), "{server}");
    let sid = server["id"].as_str().unwrap();
    let (status, again) = app
        .post(
            &format!("{servers}/{sid}/discover"),
            &alice.token,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["changes"],
        json!({"added": [], "removed": [], "changed": []})
    );

    // A command that is not an MCP server says what it printed or why it stopped.
    let (status, body) = app
        .post(
            &servers,
            &alice.token,
            &json!({"name": "broken", "command": ["sh", "-c", "echo 'cannot find config.yaml' >&2; exit 2"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(&body, "discovery_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot find config.yaml"), "{message}");
    let (status, body) = app
        .post(
            &servers,
            &alice.token,
            &json!({"name": "bad", "command": [""], "env": {"not a name": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: Vec<&str> = body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/command", "/env/not a name"], "{body}");
}

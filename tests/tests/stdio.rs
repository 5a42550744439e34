//! stdio upstreams through the gateway, with a small Python MCP server
//! (`tests/fixtures/stdio_server.py`): one process per (server, agent), restarted after a
//! crash with a clear error for the call in flight, closed when idle, stopped politely then
//! firmly, and refused by a gateway started without `--allow-stdio-servers`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_tests::console::{TestApp, eventually, test_config};
use portcullis_tests::gateway::{call_result, initialize, message_of, rpc};
use reqwest::StatusCode;
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(30);

/// The Python interpreter's absolute path (the server's environment is cleared, so the
/// command names it in full).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn fixture() -> String {
    portcullis_tests::workspace_root()
        .join("tests/fixtures/stdio_server.py")
        .display()
        .to_string()
}

struct Stdio {
    app: TestApp,
    url: String,
    key: String,
}

/// A console and gateway with stdio allowed (the gateway per `gateway`), the fixture
/// registered with `env`, an allow-all policy published, and an agent.
async fn start(gateway: portcullis_gateway::GatewayConfig, env: Value) -> Stdio {
    let app = TestApp::start_full(
        portcullis_console::ConsoleConfig {
            allow_stdio_servers: true,
            ..test_config()
        },
        gateway,
    )
    .await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let (status, server) = app
        .post(
            &format!("/api/v1/orgs/{}/servers", alice.slug),
            &alice.token,
            &json!({"name": "fixture", "command": [python(), fixture()], "env": env}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    assert_eq!(server["transport"], "stdio");
    let server_id = server["id"].as_str().unwrap();
    app.publish_policy(
        &alice.token,
        &alice.slug,
        server_id,
        None,
        &json!({"version": "1", "default": "allow"}),
    )
    .await;
    let (_, key) = app.create_agent(&alice.token, &alice.slug, "bot").await;
    Stdio {
        url: server["gateway_url"].as_str().unwrap().to_owned(),
        key,
        app,
    }
}

fn stdio_gateway() -> portcullis_gateway::GatewayConfig {
    portcullis_gateway::GatewayConfig {
        allow_stdio_servers: true,
        ..portcullis_tests::gateway::test_config()
    }
}

async fn pid(s: &Stdio, session: &str, id: u64) -> u32 {
    let result = tokio::time::timeout(
        STEP,
        call_result(&s.url, &s.key, session, id, "pid", json!({})),
    )
    .await
    .expect("pid answers");
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a pid in {result}"))
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    // A process reaped by its parent leaves no /proc entry.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_fails_the_call_in_flight_clearly_and_restarts_on_the_next() {
    let s = start(stdio_gateway(), json!({})).await;
    let session = initialize(&s.url, &s.key).await;
    let first = pid(&s, &session, 1).await;
    // Two calls share the agent's one process.
    assert_eq!(pid(&s, &session, 2).await, first);

    let resp = rpc(
        &s.url,
        &s.key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "crash", "arguments": {}}}),
    )
    .await;
    let answer = message_of(resp, 3).await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exit status: 3") && message.contains("fatal: out of cheese"),
        "{answer}"
    );

    // The same client session goes on, on a new process.
    let second = pid(&s, &session, 4).await;
    assert_ne!(second, first);
    assert!(!alive(first), "the crashed process is reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_is_stopped_and_started_again_on_use() {
    let s = start(
        portcullis_gateway::GatewayConfig {
            upstream_idle_timeout: Duration::from_millis(300),
            ..stdio_gateway()
        },
        json!({}),
    )
    .await;
    let session = initialize(&s.url, &s.key).await;
    let first = pid(&s, &session, 1).await;
    assert!(alive(first));
    eventually("the idle process stops", STEP, || async {
        (!alive(first)).then_some(())
    })
    .await;
    assert!(s.app.gateway.channels.is_empty());
    let second = pid(&s, &session, 2).await;
    assert_ne!(second, first);
    assert!(alive(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_its_closed_input_gets_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mark: PathBuf = dir.path().join("mark");
    let s = start(
        stdio_gateway(),
        json!({"STUBBORN": "1", "MARK": mark.display().to_string()}),
    )
    .await;
    let session = initialize(&s.url, &s.key).await;
    let running = pid(&s, &session, 1).await;
    assert_eq!(s.app.gateway.close_upstreams().await, 1);
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "term");
    assert!(!alive(running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_allow_stdio_servers_refuses_to_run_one() {
    let s = start(portcullis_tests::gateway::test_config(), json!({})).await;
    let resp = rpc(
        &s.url,
        &s.key,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without --allow-stdio-servers"),
        "{body}"
    );
    assert!(s.app.gateway.channels.is_empty());
}

/// `mcp-server-time` (PyPI, the Python SDK), installed by `tests/conformance/setup.sh`.
fn time_server() -> Vec<String> {
    let python = portcullis_tests::workspace_root().join("tests/conformance/pyvenv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/conformance/setup.sh",
        python.display()
    );
    vec![
        python.display().to_string(),
        "-m".into(),
        "mcp_server_time".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_server_from_pypi_is_registered_by_command_classified_and_enforced() {
    let app = TestApp::start_with(portcullis_console::ConsoleConfig {
        allow_stdio_servers: true,
        ..test_config()
    })
    .await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let (status, server) = app
        .post(
            &format!("/api/v1/orgs/{}/servers", alice.slug),
            &alice.token,
            &json!({"name": "time", "command": time_server()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    assert_eq!(server["transport"], "stdio");
    let tools = server["tools"].as_array().unwrap();
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {server}"))
            .clone()
    };
    assert_eq!(tool("get_current_time")["category"], "read");
    // A `convert_` verb may write (files, records): its read-only hint cannot lower that.
    let convert = tool("convert_time");
    assert_eq!(convert["category"], "write", "{convert}");
    assert!(
        convert["evidence"].to_string().contains("cannot lower"),
        "{convert}"
    );
    let server_id = server["id"].as_str().unwrap();
    app.publish_policy(
        &alice.token,
        &alice.slug,
        server_id,
        None,
        &json!({"version": "1", "default": "deny", "tools": {
            "get_current_time": {},
            "convert_time": {"action": "deny", "reason": "Ask for one zone at a time."}}}),
    )
    .await;
    let (_, key) = app.create_agent(&alice.token, &alice.slug, "bot").await;
    let url = server["gateway_url"].as_str().unwrap();
    let session = initialize(url, &key).await;
    let now = tokio::time::timeout(
        STEP,
        call_result(
            url,
            &key,
            &session,
            1,
            "get_current_time",
            json!({"timezone": "Etc/UTC"}),
        ),
    )
    .await
    .unwrap();
    assert_ne!(now["isError"], true, "{now}");
    assert_eq!(now["structuredContent"]["timezone"], "Etc/UTC", "{now}");
    let refused = tokio::time::timeout(
        STEP,
        call_result(
            url,
            &key,
            &session,
            2,
            "convert_time",
            json!({"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(
        refused["content"][0]["text"],
        "[POLICY DENIED] Ask for one zone at a time."
    );
}

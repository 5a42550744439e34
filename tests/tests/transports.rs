//! The matrix of client eras and upstream transports: the reference server
//! (`@modelcontextprotocol/server-everything`, handshake era only) over Streamable HTTP, over the
//! legacy HTTP+SSE transport (2024-11-05), and over stdio, each registered through the console
//! (transport detected), then used through the gateway by a handshake-era client and by a
//! stateless (2026-07-28) client (translated): list tools (hidden ones missing), call an
//! allowed tool, be denied, hit a rate limit, answer an elicitation inside a call (a
//! server-to-client request, or an `input_required` round), and hear `list_changed` after a
//! publish (on the GET stream, or on `subscriptions/listen`).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use portcullis_mcp::upstream::{EventStream, UpstreamError};
use portcullis_tests::console::{TestApp, test_config};
use portcullis_tests::everything::{self, Transport};
use portcullis_tests::gateway::{call_result, rpc};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Bound on any one step.
const STEP: Duration = Duration::from_secs(30);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

fn log_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("transports")
        .join(test);
    drop(std::fs::remove_dir_all(&dir));
    dir
}

/// The events of an SSE response.
fn events_of(resp: reqwest::Response) -> EventStream {
    let bytes = resp
        .bytes_stream()
        .map_err(|e| UpstreamError::Connect(e.to_string()));
    EventStream::new(bytes, 4 * 1024 * 1024)
}

/// The next JSON-RPC message of a stream that satisfies `wanted`.
async fn next_message(events: &mut EventStream, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let event = events
            .next()
            .await
            .expect("the stream ended")
            .expect("an event");
        if event.data.trim().is_empty() {
            continue;
        }
        let message: Value = serde_json::from_str(&event.data).expect("JSON in an event");
        if wanted(&message) {
            return message;
        }
    }
}

async fn tool_names(url: &str, key: &str, session: &str, id: u64) -> Vec<String> {
    let resp = rpc(
        url,
        key,
        Some(session),
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
    )
    .await;
    let answer = portcullis_tests::gateway::message_of(resp, id).await;
    portcullis_tests::gateway::names_in(&answer["result"]["tools"])
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

const HIDDEN: &str = "get-env";

fn policy(hide_echo: bool) -> Value {
    let mut hide = vec![HIDDEN];
    if hide_echo {
        hide.push("echo");
    }
    json!({
        "version": "1",
        "default": "deny",
        "hide": hide,
        "tools": {
            "echo": {},
            "get-sum": {"rate_limit": {"max": 2, "window": "minute"}},
            "get-tiny-image": {"action": "deny", "reason": "No images through this gateway."},
            "trigger-elicitation-request": {},
        },
    })
}

enum Upstream {
    Http(Transport),
    Stdio,
}

async fn matrix(test: &str, upstream: Upstream) {
    let toolchain = everything::toolchain();
    let dir = log_dir(test);
    let (_server, registration, expected) = match upstream {
        Upstream::Http(transport) => {
            let server = everything::start_transport(&toolchain, &dir, transport).await;
            let registration =
                json!({"name": "everything", "url": server.url, "transport": "auto"});
            let expected = match transport {
                Transport::StreamableHttp => "streamable_http",
                Transport::Sse => "sse",
            };
            (Some(server), registration, expected)
        }
        Upstream::Stdio => (
            None,
            json!({"name": "everything", "command": everything::stdio_command(&toolchain)}),
            "stdio",
        ),
    };
    let app = TestApp::start_with(portcullis_console::ConsoleConfig {
        allow_stdio_servers: true,
        ..test_config()
    })
    .await;
    let alice = app.signup("alice@acme.test", "Acme").await;
    let org = &alice.slug;

    // Registered with the transport detected, every tool classified.
    let (status, server) = bounded(
        "register",
        app.post(
            &format!("/api/v1/orgs/{org}/servers"),
            &alice.token,
            &registration,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    assert_eq!(server["transport"], expected, "{server}");
    let tools = server["tools"].as_array().unwrap();
    for name in ["echo", "get-sum", HIDDEN] {
        let tool = tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {server}"));
        assert!(tool["category"].is_string(), "{tool}");
    }
    let server_id = server["id"].as_str().unwrap();
    let url = server["gateway_url"].as_str().unwrap().to_owned();
    let (_, key) = app.create_agent(&alice.token, org, "matrix").await;
    app.publish_policy(&alice.token, org, server_id, None, &policy(false))
        .await;

    // Declaring elicitation: server-everything offers its elicitation tool only then.
    let session = bounded(
        "initialize",
        portcullis_tests::gateway::initialize_with(&url, &key, json!({"elicitation": {}})),
    )
    .await;
    let listening = bounded(
        "the GET stream",
        reqwest::Client::new()
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .bearer_auth(&key)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(listening.status(), StatusCode::OK);
    let mut notifications = events_of(listening);

    // The hidden tool is not listed; the others are.
    let names = bounded("tools/list", tool_names(&url, &key, &session, 1)).await;
    assert!(names.iter().any(|n| n == "echo"), "{names:?}");
    assert!(names.iter().any(|n| n == "get-sum"), "{names:?}");
    assert!(!names.iter().any(|n| n == HIDDEN), "{names:?}");

    // Allowed, denied with the reason, hidden = denied.
    let echoed = bounded(
        "echo",
        call_result(&url, &key, &session, 2, "echo", json!({"message": "hi"})),
    )
    .await;
    assert_eq!(text(&echoed), "Echo: hi", "{echoed}");
    let denied = bounded(
        "get-tiny-image",
        call_result(&url, &key, &session, 3, "get-tiny-image", json!({})),
    )
    .await;
    assert_eq!(denied["isError"], true, "{denied}");
    assert_eq!(
        text(&denied),
        "[POLICY DENIED] No images through this gateway."
    );
    let hidden = bounded(
        HIDDEN,
        call_result(&url, &key, &session, 4, HIDDEN, json!({})),
    )
    .await;
    assert_eq!(hidden["isError"], true, "{hidden}");
    assert!(!text(&hidden).contains("PATH"), "{hidden}");

    // Two sums, then the limit.
    for id in [5, 6] {
        let sum = bounded(
            "get-sum",
            call_result(
                &url,
                &key,
                &session,
                id,
                "get-sum",
                json!({"a": 2, "b": 40}),
            ),
        )
        .await;
        assert!(text(&sum).contains("42"), "{sum}");
    }
    let limited = bounded(
        "get-sum",
        call_result(&url, &key, &session, 7, "get-sum", json!({"a": 2, "b": 40})),
    )
    .await;
    assert_eq!(limited["isError"], true, "{limited}");
    assert!(text(&limited).starts_with("[RATE LIMITED]"), "{limited}");

    // An elicitation inside a call: the server's request reaches the client on the call's
    // stream, the client's answer reaches the server, and the call finishes with it.
    let resp = rpc(
        &url,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
               "params": {"name": "trigger-elicitation-request", "arguments": {}}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut call = events_of(resp);
    let asked = bounded(
        "the elicitation request",
        next_message(&mut call, |m| m["method"] == "elicitation/create"),
    )
    .await;
    assert!(asked["params"]["requestedSchema"].is_object(), "{asked}");
    let answered = rpc(
        &url,
        &key,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": asked["id"],
               "result": {"action": "accept", "content": {"name": "Ada Lovelace"}}}),
    )
    .await;
    assert_eq!(answered.status(), StatusCode::ACCEPTED);
    let finished = bounded(
        "the elicitation call's answer",
        next_message(&mut call, |m| m["id"] == 8),
    )
    .await;
    assert!(
        text(&finished["result"]).contains("Name: Ada Lovelace"),
        "{finished}"
    );

    // A publish that hides echo: the client hears list_changed, and echo is gone.
    app.publish_policy(&alice.token, org, server_id, None, &policy(true))
        .await;
    bounded(
        "list_changed",
        next_message(&mut notifications, |m| {
            m["method"] == "notifications/tools/list_changed"
        }),
    )
    .await;
    let names = bounded("tools/list", tool_names(&url, &key, &session, 9)).await;
    assert!(!names.iter().any(|n| n == "echo"), "{names:?}");

    stateless_phase(&app, &alice, server_id, &url).await;

    // Every decision is in the activity log.
    let path = format!("/api/v1/orgs/{org}/activity?limit=500");
    portcullis_tests::console::eventually("every decision in the activity log", STEP, || async {
        let (status, body) = app.get(&path, &alice.token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let decisions: Vec<String> = body["events"]
            .as_array()?
            .iter()
            .filter(|e| e["method"] == "tools/call")
            .filter_map(|e| e["decision"].as_str().map(str::to_owned))
            .collect();
        ["allow", "deny", "hidden", "rate_limited"]
            .iter()
            .all(|d| decisions.iter().any(|x| x == d))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http() {
    matrix("streamable_http", Upstream::Http(Transport::StreamableHttp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_legacy_sse() {
    matrix("sse", Upstream::Http(Transport::Sse)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_stdio() {
    matrix("stdio", Upstream::Stdio).await;
}

const STATELESS: &str = "2026-07-28";

/// A stateless request: the envelope in `_meta` (declaring elicitation) and the mirror
/// headers.
async fn stateless(
    url: &str,
    key: &str,
    id: u64,
    method: &str,
    mut params: Value,
) -> reqwest::Response {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "matrix-stateless", "version": "1"},
    });
    let mut request = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS)
        .header("mcp-method", method)
        .bearer_auth(key);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        request = request.header("mcp-name", name);
    }
    request
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
}

async fn stateless_result(url: &str, key: &str, id: u64, method: &str, params: Value) -> Value {
    let resp = bounded(method, stateless(url, key, id, method, params)).await;
    let answer = bounded(method, portcullis_tests::gateway::message_of(resp, id)).await;
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// The same checks from a stateless client, with another agent (its own counters and, over
/// stdio and SSE, its own connection).
async fn stateless_phase(
    app: &TestApp,
    alice: &portcullis_tests::console::Account,
    server_id: &str,
    url: &str,
) {
    let org = &alice.slug;
    app.publish_policy(&alice.token, org, server_id, None, &policy(false))
        .await;
    let (_, key) = app
        .create_agent(&alice.token, org, "matrix-stateless")
        .await;

    let discovered = stateless_result(url, &key, 1, "server/discover", json!({})).await;
    assert_eq!(
        discovered["supportedVersions"][0], STATELESS,
        "{discovered}"
    );
    assert!(
        discovered["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].is_string(),
        "{discovered}"
    );

    let listening = bounded(
        "subscriptions/listen",
        stateless(
            url,
            &key,
            2,
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true}}),
        ),
    )
    .await;
    assert_eq!(listening.status(), StatusCode::OK);
    let mut subscription = events_of(listening);
    let ack = bounded(
        "the acknowledgement",
        next_message(&mut subscription, |m| {
            m["method"] == "notifications/subscriptions/acknowledged"
        }),
    )
    .await;
    let subscription_id = ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"].clone();
    assert!(subscription_id.is_string(), "{ack}");

    let listed = stateless_result(url, &key, 3, "tools/list", json!({})).await;
    assert_eq!(listed["resultType"], "complete");
    assert_eq!(listed["cacheScope"], "private");
    let names = portcullis_tests::gateway::names_in(&listed["tools"]);
    assert!(
        names.contains(&"echo") && !names.contains(&HIDDEN),
        "{names:?}"
    );

    let call = |id: u64, name: &'static str, args: Value| {
        let key = key.clone();
        async move {
            stateless_result(
                url,
                &key,
                id,
                "tools/call",
                json!({"name": name, "arguments": args}),
            )
            .await
        }
    };
    let echoed = call(4, "echo", json!({"message": "stateless"})).await;
    assert_eq!(text(&echoed), "Echo: stateless", "{echoed}");
    assert_eq!(echoed["resultType"], "complete");
    let denied = call(5, "get-tiny-image", json!({})).await;
    assert_eq!(denied["isError"], true);
    assert_eq!(
        text(&denied),
        "[POLICY DENIED] No images through this gateway."
    );
    for id in [6, 7] {
        let sum = call(id, "get-sum", json!({"a": 2, "b": 40})).await;
        assert!(text(&sum).contains("42"), "{sum}");
    }
    let limited = call(8, "get-sum", json!({"a": 2, "b": 40})).await;
    assert!(text(&limited).starts_with("[RATE LIMITED]"), "{limited}");

    // The upstream's elicitation becomes an input round; the retry answers it.
    let asked = call(9, "trigger-elicitation-request", json!({})).await;
    assert_eq!(asked["resultType"], "input_required", "{asked}");
    assert_eq!(
        asked["inputRequests"]["input"]["method"], "elicitation/create",
        "{asked}"
    );
    let state = asked["requestState"].as_str().unwrap().to_owned();
    let finished = stateless_result(
        url,
        &key,
        10,
        "tools/call",
        json!({"name": "trigger-elicitation-request", "arguments": {},
               "inputResponses": {"input": {"action": "accept", "content": {"name": "Grace Hopper"}}},
               "requestState": state}),
    )
    .await;
    assert_eq!(finished["resultType"], "complete", "{finished}");
    assert!(text(&finished).contains("Name: Grace Hopper"), "{finished}");

    // A publish that hides echo, heard on the subscription.
    app.publish_policy(&alice.token, org, server_id, None, &policy(true))
        .await;
    let changed = bounded(
        "list_changed on the subscription",
        next_message(&mut subscription, |m| {
            m["method"] == "notifications/tools/list_changed"
        }),
    )
    .await;
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        subscription_id
    );
    let listed = stateless_result(url, &key, 11, "tools/list", json!({})).await;
    let names = portcullis_tests::gateway::names_in(&listed["tools"]);
    assert!(!names.contains(&"echo"), "{names:?}");
}

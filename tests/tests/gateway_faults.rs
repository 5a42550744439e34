//! Upstream faults, end to end: a hand-written MCP upstream (axum, in this file) that hangs,
//! answers garbage, answers too much, or drops its stream midway, behind a real gateway. The
//! client must always get a JSON-RPC error for its request id (never a hang), rate-limit
//! reservations must be released, and the gateway must keep serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use portcullis_gateway::GatewayConfig;
use portcullis_tests::client::{self, result_text};
use portcullis_tests::gateway::{self, TestGateway};
use rmcp::ServiceError;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// Bound on any one request of the test, so a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(20);
const ACCEPT: &str = "application/json, text/event-stream";
const UPSTREAM_SESSION: &str = "faulty-session-1";

// ---------------------------------------------------------------------------------------------
// The faulty upstream

/// The tools it lists. Each `tools/call` answers according to the tool's name:
///
/// | tool | answer |
/// |---|---|
/// | `echo` | `{text}` back, as JSON |
/// | `hang` | nothing, ever (not even headers) |
/// | `hang_after_headers` | `200 text/event-stream`, then nothing, ever |
/// | `html` | `200 text/html`, an error page |
/// | `not_json` | `200 application/json`, a body that is not JSON |
/// | `not_jsonrpc` | `200 application/json`, JSON that is not JSON-RPC |
/// | `empty` | `200 application/json` with no body |
/// | `status_500` | `500`, a plain-text body |
/// | `wrong_id` | `200 application/json`, a response to another request id |
/// | `a_request` | `200 application/json`, a `ping` request (with the call's id) instead of a response |
/// | `a_notification` | `200 application/json`, a notification instead of a response |
/// | `big` | a valid result whose text is `bytes` long, framed as `framing`: `json` (with a Content-Length), `chunked` (without), `sse` (one event) |
/// | `stream_dies` | SSE: a progress notification, half the response event, then the connection breaks |
/// | `stream_ends` | SSE: a progress notification, then the stream ends cleanly, unanswered |
const TOOLS: &[&str] = &[
    "echo",
    "hang",
    "hang_after_headers",
    "html",
    "not_json",
    "not_jsonrpc",
    "empty",
    "status_500",
    "wrong_id",
    "a_request",
    "a_notification",
    "big",
    "stream_dies",
    "stream_ends",
];

#[derive(Clone)]
struct Upstream {
    /// `tools/call`s received, by tool.
    calls: Arc<watch::Sender<HashMap<String, usize>>>,
    /// Breaks the connection of a `stream_dies` call (once its first bytes are through).
    die: Arc<Notify>,
}

struct FaultyUpstream {
    url: String,
    calls: Arc<watch::Sender<HashMap<String, usize>>>,
    die: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyUpstream {
    async fn start() -> Self {
        let calls = Arc::new(watch::Sender::new(HashMap::new()));
        let die = Arc::new(Notify::new());
        let app = Router::new()
            .route(
                "/mcp",
                post(handle)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(|| async { StatusCode::OK }),
            )
            .with_state(Upstream {
                calls: calls.clone(),
                die: die.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        FaultyUpstream {
            url: format!("http://{addr}/mcp"),
            calls,
            die,
            task,
        }
    }

    fn calls(&self, tool: &str) -> usize {
        self.calls.borrow().get(tool).copied().unwrap_or(0)
    }

    /// Waits until `tool` was called `n` times.
    async fn wait_calls(&self, tool: &str, n: usize) {
        let mut rx = self.calls.subscribe();
        tokio::time::timeout(
            BOUND,
            rx.wait_for(|c| c.get(tool).copied().unwrap_or(0) >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("{tool} did not reach the upstream {n} times"))
        .unwrap();
    }
}

fn json_response(body: &Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        "mcp-session-id",
        header::HeaderValue::from_static(UPSTREAM_SESSION),
    );
    response
}

fn with_type(content_type: &'static str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap()
}

fn sse_event(message: &Value) -> String {
    format!("event: message\ndata: {message}\n\n")
}

fn text_result(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "result": {"content": [{"type": "text", "text": text}], "isError": false}})
}

async fn handle(State(state): State<Upstream>, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = message["method"].as_str().unwrap_or_default();
    // Notifications (and responses) are accepted.
    let Some(id) = message.get("id").filter(|_| !method.is_empty()).cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    match method {
        "initialize" => {
            let version = message["params"]["protocolVersion"]
                .as_str()
                .unwrap_or("2025-06-18");
            json_response(&json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "faulty-upstream", "version": "1.0.0"}}}))
        }
        "tools/list" => {
            let tools: Vec<Value> = TOOLS
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object"}}))
                .collect();
            json_response(&json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}}))
        }
        "tools/call" => {
            let tool = message["params"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let args = message["params"]["arguments"].clone();
            let token = message["params"]["_meta"]["progressToken"].clone();
            state
                .calls
                .send_modify(|c| *c.entry(tool.clone()).or_default() += 1);
            call(&tool, &id, &args, &token, state.die.clone()).await
        }
        _ => json_response(&json!({"jsonrpc": "2.0", "id": id,
                                   "error": {"code": -32601, "message": "Method not found"}})),
    }
}

async fn call(tool: &str, id: &Value, args: &Value, token: &Value, die: Arc<Notify>) -> Response {
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                          "params": {"progressToken": token, "progress": 1, "total": 2}});
    match tool {
        "echo" => json_response(&text_result(id, args["text"].as_str().unwrap_or_default())),
        "hang" => std::future::pending().await,
        "hang_after_headers" => with_type(
            "text/event-stream",
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>()),
        ),
        "html" => with_type(
            "text/html; charset=utf-8",
            Body::from("<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>"),
        ),
        "not_json" => with_type("application/json", Body::from("<<this is { not json")),
        "not_jsonrpc" => json_response(&json!({"status": "ok", "items": [1, 2, 3]})),
        "empty" => with_type("application/json", Body::empty()),
        "status_500" => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("internal error"))
            .unwrap(),
        "wrong_id" => json_response(&text_result(&json!("someone-else"), "misaddressed")),
        "a_request" => json_response(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"})),
        "a_notification" => json_response(&json!({"jsonrpc": "2.0",
            "method": "notifications/message", "params": {"level": "info", "data": "hello"}})),
        "big" => {
            let bytes = args["bytes"].as_u64().unwrap_or(0) as usize;
            let answer = text_result(id, &"x".repeat(bytes));
            match args["framing"].as_str().unwrap_or("json") {
                "json" => json_response(&answer),
                "chunked" => {
                    let body = answer.to_string().into_bytes();
                    let chunks: Vec<Result<Bytes, std::io::Error>> = body
                        .chunks(16 * 1024)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    with_type(
                        "application/json",
                        Body::from_stream(futures_util::stream::iter(chunks)),
                    )
                }
                _ => with_type("text/event-stream", Body::from(sse_event(&answer))),
            }
        }
        "stream_dies" => {
            let response = sse_event(&text_result(id, "never delivered whole"));
            let half = response[..response.len() / 2].to_owned();
            let sent: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(Bytes::from(sse_event(&progress))), Ok(Bytes::from(half))];
            // The break comes when the test says (once the progress went through), so it
            // cannot overtake the bytes before it.
            let crash = futures_util::stream::once(async move {
                die.notified().await;
                Err(std::io::Error::other("the upstream crashed"))
            });
            with_type(
                "text/event-stream",
                Body::from_stream(futures_util::stream::iter(sent).chain(crash)),
            )
        }
        "stream_ends" => with_type("text/event-stream", Body::from(sse_event(&progress))),
        _ => json_response(&json!({"jsonrpc": "2.0", "id": id,
                                   "error": {"code": -32602, "message": "Unknown tool"}})),
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client of the gateway

/// One session on the gateway, spoken with plain HTTP.
struct RawSession {
    http: reqwest::Client,
    url: String,
    key: String,
    session: String,
}

/// What the gateway answered to one POST: the HTTP status and every JSON-RPC message (the JSON
/// body, or the data of each SSE event).
struct Answer {
    status: StatusCode,
    messages: Vec<Value>,
    elapsed: Duration,
}

impl Answer {
    /// The response to request `id`: it must be there once, and be the last message.
    fn response(&self, id: &Value) -> &Value {
        let responses: Vec<&Value> = self
            .messages
            .iter()
            .filter(|m| m.get("id") == Some(id))
            .collect();
        assert_eq!(
            responses.len(),
            1,
            "one response to {id}: {:?}",
            self.messages
        );
        assert_eq!(
            self.messages.last(),
            Some(responses[0]),
            "the response comes last"
        );
        responses[0]
    }

    /// The JSON-RPC error answering `id`: (code, message, data).
    fn error(&self, id: &Value) -> (i64, String, Value) {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.messages);
        let response = self.response(id);
        let error = response
            .get("error")
            .unwrap_or_else(|| panic!("a JSON-RPC error, got {response}"));
        (
            error["code"].as_i64().unwrap_or(0),
            error["message"].as_str().unwrap_or_default().to_owned(),
            error["data"].clone(),
        )
    }

    /// The text of the tool result answering `id`.
    fn text(&self, id: &Value) -> String {
        let response = self.response(id);
        response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("a text result, got {response}"))
            .to_owned()
    }
}

/// The data of each SSE event with any (priming events have none).
fn sse_messages(text: &str) -> Vec<Value> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let data = data.join("\n");
            (!data.trim().is_empty()).then(|| {
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data {data}: {e}"))
            })
        })
        .collect()
}

async fn post_raw(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .bearer_auth(key)
        .body(body.to_string());
    if let Some(s) = session {
        request = request
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    request.send().await.expect("the gateway answers")
}

impl RawSession {
    async fn open(gw: &TestGateway) -> RawSession {
        let http = reqwest::Client::builder().timeout(BOUND).build().unwrap();
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw-faults", "version": "1"}}});
        let response = post_raw(&http, &gw.mcp_url(), &gw.agent_key, None, &init).await;
        assert_eq!(response.status(), StatusCode::OK);
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["result"]["protocolVersion"], "2025-06-18", "{body}");
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let response = post_raw(
            &http,
            &gw.mcp_url(),
            &gw.agent_key,
            Some(&session),
            &initialized,
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        RawSession {
            http,
            url: gw.mcp_url(),
            key: gw.agent_key.clone(),
            session,
        }
    }

    /// `tools/call` of `tool` with `args`, request id `id`, progress token `progress-<id>`.
    async fn call(&self, id: Value, tool: &str, args: Value) -> Answer {
        self.call_then(id, tool, args, None).await
    }

    /// [`call`](Self::call), notifying `after_first_event` once the first SSE event of the
    /// answer has arrived.
    async fn call_then(
        &self,
        id: Value,
        tool: &str,
        args: Value,
        after_first_event: Option<&Notify>,
    ) -> Answer {
        let token = format!("progress-{id}");
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": tool, "arguments": args, "_meta": {"progressToken": token}}});
        let started = Instant::now();
        let response = post_raw(
            &self.http,
            &self.url,
            &self.key,
            Some(&self.session),
            &request,
        )
        .await;
        let status = response.status();
        let sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut body = Vec::new();
        let mut notify = after_first_event;
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .unwrap_or_else(|e| panic!("{tool}: the gateway's answer could not be read: {e}"))
        {
            body.extend_from_slice(&chunk);
            if body.windows(2).any(|w| w == b"\n\n")
                && let Some(n) = notify.take()
            {
                n.notify_one();
            }
        }
        assert!(
            notify.is_none(),
            "{tool}: no SSE event came before the end: {}",
            String::from_utf8_lossy(&body)
        );
        let text = String::from_utf8(body).expect("UTF-8");
        let elapsed = started.elapsed();
        let messages = if sse {
            sse_messages(&text)
        } else {
            vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: {text}: {e}"))]
        };
        Answer {
            status,
            messages,
            elapsed,
        }
    }
}

fn allow_with(tools: Value) -> Value {
    json!({"version": "1", "default": "allow", "tools": tools})
}

fn one_per_minute() -> Value {
    json!({"rate_limit": {"max": 1, "window": "minute"}})
}

// ---------------------------------------------------------------------------------------------
// Tests

const TIMEOUT: Duration = Duration::from_millis(300);
/// How late a timeout error may arrive on a loaded machine.
const MARGIN: Duration = Duration::from_millis(2500);

fn assert_timed_out(answer: &Answer, id: &Value) {
    let (code, message, data) = answer.error(id);
    assert_eq!(code, -32000, "{message}");
    assert_eq!(message, "Upstream timed out after 300 ms");
    assert_eq!(data["reason"], "timeout", "{data}");
    assert!(
        answer.elapsed >= TIMEOUT && answer.elapsed < TIMEOUT + MARGIN,
        "answered after {:?}, the timeout is {TIMEOUT:?}",
        answer.elapsed
    );
}

#[tokio::test]
async fn a_hanging_upstream_is_a_timeout_error_and_releases_the_rate_limit() {
    let upstream = FaultyUpstream::start().await;
    let policy = allow_with(json!({
        "hang": one_per_minute(),
        "hang_after_headers": one_per_minute(),
        "echo": one_per_minute(),
    }));
    let config = GatewayConfig {
        upstream_timeout: TIMEOUT,
        ..gateway::test_config()
    };
    let gw = gateway::start_with(&upstream.url, Some(policy), config).await;
    let session = RawSession::open(&gw).await;

    // No headers at all: the call's timeout.
    let first = session.call(json!(1), "hang", json!({})).await;
    assert_timed_out(&first, &json!(1));
    // The failed call gave its reservation back: the second one is forwarded, not limited.
    let second = session.call(json!(2), "hang", json!({})).await;
    assert_timed_out(&second, &json!(2));
    assert_eq!(upstream.calls("hang"), 2);

    // Headers, then silence: the stream's idle timeout, answered on the stream.
    let first = session
        .call(json!("s-1"), "hang_after_headers", json!({}))
        .await;
    assert_timed_out(&first, &json!("s-1"));
    let second = session
        .call(json!("s-2"), "hang_after_headers", json!({}))
        .await;
    assert_timed_out(&second, &json!("s-2"));
    assert_eq!(upstream.calls("hang_after_headers"), 2);

    // The same limit on a tool that answers is enforced: the releases above are not a limit
    // that does nothing.
    let ok = session
        .call(json!(3), "echo", json!({"text": "once"}))
        .await;
    assert_eq!(ok.text(&json!(3)), "once");
    let limited = session
        .call(json!(4), "echo", json!({"text": "twice"}))
        .await;
    let text = limited.text(&json!(4));
    assert!(
        text.starts_with("[RATE LIMITED] echo: 1 per minute; retry in "),
        "{text}"
    );
    assert_eq!(upstream.calls("echo"), 1);

    // A real client sees the timeout as a JSON-RPC error too.
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(BOUND, client.call("hang", json!({})))
        .await
        .expect("the rmcp client is answered");
    match error {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.message, "Upstream timed out after 300 ms");
        }
        other => panic!("a JSON-RPC error, got {other:?}"),
    }
    assert!(started.elapsed() < TIMEOUT + MARGIN);
}

#[tokio::test]
async fn a_hanging_call_does_not_hold_up_other_requests_or_sessions() {
    let upstream = FaultyUpstream::start().await;
    // The default 60 s timeout: the hanging call stays in flight for the whole test.
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let stuck = Arc::new(
        client::connect(&gw.mcp_url(), Some(&gw.agent_key))
            .await
            .unwrap(),
    );
    let hanging = tokio::spawn({
        let stuck = stuck.clone();
        async move { stuck.call("hang", json!({})).await }
    });
    upstream.wait_calls("hang", 1).await;

    // Another request of the same session.
    let same = tokio::time::timeout(BOUND, stuck.call("echo", json!({"text": "same session"})))
        .await
        .expect("answered while a call hangs")
        .unwrap();
    assert_eq!(result_text(&same), "same session");
    // A new session, from its handshake on.
    let other = tokio::time::timeout(BOUND, client::connect(&gw.mcp_url(), Some(&gw.agent_key)))
        .await
        .expect("a session opens while a call hangs")
        .unwrap();
    let names = tokio::time::timeout(BOUND, other.list_all_tools())
        .await
        .expect("tools/list answered while a call hangs")
        .unwrap();
    assert_eq!(names.len(), TOOLS.len());
    let echoed = tokio::time::timeout(BOUND, other.call("echo", json!({"text": "other session"})))
        .await
        .expect("answered while a call hangs")
        .unwrap();
    assert_eq!(result_text(&echoed), "other session");

    assert!(
        !hanging.is_finished(),
        "the hanging call is still in flight"
    );
    hanging.abort();
}

#[tokio::test]
async fn garbage_from_the_upstream_is_a_clear_json_rpc_error() {
    let upstream = FaultyUpstream::start().await;
    let policy = allow_with(json!({"html": one_per_minute()}));
    let gw = gateway::start(&upstream.url, Some(policy)).await;
    let session = RawSession::open(&gw).await;

    let cases = [
        (
            "html",
            -32603,
            "Upstream is not an MCP server: unexpected content type text/html; charset=utf-8",
            json!("not_mcp"),
        ),
        (
            "not_json",
            -32603,
            "Upstream is not an MCP server: the body is not JSON",
            json!("not_mcp"),
        ),
        (
            "not_jsonrpc",
            -32603,
            "Upstream is not an MCP server: the body is JSON but not a JSON-RPC message",
            json!("not_mcp"),
        ),
        (
            "empty",
            -32603,
            "Upstream accepted the request without answering it",
            Value::Null,
        ),
        (
            "status_500",
            -32000,
            "Upstream answered HTTP 500: internal error",
            json!("status"),
        ),
    ];
    for (n, (tool, code, expected, reason)) in cases.iter().enumerate() {
        let id = json!(n + 1);
        let answer = session.call(id.clone(), tool, json!({})).await;
        let (got, message, data) = answer.error(&id);
        assert_eq!(got, *code, "{tool}: {message}");
        assert!(message.starts_with(expected), "{tool}: {message}");
        assert_eq!(data["reason"], *reason, "{tool}: {data}");
        assert_eq!(upstream.calls(tool), 1);
    }
    // A garbage answer is a failure: the reservation is released.
    let again = session.call(json!(10), "html", json!({})).await;
    assert_eq!(again.error(&json!(10)).2["reason"], "not_mcp");
    assert_eq!(upstream.calls("html"), 2);

    let ok = session
        .call(json!(11), "echo", json!({"text": "fine"}))
        .await;
    assert_eq!(ok.text(&json!(11)), "fine");
}

#[tokio::test]
async fn a_huge_upstream_answer_is_refused_and_the_gateway_keeps_serving() {
    const LIMIT: usize = 64 * 1024;
    let upstream = FaultyUpstream::start().await;
    let config = GatewayConfig {
        max_body_bytes: LIMIT,
        ..gateway::test_config()
    };
    let gw = gateway::start_with(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
        config,
    )
    .await;
    let session = RawSession::open(&gw).await;

    // Under the limit: relayed whole.
    let small = session
        .call(
            json!(1),
            "big",
            json!({"bytes": LIMIT / 2, "framing": "json"}),
        )
        .await;
    assert_eq!(small.text(&json!(1)).len(), LIMIT / 2);

    for (n, framing) in ["json", "chunked"].iter().enumerate() {
        let id = json!(n + 2);
        let answer = session
            .call(
                id.clone(),
                "big",
                json!({"bytes": 4 * LIMIT, "framing": framing}),
            )
            .await;
        let (code, message, data) = answer.error(&id);
        assert_eq!(code, -32603, "{framing}: {message}");
        assert_eq!(
            message, "Upstream message exceeds the 65536-byte limit",
            "{framing}"
        );
        assert_eq!(
            data,
            json!({"reason": "too_large", "limit": LIMIT}),
            "{framing}"
        );
    }

    // One SSE event over the same limit: a message is bounded however it is framed.
    let event_limit = LIMIT;
    let answer = session
        .call(
            json!(9),
            "big",
            json!({"bytes": 4 * LIMIT, "framing": "sse"}),
        )
        .await;
    let (code, message, data) = answer.error(&json!(9));
    assert_eq!(code, -32603, "{message}");
    assert_eq!(
        message,
        format!("Upstream message exceeds the {event_limit}-byte limit")
    );
    assert_eq!(data["reason"], "too_large");

    // Still serving: the same session, and a new one.
    let ok = session
        .call(json!(10), "echo", json!({"text": "still here"}))
        .await;
    assert_eq!(ok.text(&json!(10)), "still here");
    let fresh = RawSession::open(&gw).await;
    let ok = fresh.call(json!(1), "echo", json!({"text": "new"})).await;
    assert_eq!(ok.text(&json!(1)), "new");
}

#[tokio::test]
async fn a_stream_that_dies_before_the_response_is_an_error_for_that_request() {
    let upstream = FaultyUpstream::start().await;
    let policy = allow_with(json!({"stream_dies": one_per_minute()}));
    let gw = gateway::start(&upstream.url, Some(policy)).await;
    let session = RawSession::open(&gw).await;

    for (id, tool) in [(json!("dies-1"), "stream_dies"), (json!(7), "stream_ends")] {
        let answer = session
            .call_then(
                id.clone(),
                tool,
                json!({}),
                (tool == "stream_dies").then_some(&*upstream.die),
            )
            .await;
        // What came before the break is relayed (the progress notification)...
        let first = &answer.messages[0];
        assert_eq!(first["method"], "notifications/progress", "{tool}: {first}");
        assert_eq!(first["params"]["progressToken"], format!("progress-{id}"));
        // ...the half event is not, and the request is answered with an error.
        assert_eq!(answer.messages.len(), 2, "{tool}: {:?}", answer.messages);
        let (code, message, _) = answer.error(&id);
        assert!(code < 0, "{tool}: {code}");
        match tool {
            "stream_ends" => {
                assert_eq!(code, -32603);
                assert_eq!(message, "Upstream closed the stream without answering");
            }
            _ => assert!(message.starts_with("Upstream unreachable: "), "{message}"),
        }
    }
    // The broken call released its reservation: forwarded again, not rate-limited.
    let again = session
        .call_then(json!(8), "stream_dies", json!({}), Some(&upstream.die))
        .await;
    assert!(again.error(&json!(8)).0 < 0);
    assert_eq!(upstream.calls("stream_dies"), 2);

    // A real client gets an error too, not a hang.
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    let result = tokio::time::timeout(BOUND, client.call("stream_ends", json!({})))
        .await
        .expect("the rmcp client is answered");
    assert!(
        matches!(result, Err(ServiceError::McpError(_))),
        "{result:?}"
    );
    let ok = session
        .call(json!(9), "echo", json!({"text": "after"}))
        .await;
    assert_eq!(ok.text(&json!(9)), "after");
}

/// A JSON answer that parses as JSON-RPC but is not the response to the request (another id,
/// a request, a notification) must not be relayed: the client would wait forever.
#[tokio::test]
async fn a_json_answer_that_is_not_the_response_is_an_error_for_that_request() {
    let upstream = FaultyUpstream::start().await;
    let policy = allow_with(json!({"wrong_id": one_per_minute()}));
    let gw = gateway::start(&upstream.url, Some(policy)).await;
    let session = RawSession::open(&gw).await;

    for (n, tool) in ["wrong_id", "a_request", "a_notification"]
        .iter()
        .enumerate()
    {
        let id = json!(n + 1);
        let answer = session.call(id.clone(), tool, json!({})).await;
        let (code, message, _) = answer.error(&id);
        assert!(code < 0, "{tool}: {code} {message}");
    }
    // A failure: the reservation is released.
    let again = session.call(json!(4), "wrong_id", json!({})).await;
    assert!(again.error(&json!(4)).0 < 0);
    assert_eq!(upstream.calls("wrong_id"), 2);

    // A real client is answered instead of waiting forever.
    let client = client::connect(&gw.mcp_url(), Some(&gw.agent_key))
        .await
        .unwrap();
    let result = tokio::time::timeout(BOUND, client.call("a_request", json!({})))
        .await
        .expect("the rmcp client is answered");
    assert!(
        matches!(result, Err(ServiceError::McpError(_))),
        "{result:?}"
    );
}

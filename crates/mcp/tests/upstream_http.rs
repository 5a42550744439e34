//! `StreamableHttpClient` against a small Streamable HTTP MCP server on a real socket.
//!
//! The server mimics what real peers do (server-everything, rmcp): initialize sets
//! `Mcp-Session-Id`; a request without a session gets 400 "No valid session ID", an unknown
//! session 404; requests are answered as JSON or as SSE; notifications get 202; GET is 405
//! unless the test asks for a stream.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt, stream};
use portcullis_mcp::jsonrpc::{RequestId, code};
use portcullis_mcp::sse::SseEvent;
use portcullis_mcp::upstream::{
    self, PostResponse, StreamableHttpClient, UpstreamConfig, UpstreamError, collect_until_response,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const TOKEN: &str = "Bearer upstream-secret-0123";
const SESSION: &str = "sess-1";

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    http_method: String,
    method: Option<String>,
    accept: Option<String>,
    content_type: Option<String>,
    authorization: Option<String>,
    session: Option<String>,
    protocol_version: Option<String>,
}

#[derive(Clone, Default)]
struct Mock {
    sessions: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Chunks for the `controlled` method's SSE answer, fed by the test.
    controlled: Arc<Mutex<Option<mpsc::UnboundedReceiver<&'static str>>>>,
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

impl Mock {
    fn record(&self, http_method: &str, headers: &HeaderMap, body: Option<&Value>) {
        self.seen.lock().unwrap().push(Seen {
            http_method: http_method.into(),
            method: body.and_then(|b| b["method"].as_str().map(str::to_owned)),
            accept: header_str(headers, "accept"),
            content_type: header_str(headers, "content-type"),
            authorization: header_str(headers, "authorization"),
            session: header_str(headers, "mcp-session-id"),
            protocol_version: header_str(headers, "mcp-protocol-version"),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn sse_response(chunks: Vec<String>) -> Response {
    let body = stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Bytes::from(c))),
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Splits `text` into pieces of `size` bytes (ASCII only), so events straddle chunks.
fn pieces(text: &str, size: usize) -> Vec<String> {
    text.as_bytes()
        .chunks(size)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect()
}

async fn handle_post(State(mock): State<Mock>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    mock.record("POST", &headers, Some(&body));
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let id = body.get("id").cloned();

    if method == "initialize" {
        let requested = body["params"]["protocolVersion"].clone();
        if requested == "1999-01-01" {
            return json_response(json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32602, "message": "Unsupported protocol version"}}));
        }
        mock.sessions.lock().unwrap().insert(SESSION.into());
        let result = json!({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": requested,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "mock", "version": "1.0.0"}}});
        let mut response = if body["params"]["clientInfo"]["name"] == "wants-sse" {
            let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "hello"}});
            sse_response(pieces(
                &format!("id: 1\ndata:\n\ndata: {log}\n\ndata: {result}\n\n"),
                7,
            ))
        } else {
            json_response(result)
        };
        response
            .headers_mut()
            .insert("mcp-session-id", SESSION.parse().unwrap());
        return response;
    }

    match header_str(&headers, "mcp-session-id") {
        None => {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000,
                    "message": "Bad Request: No valid session ID provided"}})
                .to_string(),
            )
                .into_response();
        }
        Some(s) if !mock.sessions.lock().unwrap().contains(&s) => {
            return (StatusCode::NOT_FOUND, "Session not found").into_response();
        }
        Some(_) => {}
    }
    if id.is_none() {
        return StatusCode::ACCEPTED.into_response();
    }

    match method.as_str() {
        "tools/list" => json_response(json!({"jsonrpc": "2.0", "id": id, "result": {
            "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}})),
        "tools/call" => {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": "p", "progress": 1, "total": 2}});
            let result = json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": "line one\nline two"}]}});
            // Awkward chunk sizes: field names, CRLFs and JSON straddle chunks.
            sse_response(pieces(
                &format!(
                    ": keep-alive\r\n\r\nid: e1\r\nevent: message\r\ndata: {progress}\r\n\r\nid: e2\r\ndata: {result}\r\n\r\n"
                ),
                5,
            ))
        }
        "controlled" => {
            let mut rx = mock.controlled.lock().unwrap().take().unwrap();
            let chunks = stream::poll_fn(move |cx| rx.poll_recv(cx))
                .map(|c| Ok::<_, Infallible>(Bytes::from_static(c.as_bytes())));
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        "stall" => {
            let first = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": "p", "progress": 1}});
            let chunks = stream::iter([Ok::<_, Infallible>(Bytes::from(format!(
                "data: {first}\n\n"
            )))])
            .chain(stream::pending());
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        "huge-event" => sse_response(vec![format!("data: {}\n\n", "x".repeat(4096))]),
        "hang" => std::future::pending().await,
        "big" => json_response(json!({"jsonrpc": "2.0", "id": id, "result": {
            "blob": "y".repeat(2048)}})),
        "big-chunked" => {
            let text = json!({"jsonrpc": "2.0", "id": id, "result": {"blob": "z".repeat(2048)}})
                .to_string();
            let body = stream::iter(
                pieces(&text, 256)
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(Bytes::from(c))),
            );
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(body),
            )
                .into_response()
        }
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<html>hello</html>",
        )
            .into_response(),
        "not-json-rpc" => json_response(json!({"hello": "world"})),
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "internal error while handling a request with {}",
                header_str(&headers, "authorization").unwrap_or_default()
            ),
        )
            .into_response(),
        other => json_response(json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": -32601, "message": format!("Method not found: {other}")}})),
    }
}

async fn handle_get(State(mock): State<Mock>, headers: HeaderMap) -> Response {
    mock.record("GET", &headers, None);
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

async fn handle_delete(State(mock): State<Mock>, headers: HeaderMap) -> Response {
    mock.record("DELETE", &headers, None);
    let session = header_str(&headers, "mcp-session-id").unwrap_or_default();
    if mock.sessions.lock().unwrap().remove(&session) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// A GET stream that replays from `Last-Event-ID`.
async fn handle_stream(State(mock): State<Mock>, headers: HeaderMap) -> Response {
    mock.record("GET", &headers, None);
    let after = header_str(&headers, "last-event-id").unwrap_or_else(|| "none".into());
    let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
        "params": {"after": after}});
    sse_response(vec![format!("retry: 2500\nid: s-9\ndata: {note}\n\n")])
}

struct Server {
    addr: SocketAddr,
    mock: Mock,
}

impl Server {
    async fn start() -> Server {
        let mock = Mock::default();
        let app = Router::new()
            .route(
                "/mcp",
                post(handle_post).get(handle_get).delete(handle_delete),
            )
            .route("/stream", get(handle_stream))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, mock }
    }

    fn config(&self, path: &str) -> UpstreamConfig {
        UpstreamConfig::new(format!("http://{}{path}", self.addr).parse().unwrap())
            .header("Authorization", TOKEN)
    }

    fn client(&self) -> StreamableHttpClient {
        client_for(self.config("/mcp"))
    }
}

fn client_for(config: UpstreamConfig) -> StreamableHttpClient {
    StreamableHttpClient::new(upstream::HttpClient::new().unwrap(), config)
}

fn init_params(version: &str) -> Value {
    json!({"protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "portcullis-test", "version": "0"}})
}

fn request(id: i64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
}

/// A client with an initialized session (the mock always names it `sess-1`).
async fn initialized(server: &Server) -> StreamableHttpClient {
    let client = server.client();
    let init = client.initialize(init_params("2025-06-18")).await.unwrap();
    assert_eq!(init.session_id.as_deref(), Some(SESSION));
    client
}

async fn call(client: &StreamableHttpClient, method: &str) -> Result<PostResponse, UpstreamError> {
    client
        .post(&request(1, method), Some(SESSION), Some("2025-06-18"))
        .await
}

#[tokio::test]
async fn initialize_opens_a_session_and_sends_initialized() {
    let server = Server::start().await;
    let init = server
        .client()
        .initialize(init_params("2025-06-18"))
        .await
        .unwrap();
    assert_eq!(init.session_id.as_deref(), Some(SESSION));
    assert_eq!(init.protocol_version, "2025-06-18");
    assert_eq!(init.result["serverInfo"]["name"], "mock");

    let seen = server.mock.seen();
    let methods: Vec<_> = seen.iter().map(|s| s.method.as_deref()).collect();
    assert_eq!(
        methods,
        [Some("initialize"), Some("notifications/initialized")]
    );
    for s in &seen {
        assert_eq!(s.http_method, "POST");
        assert_eq!(
            s.accept.as_deref(),
            Some("application/json, text/event-stream")
        );
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        assert_eq!(s.authorization.as_deref(), Some(TOKEN));
    }
    assert_eq!(
        (
            seen[0].session.as_deref(),
            seen[0].protocol_version.as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        (
            seen[1].session.as_deref(),
            seen[1].protocol_version.as_deref()
        ),
        (Some(SESSION), Some("2025-06-18"))
    );
}

#[tokio::test]
async fn initialize_answered_on_a_stream() {
    let server = Server::start().await;
    let params = json!({"protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "wants-sse", "version": "0"}});
    let init = server.client().initialize(params).await.unwrap();
    assert_eq!(init.session_id.as_deref(), Some(SESSION));
    assert_eq!(init.protocol_version, "2025-11-25");
}

#[tokio::test]
async fn initialize_refused_with_a_json_rpc_error() {
    let server = Server::start().await;
    let err = server
        .client()
        .initialize(init_params("1999-01-01"))
        .await
        .unwrap_err();
    let UpstreamError::Rejected(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (e.code, e.message.as_str()),
        (-32602, "Unsupported protocol version")
    );
    assert_eq!(
        err.to_string(),
        "upstream refused to initialize: Unsupported protocol version (-32602)"
    );
    // No initialized notification after a refusal.
    assert_eq!(server.mock.seen().len(), 1);
}

#[tokio::test]
async fn a_request_answered_as_json() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let PostResponse::Json {
        message,
        session_id,
    } = call(&client, "tools/list").await.unwrap()
    else {
        panic!("not JSON")
    };
    assert_eq!(session_id, None);
    assert_eq!(
        message,
        json!({"jsonrpc": "2.0", "id": 1, "result": {
            "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}})
    );
}

#[tokio::test]
async fn a_request_answered_as_sse_with_progress_first() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let PostResponse::Stream { mut events, .. } = call(&client, "tools/call").await.unwrap() else {
        panic!("not a stream")
    };
    let (before, response) = collect_until_response(&mut events, &RequestId::Number(1))
        .await
        .unwrap();
    assert_eq!(
        before,
        vec![json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "p", "progress": 1, "total": 2}})]
    );
    assert_eq!(
        response,
        json!({"jsonrpc": "2.0", "id": 1, "result": {
            "content": [{"type": "text", "text": "line one\nline two"}]}})
    );
    assert_eq!(events.last_event_id(), Some("e2"));
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn stream_events_arrive_as_they_are_written() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let (tx, rx) = mpsc::unbounded_channel();
    *server.mock.controlled.lock().unwrap() = Some(rx);
    tx.send("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/")
        .unwrap();
    let PostResponse::Stream { mut events, .. } = call(&client, "controlled").await.unwrap() else {
        panic!("not a stream")
    };
    tx.send("progress\"}\n\ndata: {\"jsonrpc\":").unwrap();
    // The progress event is delivered while the response is still being written: the server
    // has not been given the rest of it yet. (The guard turns a buffering bug into a failure
    // instead of a hang.)
    let guard = Duration::from_secs(10);
    assert_eq!(
        tokio::time::timeout(guard, events.next()).await.unwrap(),
        Some(Ok(SseEvent::message(
            r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#
        )))
    );
    tx.send("\"2.0\",\"id\":1,\"result\":{}}\n\n").unwrap();
    assert_eq!(
        events.next().await,
        Some(Ok(SseEvent::message(
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        )))
    );
    drop(tx);
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn a_notification_is_accepted() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 1}});
    assert!(matches!(
        client
            .post(&note, Some(SESSION), Some("2025-06-18"))
            .await
            .unwrap(),
        PostResponse::Accepted
    ));
}

#[tokio::test]
async fn an_unknown_session_has_expired() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let err = client
        .post(
            &request(1, "tools/list"),
            Some("sess-unknown"),
            Some("2025-06-18"),
        )
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::SessionExpired);
    assert_eq!(err.to_error_object().code, code::SERVER_ERROR);
}

#[tokio::test]
async fn a_404_without_a_session_is_just_a_status() {
    let server = Server::start().await;
    let err = client_for(server.config("/elsewhere"))
        .initialize(init_params("2025-06-18"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        UpstreamError::Status {
            status: 404,
            body: String::new()
        }
    );
}

#[tokio::test]
async fn no_valid_session_400_counts_as_expired() {
    let server = Server::start().await;
    let err = server
        .client()
        .post(&request(1, "tools/list"), None, None)
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::SessionExpired);
}

#[tokio::test]
async fn a_hanging_upstream_times_out() {
    let server = Server::start().await;
    initialized(&server).await;
    let client = client_for(server.config("/mcp").timeout(Duration::from_millis(200)));
    let err = call(&client, "hang").await.unwrap_err();
    assert_eq!(err, UpstreamError::Timeout(Duration::from_millis(200)));
    assert_eq!(
        err.to_error_object().message,
        "Upstream timed out after 200 ms"
    );
}

#[tokio::test]
async fn a_stalled_stream_times_out_between_events() {
    let server = Server::start().await;
    initialized(&server).await;
    let client = client_for(server.config("/mcp").timeout(Duration::from_millis(200)));
    let PostResponse::Stream { mut events, .. } = call(&client, "stall").await.unwrap() else {
        panic!("not a stream")
    };
    let err = collect_until_response(&mut events, &RequestId::Number(1))
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::Timeout(Duration::from_millis(200)));
}

#[tokio::test]
async fn a_closed_port_is_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client_for(UpstreamConfig::new(
        format!("http://{addr}/mcp").parse().unwrap(),
    ));
    let err = client
        .initialize(init_params("2025-06-18"))
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::Connect("connection refused".into()));
    assert_eq!(
        err.to_error_object().message,
        "Upstream unreachable: connection refused"
    );
}

#[tokio::test]
async fn a_garbage_content_type_is_not_mcp() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    assert_eq!(
        call(&client, "html").await.unwrap_err(),
        UpstreamError::NotMcp("unexpected content type text/html; charset=utf-8".into())
    );
    assert_eq!(
        call(&client, "not-json-rpc").await.unwrap_err(),
        UpstreamError::NotMcp("the body is JSON but not a JSON-RPC message".into())
    );
}

#[tokio::test]
async fn an_oversized_body_is_too_large() {
    let server = Server::start().await;
    initialized(&server).await;
    let mut config = server.config("/mcp");
    config.max_body_bytes = 1024;
    let client = client_for(config);
    // Known up front from Content-Length, and found while reading a chunked body.
    for method in ["big", "big-chunked"] {
        assert_eq!(
            call(&client, method).await.unwrap_err(),
            UpstreamError::TooLarge(1024),
            "{method}"
        );
    }
}

#[tokio::test]
async fn an_oversized_event_is_too_large() {
    let server = Server::start().await;
    initialized(&server).await;
    let mut config = server.config("/mcp");
    config.max_event_bytes = 1024;
    let client = client_for(config);
    let PostResponse::Stream { mut events, .. } = call(&client, "huge-event").await.unwrap() else {
        panic!("not a stream")
    };
    assert_eq!(
        events.next().await,
        Some(Err(UpstreamError::TooLarge(1024)))
    );
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn get_stream_405_means_none() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let stream = client
        .open_stream(Some(SESSION), Some("2025-06-18"), None)
        .await
        .unwrap();
    assert!(stream.is_none());
    let get = server.mock.seen().pop().unwrap();
    assert_eq!(get.http_method, "GET");
    assert_eq!(get.accept.as_deref(), Some("text/event-stream"));
    assert_eq!(get.session.as_deref(), Some(SESSION));
}

#[tokio::test]
async fn get_stream_resumes_from_last_event_id() {
    let server = Server::start().await;
    let client = client_for(server.config("/stream"));
    let mut events = client
        .open_stream(Some(SESSION), Some("2025-11-25"), Some("s-4"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events.idle_timeout(), None);
    let event = events.next().await.unwrap().unwrap();
    let message: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(message["params"]["after"], "s-4");
    assert_eq!(events.last_event_id(), Some("s-9"));
    assert_eq!(events.retry(), Some(Duration::from_millis(2500)));
}

#[tokio::test]
async fn delete_ends_the_session() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    client
        .delete_session(SESSION, Some("2025-06-18"))
        .await
        .unwrap();
    let delete = server.mock.seen().pop().unwrap();
    assert_eq!(
        (delete.http_method.as_str(), delete.session.as_deref()),
        ("DELETE", Some(SESSION))
    );
    assert_eq!(
        call(&client, "tools/list").await.unwrap_err(),
        UpstreamError::SessionExpired
    );
    // Deleting it again (404) is fine.
    client.delete_session(SESSION, None).await.unwrap();
}

#[tokio::test]
async fn errors_never_carry_credentials() {
    let server = Server::start().await;
    let client = initialized(&server).await;
    let err = call(&client, "fail").await.unwrap_err();
    assert_eq!(
        err,
        UpstreamError::Status {
            status: 500,
            body: "internal error while handling a request with [redacted]".into()
        }
    );
    let object = serde_json::to_string(&err.to_error_object()).unwrap();
    assert!(!object.contains("upstream-secret"), "{object}");
    assert!(!format!("{client:?}").contains("upstream-secret"));
}

#[tokio::test]
async fn a_reserved_header_is_a_configuration_error() {
    let server = Server::start().await;
    let client = client_for(server.config("/mcp").header("Mcp-Session-Id", "forged"));
    assert_eq!(
        client
            .initialize(init_params("2025-06-18"))
            .await
            .unwrap_err(),
        UpstreamError::Config(
            "header mcp-session-id is set by the transport and cannot be configured".into()
        )
    );
    assert!(server.mock.seen().is_empty());
}

/// An upstream that reads one request, writes `answer`, and closes the connection.
async fn cutting_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        socket.write_all(answer).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn a_connection_cut_before_or_during_the_answer_is_said_in_plain_words() {
    for (answer, words) in [
        // Headers promise 100 bytes of JSON; 10 come.
        (
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\""[..],
            "connection closed early",
        ),
        (&b""[..], "connection closed before message completed"),
    ] {
        let addr = cutting_upstream(answer).await;
        let client = client_for(UpstreamConfig::new(
            format!("http://{addr}/mcp").parse().unwrap(),
        ));
        let err = client
            .post(&request(1, "tools/list"), None, None)
            .await
            .unwrap_err();
        assert_eq!(err, UpstreamError::Connect(words.into()));
    }
}

//! The legacy HTTP+SSE transport (2024-11-05), client side, against a small server on a real
//! socket: the `endpoint` event (a relative URI), POSTs there, answers on the stream, the
//! credential header on both, and the refusals (another origin, no endpoint, not SSE).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use portcullis_mcp::upstream::{
    self, Client, PostResponse, StreamableHttpClient, UpstreamConfig, UpstreamError,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const TOKEN: &str = "Bearer legacy-secret-0123";

#[derive(Clone, Default)]
struct Legacy {
    /// What the current stream sends next.
    stream: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
    /// The `Authorization` of every request.
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    /// The endpoint event's data.
    endpoint: Arc<Mutex<String>>,
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn open(State(s): State<Legacy>, headers: HeaderMap) -> Response {
    s.authorizations
        .lock()
        .unwrap()
        .push(authorization(&headers));
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let endpoint = s.endpoint.lock().unwrap().clone();
    tx.send(format!("event: endpoint\ndata: {endpoint}\n\n"))
        .unwrap();
    *s.stream.lock().unwrap() = Some(tx);
    let body = tokio_stream(rx).map(|chunk| Ok::<_, std::convert::Infallible>(Bytes::from(chunk)));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn tokio_stream(
    rx: mpsc::UnboundedReceiver<String>,
) -> impl futures_util::Stream<Item = String> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) })
}

/// Answers requests on the stream: `initialize`, and `echo/method` with the method's name.
async fn message(State(s): State<Legacy>, headers: HeaderMap, body: Bytes) -> Response {
    s.authorizations
        .lock()
        .unwrap()
        .push(authorization(&headers));
    let message: Value = serde_json::from_slice(&body).unwrap();
    if let (Some(id), Some(method)) = (message.get("id"), message["method"].as_str()) {
        let result = if method == "initialize" {
            json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                   "serverInfo": {"name": "legacy", "version": "1"}})
        } else {
            json!({"method": method})
        };
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
        if let Some(tx) = &*s.stream.lock().unwrap() {
            tx.send(format!("event: message\ndata: {answer}\n\n"))
                .unwrap();
        }
    }
    StatusCode::ACCEPTED.into_response()
}

async fn serve(endpoint: &str) -> (String, Legacy) {
    let state = Legacy::default();
    *state.endpoint.lock().unwrap() = endpoint.to_owned();
    let app = Router::new()
        .route("/a/sse", get(open))
        .route("/a/messages", post(message))
        .route("/plain", get(|| async { "hello" }))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn client(url: &str) -> StreamableHttpClient {
    StreamableHttpClient::new(
        upstream::HttpClient::new().unwrap(),
        UpstreamConfig::new(url.parse().unwrap()).header("Authorization", TOKEN),
    )
}

#[tokio::test]
async fn follows_a_relative_endpoint_and_reads_answers_from_the_stream() {
    let (base, state) = serve("messages?session=abc").await;
    let channel = client(&format!("{base}/a/sse"))
        .connect_legacy_sse()
        .await
        .unwrap();
    let client = Client::Channel(channel);
    let initialized = client
        .initialize(json!({"protocolVersion": "2024-11-05", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}))
        .await
        .unwrap();
    assert_eq!(initialized.protocol_version, "2024-11-05");
    let answer = client
        .post(
            &json!({"jsonrpc": "2.0", "id": "mine", "method": "tools/list"}),
            initialized.session_id.as_deref(),
            None,
        )
        .await
        .unwrap();
    let PostResponse::Json { message, .. } = answer else {
        panic!("a JSON answer")
    };
    assert_eq!(message["id"], "mine");
    assert_eq!(message["result"]["method"], "tools/list");
    // GET, initialize, initialized, tools/list: the credential on each.
    let seen = state.authorizations.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|a| a.as_deref() == Some(TOKEN)), "{seen:?}");
}

#[tokio::test]
async fn discovery_over_the_legacy_transport_reports_a_bad_list_and_closes() {
    let (base, _) = serve("/a/messages").await;
    let channel = client(&format!("{base}/a/sse"))
        .connect_legacy_sse()
        .await
        .unwrap();
    // The mock's tools/list answer has no tools array: discovery says so plainly.
    let error = upstream::discover(&Client::Channel(channel.clone()), "t")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("without a tools array"),
        "{error}"
    );
    assert!(channel.is_closed(), "discovery closes its connection");
}

#[tokio::test]
async fn refuses_an_endpoint_on_another_origin() {
    let (base, _) = serve("http://203.0.113.7/steal").await;
    let error = client(&format!("{base}/a/sse"))
        .connect_legacy_sse()
        .await
        .unwrap_err();
    assert_eq!(
        error,
        UpstreamError::Protocol("the endpoint event points to another origin".into())
    );
}

#[tokio::test]
async fn refuses_what_is_not_an_sse_stream() {
    let (base, _) = serve("/a/messages").await;
    let error = client(&format!("{base}/plain"))
        .connect_legacy_sse()
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::NotMcp(_)), "{error}");
    let error = client(&format!("{base}/missing"))
        .connect_legacy_sse()
        .await
        .unwrap_err();
    assert!(
        matches!(error, UpstreamError::Status { status: 404, .. }),
        "{error}"
    );
}

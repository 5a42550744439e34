//! Graceful shutdown of the binary: on SIGTERM the gateway stops accepting connections, lets the
//! call in flight finish, ends server-initiated streams, writes the queued activity events, and
//! exits 0.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use portcullis_tests::console::eventually;
use portcullis_tests::gateway::{initialize, rpc, seed};
use portcullis_tests::process::{Fleet, new_secret_key};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// An upstream whose `slow` tool answers only when the test says.
#[derive(Clone)]
struct Upstream {
    release: Arc<Notify>,
    received: watch::Sender<usize>,
}

async fn handle(State(up): State<Upstream>, body: Bytes) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = message["method"].as_str().unwrap_or_default();
    let Some(id) = message.get("id").filter(|_| !method.is_empty()).cloned() else {
        return axum::http::StatusCode::ACCEPTED.into_response();
    };
    let result = match method {
        "initialize" => json!({"protocolVersion": message["params"]["protocolVersion"],
                               "capabilities": {"tools": {}},
                               "serverInfo": {"name": "slow", "version": "1"}}),
        "tools/list" => json!({"tools": [{"name": "slow", "inputSchema": {"type": "object"}}]}),
        "tools/call" => {
            up.received.send_modify(|n| *n += 1);
            up.release.notified().await;
            json!({"content": [{"type": "text", "text": "finished"}]})
        }
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

/// The slow upstream on a loopback port, a database whose server points at it (allow-all), and
/// `portcullis gateway` with `extra` flags in front.
async fn slow_gateway(
    extra: &[&str],
) -> (
    Upstream,
    portcullis_tests::gateway::Seeded,
    portcullis_tests::process::Process,
) {
    let up = Upstream {
        release: Arc::new(Notify::new()),
        received: watch::Sender::new(0),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(handle))
        .with_state(up.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let seeded = seed(
        &upstream_url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let gateway = Fleet {
        bin: env!("CARGO_BIN_EXE_portcullis").into(),
        database_url: seeded.db.url(),
        secret_key: new_secret_key(),
        redis_url: None,
    }
    .start_with("gateway", extra)
    .await;
    (up, seeded, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_in_flight_finish_and_writes_its_activity() {
    let (up, seeded, mut gateway) = slow_gateway(&[]).await;
    let url = format!("{}/mcp/{}", gateway.url, seeded.server_id);
    let key = seeded.agent_key.clone();
    let session = initialize(&url, &key).await;

    // A server-initiated stream, open when the signal comes: it must not hold the shutdown.
    let stream = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // A call in flight: the upstream holds its answer.
    let call = tokio::spawn({
        let (url, key, session) = (url.clone(), key.clone(), session.clone());
        async move {
            let resp = rpc(
                &url,
                &key,
                Some(&session),
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "slow", "arguments": {}}}),
            )
            .await;
            resp.text().await.unwrap()
        }
    });
    up.received.subscribe().wait_for(|n| *n == 1).await.unwrap();

    gateway.terminate();
    // No new connections, while the call is still in flight.
    let addr = gateway.url.trim_start_matches("http://").to_owned();
    eventually(
        "the listener is closed",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(&addr)
                .await
                .err()
                .map(|_| ())
        },
    )
    .await;
    assert!(!call.is_finished());
    // The stream ended by itself.
    let rest = tokio::time::timeout(Duration::from_secs(10), stream.bytes())
        .await
        .expect("the GET stream ends at shutdown");
    assert!(rest.is_ok());

    up.release.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call in flight is answered")
        .unwrap();
    assert!(answer.contains("finished"), "{answer}");
    let status = gateway.wait().await;
    assert!(status.success(), "exit {status:?}:\n{}", gateway.log_text());
    let log = gateway.log_text();
    assert!(log.contains("activity events written"), "{log}");

    // Its decision reached the database before the process ended.
    let decisions: Vec<String> = sqlx::query_scalar(
        "SELECT decision FROM activity_events WHERE tool = 'slow' AND server_id = $1",
    )
    .bind(seeded.server_id)
    .fetch_all(&seeded.db.pool)
    .await
    .unwrap();
    assert_eq!(decisions, ["allow"]);
}

/// A call that would never finish does not hold the process past the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_call_that_never_finishes() {
    let (up, seeded, mut gateway) = slow_gateway(&["--shutdown-grace", "1"]).await;
    let url = format!("{}/mcp/{}", gateway.url, seeded.server_id);
    let session = initialize(&url, &seeded.agent_key).await;
    let _call = tokio::spawn({
        let (url, key, session) = (url.clone(), seeded.agent_key.clone(), session.clone());
        async move {
            rpc(
                &url,
                &key,
                Some(&session),
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "slow", "arguments": {}}}),
            )
            .await
        }
    });
    up.received.subscribe().wait_for(|n| *n == 1).await.unwrap();
    let signalled = std::time::Instant::now();
    gateway.terminate();
    let status = gateway.wait().await;
    assert!(status.success(), "exit {status:?}:\n{}", gateway.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        gateway
            .log_text()
            .contains("requests still in flight after the grace period"),
        "{}",
        gateway.log_text()
    );
}

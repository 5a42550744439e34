//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the binary sends its spans (one per MCP request) to
//! that OTLP/HTTP collector: here a fake collector on loopback.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_tests::console::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector() {
    // The collector: remembers every body POSTed to /v1/traces.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = bodies.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.ok() });

    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    };
    let (port, admin) = (free(), free());
    let _gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--no-migrate",
        ])
        .env("DATABASE_URL", db.url())
        .env("PORTCULLIS_SECRET_KEY", "0".repeat(64))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    portcullis_mcp::upstream::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    eventually("the gateway serves", Duration::from_secs(30), || async {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // An MCP request (refused: no key) is a span all the same.
    let response = http
        .post(format!("{url}/mcp/{}", uuid::Uuid::new_v4()))
        .header("Accept", "application/json, text/event-stream")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    eventually(
        "spans at the collector",
        Duration::from_secs(15),
        || async {
            let bodies = bodies.lock().unwrap();
            let all: Vec<u8> = bodies.iter().flatten().copied().collect();
            let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
            (has(b"portcullis") && has(b"mcp")).then_some(())
        },
    )
    .await;
}

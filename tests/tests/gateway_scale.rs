//! Several gateways on one database and one Redis: limits hold across them, a session started
//! on one continues on another, and a publish reaches connected clients.

use std::time::Duration;

use futures_util::StreamExt as _;
use portcullis_gateway::GatewayConfig;
use portcullis_tests::gateway::{self, redis_url};
use portcullis_tests::upstream::TestUpstream;
use serde_json::{Value, json};

const ACCEPT: &str = "application/json, text/event-stream";

fn with_redis() -> GatewayConfig {
    GatewayConfig {
        redis_url: Some(redis_url()),
        ..gateway::test_config()
    }
}

async fn rpc(url: &str, key: &str, session: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", ACCEPT)
        .bearer_auth(key)
        .json(&body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.unwrap()
}

async fn initialize(url: &str, key: &str) -> String {
    let resp = rpc(
        url,
        key,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ack = rpc(
        url,
        key,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(ack.status(), 202);
    session
}

/// The session's GET stream, as bytes.
async fn open_stream(
    gw: &gateway::TestGateway,
    session: &str,
) -> impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Unpin {
    let stream = reqwest::Client::new()
        .get(gw.mcp_url())
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .bearer_auth(&gw.agent_key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream.bytes_stream()
}

/// The text of a tools/call answer, JSON or SSE.
async fn call_text(
    url: &str,
    key: &str,
    session: &str,
    id: u64,
    tool: &str,
    args: Value,
) -> String {
    let resp = rpc(
        url,
        key,
        Some(session),
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let is_sse = resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream");
    let body = resp.text().await.unwrap();
    let message: Value = if is_sse {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer in {body}"))
    } else {
        serde_json::from_str(&body).unwrap()
    };
    message["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_rate_limit_holds_across_gateways_and_sessions_move_between_them() {
    let upstream = TestUpstream::start().await;
    let policy = json!({"version": "1", "default": "allow",
                        "tools": {"echo": {"rate_limit": {"max": 3, "window": "minute", "scope": "server"}}}});
    let a = gateway::start_with(&upstream.url, Some(policy), with_redis()).await;
    let b = a.replica(with_redis()).await;
    let url_a = a.mcp_url();
    let url_b = b.mcp_url(a.server_id);

    // A session opened on A is served by B: the session id carries what B needs.
    let session = initialize(&url_a, &a.agent_key).await;
    let mut texts = Vec::new();
    for (i, url) in [&url_a, &url_b, &url_a, &url_b].into_iter().enumerate() {
        texts.push(
            call_text(
                url,
                &a.agent_key,
                &session,
                i as u64 + 1,
                "echo",
                json!({"text": "x"}),
            )
            .await,
        );
    }
    assert!(
        texts[..3]
            .iter()
            .all(|t| t.contains('x') && !t.starts_with('[')),
        "{texts:?}"
    );
    assert!(
        texts[3].starts_with("[RATE LIMITED] echo: 3 per minute"),
        "{texts:?}"
    );
    assert_eq!(
        upstream.calls("echo"),
        3,
        "the fourth call, on another gateway, was refused"
    );
}

#[tokio::test]
async fn a_publish_sends_list_changed_to_connected_clients() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let session = initialize(&gw.mcp_url(), &gw.agent_key).await;
    let mut body = open_stream(&gw, &session).await;

    gw.publish(&json!({"version": "1", "default": "allow", "hide": ["echo"]}))
        .await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("notifications/tools/list_changed") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        seen,
        Ok(true),
        "the client hears that its tool list changed"
    );
}

#[tokio::test]
async fn redis_counters_count_a_shared_key_once_and_never_wrap() {
    use portcullis_gateway::limits::{LimitKey, Outcome};
    use portcullis_gateway::redis_limits::RedisCounters;

    let redis = RedisCounters::connect(&redis_url()).await.unwrap();
    let key = format!("test:{}", uuid::Uuid::new_v4());
    let limit = |max: u64, increment: u64| LimitKey {
        key: key.clone(),
        max,
        window: Duration::from_secs(60),
        increment,
    };
    // An all-tools limit and a tool limit on one counter: each call adds 1, the stricter decides.
    let shared = [limit(3, 1), limit(2, 1)];
    assert!(matches!(
        redis.reserve(&shared).await.unwrap(),
        Outcome::Reserved(_)
    ));
    assert!(matches!(
        redis.reserve(&shared).await.unwrap(),
        Outcome::Reserved(_)
    ));
    assert!(matches!(
        redis.reserve(&shared).await.unwrap(),
        Outcome::Exhausted { index: 1, .. }
    ));
    // An increment at the integer limit is refused and changes nothing.
    assert!(matches!(
        redis.reserve(&[limit(100, u64::MAX)]).await.unwrap(),
        Outcome::Exhausted { .. }
    ));
    assert!(matches!(
        redis.reserve(&[limit(3, 1)]).await.unwrap(),
        Outcome::Reserved(_)
    ));
    assert!(matches!(
        redis.reserve(&[limit(3, 1)]).await.unwrap(),
        Outcome::Exhausted { .. }
    ));
}

#[tokio::test]
async fn an_open_stream_ends_when_its_agent_is_revoked() {
    let upstream = TestUpstream::start().await;
    let gw = gateway::start(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let session = initialize(&gw.mcp_url(), &gw.agent_key).await;
    let mut body = open_stream(&gw, &session).await;

    portcullis_store::agents::revoke(&gw.db.pool, gw.org_id, gw.agent_id)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked agent's stream was still open after 5 s"
    );
}

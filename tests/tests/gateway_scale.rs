//! Several gateways on one database and one Redis: limits hold across them, a session started
//! on one continues on another, and a publish reaches connected clients.

use std::time::Duration;

use futures_util::StreamExt as _;
use portcullis_gateway::GatewayConfig;
use portcullis_tests::gateway::{self, call_text, initialize, redis_url};
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;

fn with_redis() -> GatewayConfig {
    GatewayConfig {
        redis_url: Some(redis_url()),
        ..gateway::test_config()
    }
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

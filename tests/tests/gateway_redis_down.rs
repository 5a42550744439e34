//! Redis stopped while limits are in use: the gateway counts in its own process and says so in
//! its metrics (or, with `limits_fail_closed`, refuses calls that have limits); calls without
//! limits never notice; when Redis returns, limits are shared again. The Redis here is a private
//! `redis-server` on its own port, killed and restarted by the test (the machine's is shared by
//! other tests).

use std::process::Stdio;
use std::time::Duration;

use portcullis_gateway::GatewayConfig;
use portcullis_tests::console::eventually;
use portcullis_tests::gateway::{self, call_text, initialize};
use portcullis_tests::process::free_port;
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;

/// A `redis-server` of this test's own; killed on drop.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) starts");
        let redis = PrivateRedis { port, child };
        redis.wait_until(true);
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_until(&self, up: bool) {
        for _ in 0..200 {
            let answers = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if answers == up {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis on {} did not become {}",
            self.port,
            if up { "up" } else { "down" }
        );
    }

    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        self.wait_until(false);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn metric(gw: &gateway::TestGateway, name: &str) -> f64 {
    let text = gw.gateway.metrics.render(0, 0, 0, 0);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Calls `echo` (a tool with a limit in these tests' policies) in `session`; answers its text.
async fn echo(gw: &gateway::TestGateway, session: &str, id: u64) -> String {
    call_text(
        &gw.mcp_url(),
        &gw.agent_key,
        session,
        id,
        "echo",
        json!({"text": "x"}),
    )
    .await
}

const POLICY: &str = r#"{"version": "1", "default": "allow",
    "tools": {"echo": {"rate_limit": {"max": 3, "window": "minute", "scope": "server"}}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_limits_are_counted_per_process_and_shared_again_when_it_returns() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let upstream = TestUpstream::start().await;
    let config = GatewayConfig {
        redis_url: Some(redis.url()),
        ..gateway::test_config()
    };
    let gw = gateway::start_with(
        &upstream.url,
        Some(serde_json::from_str(POLICY).unwrap()),
        config,
    )
    .await;
    let url = gw.mcp_url();
    let session = initialize(&url, &gw.agent_key).await;
    let echo = |id: u64| echo(&gw, &session, id);
    assert_eq!(echo(1).await, "x");
    assert_eq!(metric(&gw, "portcullis_limits_redis_up"), 1.0);
    assert_eq!(
        metric(&gw, "portcullis_limits_fallback_decisions_total"),
        0.0
    );

    // Redis goes: calls keep flowing, counted here (3 per minute, from zero in this process).
    redis.kill();
    let texts = [echo(2).await, echo(3).await, echo(4).await, echo(5).await];
    assert_eq!(texts[..3], ["x", "x", "x"], "{texts:?}");
    assert!(texts[3].starts_with("[RATE LIMITED] echo"), "{texts:?}");
    assert_eq!(metric(&gw, "portcullis_limits_redis_up"), 0.0);
    assert_eq!(
        metric(&gw, "portcullis_limits_fallback_decisions_total"),
        4.0
    );
    // A tool without limits never asks Redis.
    let listed = call_text(&url, &gw.agent_key, &session, 6, "list_images", json!({})).await;
    assert!(!listed.starts_with('['), "{listed}");

    // Redis returns (empty: it keeps nothing): limits are counted there again.
    let _redis = PrivateRedis::start(port);
    let back = eventually(
        "limits are counted in Redis again",
        Duration::from_secs(10),
        || async {
            let text = echo(7).await;
            (metric(&gw, "portcullis_limits_redis_up") == 1.0).then_some(text)
        },
    )
    .await;
    assert_eq!(back, "x");
    let client = redis::Client::open(_redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("portcullis:limit:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_limits_fail_closed_a_call_with_limits_is_refused_while_redis_is_down() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let upstream = TestUpstream::start().await;
    let config = GatewayConfig {
        redis_url: Some(redis.url()),
        limits_fail_closed: true,
        ..gateway::test_config()
    };
    let gw = gateway::start_with(
        &upstream.url,
        Some(serde_json::from_str(POLICY).unwrap()),
        config,
    )
    .await;
    let url = gw.mcp_url();
    let session = initialize(&url, &gw.agent_key).await;
    assert_eq!(
        call_text(
            &url,
            &gw.agent_key,
            &session,
            1,
            "echo",
            json!({"text": "x"})
        )
        .await,
        "x"
    );
    redis.kill();
    let refused = call_text(
        &url,
        &gw.agent_key,
        &session,
        2,
        "echo",
        json!({"text": "x"}),
    )
    .await;
    assert_eq!(
        refused,
        "[POLICY DENIED] this call's rate limits cannot be checked right now (the shared counters are unreachable); try again shortly"
    );
    assert_eq!(upstream.calls("echo"), 1);
    // Calls without limits are not affected.
    let listed = call_text(&url, &gw.agent_key, &session, 3, "list_images", json!({})).await;
    assert!(!listed.starts_with('['), "{listed}");
    let events = gw.activity(4).await;
    let denied = events
        .iter()
        .find(|e| e.decision == "deny" && e.tool.as_deref() == Some("echo"))
        .expect("the refusal is in the activity log");
    assert_eq!(denied.rule.as_deref(), Some("/tools/echo/rate_limit"));
}

/// A Redis that stops answering (paused: connections stay open, nothing comes back) costs the
/// call that finds it so one timeout; the calls after it count in this process at once, and
/// Redis is asked again about once a second, not on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_delays_one_call_not_every_call() {
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let upstream = TestUpstream::start().await;
    let config = GatewayConfig {
        redis_url: Some(redis.url()),
        ..gateway::test_config()
    };
    let policy = json!({"version": "1", "default": "allow",
        "tools": {"echo": {"rate_limit": {"max": 100, "window": "minute", "scope": "server"}}}});
    let gw = gateway::start_with(&upstream.url, Some(policy), config).await;
    let url = gw.mcp_url();
    let session = initialize(&url, &gw.agent_key).await;
    let echo = |id: u64| echo(&gw, &session, id);
    assert_eq!(echo(1).await, "x");
    assert_eq!(metric(&gw, "portcullis_limits_redis_up"), 1.0);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();

    let calls = 6;
    let started = std::time::Instant::now();
    for id in 0..calls {
        assert_eq!(echo(10 + id).await, "x");
    }
    let elapsed = started.elapsed();
    // Waiting on every call would take calls × REDIS_TIMEOUT (3 s); the breaker waits once,
    // plus at most one more probe per second.
    let timeout = portcullis_gateway::limits::REDIS_TIMEOUT;
    assert!(
        elapsed < timeout * 5,
        "{calls} calls took {elapsed:?} while Redis was paused"
    );
    assert_eq!(metric(&gw, "portcullis_limits_redis_up"), 0.0);
    assert_eq!(
        metric(&gw, "portcullis_limits_fallback_decisions_total"),
        calls as f64
    );
}

/// A Redis address where something accepts connections but never answers: the gateway does not
/// hang at start; it stops within `REDIS_CONNECT_TIMEOUT` with an error that says so (it needs
/// Redis reachable to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_stops_the_start_with_a_clear_error() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = GatewayConfig {
        redis_url: Some(format!("redis://{}", silent.local_addr().unwrap())),
        ..gateway::test_config()
    };
    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let key = portcullis_store::crypto::SecretKey::generate().unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        portcullis_gateway::Gateway::start(db.pool.clone(), &key, config),
    )
    .await
    .expect("the start ends");
    let error = started
        .expect_err("no gateway without its Redis")
        .to_string();
    assert!(
        error.contains("Redis") && error.contains("no answer within 5 s"),
        "{error}"
    );
}

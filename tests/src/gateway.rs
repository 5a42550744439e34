//! A running gateway for end-to-end tests: a fresh database seeded with an organization, a
//! registered server (pointing at a test upstream) and an agent, and the gateway's router served
//! on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use portcullis_gateway::{Gateway, GatewayConfig};
use portcullis_store::agents::{self, AgentKey, NewAgent};
use portcullis_store::crypto::SecretKey;
use portcullis_store::orgs::{self, NewAccount};
use portcullis_store::policies;
use portcullis_store::servers::{self, NewServer, ServerSecrets};
use portcullis_store::testing::{TestDatabase, fresh_database};
use serde_json::{Value, json};
use uuid::Uuid;

/// A gateway with one organization, one server and one agent.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub db: TestDatabase,
    pub gateway: Arc<Gateway>,
    pub key: SecretKey,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Uuid,
    /// The agent's key, as an MCP client presents it.
    pub agent_key: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default settings, with private upstreams allowed (test upstreams run on loopback) and
/// the approval timers short (progress every 200 ms, orphan sweeps every 300 ms).
pub fn test_config() -> GatewayConfig {
    GatewayConfig {
        allow_private_upstreams: true,
        approval_progress_interval: Duration::from_millis(200),
        approval_sweep: Duration::from_millis(300),
        webhook_retry_base: Duration::from_millis(50),
        ..GatewayConfig::default()
    }
}

/// Starts a gateway whose server points at `upstream_url`, with `policy` published (or none).
pub async fn start(upstream_url: &str, policy: Option<Value>) -> TestGateway {
    start_with(upstream_url, policy, test_config()).await
}

pub async fn start_with(
    upstream_url: &str,
    policy: Option<Value>,
    config: GatewayConfig,
) -> TestGateway {
    let seeded = seed(upstream_url, policy).await;
    let key = SecretKey::generate().expect("a secret key");
    let (gateway, addr, task) = serve(&seeded.db, &key, config).await;
    TestGateway {
        base_url: format!("http://{addr}"),
        db: seeded.db,
        gateway,
        key,
        org_id: seeded.org_id,
        user_id: seeded.user_id,
        server_id: seeded.server_id,
        agent_id: seeded.agent_id,
        agent_key: seeded.agent_key,
        task,
    }
}

/// A fresh database with one organization, one server pointing at an upstream, one agent with
/// access to every server, and a published policy (if given).
pub struct Seeded {
    pub db: TestDatabase,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Uuid,
    pub agent_key: String,
}

pub async fn seed(upstream_url: &str, policy: Option<Value>) -> Seeded {
    let db = fresh_database().await.expect("a test database");
    let (user, org) = orgs::create_account(
        &db.pool,
        &NewAccount {
            email: "owner@example.com",
            password_hash: "unused",
            org_slug: "acme",
            org_name: "Acme",
        },
    )
    .await
    .expect("an account");
    let server = servers::insert(
        &db.pool,
        org.id,
        &NewServer {
            id: portcullis_store::new_id(),
            name: "test upstream",
            url: Some(upstream_url),
            command: None,
            header_names: &[],
            secrets: ServerSecrets::default(),
            transport_requested: "auto",
            transport: "streamable_http",
            protocol_version: None,
            server_info: None,
        },
    )
    .await
    .expect("a server");
    let (agent_id, agent_key) = add_agent(&db, org.id, "test agent", None).await;
    if let Some(policy) = &policy {
        publish_on(&db, org.id, server.id, None, policy).await;
    }
    Seeded {
        db,
        org_id: org.id,
        user_id: user.id,
        server_id: server.id,
        agent_id,
        agent_key,
    }
}

/// Starts a gateway and serves its router on 127.0.0.1:0 (with TCP_NODELAY, as the binary
/// does). Unless the test says otherwise, the hosts allowed are the bound address's names.
async fn serve(
    db: &TestDatabase,
    key: &SecretKey,
    mut config: GatewayConfig,
) -> (
    Arc<Gateway>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    if config.allowed_hosts.is_empty() {
        config.allowed_hosts = vec![addr.to_string(), format!("localhost:{}", addr.port())];
    }
    let gateway = Gateway::start(db.pool.clone(), key, config)
        .await
        .expect("the gateway starts");
    let app = portcullis_gateway::router(gateway.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), app)
            .await
            .ok();
    });
    (gateway, addr, task)
}

/// Creates an agent; `servers: None` grants every server.
pub async fn add_agent(
    db: &TestDatabase,
    org_id: Uuid,
    name: &str,
    servers: Option<&[Uuid]>,
) -> (Uuid, String) {
    let key = AgentKey::generate().expect("a key");
    let agent = agents::insert(
        &db.pool,
        org_id,
        &NewAgent {
            name,
            key_hash: &key.digest(),
            key_prefix: key.prefix(),
            servers,
            created_by: None,
        },
    )
    .await
    .expect("an agent");
    (agent.id, key.expose().to_owned())
}

/// Saves and publishes a policy (the server's, or one agent's).
pub async fn publish_on(
    db: &TestDatabase,
    org_id: Uuid,
    server_id: Uuid,
    agent_id: Option<Uuid>,
    policy: &Value,
) -> i32 {
    portcullis_policy::Policy::from_value(policy).expect("a valid policy");
    let id = policies::put_draft(&db.pool, org_id, server_id, agent_id, policy, None)
        .await
        .expect("a draft");
    policies::publish(
        &db.pool,
        org_id,
        id,
        None,
        portcullis_store::policies::Mode::Enforced,
    )
    .await
    .expect("published")
    .version
}

impl TestGateway {
    /// The organization's activity events, newest first, once at least `at_least` of them are
    /// written (events leave the request path, so they land a moment later), or after 5 s.
    pub async fn activity(&self, at_least: usize) -> Vec<portcullis_store::activity::Event> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let events = portcullis_store::activity::recent(&self.db.pool, self.org_id, 100)
                .await
                .expect("activity events");
            if events.len() >= at_least || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway URL of the server.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp/{}", self.base_url, self.server_id)
    }

    /// Publishes `policy` and waits (at most 5 s) until this gateway enforces that version.
    pub async fn publish(&self, policy: &Value) {
        let version = publish_on(&self.db, self.org_id, self.server_id, None, policy).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let current = self
                .gateway
                .policies
                .lookup(self.server_id, self.agent_id)
                .map(|p| p.version);
            if current == Some(version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "version {version} not enforced within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Redis for tests: `REDIS_URL`, or the machine's Redis on 127.0.0.1:6379.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Another gateway process's worth of state (its own caches, counters and listener) on the
/// same database and secret key, served on its own port.
pub struct Replica {
    pub base_url: String,
    pub gateway: Arc<Gateway>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replica {
    pub fn mcp_url(&self, server_id: Uuid) -> String {
        format!("{}/mcp/{}", self.base_url, server_id)
    }
}

impl TestGateway {
    /// Starts another gateway on the same database and key.
    pub async fn replica(&self, config: GatewayConfig) -> Replica {
        let (gateway, addr, task) = serve(&self.db, &self.key, config).await;
        Replica {
            base_url: format!("http://{addr}"),
            gateway,
            task,
        }
    }
}

// Raw Streamable HTTP, for tests that need to see exactly what crosses the wire (session ids
// moving between gateway processes, statuses, SSE framing).

const ACCEPT: &str = "application/json, text/event-stream";

/// POSTs one JSON-RPC message with the agent `key` and, if any, the session id.
pub async fn rpc(url: &str, key: &str, session: Option<&str>, body: Value) -> reqwest::Response {
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

/// `initialize` then `notifications/initialized`; answers the session id.
pub async fn initialize(url: &str, key: &str) -> String {
    initialize_with(url, key, json!({})).await
}

/// [`initialize`] declaring `capabilities` (server-everything, for one, offers its elicitation
/// tool only to clients that declare elicitation); checks the answer is an initialize result.
pub async fn initialize_with(url: &str, key: &str, capabilities: Value) -> String {
    let resp = rpc(
        url,
        key,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": capabilities,
            "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = message_of(resp, 0).await;
    assert!(body["result"]["protocolVersion"].is_string(), "{body}");
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

/// The `result` of a tools/call answer, JSON or SSE.
pub async fn call_result(
    url: &str,
    key: &str,
    session: &str,
    id: u64,
    tool: &str,
    args: Value,
) -> Value {
    let resp = rpc(
        url,
        key,
        Some(session),
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}),
    )
    .await;
    message_of(resp, id).await["result"].clone()
}

/// The names in a list of tools (a `tools/list` result's `tools`, a server's `tools`).
pub fn names_in(tools: &Value) -> Vec<&str> {
    tools
        .as_array()
        .unwrap_or_else(|| panic!("a list of tools, not {tools}"))
        .iter()
        .map(|t| t["name"].as_str().expect("a tool name"))
        .collect()
}

/// The JSON-RPC answer to request `id` in a 200 response, whether JSON or SSE.
pub async fn message_of(resp: reqwest::Response, id: u64) -> Value {
    assert_eq!(resp.status(), 200);
    let is_sse = resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream");
    let body = resp.text().await.unwrap();
    if is_sse {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer in {body}"))
    } else {
        serde_json::from_str(&body).unwrap()
    }
}

/// The text of a tools/call answer, JSON or SSE.
pub async fn call_text(
    url: &str,
    key: &str,
    session: &str,
    id: u64,
    tool: &str,
    args: Value,
) -> String {
    call_result(url, key, session, id, tool, args).await["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

//! A running Portcullis as `portcullis serve` runs it: the console API and the gateway on one
//! port, over a fresh database, served on 127.0.0.1:0 with connect info.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use portcullis_console::{ConsoleConfig, ConsoleState};
use portcullis_gateway::Gateway;
use portcullis_store::crypto::SecretKey;
use portcullis_store::testing::{TestDatabase, fresh_database};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The console and a gateway on one address. Its API calls are [`Api`]'s (through `Deref`).
pub struct TestApp {
    pub api: Api,
    pub db: TestDatabase,
    pub gateway: Arc<Gateway>,
    /// The secret key (hex), for other processes of the same deployment.
    pub secret_key: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A client of a console's JSON API, in this process or another.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub http: reqwest::Client,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`TestApp::signup`] created.
#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub token: String,
    pub slug: String,
    pub user_id: String,
    pub org_id: String,
}

/// Settings for tests: loopback upstreams allowed (test servers run there).
pub fn test_config() -> ConsoleConfig {
    ConsoleConfig {
        allow_private_upstreams: true,
        ..ConsoleConfig::default()
    }
}

impl TestApp {
    /// [`Api::publish_policy`], then waits until this app's gateway enforces the published
    /// version: the gateway learns of a publish from a NOTIFY, a moment later, and the test's
    /// next call must meet the policy it just published.
    pub async fn publish_policy(
        &self,
        token: &str,
        org: &str,
        server_id: &str,
        agent: Option<&str>,
        document: &Value,
    ) -> i64 {
        let version = self
            .api
            .publish_policy(token, org, server_id, agent, document)
            .await;
        let server: uuid::Uuid = server_id.parse().expect("a server id");
        let agent: Option<uuid::Uuid> = agent.map(|a| a.parse().expect("an agent id"));
        eventually(
            "the gateway enforces the published version",
            std::time::Duration::from_secs(5),
            || async {
                self.gateway
                    .policies
                    .lookup(server, agent.unwrap_or_else(uuid::Uuid::nil))
                    .filter(|p| p.agent_id == agent && i64::from(p.version) == version)
                    .map(|_| ())
            },
        )
        .await;
        version
    }

    pub async fn start() -> TestApp {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: ConsoleConfig) -> TestApp {
        let mut gateway_config = crate::gateway::test_config();
        // One flag lets the console register stdio servers and the gateway run them.
        gateway_config.allow_stdio_servers = config.allow_stdio_servers;
        Self::start_full(config, gateway_config).await
    }

    /// [`start_with`](Self::start_with), with the gateway's settings too.
    pub async fn start_full(
        mut config: ConsoleConfig,
        mut gateway_config: portcullis_gateway::GatewayConfig,
    ) -> TestApp {
        let db = fresh_database().await.expect("a test database");
        let secret_key = crate::process::new_secret_key();
        let key = SecretKey::parse(&secret_key).expect("a secret key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let base_url = format!("http://{addr}");
        config.public_gateway_url = base_url.clone();
        gateway_config.allowed_hosts = vec![addr.to_string()];
        let gateway = Gateway::start(db.pool.clone(), &key, gateway_config)
            .await
            .expect("the gateway starts");
        let console = ConsoleState::new(db.pool.clone(), &key, config).expect("the console");
        let app =
            portcullis_gateway::router(gateway.clone()).merge(portcullis_console::router(console));
        let task = tokio::spawn(async move {
            axum::serve(
                listener.tap_io(|tcp| drop(tcp.set_nodelay(true))),
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .ok();
        });
        TestApp {
            api: Api::new(&base_url),
            db,
            gateway,
            secret_key,
            task,
        }
    }
}

impl Api {
    pub fn new(base_url: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends `body` (JSON, if any) with `token` (if any); answers the status and the JSON body
    /// (`null` when empty, `{"raw": text}` when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the console answers");
        read(response).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Signs up `email` with a new organization named `organization`.
    pub async fn signup(&self, email: &str, organization: &str) -> Account {
        let password = format!("pw-{}-long-enough", uuid::Uuid::new_v4().simple());
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/signup",
                None,
                Some(&json!({"email": email, "password": password, "organization": organization})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "signup: {body}");
        Account {
            email: email.to_owned(),
            password,
            token: body["token"].as_str().expect("a token").to_owned(),
            slug: body["organization"]["slug"]
                .as_str()
                .expect("a slug")
                .to_owned(),
            user_id: body["user"]["id"].as_str().expect("a user id").to_owned(),
            org_id: body["organization"]["id"]
                .as_str()
                .expect("an org id")
                .to_owned(),
        }
    }

    /// Saves `document` as the draft of a server's policy (or, with `agent`, of that agent's own
    /// policy on the server) and publishes it; answers the published version.
    pub async fn publish_policy(
        &self,
        token: &str,
        org: &str,
        server_id: &str,
        agent: Option<&str>,
        document: &Value,
    ) -> i64 {
        let path = format!("/api/v1/orgs/{org}/servers/{server_id}/policy");
        let scope = agent.map(|a| format!("?agent={a}")).unwrap_or_default();
        let (status, body) = self.put(&format!("{path}{scope}"), token, document).await;
        assert_eq!(status, StatusCode::OK, "save the draft: {body}");
        let (status, body) = self
            .post(&format!("{path}/publish{scope}"), token, &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "publish: {body}");
        body["version"].as_i64().expect("a version")
    }

    /// Creates an agent named `name`; answers its id and key.
    pub async fn create_agent(&self, token: &str, org: &str, name: &str) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("/api/v1/orgs/{org}/agents"),
                token,
                &json!({"name": name}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create agent {name}: {body}");
        (
            body["id"].as_str().expect("an id").to_owned(),
            body["key"].as_str().expect("a key").to_owned(),
        )
    }

    /// Registers the MCP server at `url` in organization `org`; answers the server.
    pub async fn register(&self, token: &str, org: &str, name: &str, url: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/orgs/{org}/servers"),
                token,
                &json!({"name": name, "url": url}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {url}: {body}");
        body
    }
}

/// The status and JSON body of a response.
pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}))
    };
    (status, body)
}

/// Asserts the API's error shape and code.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "error code in {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error message in {body}"
    );
}

/// An MCP `initialize` POST to `gateway_url` with `key`: the gateway's status.
pub async fn gateway_status(http: &reqwest::Client, gateway_url: &str, key: &str) -> StatusCode {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "probe", "version": "1"}}});
    http.post(gateway_url)
        .bearer_auth(key)
        .header("Accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .expect("the gateway answers")
        .status()
}

/// Polls the gateway until `key` is refused (401 or 404), for at most 1 s (the promise of
/// API.md for revocation); answers the refusal's status, and fails the test after 1 s.
pub async fn wait_until_refused(app: &TestApp, gateway_url: &str, key: &str) -> StatusCode {
    eventually(
        "the key refused (it still works)",
        std::time::Duration::from_secs(1),
        || async {
            let status = gateway_status(&app.http, gateway_url, key).await;
            (status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND)
                .then_some(status)
        },
    )
    .await
}

/// Polls `check` every 20 ms until it answers `Some`, for at most `within`; fails the test
/// with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends a request head announcing a body of `body_len` bytes with `Expect: 100-continue`, over
/// a plain socket, and reads the answer: for a server that refuses a body it has not read (413
/// from the declared length), which then closes the connection. A client still writing the
/// body could lose that answer to the reset; this one never sends the body (it panics if the
/// server asks for it with 100 Continue). Answers the status and the body.
pub async fn refused_before_the_body(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> (StatusCode, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {body_len}\r\nExpect: 100-continue\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        assert!(
            !answer.starts_with(b"HTTP/1.1 100"),
            "{method} {path}: the server asked for the body"
        );
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (StatusCode::from_u16(status).unwrap(), body.to_owned())
}

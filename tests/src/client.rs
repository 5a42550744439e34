//! A real MCP client (rmcp, Streamable HTTP) for end-to-end tests.
//!
//! [`connect`] opens a handshake-era session (`initialize` at 2025-11-25, `Mcp-Session-Id`);
//! [`connect_with`] can instead speak the stateless era (`server/discover`, 2026-07-28).
//! The bearer token, if any, goes in `Authorization: Bearer <token>` on every HTTP request.
//!
//! The client's handler answers `sampling/createMessage` with [`SAMPLED_TEXT`] (as a server→client
//! request in the handshake era, or as an `input_required` round that [`RunningClient::call`]
//! drives in the stateless era) and counts the progress notifications it receives.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use rmcp::{
    ClientHandler, ClientLifecycleMode, ClientServiceExt as _, ErrorData as McpError, Peer,
    RoleClient, ServiceError, ServiceExt as _,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
        ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion,
        ServerPeerInfo, Tool,
    },
    service::{NotificationContext, RequestContext, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
// Sampling is SEP-2577-deprecated, yet part of 2025-11-25 and 2026-07-28.
#[allow(deprecated)]
use rmcp::model::{CreateMessageRequestParams, CreateMessageResult, SamplingMessage};
use serde_json::Value;
use tokio::sync::watch;

/// What the test client answers to every sampling request.
pub const SAMPLED_TEXT: &str = "sampled-by-test-client";

/// How long [`connect`] waits for the lifecycle to complete.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most `tools/list` pages [`RunningClient::list_tool_pages`] follows before giving up.
pub const MAX_PAGES: usize = 1000;

/// Which lifecycle the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize` / `notifications/initialized` at 2025-11-25, with a session.
    Handshake,
    /// `server/discover` at 2026-07-28; no session, per-request `_meta`.
    Stateless,
}

/// Connects a handshake-era client to `url` (e.g. `http://127.0.0.1:PORT/mcp`), sending
/// `Authorization: Bearer <bearer>` when given.
pub async fn connect(url: &str, bearer: Option<&str>) -> anyhow::Result<RunningClient> {
    connect_with(url, bearer, Era::Handshake).await
}

/// Connects a client of the given era; see [`connect`].
pub async fn connect_with(
    url: &str,
    bearer: Option<&str>,
    era: Era,
) -> anyhow::Result<RunningClient> {
    // The workspace builds reqwest with `rustls-no-provider`: a client cannot even be built
    // before a process-wide crypto provider is installed (the gateway installs the same one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(token) = bearer {
        // rmcp adds the `Bearer ` prefix itself (reqwest's `bearer_auth`).
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    let state = Arc::new(ClientState::new());
    let handler = TestClient {
        state: state.clone(),
    };
    let start = async {
        match era {
            Era::Handshake => handler.serve(transport).await,
            Era::Stateless => {
                handler
                    .serve_with_lifecycle(
                        transport,
                        ClientLifecycleMode::Discover {
                            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                        },
                    )
                    .await
            }
        }
    };
    let service = tokio::time::timeout(CONNECT_TIMEOUT, start)
        .await
        .with_context(|| format!("MCP client start timed out ({url})"))?
        .with_context(|| format!("MCP client start failed ({url})"))?;
    Ok(RunningClient { service, state })
}

/// A connected client. Dropping it cancels the client (the session is not deleted politely:
/// call [`RunningClient::close`] for that).
pub struct RunningClient {
    service: RunningService<RoleClient, TestClient>,
    state: Arc<ClientState>,
}

impl RunningClient {
    /// The rmcp peer, for any request the helpers do not cover (prompts, resources, ...).
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// The rmcp service (its `call_tool`/`get_prompt`/`read_resource` drive `input_required`
    /// rounds through this client's handler).
    pub fn service(&self) -> &RunningService<RoleClient, TestClient> {
        &self.service
    }

    /// What the server said about itself (`initialize` or `server/discover` result).
    pub fn server_info(&self) -> Option<Arc<ServerPeerInfo>> {
        self.service.peer().peer_info()
    }

    /// Every `tools/list` page, following `nextCursor` until it is absent (at most
    /// [`MAX_PAGES`]; a repeated cursor is an error).
    pub async fn list_tool_pages(&self) -> anyhow::Result<Vec<ListToolsResult>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let params = cursor
                .clone()
                .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
            let page = self.peer().list_tools(params).await?;
            let next = page.next_cursor.clone();
            pages.push(page);
            match next {
                None => return Ok(pages),
                Some(next) => {
                    anyhow::ensure!(seen.insert(next.clone()), "cursor repeated: {next}");
                    cursor = Some(next);
                }
            }
        }
        anyhow::bail!("more than {MAX_PAGES} tools/list pages")
    }

    /// All tools, across every page.
    pub async fn list_all_tools(&self) -> anyhow::Result<Vec<Tool>> {
        Ok(self
            .list_tool_pages()
            .await?
            .into_iter()
            .flat_map(|page| page.tools)
            .collect())
    }

    /// Calls `name` with `args` (a JSON object, or `null` for no arguments). A tool error is
    /// `Ok` with `is_error: Some(true)`; a JSON-RPC error is `Err(ServiceError::McpError(..))`.
    /// Stateless-era `input_required` rounds are answered by this client's handler.
    pub async fn call(&self, name: &str, args: Value) -> Result<CallToolResult, ServiceError> {
        let mut params = CallToolRequestParams::new(name.to_string());
        match args {
            Value::Null => {}
            Value::Object(map) => params = params.with_arguments(map),
            other => {
                return Err(ServiceError::McpError(McpError::invalid_params(
                    format!("tool arguments must be a JSON object, got {other}"),
                    None,
                )));
            }
        }
        self.service.call_tool(params).await
    }

    /// Progress notifications received so far.
    pub fn progress_count(&self) -> usize {
        *self.state.progress.borrow()
    }

    /// The progress notifications received so far, in arrival order.
    pub fn progress_events(&self) -> Vec<ProgressNotificationParam> {
        lock(&self.state.progress_events).clone()
    }

    /// Waits until at least `count` progress notifications arrived; `false` on timeout.
    /// (Notifications are handled apart from responses, so they may trail a call's result.)
    pub async fn wait_for_progress(&self, count: usize, within: Duration) -> bool {
        let mut rx = self.state.progress.subscribe();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|n| *n >= count)).await,
            Ok(Ok(_))
        )
    }

    /// Sampling requests this client answered.
    pub fn sampling_count(&self) -> usize {
        self.state.sampling.load(Ordering::SeqCst)
    }

    /// Closes the client (for a session, with an HTTP DELETE), waiting at most 5 s.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.service
            .close_with_timeout(Duration::from_secs(5))
            .await
            .context("closing the MCP client")?;
        Ok(())
    }
}

/// Text of every text block of a tool result, joined.
pub fn result_text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct ClientState {
    progress: watch::Sender<usize>,
    progress_events: Mutex<Vec<ProgressNotificationParam>>,
    sampling: AtomicUsize,
}

impl ClientState {
    fn new() -> Self {
        Self {
            progress: watch::Sender::new(0),
            progress_events: Mutex::new(Vec::new()),
            sampling: AtomicUsize::new(0),
        }
    }
}

/// The client handler: answers sampling, records progress.
pub struct TestClient {
    state: Arc<ClientState>,
}

impl ClientHandler for TestClient {
    #[allow(deprecated)] // Sampling is SEP-2577-deprecated, still in 2025-11-25 and 2026-07-28.
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_sampling().build(),
            Implementation::new("portcullis-test-client", "1.0.0"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.state.sampling.fetch_add(1, Ordering::SeqCst);
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(SAMPLED_TEXT),
            "test-model".to_string(),
        )
        .with_stop_reason(CreateMessageResult::STOP_REASON_END_TURN))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        lock(&self.state.progress_events).push(params);
        self.state.progress.send_modify(|n| *n += 1);
    }
}

//! A real MCP server to stand behind the gateway in end-to-end tests.
//!
//! [`TestUpstream`] runs rmcp's Streamable HTTP server (`StreamableHttpService`, stateful
//! sessions for handshake-era clients, stateless service for `2026-07-28` clients) on
//! `127.0.0.1:<ephemeral port>` at `/mcp`, and stops when dropped.
//!
//! Tools (see [`TOOL_NAMES`]), each with a description, an `inputSchema` and annotations:
//!
//! | tool | arguments | result |
//! |---|---|---|
//! | `echo` | `{text: string}` | text `text` (read-only) |
//! | `list_images` | `{}` | text `image-1, image-2` (read-only) |
//! | `delete_image_set` | `{name: string}` | text `deleted <name>` (destructive) |
//! | `create_refund` | `{amount: number, reason?: string}` | text `refunded <amount>` |
//! | `deploy_webapp` | `{service: string}` | text `deployed <service>` |
//! | `fail` | `{}` | `isError: true`, text `upstream failure` |
//! | `progress` | `{steps: integer}` | `steps` progress notifications to the caller's token, then `done` |
//! | `sample` | `{}` | asks the client for `sampling/createMessage` and returns the sampled text |
//!
//! `sample` uses a server→client request in the handshake era, and a multi-round-trip
//! `input_required` result (key [`SAMPLE_INPUT_KEY`]) in the stateless era, where
//! server→client requests are gone. Either way the result text is `sampled: <text>`.
//!
//! Also: the prompt `greeting {name}`, the resource `test://readme`, and the logging capability
//! (`logging/setLevel` is accepted and recorded).
//!
//! Counters ([`TestUpstream::calls`], [`TestUpstream::list_tools_requests`], ...) let a test prove
//! what did (or did not) reach the upstream. Every `tools/call` is counted by the name it asked
//! for, before any validation, so an unknown name counts too.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::serve::ListenerExt as _;
use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
        GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, InputRequest,
        InputRequests, InputRequiredResult, JsonObject, ListPromptsResult, ListResourcesResult,
        ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptArgument,
        PromptMessage, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Resource, ResourceContents, Role, ServerCapabilities, ServerConfig,
        Tool, ToolAnnotations,
    },
    service::RequestContext,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
// Sampling and logging are SEP-2577-deprecated, yet part of 2025-11-25 and 2026-07-28.
#[allow(deprecated)]
use rmcp::model::{
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, SamplingMessage,
    SetLevelRequestParams,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The eight tools every [`TestUpstream`] serves, in `tools/list` order.
pub const TOOL_NAMES: [&str; 8] = [
    "echo",
    "list_images",
    "delete_image_set",
    "create_refund",
    "deploy_webapp",
    "fail",
    "progress",
    "sample",
];

/// How many extra tools [`TestUpstream::start_paginated`] serves besides [`TOOL_NAMES`].
pub const FILLER_TOOLS: usize = 40;

/// The `inputRequests` key of the stateless-era `sample` round.
pub const SAMPLE_INPUT_KEY: &str = "sample";

/// URI of the one resource.
pub const README_URI: &str = "test://readme";

/// Text of the one resource.
pub const README_TEXT: &str = "Portcullis test upstream: tools, one prompt, this resource.";

/// A running MCP server on loopback. Dropping it stops the server (sessions end, the listener
/// closes).
pub struct TestUpstream {
    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    tool_names: Vec<String>,
    ct: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    calls: Mutex<HashMap<String, usize>>,
    list_tools: AtomicUsize,
    authorization: Mutex<Vec<Option<String>>>,
    log_level: Mutex<Option<String>>,
    cancelled: Mutex<Vec<Value>>,
}

impl TestUpstream {
    /// Starts the server with the eight tools, all on one `tools/list` page.
    pub async fn start() -> TestUpstream {
        Self::spawn(tools(0), None, Eras::Both).await
    }

    /// The same server speaking only the stateless revision (2026-07-28): `server/discover`
    /// lists that version alone and `initialize` is refused, as by a server of the new era only.
    pub async fn start_stateless_only() -> TestUpstream {
        Self::spawn(tools(0), None, Eras::Stateless).await
    }

    /// The same server speaking only the handshake era (2025-11-25 and before), as the
    /// TypeScript SDK's servers do: `server/discover` and 2026-07-28 are refused.
    pub async fn start_handshake_only() -> TestUpstream {
        Self::spawn(tools(0), None, Eras::Handshake).await
    }

    /// Starts a server with [`TOOL_NAMES`] plus [`FILLER_TOOLS`] read-only `inventory_NN` tools
    /// (`{}` → text `item NN`), listed `page_size` at a time: each page but the last carries an
    /// opaque `nextCursor`; an unknown cursor is a -32602 error.
    pub async fn start_paginated(page_size: usize) -> TestUpstream {
        assert!(page_size > 0, "page_size must be positive");
        Self::spawn(tools(FILLER_TOOLS), Some(page_size), Eras::Both).await
    }

    async fn spawn(tools: Vec<Tool>, page_size: Option<usize>, eras: Eras) -> TestUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("test upstream address");
        let port = addr.port();
        let ct = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let tool_names = tools.iter().map(|t| t.name.to_string()).collect();
        let server = UpstreamServer {
            stats: stats.clone(),
            tools: Arc::new(tools),
            page_size,
            eras,
        };
        // rmcp validates `Host` against an allow-list (default: loopback names on any port).
        // Name the exact authorities this server answers to.
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts([format!("127.0.0.1:{port}"), format!("localhost:{port}")])
            .with_cancellation_token(ct.child_token());
        let service: StreamableHttpService<UpstreamServer, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(server.clone()), Default::default(), config);
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = listener.tap_io(|tcp| {
            // Best effort: small request/response exchanges, no Nagle delay.
            let _ = tcp.set_nodelay(true);
        });
        let shutdown = ct.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        TestUpstream {
            url: format!("http://127.0.0.1:{port}/mcp"),
            addr,
            stats,
            tool_names,
            ct,
            task,
        }
    }

    /// The request ids this server was told (`notifications/cancelled`) to cancel.
    pub fn cancelled(&self) -> Vec<Value> {
        lock(&self.stats.cancelled).clone()
    }

    /// How many `tools/call` requests named `tool` reached this server.
    pub fn calls(&self, tool: &str) -> usize {
        lock(&self.stats.calls).get(tool).copied().unwrap_or(0)
    }

    /// How many `tools/call` requests reached this server, whatever the tool.
    pub fn total_calls(&self) -> usize {
        lock(&self.stats.calls).values().sum()
    }

    /// How many `tools/list` requests (pages) reached this server.
    pub fn list_tools_requests(&self) -> usize {
        self.stats.list_tools.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of every `tools/list` and `tools/call` request, in arrival
    /// order (`None` when absent): proves what credential the gateway sent upstream.
    pub fn authorization_headers(&self) -> Vec<Option<String>> {
        lock(&self.stats.authorization).clone()
    }

    /// The level last set by `logging/setLevel`, if any (e.g. `"info"`).
    pub fn log_level(&self) -> Option<String> {
        lock(&self.stats.log_level).clone()
    }

    /// Names of every tool this server lists, in `tools/list` order.
    pub fn tool_names(&self) -> &[String] {
        &self.tool_names
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.ct.cancel();
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
struct UpstreamServer {
    stats: Arc<Stats>,
    tools: Arc<Vec<Tool>>,
    page_size: Option<usize>,
    eras: Eras,
}

/// The protocol eras a test upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eras {
    Both,
    Handshake,
    Stateless,
}

impl UpstreamServer {
    fn record_request(&self, context: &RequestContext<RoleServer>) {
        let header = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get(axum::http::header::AUTHORIZATION))
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        lock(&self.stats.authorization).push(header);
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        other => panic!("tool schema must be an object, got {other}"),
    }
}

fn annotations(
    title: &str,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool,
) -> ToolAnnotations {
    ToolAnnotations::with_title(title)
        .read_only(read_only)
        .destructive(destructive)
        .idempotent(idempotent)
        .open_world(open_world)
}

fn no_arguments() -> Arc<JsonObject> {
    schema(json!({"type": "object", "properties": {}, "additionalProperties": false}))
}

/// The tool list: [`TOOL_NAMES`] then `filler` read-only `inventory_NN` tools.
fn tools(filler: usize) -> Vec<Tool> {
    let mut tools =
        vec![
        Tool::new(
            "echo",
            "Echo the given text back unchanged.",
            schema(json!({
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo."}},
                "required": ["text"],
                "additionalProperties": false
            })),
        )
        .with_title("Echo")
        .with_annotations(annotations("Echo", true, false, true, false)),
        Tool::new(
            "list_images",
            "List the container images in the registry.",
            no_arguments(),
        )
        .with_title("List images")
        .with_annotations(annotations("List images", true, false, true, false)),
        Tool::new(
            "delete_image_set",
            "Delete a named set of container images. This cannot be undone.",
            schema(json!({
                "type": "object",
                "properties": {"name": {"type": "string", "description": "Image set to delete."}},
                "required": ["name"],
                "additionalProperties": false
            })),
        )
        .with_title("Delete image set")
        .with_annotations(annotations("Delete image set", false, true, true, false)),
        Tool::new(
            "create_refund",
            "Refund an amount to the customer's original payment method.",
            schema(json!({
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0, "description": "Amount to refund."},
                    "reason": {"type": "string", "description": "Why the refund is given."}
                },
                "required": ["amount"],
                "additionalProperties": false
            })),
        )
        .with_title("Create refund")
        .with_annotations(annotations("Create refund", false, false, false, true)),
        Tool::new(
            "deploy_webapp",
            "Deploy the latest build of a web application service.",
            schema(json!({
                "type": "object",
                "properties": {"service": {"type": "string", "description": "Service to deploy."}},
                "required": ["service"],
                "additionalProperties": false
            })),
        )
        .with_title("Deploy web app")
        .with_annotations(annotations("Deploy web app", false, false, false, true)),
        Tool::new("fail", "Always fails (reports a tool error).", no_arguments())
            .with_title("Fail")
            .with_annotations(annotations("Fail", true, false, true, false)),
        Tool::new(
            "progress",
            "Report `steps` progress notifications to the caller, then return `done`.",
            schema(json!({
                "type": "object",
                "properties": {
                    "steps": {"type": "integer", "minimum": 0, "maximum": 1000,
                              "description": "Number of progress notifications."},
                    "pause_ms": {"type": "integer", "minimum": 0, "maximum": 1000,
                                 "description": "A pause before each step, in milliseconds."}
                },
                "required": ["steps"],
                "additionalProperties": false
            })),
        )
        .with_title("Progress")
        .with_annotations(annotations("Progress", true, false, true, false)),
        Tool::new(
            "sample",
            "Ask the client's model for a completion (sampling) and return its text.",
            no_arguments(),
        )
        .with_title("Sample")
        .with_annotations(annotations("Sample", true, false, false, true)),
    ];
    tools.extend((0..filler).map(|i| {
        Tool::new(
            format!("inventory_{i:02}"),
            format!("Look up inventory item {i:02}."),
            no_arguments(),
        )
        .with_annotations(annotations(
            &format!("Inventory {i:02}"),
            true,
            false,
            true,
            false,
        ))
    }));
    tools
}

// Cursors are opaque to clients; scramble the offset so nobody relies on its shape.
const CURSOR_KEY: u64 = 0x5eed_c0de_fa11_b0a7;

fn encode_cursor(offset: usize) -> String {
    format!("{:016x}", offset as u64 ^ CURSOR_KEY)
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    if cursor.len() != 16 {
        return None;
    }
    let raw = u64::from_str_radix(cursor, 16).ok()?;
    usize::try_from(raw ^ CURSOR_KEY).ok()
}

fn text_result(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(text)]).into()
}

fn error_result(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

/// A required string argument, or the tool error to return.
fn string_arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("invalid arguments: `{name}` must be a string"))
}

#[allow(deprecated)] // Sampling (see `sampling_params`).
fn sampled_text(result: &CreateMessageResult) -> String {
    result
        .message
        .content
        .clone()
        .into_vec()
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("")
}

#[allow(deprecated)] // Sampling is SEP-2577-deprecated, still part of 2025-11-25 and 2026-07-28.
fn sampling_params() -> CreateMessageRequestParams {
    CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(
            "Reply with anything: this is a relaying test.",
        )],
        64,
    )
}

impl UpstreamServer {
    #[allow(deprecated)] // Sampling (see `sampling_params`).
    async fn sample(
        &self,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let stateless = context
            .protocol_version()
            .is_some_and(|v| !v.has_initialize());
        if !stateless {
            // Handshake era: a real server→client request on the call's stream.
            return match context.peer.create_message(sampling_params()).await {
                Ok(result) => text_result(format!("sampled: {}", sampled_text(&result))),
                Err(error) => error_result(format!("sampling failed: {error}")),
            };
        }
        // Stateless era: ask for the input, then finish on the retry that carries it.
        if let Some(response) = request
            .input_responses
            .as_ref()
            .and_then(|responses| responses.get(SAMPLE_INPUT_KEY))
        {
            return match serde_json::from_value::<CreateMessageResult>(response.clone()) {
                Ok(result) => text_result(format!("sampled: {}", sampled_text(&result))),
                Err(error) => error_result(format!("bad sampling response: {error}")),
            };
        }
        let mut requests = InputRequests::new();
        requests.insert(
            SAMPLE_INPUT_KEY.to_string(),
            InputRequest::CreateMessage(CreateMessageRequest::new(sampling_params())),
        );
        InputRequiredResult::new(Some(requests), Some("sample-round-1".to_string())).into()
    }

    async fn progress(
        &self,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let Some(steps) = args.get("steps").and_then(Value::as_u64) else {
            return error_result("invalid arguments: `steps` must be a non-negative integer");
        };
        if steps > 1000 {
            return error_result("invalid arguments: `steps` must be at most 1000");
        }
        // `pause_ms`: a pause before each step, so a test can cancel the call midway.
        let pause = args
            .get("pause_ms")
            .and_then(Value::as_u64)
            .map(|ms| std::time::Duration::from_millis(ms.min(1000)));
        if let Some(token) = context.meta.get_progress_token() {
            for step in 1..=steps {
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                let param = ProgressNotificationParam::new(token.clone(), step as f64)
                    .with_total(steps as f64)
                    .with_message(format!("step {step} of {steps}"));
                if let Err(error) = context.peer.notify_progress(param).await {
                    return error_result(format!("progress notification failed: {error}"));
                }
            }
        }
        text_result("done")
    }
}

impl ServerHandler for UpstreamServer {
    async fn on_cancelled(
        &self,
        notification: rmcp::model::CancelledNotificationParam,
        _context: rmcp::service::NotificationContext<RoleServer>,
    ) {
        lock(&self.stats.cancelled)
            .push(serde_json::to_value(&notification.request_id).unwrap_or(Value::Null));
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        match self.eras {
            Eras::Both => std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
            Eras::Stateless => std::borrow::Cow::Owned(vec![ProtocolVersion::V_2026_07_28]),
            Eras::Handshake => std::borrow::Cow::Owned(
                ProtocolVersion::KNOWN_VERSIONS
                    .iter()
                    .filter(|v| **v != ProtocolVersion::V_2026_07_28)
                    .cloned()
                    .collect(),
            ),
        }
    }

    #[allow(deprecated)] // The logging capability is SEP-2577-deprecated.
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("portcullis-test-upstream", "1.0.0"))
        .with_instructions("Test upstream for Portcullis end-to-end tests.")
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.stats.list_tools.fetch_add(1, Ordering::SeqCst);
        self.record_request(&context);
        let offset = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => decode_cursor(&cursor)
                .filter(|offset| *offset < self.tools.len())
                .ok_or_else(|| McpError::invalid_params("invalid cursor", None))?,
        };
        let page_size = self.page_size.unwrap_or(usize::MAX);
        let end = offset.saturating_add(page_size).min(self.tools.len());
        let mut result = ListToolsResult::with_all_items(self.tools[offset..end].to_vec());
        if end < self.tools.len() {
            result.next_cursor = Some(encode_cursor(end));
        }
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|tool| tool.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        *lock(&self.stats.calls)
            .entry(request.name.to_string())
            .or_default() += 1;
        self.record_request(&context);
        if !self.tools.iter().any(|tool| tool.name == request.name) {
            return Err(McpError::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            ));
        }
        let args = request.arguments.clone().unwrap_or_default();
        let response = match &*request.name {
            "echo" => match string_arg(&args, "text") {
                Ok(text) => text_result(text),
                Err(message) => error_result(message),
            },
            "list_images" => text_result("image-1, image-2"),
            "delete_image_set" => match string_arg(&args, "name") {
                Ok(name) => text_result(format!("deleted {name}")),
                Err(message) => error_result(message),
            },
            "create_refund" => match args.get("amount") {
                Some(Value::Number(amount)) => text_result(format!("refunded {amount}")),
                _ => error_result("invalid arguments: `amount` must be a number"),
            },
            "deploy_webapp" => match string_arg(&args, "service") {
                Ok(service) => text_result(format!("deployed {service}")),
                Err(message) => error_result(message),
            },
            "fail" => error_result("upstream failure"),
            "progress" => self.progress(&args, &context).await,
            "sample" => self.sample(&request, &context).await,
            inventory => text_result(format!(
                "item {}",
                inventory.trim_start_matches("inventory_")
            )),
        };
        Ok(response)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "greeting",
                Some("Greet someone by name."),
                Some(vec![
                    PromptArgument::new("name")
                        .with_description("Who to greet.")
                        .with_required(true),
                ]),
            )
            .with_title("Greeting"),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "greeting" {
            return Err(McpError::invalid_params(
                format!("unknown prompt: {}", request.name),
                None,
            ));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|args| args.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| McpError::invalid_params("missing argument: name", None))?;
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            format!("Hello, {name}!"),
        )])
        .with_description("A greeting.")
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(README_URI, "readme")
                .with_title("Readme")
                .with_description("What this test upstream serves.")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != README_URI {
            return Err(McpError::resource_not_found(
                format!("unknown resource: {}", request.uri),
                Some(json!({"uri": request.uri})),
            ));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text(README_TEXT, README_URI)]).into())
    }

    #[allow(deprecated)] // Logging is SEP-2577-deprecated.
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let level = serde_json::to_value(request.level)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *lock(&self.stats.log_level) = Some(level);
        Ok(())
    }
}

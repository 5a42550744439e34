//! The client side: a Streamable HTTP MCP endpoint at `/mcp/{server id}` (handshake era,
//! 2025-03-26 to 2025-11-25).
//!
//! Each client session maps to one upstream session, opened with the client's own `initialize`,
//! so request ids, progress tokens and server-to-client requests (sampling, elicitation, roots)
//! pass through unchanged in both directions. The gateway steps in only where the policy says:
//! `tools/list` is read in full from the upstream, filtered and re-paginated; `tools/call` is
//! decided before it is forwarded. Requests the gateway makes on its own (extra `tools/list`
//! pages) use ids of their own (`portcullis-…`) so they never collide with the client's.

// Refusals are whole HTTP responses carried in `Err`: the cold path, built once per request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use portcullis_mcp::jsonrpc::{
    self, Body as RpcBody, ErrorObject, Message, Request, RequestId, code,
};
use portcullis_mcp::sse::{SseEvent, encode_event};
use portcullis_mcp::upstream::{
    Client, EventStream, PostResponse, UpstreamError, collect_until_response,
};
use portcullis_policy::{ApprovalRequest, Call, ChangedTools, Decision};
use portcullis_store::activity::NewEvent;
use portcullis_store::agents::Agent;
use portcullis_store::approvals;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Gateway;
use crate::auth::AuthError;
use crate::limits::{LimitKey, Outcome, Reservation};
use crate::policies::LoadedPolicy;
use crate::session::Session;
use crate::upstreams::{Upstream, UpstreamLookupError};

/// Tools per `tools/list` page the gateway serves.
const PAGE_SIZE: usize = 100;
/// The largest `initialize` params accepted (they are sealed into the session id).
const MAX_INITIALIZE_PARAMS: usize = 16 * 1024;
/// Re-opened upstream sessions remembered at most.
pub(crate) const MAX_REOPENED: usize = 100_000;
/// How long the rest of an answered upstream stream is read in the background, at most.
const DRAIN: Duration = Duration::from_secs(5);
/// How long an upstream tool catalog is trusted for `changed_tools` before it is read again.
const CATALOG_TTL: Duration = Duration::from_secs(60);

/// Client requests passed to the upstream as they are (besides `initialize`, `tools/list` and
/// `tools/call`, which the gateway handles). Every other method is refused with -32601.
const FORWARDED_REQUESTS: &[&str] = &[
    "ping",
    "completion/complete",
    "logging/setLevel",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
];

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// An upstream session the gateway opened itself.
#[derive(Debug, Clone)]
pub(crate) struct Reopened {
    pub(crate) session: Option<String>,
    /// The negotiated version.
    pub(crate) version: String,
    /// The upstream's `InitializeResult`.
    pub(crate) result: Arc<Value>,
}

/// Tool name → definition hash, as the upstream lists them now.
pub(crate) type Catalog = HashMap<String, String>;

/// Per-process state of the MCP endpoint.
#[derive(Debug, Default)]
pub struct McpState {
    /// Upstream tool catalogs by server.
    catalogs: Mutex<HashMap<Uuid, (Arc<Catalog>, Instant)>>,
    /// Upstream sessions opened after the upstream forgot the one in the session token, and
    /// the upstream sessions of stateless clients (keyed by their derived session id).
    pub(crate) reopened: Mutex<HashMap<Uuid, Reopened>>,
    /// Calls of stateless clients waiting for their next input round.
    pub(crate) parked: crate::stateless::Parked,
    /// Per server: tool name → its `x-mcp-header` arguments (path, header name), for tools
    /// that have any, as the upstream lists them now.
    pub(crate) param_headers: Mutex<HashMap<Uuid, Arc<crate::stateless::ParamHeaders>>>,
    /// `logging/setLevel` of handshake sessions on stateless servers (stamped as `_meta`).
    pub(crate) log_levels: Mutex<HashMap<Uuid, String>>,
    /// Requests of handshake clients in flight at stateless servers, by (session, request id):
    /// `notifications/cancelled` aborts them.
    pub(crate) in_flight: Mutex<HashMap<(Uuid, String), tokio::task::AbortHandle>>,
    /// Calls waiting for a handshake client's answer to an input request, by (session, id).
    pub(crate) input_waiters: Mutex<HashMap<(Uuid, String), tokio::sync::oneshot::Sender<Value>>>,
}

// ---------------------------------------------------------------------------------------------
// Answers

pub(crate) fn rpc_error(status: StatusCode, id: Option<RequestId>, error: ErrorObject) -> Response {
    let mut response = (status, axum::Json(Message::error(id, error).to_value())).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

pub(crate) fn json_message(message: &Value, session: Option<&str>) -> Response {
    let mut response = axum::Json(message).into_response();
    if let Some(token) = session
        && let Ok(value) = HeaderValue::from_str(token)
    {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// A `tools/call` result the agent reads as a refusal: `isError` with one text item.
/// A refused call's tool result; `_meta` names the rule and the document that decided (its
/// version, and whether it is the server's policy or the agent's own).
fn refusal(
    id: &RequestId,
    text: &str,
    rule: Option<&str>,
    policy: Option<&LoadedPolicy>,
) -> Response {
    let result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {
            "io.portcullis/rule": rule,
            "io.portcullis/policyVersion": policy.map(|p| p.version),
            "io.portcullis/policyScope": policy.map(|p| if p.agent_id.is_some() { "agent" } else { "server" }),
        },
    });
    json_message(&Message::result(id.clone(), result).to_value(), None)
}

/// A tool result for a refused call, as a JSON-RPC message.
fn refusal_message(id: &RequestId, text: &str, rule: &str) -> Value {
    let result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {"io.portcullis/rule": rule},
    });
    Message::result(id.clone(), result).to_value()
}

/// One JSON-RPC message as an SSE event.
fn sse_bytes(message: &Value) -> Bytes {
    Bytes::from(encode_event(&SseEvent::message(message.to_string())))
}

/// An activity event about an approval, for steps that happen outside a request (a holder that
/// died).
pub(crate) fn approval_event(
    org_id: Uuid,
    approval: &portcullis_store::approvals::Approval,
    decision: &str,
    reason: Option<String>,
) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        org_id,
        at: chrono::Utc::now(),
        server_id: Some(approval.server_id),
        agent_id: Some(approval.agent_id),
        agent_name: Some(approval.agent_name.clone()),
        session: None,
        method: "tools/call".into(),
        tool: Some(approval.tool.clone()),
        argument_keys: approval
            .arguments
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
        arguments: None,
        decision: decision.into(),
        rule: Some(approval.rule.clone()),
        reason,
        policy_id: None,
        policy_version: None,
        latency_ms: None,
        upstream_status: None,
        policy_agent_id: None,
        shadow: None,
    }
}

pub(crate) fn sse_response(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How long a relayed answer's headers wait for its first chunk. No shorter than
/// [`TIMER_TICK`](crate::TIMER_TICK), so that this per-call timer never wakes the driver.
const FIRST_CHUNK_WAIT: Duration = crate::TIMER_TICK;

/// [`sse_response`] for a relayed upstream stream, once its first chunk has come or
/// [`FIRST_CHUNK_WAIT`] has passed. A quick upstream's answer is usually on its way when the
/// upstream's headers arrive: waiting for it sends the headers, the answer and the end of the
/// stream in one write, where answering at once costs a second write (and a second wake-up of
/// the client). The client gains nothing from the headers alone: the relay sends the
/// upstream's priming event with the first event that carries a message. A slow call still
/// gets its headers within the wait.
pub(crate) async fn relayed_response(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    let mut stream = Box::pin(stream);
    match tokio::time::timeout(FIRST_CHUNK_WAIT, stream.next()).await {
        Ok(Some(first)) => sse_response(futures_util::stream::iter([first]).chain(stream)),
        Ok(None) => sse_response(futures_util::stream::empty()),
        Err(_) => sse_response(stream),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks common to every method

/// The request's agent and server, or the answer that refuses it.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) agent: Arc<Agent>,
    pub(crate) server_id: Uuid,
}

async fn admit(gw: &Gateway, server: &str, headers: &HeaderMap) -> Result<Caller, Response> {
    let forbidden = |message: &str| {
        rpc_error(
            StatusCode::FORBIDDEN,
            None,
            ErrorObject::new(code::SERVER_ERROR, format!("Forbidden: {message}")),
        )
    };
    // DNS rebinding: a page on evil.example.com that resolves to this gateway sends
    // `Host: evil.example.com`. With allowed hosts configured, only those are served.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let hosts = &gw.config.allowed_hosts;
    let host_allowed = host.is_some_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h)));
    if !hosts.is_empty() && !host_allowed {
        return Err(forbidden("Host header is not allowed"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let listed = gw
            .config
            .allowed_origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin));
        // Same origin: the page was served by an allowed host of this gateway.
        let same_origin = host_allowed
            && origin.split_once("://").is_some_and(|(_, authority)| {
                host.is_some_and(|h| authority.eq_ignore_ascii_case(h))
            });
        if !listed && !same_origin {
            return Err(forbidden("this Origin is not allowed"));
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let agent = match gw.agents.authenticate(&gw.db, authorization).await {
        Ok(Ok(agent)) => agent,
        Ok(Err(AuthError::Missing)) => {
            return Err(rpc_error(
                StatusCode::UNAUTHORIZED,
                None,
                ErrorObject::new(
                    code::SERVER_ERROR,
                    "Unauthorized: send your agent key as Authorization: Bearer pcl_…",
                ),
            ));
        }
        Ok(Err(AuthError::Invalid)) => {
            return Err(rpc_error(
                StatusCode::UNAUTHORIZED,
                None,
                ErrorObject::new(
                    code::SERVER_ERROR,
                    "Unauthorized: this agent key is not valid (revoked or unknown)",
                ),
            ));
        }
        Err(_) => {
            return Err(rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                ErrorObject::new(
                    code::SERVER_ERROR,
                    "Service unavailable: cannot check the agent key right now",
                ),
            ));
        }
    };
    // Another organization's server, or one this agent was not granted: as if it did not exist.
    match server.parse::<Uuid>() {
        Ok(server_id) if agent.may_reach(server_id) => Ok(Caller { agent, server_id }),
        _ => Err(not_found()),
    }
}

fn not_found() -> Response {
    rpc_error(
        StatusCode::NOT_FOUND,
        None,
        ErrorObject::new(code::SERVER_ERROR, "Not found"),
    )
}

fn session_not_found() -> Response {
    rpc_error(
        StatusCode::NOT_FOUND,
        None,
        ErrorObject::new(
            code::SERVER_ERROR,
            "Session not found: initialize a new session",
        ),
    )
}

/// The session named by the request, if it is this agent's on this server.
fn session_of(
    gw: &Gateway,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Arc<Session>, Response> {
    let Some(token) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            ErrorObject::new(
                code::SERVER_ERROR,
                "Bad Request: Mcp-Session-Id header is required",
            ),
        ));
    };
    match gw.sessions.open(token) {
        Some(s) if s.agent_id == caller.agent.id && s.server_id == caller.server_id => Ok(s),
        _ => Err(session_not_found()),
    }
}

pub(crate) async fn upstream_of(
    gw: &Gateway,
    caller: &Caller,
    id: Option<&RequestId>,
) -> Result<Arc<Upstream>, Response> {
    match gw
        .upstreams
        .get(&gw.db, caller.agent.org_id, caller.server_id)
        .await
    {
        Ok(up) => Ok(up),
        Err(UpstreamLookupError::NotFound) => Err(not_found()),
        Err(e) => {
            tracing::warn!(server = %caller.server_id, error = %e, "upstream unavailable");
            Err(rpc_error(
                StatusCode::BAD_GATEWAY,
                id.cloned(),
                ErrorObject::new(code::INTERNAL_ERROR, format!("Upstream unavailable: {e}")),
            ))
        }
    }
}

/// The agent's connection to the upstream (for stdio and legacy SSE upstreams, started on first
/// use), or the 502 that says why there is none.
pub(crate) async fn connect(
    upstream: &Upstream,
    caller: &Caller,
    id: Option<&RequestId>,
) -> Result<Client, Response> {
    upstream.connect(caller.agent.id).await.map_err(|e| {
        tracing::warn!(server = %caller.server_id, error = %e, "cannot connect to the upstream");
        rpc_error(StatusCode::BAD_GATEWAY, id.cloned(), e.to_error_object())
    })
}

fn accepts_both(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let has = |t: &str| {
        accept
            .split(',')
            .any(|part| part.trim().starts_with(t) || part.trim().starts_with("*/*"))
    };
    has("application/json") && has("text/event-stream")
}

/// A POST body, read by [`read_body`] with the gateway's limit.
pub struct McpBody(pub Bytes);

impl axum::extract::FromRequest<Arc<Gateway>> for McpBody {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        gw: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        read_body(request, gw.config.max_body_bytes)
            .await
            .map(McpBody)
    }
}

/// Reads a body of at most `max` bytes. One whose declared length is over the limit is refused
/// (413, a JSON-RPC error) before a byte of it is read, so a client sending
/// `Expect: 100-continue` never sends it; one without a length is refused the same way once more
/// than `max` bytes have come. (An extractor, not a middleware: a middleware boxed every
/// request's future and cloned the route's service, on every call.)
pub(crate) async fn read_body(
    request: axum::extract::Request,
    max: usize,
) -> Result<Bytes, Response> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            ErrorObject::new(
                code::INVALID_REQUEST,
                format!("Payload Too Large: the limit is {max} bytes"),
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(request.into_body(), max)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            ErrorObject::new(
                code::INVALID_REQUEST,
                format!("Bad Request: the body could not be read: {e}"),
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// POST

pub async fn post(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    headers: HeaderMap,
    McpBody(body): McpBody,
) -> Response {
    use tracing::Instrument as _;
    // One span per MCP request; its fields are filled in as they become known (the decision by
    // the activity sink), and every log line inside carries them.
    let span = tracing::info_span!(
        "mcp",
        org = tracing::field::Empty,
        server = tracing::field::Empty,
        agent = tracing::field::Empty,
        method = tracing::field::Empty,
        tool = tracing::field::Empty,
        decision = tracing::field::Empty,
    );
    // Boxed: the request's future is large (every state of the call), and the router's layers
    // move the handler's future by value before polling it; a box moves as a pointer.
    Box::pin(post_in_span(gw, server, headers, body).instrument(span)).await
}

async fn post_in_span(
    gw: Arc<Gateway>,
    server: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match admit(&gw, &server, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let span = tracing::Span::current();
    span.record("org", tracing::field::display(caller.agent.org_id));
    span.record("server", tracing::field::display(caller.server_id));
    span.record("agent", tracing::field::display(caller.agent.id));
    if !accepts_both(&headers) {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            None,
            ErrorObject::new(
                code::SERVER_ERROR,
                "Not Acceptable: Client must accept both application/json and text/event-stream",
            ),
        );
    }
    let message = match jsonrpc::parse_body(&body) {
        Ok(RpcBody::Single(m)) => m,
        Ok(RpcBody::Batch(_)) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                ErrorObject::new(
                    code::INVALID_REQUEST,
                    "Invalid Request: JSON-RPC batches are not supported; send one message per request",
                ),
            );
        }
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, None, e.to_error_object()),
    };

    let method = match &message {
        Message::Request(r) => r.method.as_str(),
        Message::Notification(n) => n.method.as_str(),
        _ => "response",
    };
    gw.metrics.request(method);
    span.record("method", tracing::field::debug(method));
    if crate::stateless::is_stateless(&headers, &message) {
        return Box::pin(crate::stateless::post(&gw, caller, &headers, message)).await;
    }
    if let Message::Request(req) = &message
        && req.method == "initialize"
    {
        return Box::pin(initialize(&gw, &caller, req)).await;
    }
    let session = match session_of(&gw, &caller, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(version) = headers.get(VERSION_HEADER)
        && version
            .to_str()
            .ok()
            .and_then(portcullis_mcp::version::ProtocolVersion::parse)
            .is_none()
    {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            ErrorObject::new(
                code::SERVER_ERROR,
                "Bad Request: unsupported MCP-Protocol-Version",
            ),
        );
    }
    let id = match &message {
        Message::Request(r) => Some(&r.id),
        _ => None,
    };
    let upstream = match upstream_of(&gw, &caller, id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client = match connect(&upstream, &caller, id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ctx = Ctx {
        gw: gw.clone(),
        caller,
        session,
        upstream,
        client,
        client_version: client_version(&headers),
        round: None,
        stateless_client: false,
        call_digest: String::new(),
    };
    match message {
        Message::Request(req) => match req.method.as_str() {
            _ if ctx.upstream.stateless
                && let Some(answer) = ctx.answer_locally(&req) =>
            {
                answer
            }
            "tools/list" => Box::pin(ctx.tools_list(req)).await,
            "tools/call" => ctx.tools_call(req).await,
            method if FORWARDED_REQUESTS.contains(&method) => {
                let raw = req.to_value();
                ctx.forward(&req.id, &raw, None).await
            }
            // Anything else could be a way around the policy on a lenient upstream.
            _ => rpc_error(
                StatusCode::OK,
                Some(req.id),
                ErrorObject::new(code::METHOD_NOT_FOUND, "Method not found"),
            ),
        },
        // A notification is processed, not answered: only MCP's own notifications pass, so a
        // `tools/call` sent without an id never reaches the upstream.
        Message::Notification(n) if !n.method.starts_with("notifications/") => {
            StatusCode::ACCEPTED.into_response()
        }
        other => {
            let raw = other.to_value();
            match ctx.post_upstream(&raw, ctx.client_version.as_deref()).await {
                Ok(_) => StatusCode::ACCEPTED.into_response(),
                Err(e) => rpc_error(StatusCode::BAD_GATEWAY, None, e.to_error_object()),
            }
        }
    }
}

async fn initialize(gw: &Arc<Gateway>, caller: &Caller, req: &Request) -> Response {
    // The params travel inside every session id of this session: keep them small.
    let params_len = req.params.as_ref().map_or(0, |p| p.to_string().len());
    if params_len > MAX_INITIALIZE_PARAMS {
        return rpc_error(
            StatusCode::OK,
            Some(req.id.clone()),
            ErrorObject::new(
                code::INVALID_PARAMS,
                format!("Invalid params: initialize params over {MAX_INITIALIZE_PARAMS} bytes"),
            ),
        );
    }
    let upstream = match upstream_of(gw, caller, Some(&req.id)).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client = match connect(&upstream, caller, Some(&req.id)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if upstream.stateless {
        let (result, version) = match crate::translate::initialize(&client, req).await {
            Ok(found) => found,
            Err(r) => return r,
        };
        let session = Session {
            id: Uuid::new_v4(),
            org_id: caller.agent.org_id,
            server_id: caller.server_id,
            agent_id: caller.agent.id,
            protocol_version: version.clone(),
            upstream_session: None,
            initialize_params: req.params.clone().unwrap_or(Value::Null),
            issued_at: chrono_now_secs(),
        };
        let token = gw.sessions.seal(&session);
        tracing::info!(session = %session.id, agent = %caller.agent.id, server = %caller.server_id, version, "session opened (stateless upstream)");
        return json_message(
            &Message::result(req.id.clone(), result).to_value(),
            Some(&token),
        );
    }
    let raw = req.to_value();
    let (response, upstream_session) = match client.post(&raw, None, None).await {
        Ok(PostResponse::Json {
            message,
            session_id,
        }) => (message, session_id),
        Ok(PostResponse::Stream {
            session_id,
            mut events,
        }) => match collect_until_response(&mut events, &req.id).await {
            Ok((_, message)) => (message, session_id),
            Err(e) => return rpc_error(StatusCode::OK, Some(req.id.clone()), e.to_error_object()),
        },
        Ok(PostResponse::Accepted) => {
            return rpc_error(
                StatusCode::OK,
                Some(req.id.clone()),
                ErrorObject::new(
                    code::INTERNAL_ERROR,
                    "Upstream accepted initialize without answering it",
                ),
            );
        }
        Err(e) => return rpc_error(StatusCode::OK, Some(req.id.clone()), e.to_error_object()),
    };
    let Some(version) = response
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
    else {
        // An error from the upstream: pass it on, no session.
        return json_message(&response, None);
    };
    let session = Session {
        id: Uuid::new_v4(),
        org_id: caller.agent.org_id,
        server_id: caller.server_id,
        agent_id: caller.agent.id,
        protocol_version: version.to_owned(),
        upstream_session,
        initialize_params: req.params.clone().unwrap_or(Value::Null),
        issued_at: chrono_now_secs(),
    };
    let token = gw.sessions.seal(&session);
    tracing::info!(session = %session.id, agent = %caller.agent.id, server = %caller.server_id, version, "session opened");
    json_message(&response, Some(&token))
}

pub(crate) fn chrono_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn client_version(headers: &HeaderMap) -> Option<String> {
    headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) fn id_value(id: &RequestId) -> Value {
    match id {
        RequestId::Number(n) => Value::from(*n),
        RequestId::String(s) => Value::from(s.clone()),
    }
}

/// One request's context after admission.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) caller: Caller,
    pub(crate) session: Arc<Session>,
    pub(crate) upstream: Arc<Upstream>,
    /// The agent's connection to the upstream.
    pub(crate) client: Client,
    /// The input round a stateless client's retry continues.
    pub(crate) round: Option<crate::stateless::Round>,
    /// The client speaks the stateless revision.
    pub(crate) stateless_client: bool,
    /// A stateless client's call (method, name, arguments) as a digest: input rounds are
    /// bound to it.
    pub(crate) call_digest: String,
    /// The `MCP-Protocol-Version` the client sent with this request, passed on as it is (an
    /// upstream decides per request what to send, e.g. SSE priming events only from 2025-11-25).
    pub(crate) client_version: Option<String>,
}

impl Ctx {
    /// Admission, the session, and its upstream: what GET and DELETE need.
    async fn open(gw: &Arc<Gateway>, server: &str, headers: &HeaderMap) -> Result<Ctx, Response> {
        let caller = admit(gw, server, headers).await?;
        let session = session_of(gw, &caller, headers)?;
        let upstream = upstream_of(gw, &caller, None).await?;
        let client = connect(&upstream, &caller, None).await?;
        Ok(Ctx {
            gw: gw.clone(),
            caller,
            session,
            upstream,
            client,
            client_version: client_version(headers),
            round: None,
            stateless_client: false,
            call_digest: String::new(),
        })
    }

    fn upstream_session(&self) -> Option<String> {
        let reopened = self
            .gw
            .mcp
            .reopened
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match reopened.get(&self.session.id) {
            Some(r) => r.session.clone(),
            None => self.session.upstream_session.clone(),
        }
    }

    /// The upstream session this gateway opened for the session, if any.
    pub(crate) fn reopened(&self) -> Option<Reopened> {
        self.gw
            .mcp
            .reopened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.session.id)
            .cloned()
    }

    /// Opens a new upstream session with the client's original `initialize` (the upstream
    /// forgot the one in the session token, or it was a stdio process that was replaced) and
    /// remembers it for the session's later requests.
    pub(crate) async fn reopen(&self) -> Result<Option<String>, UpstreamError> {
        let reopened = self
            .client
            .initialize(self.session.initialize_params.clone())
            .await?;
        tracing::info!(session = %self.session.id, "upstream session opened");
        let mut map = self
            .gw
            .mcp
            .reopened
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_REOPENED {
            // Forgetting only costs another initialization on the next call.
            map.clear();
        }
        map.insert(
            self.session.id,
            Reopened {
                session: reopened.session_id.clone(),
                version: reopened.protocol_version,
                result: Arc::new(reopened.result),
            },
        );
        Ok(reopened.session_id)
    }

    /// POSTs to the upstream in this session (with `version` as `MCP-Protocol-Version`); when
    /// the upstream has forgotten the session, opens a new one with the client's original
    /// `initialize` and tries once more.
    pub(crate) async fn post_upstream(
        &self,
        message: &Value,
        version: Option<&str>,
    ) -> Result<PostResponse, UpstreamError> {
        if self.upstream.stateless {
            return self.post_to_stateless(message).await;
        }
        let session = self.upstream_session();
        match self.client.post(message, session.as_deref(), version).await {
            Err(UpstreamError::SessionExpired) => {
                let reopened = self.reopen().await?;
                self.client
                    .post(message, reopened.as_deref(), version)
                    .await
            }
            other => other,
        }
    }

    /// Forwards a request and relays the answer (JSON or SSE) as it comes. `reservation` is
    /// released if the upstream fails.
    pub(crate) async fn forward(
        &self,
        id: &RequestId,
        raw: &Value,
        reservation: Option<Reservation>,
    ) -> Response {
        if self.upstream.stateless {
            // Boxed, as every path a plain call does not take: an async call's state is part
            // of its caller's, and the request's whole state machine is moved at each await
            // that starts one (memcpy was 11 % of a call's instructions under callgrind).
            return Box::pin(self.forward_to_stateless(
                id,
                raw,
                reservation,
                self.stateless_client,
            ))
            .await;
        }
        match self
            .post_upstream(raw, self.client_version.as_deref())
            .await
        {
            Ok(PostResponse::Json { message, .. }) => {
                let answers = message.get("id") == Some(&id_value(id))
                    && (message.get("result").is_some() || message.get("error").is_some());
                if !answers {
                    // Relaying it would leave the client waiting forever for its answer.
                    if let Some(r) = reservation {
                        self.gw.counters.release(r);
                    }
                    return rpc_error(
                        StatusCode::OK,
                        Some(id.clone()),
                        ErrorObject::new(
                            code::INTERNAL_ERROR,
                            "Upstream did not answer this request",
                        ),
                    );
                }
                if let Some(r) = reservation
                    && message.get("error").is_some()
                {
                    self.gw.counters.release(r);
                }
                json_message(&message, None)
            }
            // Relayed in the framing the upstream chose (SSE priming, retry and event ids
            // included): the differential conformance test holds the gateway to it.
            Ok(PostResponse::Stream { events, .. }) => {
                relayed_response(relay(self.gw.clone(), id.clone(), events, reservation)).await
            }
            Ok(PostResponse::Accepted) => self.unanswered(id, reservation, None),
            Err(e) => self.unanswered(id, reservation, Some(e)),
        }
    }

    /// The answer to a request the upstream did not answer (it accepted it without an answer,
    /// or `error`): the call's reservation released, a JSON-RPC error for its id.
    pub(crate) fn unanswered(
        &self,
        id: &RequestId,
        reservation: Option<Reservation>,
        error: Option<UpstreamError>,
    ) -> Response {
        if let Some(r) = reservation {
            self.gw.counters.release(r);
        }
        let error = match error {
            Some(e) => {
                tracing::warn!(server = %self.caller.server_id, error = %e, "upstream call failed");
                e.to_error_object()
            }
            None => ErrorObject::new(
                code::INTERNAL_ERROR,
                "Upstream accepted the request without answering it",
            ),
        };
        rpc_error(StatusCode::OK, Some(id.clone()), error)
    }

    /// Every tool the upstream lists now, following its cursors, and whether it answered on an
    /// SSE stream (the gateway then answers its client the same way).
    async fn upstream_tools(&self) -> Result<(Vec<Value>, bool), UpstreamError> {
        // The gateway's own requests, in the session's negotiated version.
        let version = Some(self.session.protocol_version.as_str());
        let prefix = format!("portcullis-tools-{}", Uuid::new_v4().simple());
        let (tools, streamed) = portcullis_mcp::upstream::list_all_tools(
            |request| async move { self.post_upstream(&request, version).await },
            &prefix,
        )
        .await?;
        let catalog: Catalog = tools
            .iter()
            .filter_map(|t| {
                let name = t.get("name")?.as_str()?;
                Some((
                    name.to_owned(),
                    portcullis_store::servers::definition_hash(t),
                ))
            })
            .collect();
        self.gw
            .mcp
            .catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.caller.server_id, (Arc::new(catalog), Instant::now()));
        self.gw
            .mcp
            .param_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                self.caller.server_id,
                Arc::new(crate::stateless::param_headers(&tools)),
            );
        Ok((tools, streamed))
    }

    /// The `x-mcp-header` annotated arguments of `tool` on this server, as last listed (`None`
    /// when the tool has none, or the server was not listed yet).
    pub(crate) fn param_headers_of(&self, tool: &str) -> Option<Vec<(Vec<String>, String)>> {
        self.gw
            .mcp
            .param_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.caller.server_id)
            .and_then(|all| all.get(tool).cloned())
    }

    pub(crate) async fn catalog(&self) -> Option<Arc<Catalog>> {
        let cached = self
            .gw
            .mcp
            .catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.caller.server_id)
            .filter(|(_, at)| at.elapsed() < CATALOG_TTL)
            .map(|(c, _)| c.clone());
        if cached.is_some() {
            return cached;
        }
        self.upstream_tools().await.ok()?;
        self.gw
            .mcp
            .catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.caller.server_id)
            .map(|(c, _)| c.clone())
    }

    fn policy(&self) -> Option<Arc<LoadedPolicy>> {
        self.gw
            .policies
            .lookup(self.caller.server_id, self.caller.agent.id)
    }

    pub(crate) async fn tools_list(&self, req: Request) -> Response {
        let offset = match req.params.as_ref().and_then(|p| p.get("cursor")) {
            None | Some(Value::Null) => 0,
            Some(Value::String(c)) => match decode_cursor(c) {
                Some(o) => o,
                None => {
                    return rpc_error(
                        StatusCode::OK,
                        Some(req.id),
                        ErrorObject::new(code::INVALID_PARAMS, "Invalid params: unknown cursor"),
                    );
                }
            },
            Some(_) => {
                return rpc_error(
                    StatusCode::OK,
                    Some(req.id),
                    ErrorObject::new(
                        code::INVALID_PARAMS,
                        "Invalid params: cursor must be a string",
                    ),
                );
            }
        };
        let (tools, streamed) = match self.upstream_tools().await {
            Ok(t) => t,
            Err(e) => return rpc_error(StatusCode::OK, Some(req.id), e.to_error_object()),
        };
        let policy = self.policy();
        let visible: Vec<Value> = tools
            .into_iter()
            .filter(|tool| {
                let Some(policy) = &policy else { return false };
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    return false;
                };
                let hash = portcullis_store::servers::definition_hash(tool);
                let changed = policy.is_changed(name, Some(&hash));
                policy.policy.is_hidden(name, changed).is_none()
            })
            .collect();
        let page: Vec<Value> = visible
            .iter()
            .skip(offset)
            .take(PAGE_SIZE)
            .cloned()
            .collect();
        let mut result = json!({"tools": page});
        if offset.saturating_add(PAGE_SIZE) < visible.len() {
            result["nextCursor"] = Value::from(encode_cursor(offset + PAGE_SIZE));
        }
        let answer = Message::result(req.id, result).to_value();
        if streamed {
            // Answer in the framing the upstream chose.
            let event = encode_event(&SseEvent::message(answer.to_string()));
            sse_response(futures_util::stream::once(
                async move { Ok(Bytes::from(event)) },
            ))
        } else {
            json_message(&answer, None)
        }
    }

    pub(crate) async fn tools_call(&self, req: Request) -> Response {
        let started = Instant::now();
        let params = req.params.as_ref().unwrap_or(&Value::Null);
        let Some(tool) = params
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return rpc_error(
                StatusCode::OK,
                Some(req.id),
                ErrorObject::new(
                    code::INVALID_PARAMS,
                    "Invalid params: tools/call needs a tool name",
                ),
            );
        };
        let empty = Value::Object(serde_json::Map::new());
        let arguments = params.get("arguments").unwrap_or(&empty);
        let mut event = self.event("tools/call", Some(&tool), arguments);
        event.arguments = self
            .gw
            .arguments
            .recorded(&self.gw.db, self.caller.agent.org_id, arguments)
            .await;

        let Some(policy) = self.policy() else {
            event.decision = "deny".into();
            event.reason = Some("no policy is published for this server".into());
            self.gw.activity.record(event);
            return refusal(
                &req.id,
                "[POLICY DENIED] no policy is published for this server",
                None,
                None,
            );
        };
        event.policy_id = Some(policy.policy_id);
        event.policy_version = Some(policy.version);
        event.policy_agent_id = policy.agent_id;
        let changed = if policy.policy.changed_tools() != ChangedTools::Allow
            && policy.reviewed.contains_key(&tool)
        {
            match self.catalog().await {
                Some(catalog) => policy.is_changed(&tool, catalog.get(&tool).map(String::as_str)),
                // Cannot tell whether the tool changed: treat it as changed (fail closed).
                None => true,
            }
        } else {
            false
        };
        let call = Call {
            tool: &tool,
            arguments,
            changed,
        };
        let decision = policy.policy.evaluate(&call);
        event.rule = Some(decision.rule().to_owned());
        // A shadow version is evaluated on the same call and only recorded. Decisions compare by
        // kind (allow, approval, deny, hidden): a shadow reserves no counters.
        if let Some(shadow) = &policy.shadow {
            let would = shadow.policy.evaluate(&call);
            event.shadow = Some(json!({
                "version": shadow.version,
                "decision": would.kind().as_str(),
                "rule": would.rule(),
                "differs": would.kind() != decision.kind(),
            }));
        }
        match &decision {
            Decision::Hidden { .. } | Decision::Deny { .. } => {
                event.decision = if matches!(decision, Decision::Hidden { .. }) {
                    "hidden"
                } else {
                    "deny"
                }
                .into();
                event.reason = decision.reason().map(str::to_owned);
                self.gw.activity.record(event);
                let text = decision.agent_text().unwrap_or_default();
                refusal(&req.id, &text, Some(decision.rule()), Some(&*policy))
            }
            Decision::Proceed {
                limits, approval, ..
            } => {
                // A stateless client's next input round of a call parked here: the call was
                // counted (and, if it needed one, approved) on its first round, and is
                // continued, not sent again; the policy still had its say. (A stateless
                // upstream's round is sent again: it is counted again, below.)
                if let Some(round) = self.round.as_ref().filter(|r| r.is_parked()) {
                    event.decision = "allow".into();
                    let response = Box::pin(crate::stateless::resume(self, &req, round)).await;
                    event.latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    event.upstream_status = Some(i32::from(response.status().as_u16()));
                    self.gw.activity.record(event);
                    return response;
                }
                let keys: Vec<LimitKey> = limits
                    .iter()
                    .map(|l| LimitKey {
                        // The window is part of the key: "10 a minute" and "1000 a day" on
                        // one counter are two counts, each over its own window.
                        key: format!(
                            "{}:{}:{}:{}",
                            self.caller.server_id,
                            l.window.as_millis(),
                            match l.scope {
                                portcullis_policy::Scope::Session => self.session.id.to_string(),
                                portcullis_policy::Scope::Agent => self.caller.agent.id.to_string(),
                                portcullis_policy::Scope::Server => "server".to_owned(),
                            },
                            l.counter_key()
                        ),
                        max: l.max,
                        window: l.window,
                        increment: l.increment,
                    })
                    .collect();
                let reservation = match self.gw.reserve(&keys).await {
                    Outcome::Reserved(r) => r,
                    Outcome::Unavailable => {
                        let text = "[POLICY DENIED] this call's rate limits cannot be checked right now (the shared counters are unreachable); try again shortly";
                        event.decision = "deny".into();
                        event.rule = limits.first().map(|l| l.rule.clone()).or(event.rule);
                        event.reason = Some(text.into());
                        let rule = event.rule.clone();
                        self.gw.activity.record(event);
                        return refusal(&req.id, text, rule.as_deref(), Some(&*policy));
                    }
                    Outcome::Exhausted { index, retry_after } => {
                        let limit = &limits[index];
                        event.decision = "rate_limited".into();
                        event.rule = Some(limit.rule.clone());
                        let text = limit.rate_limited_text(retry_after);
                        event.reason = Some(text.clone());
                        self.gw.activity.record(event);
                        return refusal(&req.id, &text, Some(&limit.rule), Some(&*policy));
                    }
                };
                // A round of a call already approved (bound to the same arguments) is not
                // held again.
                if let Some(approval) = approval.as_ref().filter(|_| self.round.is_none()) {
                    let arguments = arguments.clone();
                    return Box::pin(self.hold(
                        req,
                        arguments,
                        approval.clone(),
                        reservation,
                        event,
                    ))
                    .await;
                }
                event.decision = "allow".into();
                if self.upstream.stateless {
                    // The tool's `x-mcp-header` annotations, for the mirror headers.
                    let _ = self.catalog().await;
                }
                let id = req.id.clone();
                let raw = req.into_value();
                let response = self.forward(&id, &raw, Some(reservation)).await;
                event.latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                event.upstream_status = Some(i32::from(response.status().as_u16()));
                self.gw.activity.record(event);
                response
            }
        }
    }

    /// Holds a call for a person's approval: records the approval, answers on an SSE stream
    /// (with progress notifications when the client gave a progress token), and forwards the
    /// call once approved, or ends it denied, timed out, or abandoned when the client leaves.
    async fn hold(
        &self,
        req: Request,
        arguments: Value,
        approval: ApprovalRequest,
        reservation: Reservation,
        mut event: NewEvent,
    ) -> Response {
        let id = Uuid::new_v4();
        let tool = event.tool.clone().unwrap_or_default();
        let expires_at = chrono::Utc::now()
            + chrono::Duration::from_std(approval.timeout)
                .unwrap_or_else(|_| chrono::Duration::minutes(5));
        let session = self.session.id.to_string();
        let hash = portcullis_store::servers::canonical_hash(&arguments);
        let recorded = approvals::insert(
            &self.gw.db,
            &approvals::NewApproval {
                id,
                org_id: self.caller.agent.org_id,
                server_id: self.caller.server_id,
                agent_id: self.caller.agent.id,
                session: &session,
                tool: &tool,
                arguments: &arguments,
                arguments_hash: &hash,
                rule: &approval.rule,
                reason: approval.reason.as_deref(),
                policy: event.policy_id.zip(event.policy_version),
                expires_at,
                holder: &self.gw.approvals.holder,
            },
        )
        .await;
        event.rule = Some(approval.rule.clone());
        if let Err(e) = recorded {
            // Fail closed: no record, no person can approve it.
            tracing::warn!(error = %e, "cannot record an approval; refusing the call");
            self.gw.counters.release(reservation);
            event.decision = "deny".into();
            let reason = "this call needs a person's approval, which cannot be requested right now";
            event.reason = Some(reason.into());
            self.gw.activity.record(event);
            return refusal(
                &req.id,
                &format!("[POLICY DENIED] {reason}"),
                Some(&approval.rule),
                self.policy().as_deref(),
            );
        }
        event.decision = "approval_requested".into();
        event.reason = approval.reason.clone();
        self.gw.activity.record(event.clone());
        // The shadow's view belongs to the call's first decision, not to its later steps.
        event.shadow = None;
        tracing::info!(approval = %id, tool, "call held for approval");
        let guard = self.gw.approvals.wait(id);
        let token = req
            .params
            .as_ref()
            .and_then(|p| p.pointer("/_meta/progressToken"))
            .cloned();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        let ctx = self.clone();
        let changed = agent_changed(self.gw.agent_changed.subscribe(), self.caller.agent.id);
        tokio::spawn(async move {
            // In the task, so a client that leaves at once still ends in `abandoned` with its
            // reservation released.
            ctx.notify_webhook(id, &tool, &arguments, &approval, expires_at)
                .await;
            ctx.await_decision(
                req,
                id,
                approval,
                reservation,
                event,
                guard,
                token,
                tx,
                changed,
            )
            .await;
        });
        sse_response(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Queues the organization's approval webhook, if it has one (never blocks the call: a
    /// failure is logged and the call waits all the same).
    async fn notify_webhook(
        &self,
        id: Uuid,
        tool: &str,
        arguments: &Value,
        approval: &ApprovalRequest,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) {
        let org_id = self.caller.agent.org_id;
        let slug = match portcullis_store::orgs::slug_of(&self.gw.db, org_id).await {
            Ok(slug) => slug,
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue the approval webhook");
                return;
            }
        };
        let link = format!(
            "{}/app/{slug}/approvals",
            self.gw.config.console_url.as_deref().unwrap_or_default()
        );
        let agent = &self.caller.agent.name;
        let server = &self.upstream.name;
        let payload = json!({
            "text": format!("Portcullis: agent {agent} wants to call {tool} on {server}. Approve or deny before {}: {link}",
                            expires_at.format("%H:%M UTC")),
            "url": link,
            "approval": {
                "id": id, "organization": slug,
                "server": {"id": self.caller.server_id, "name": server},
                "agent": {"id": self.caller.agent.id, "name": agent},
                "tool": tool, "arguments": crate::arguments::redact(arguments), "rule": approval.rule,
                "reason": approval.reason, "expires_at": expires_at,
            },
        });
        match portcullis_store::webhooks::enqueue_for_approval(&self.gw.db, org_id, id, &payload)
            .await
        {
            Ok(true) => {
                if let Some(kick) = self.gw.webhooks.get() {
                    kick.notify_one();
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot queue the approval webhook"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn await_decision(
        &self,
        req: Request,
        id: Uuid,
        approval: ApprovalRequest,
        reservation: Reservation,
        mut event: NewEvent,
        guard: crate::approvals::WaitGuard,
        token: Option<Value>,
        tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        agent_changed: impl Future<Output = ()>,
    ) {
        let mut agent_changed = std::pin::pin!(agent_changed);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + approval.timeout;
        let mut progress = tokio::time::interval(self.gw.config.approval_progress_interval);
        progress.tick().await;
        // A lost notification costs at most this long.
        let mut poll = tokio::time::interval(Duration::from_secs(5));
        let mut ticks = 0u64;
        enum End {
            Approved,
            Denied(Option<String>),
            Expired,
            Gone,
            /// The agent was revoked or its key changed while the call waited.
            AgentChanged,
        }
        let end = loop {
            let check = tokio::select! {
                () = tx.closed() => break End::Gone,
                () = &mut agent_changed => break End::AgentChanged,
                () = guard.notify.notified() => true,
                _ = poll.tick() => true,
                () = tokio::time::sleep_until(deadline) => break End::Expired,
                _ = progress.tick(), if token.is_some() => {
                    ticks += 1;
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                      "params": {"progressToken": token, "progress": ticks,
                                                 "message": "Waiting for a person to approve this call"}});
                    if tx.send(Ok(sse_bytes(&note))).await.is_err() {
                        break End::Gone;
                    }
                    false
                }
            };
            if check {
                match approvals::state(&self.gw.db, id).await {
                    Ok((status, note)) => match status.as_str() {
                        "approved" => break End::Approved,
                        "denied" => break End::Denied(note),
                        "expired" => break End::Expired,
                        "abandoned" | "used" => break End::Gone,
                        _ => {}
                    },
                    Err(e) => tracing::warn!(error = %e, approval = %id, "cannot read an approval"),
                }
            }
        };
        drop(guard);
        let decided_by = |a: &portcullis_store::approvals::Approval| {
            let who = a
                .decided_by_email
                .clone()
                .unwrap_or_else(|| "a former member".into());
            match a.note.as_deref().filter(|n| !n.trim().is_empty()) {
                Some(note) => format!("by {who}: {note}"),
                None => format!("by {who}"),
            }
        };
        let org = self.caller.agent.org_id;
        // The outcome is an event of its own, after approval_requested.
        event.id = Uuid::now_v7();
        event.at = chrono::Utc::now();
        match end {
            End::Approved => {
                // An approval is used once.
                if !approvals::settle(&self.gw.db, id, "approved", "used")
                    .await
                    .unwrap_or(false)
                {
                    self.gw.counters.release(reservation);
                    return;
                }
                let record = approvals::get(&self.gw.db, org, id).await.ok();
                event.decision = "approval_granted".into();
                event.reason = record.as_ref().map(decided_by);
                let raw = req.to_value();
                let answer = self
                    .post_upstream(&raw, self.client_version.as_deref())
                    .await;
                event.latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                match answer {
                    Ok(PostResponse::Json { message, .. }) => {
                        if message.get("error").is_some() {
                            self.gw.counters.release(reservation);
                        }
                        event.upstream_status = Some(200);
                        self.gw.activity.record(event);
                        let _ = tx.send(Ok(sse_bytes(&message))).await;
                    }
                    Ok(PostResponse::Stream { events, .. }) => {
                        event.upstream_status = Some(200);
                        self.gw.activity.record(event);
                        let mut relayed = Box::pin(relay(
                            self.gw.clone(),
                            req.id.clone(),
                            events,
                            Some(reservation),
                        ));
                        while let Some(chunk) = relayed.next().await {
                            if tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(PostResponse::Accepted) | Err(_) => {
                        self.gw.counters.release(reservation);
                        let error = match answer {
                            Err(e) => e.to_error_object(),
                            _ => ErrorObject::new(
                                code::INTERNAL_ERROR,
                                "Upstream accepted the request without answering it",
                            ),
                        };
                        event.decision = "upstream_error".into();
                        event.reason = Some(error.message.clone());
                        self.gw.activity.record(event);
                        let message = Message::error(Some(req.id.clone()), error).to_value();
                        let _ = tx.send(Ok(sse_bytes(&message))).await;
                    }
                }
            }
            End::Denied(note) => {
                self.gw.counters.release(reservation);
                let record = approvals::get(&self.gw.db, org, id).await.ok();
                event.decision = "approval_denied".into();
                event.reason = record.as_ref().map(decided_by);
                self.gw.activity.record(event);
                let text = ApprovalRequest::denied_text(note.as_deref());
                let _ = tx
                    .send(Ok(sse_bytes(&refusal_message(
                        &req.id,
                        &text,
                        &approval.rule,
                    ))))
                    .await;
            }
            End::Expired => {
                self.gw.counters.release(reservation);
                // Approved a moment too late counts as expired too: the call never ran.
                if !approvals::settle(&self.gw.db, id, "pending", "expired")
                    .await
                    .unwrap_or(false)
                {
                    let _ = approvals::settle(&self.gw.db, id, "approved", "expired").await;
                }
                event.decision = "approval_expired".into();
                event.reason = Some(approval.timed_out_text());
                self.gw.activity.record(event);
                let text = approval.timed_out_text();
                let _ = tx
                    .send(Ok(sse_bytes(&refusal_message(
                        &req.id,
                        &text,
                        &approval.rule,
                    ))))
                    .await;
            }
            End::Gone | End::AgentChanged => {
                self.gw.counters.release(reservation);
                let mut settled = approvals::settle(&self.gw.db, id, "pending", "abandoned")
                    .await
                    .unwrap_or(false);
                if !settled {
                    settled = approvals::settle(&self.gw.db, id, "approved", "abandoned")
                        .await
                        .unwrap_or(false);
                }
                let agent_changed = matches!(end, End::AgentChanged);
                if settled {
                    event.decision = "approval_abandoned".into();
                    event.reason = Some(
                        if agent_changed {
                            "the agent was revoked or its key changed while the call waited"
                        } else {
                            "the client went away while waiting"
                        }
                        .into(),
                    );
                    self.gw.activity.record(event);
                }
                if agent_changed {
                    let text = "[POLICY DENIED] this agent's key was revoked or changed while the call waited";
                    let _ = tx
                        .send(Ok(sse_bytes(&refusal_message(
                            &req.id,
                            text,
                            &approval.rule,
                        ))))
                        .await;
                }
            }
        }
    }

    pub(crate) fn event(&self, method: &str, tool: Option<&str>, arguments: &Value) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            org_id: self.caller.agent.org_id,
            at: chrono::Utc::now(),
            server_id: Some(self.caller.server_id),
            agent_id: Some(self.caller.agent.id),
            agent_name: Some(self.caller.agent.name.clone()),
            session: Some(self.session.id.to_string()),
            method: method.to_owned(),
            tool: tool.map(str::to_owned),
            argument_keys: arguments
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
            arguments: None,
            decision: String::new(),
            rule: None,
            reason: None,
            policy_id: None,
            policy_version: None,
            latency_ms: None,
            upstream_status: None,
            policy_agent_id: None,
            shadow: None,
        }
    }
}

/// The state of one relayed answer.
struct Relay {
    gw: Arc<Gateway>,
    id: RequestId,
    want: Value,
    /// `None` once the answer (or an error for it) has been sent.
    events: Option<EventStream>,
    reservation: Option<Reservation>,
}

/// Relays an upstream's SSE answer to one request as it comes: notifications and
/// server-to-client requests first, then the response, which ends the client's stream (the rest
/// of the upstream's is read in the background, so its connection can be reused). A priming
/// event (an id with no data) goes out with the next event, sparing the client a wake-up. If
/// the upstream stops before answering, the client gets an error for its request, and the
/// call's reservation is released, as it is when the answer is a JSON-RPC error.
pub(crate) fn relay(
    gw: Arc<Gateway>,
    id: RequestId,
    events: EventStream,
    reservation: Option<Reservation>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let state = Relay {
        gw,
        want: id_value(&id),
        id,
        events: Some(events),
        reservation,
    };
    futures_util::stream::unfold(state, |mut r| async move {
        let mut events = r.events.take()?;
        let mut out = String::new();
        loop {
            match events.next().await {
                Some(Ok(event)) => {
                    out.push_str(&encode_event(&event));
                    if event.data.is_empty() {
                        continue;
                    }
                    if let Some(answered) = jsonrpc::answers(&event.data, &r.want) {
                        if answered == jsonrpc::Answered::Error
                            && let Some(reserved) = r.reservation.take()
                        {
                            r.gw.counters.release(reserved);
                        }
                        drain(events);
                        return Some((Ok(Bytes::from(out)), r));
                    }
                    r.events = Some(events);
                    return Some((Ok(Bytes::from(out)), r));
                }
                end => {
                    if let Some(reserved) = r.reservation.take() {
                        r.gw.counters.release(reserved);
                    }
                    let error = match end {
                        Some(Err(e)) => e.to_error_object(),
                        _ => ErrorObject::new(
                            code::INTERNAL_ERROR,
                            "Upstream closed the stream without answering",
                        ),
                    };
                    let message = Message::error(Some(r.id.clone()), error)
                        .to_value()
                        .to_string();
                    out.push_str(&encode_event(&SseEvent::message(message)));
                    return Some((Ok(Bytes::from(out)), r));
                }
            }
        }
    })
}

/// Reads the rest of an answered upstream stream (so its connection goes back to the pool):
/// inline when it has already ended, else in the background for at most [`DRAIN`].
fn drain(mut events: EventStream) {
    use futures_util::FutureExt as _;
    loop {
        match events.next().now_or_never() {
            Some(Some(_)) => continue,
            Some(None) => return,
            None => break,
        }
    }
    tokio::spawn(async move {
        let rest = async { while events.next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN, rest).await;
    });
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("portcullis:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("portcullis:")?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// GET and DELETE

/// The server-initiated stream: the upstream's (resumable with `Last-Event-ID`), with the
/// gateway's own `notifications/tools/list_changed` merged in when a publish changes this
/// server's policy.
pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match Ctx::open(&gw, &server, &headers).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let version = Some(ctx.session.protocol_version.as_str());
    let stateless = ctx.upstream.stateless;
    let opened = if stateless {
        Ok(ctx.listen_upstream().await)
    } else {
        match ctx
            .client
            .open_stream(ctx.upstream_session().as_deref(), version, last_event_id)
            .await
        {
            Err(UpstreamError::SessionExpired) => match ctx.reopen().await {
                Ok(session) => {
                    ctx.client
                        .open_stream(session.as_deref(), version, None)
                        .await
                }
                Err(e) => Err(e),
            },
            other => other,
        }
    };
    let upstream_events = match opened {
        Ok(Some(events)) => Some(events),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the upstream stream");
            None
        }
    };
    let server_id = ctx.caller.server_id;
    let changes = tokio_stream_of(gw.list_changed.subscribe(), server_id);
    let ours = changes.map(|()| {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        Ok::<_, std::io::Error>(Bytes::from(encode_event(&SseEvent::message(
            note.to_string(),
        ))))
    });
    // The key is checked when the stream opens; a change to the agent (revoked, rotated, a
    // grant removed) ends it, and the client must come back with a key that still works.
    let ended = futures_util::future::select(
        Box::pin(agent_changed(
            gw.agent_changed.subscribe(),
            ctx.caller.agent.id,
        )),
        Box::pin(gw.stopped()),
    );
    match upstream_events {
        Some(events) => {
            // The upstream's stream ends at its first error; ours goes on.
            let theirs = events
                .take_while(|e| futures_util::future::ready(e.is_ok()))
                .filter_map(move |e| {
                    futures_util::future::ready(e.ok().and_then(|e| {
                        if stateless {
                            crate::translate::from_listen(e)
                        } else {
                            Some(e)
                        }
                    }))
                })
                .map(|e| Ok(Bytes::from(encode_event(&e))));
            sse_response(futures_util::stream::select(theirs, ours).take_until(ended))
        }
        None => sse_response(ours.take_until(ended)),
    }
}

/// Resolves when this agent (or possibly any agent) has changed.
pub(crate) async fn agent_changed(mut rx: tokio::sync::broadcast::Receiver<Uuid>, agent_id: Uuid) {
    loop {
        match rx.recv().await {
            Ok(id) if id == agent_id || id.is_nil() => return,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Publishes concerning `server_id`, as a stream.
pub(crate) fn tokio_stream_of(
    rx: tokio::sync::broadcast::Receiver<Uuid>,
    server_id: Uuid,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(id) if id == server_id => return Some(((), rx)),
                Ok(_) => continue,
                // Missed some: say the list may have changed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match Ctx::open(&gw, &server, &headers).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let upstream_session = ctx.upstream_session();
    gw.mcp
        .reopened
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&ctx.session.id);
    gw.mcp
        .log_levels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&ctx.session.id);
    if let Some(up) = upstream_session
        && let Err(e) = ctx
            .client
            .delete_session(&up, Some(&ctx.session.protocol_version))
            .await
    {
        tracing::debug!(error = %e, "upstream session delete failed");
    }
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------------------------------------------
// The key in the URL

/// `/mcp/{server}/key/{key}`, for MCP clients that accept only a URL: the agent key rides in
/// the path instead of `Authorization`. The console offers this URL beside the key; no log
/// line of the gateway carries a URI. A request that also sends `Authorization` is refused
/// (400), so there is never a doubt about which key is used.
fn key_into_headers(key: &str, headers: &mut HeaderMap) -> Result<(), Response> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            ErrorObject::new(
                code::INVALID_REQUEST,
                "Bad Request: the key is in the URL; do not send Authorization as well",
            ),
        ));
    }
    // A key that cannot be a header value is no key: the admission answers 401.
    if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {key}")) {
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(())
}

pub async fn post_with_key(
    State(gw): State<Arc<Gateway>>,
    Path((server, key)): Path<(String, String)>,
    mut headers: HeaderMap,
    body: McpBody,
) -> Response {
    if let Err(r) = key_into_headers(&key, &mut headers) {
        return r;
    }
    post(State(gw), Path(server), headers, body).await
}

pub async fn get_with_key(
    State(gw): State<Arc<Gateway>>,
    Path((server, key)): Path<(String, String)>,
    mut headers: HeaderMap,
) -> Response {
    if let Err(r) = key_into_headers(&key, &mut headers) {
        return r;
    }
    get(State(gw), Path(server), headers).await
}

pub async fn delete_with_key(
    State(gw): State<Arc<Gateway>>,
    Path((server, key)): Path<(String, String)>,
    mut headers: HeaderMap,
) -> Response {
    if let Err(r) = key_into_headers(&key, &mut headers) {
        return r;
    }
    delete(State(gw), Path(server), headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that fails the test if it is read at all.
    fn unread_body() -> Body {
        Body::from_stream(futures_util::stream::once(async {
            panic!("the body was read");
            #[allow(unreachable_code)]
            Ok::<Bytes, std::io::Error>(Bytes::new())
        }))
    }

    fn request(length: Option<usize>, body: Body) -> axum::extract::Request {
        let mut builder = axum::http::Request::builder().method("POST").uri("/mcp/x");
        if let Some(n) = length {
            builder = builder.header(header::CONTENT_LENGTH, n);
        }
        builder.body(body).unwrap()
    }

    async fn error_of(response: Response) -> (StatusCode, Value) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_as_json_rpc_and_a_declared_one_before_it_is_read() {
        let declared = read_body(request(Some(11), unread_body()), 10).await;
        let (status, error) = error_of(declared.unwrap_err()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error["error"]["code"], code::INVALID_REQUEST);
        assert_eq!(
            error["error"]["message"],
            "Payload Too Large: the limit is 10 bytes"
        );

        // No declared length: read in chunks until it is over.
        let chunks = ["12345", "67890", "1"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        let (status, error) =
            error_of(read_body(request(None, streamed), 10).await.unwrap_err()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error["error"]["code"], code::INVALID_REQUEST);

        let within = Body::from_stream(futures_util::stream::iter(
            ["12345", "67890"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        ));
        assert_eq!(
            read_body(request(None, within), 10).await.unwrap(),
            Bytes::from("1234567890")
        );

        let broken = Body::from_stream(futures_util::stream::iter([Err::<Bytes, _>(
            std::io::Error::other("connection reset"),
        )]));
        let (status, error) =
            error_of(read_body(request(None, broken), 10).await.unwrap_err()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the body could not be read"),
            "{error}"
        );
    }
}

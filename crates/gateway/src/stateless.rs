//! Clients of the stateless revision (2026-07-28), served over the handshake era upstream.
//!
//! A stateless request carries its own envelope (`params._meta`: protocol version, client
//! info, client capabilities) and mirrors its routing fields in headers. The gateway checks,
//! in the specification's order and before any policy runs:
//!
//! 1. the envelope: no version or no capabilities → 400, -32602;
//! 2. the headers against the body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, and for
//!    `tools/call` the `Mcp-Param-*` headers of arguments the tool's schema tags with
//!    `x-mcp-header`; `=?base64?…?=` values decoded; a duplicate is a mismatch) → 400, -32020;
//! 3. the version → 400, -32022 with `data.supported` (the handshake versions too, so a
//!    dual-era client falls back) and `data.requested`;
//! 4. the method (`initialize`, `ping`, `logging/setLevel` do not exist here) → 404, -32601.
//!
//! Then it translates (see docs/protocol.md): the upstream is reached in the handshake era
//! through an upstream session per (server, agent, client capabilities and info), opened on
//! first use with the envelope's capabilities and re-opened when it expires; the envelope is
//! stripped from what goes upstream; every result gets `resultType`, lists and reads get
//! `ttlMs` and `cacheScope: "private"` (they are filtered per agent); `server/discover` is
//! answered from the upstream's `InitializeResult`. A server request inside a call
//! (elicitation, sampling, roots) becomes an `input_required` result whose `requestState` is
//! sealed and bound to the agent and server; the upstream call waits, parked in this process
//! (for [`ROUND_TIMEOUT`]), and the client's retry, after the policy has decided it again, sends
//! the answer upstream and goes on with the same call. `subscriptions/listen` is an SSE stream
//! acknowledged at once that carries the gateway's `notifications/tools/list_changed`.

// Refusals are whole HTTP responses carried in `Err`: the cold path, built once per request.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;
use portcullis_mcp::jsonrpc::{ErrorObject, Message, Request, RequestId, code};
use portcullis_mcp::sse::{SseDecoder, SseEvent, encode_event};
use portcullis_mcp::version::{Era, ProtocolVersion};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Gateway;
use crate::mcp::{
    Caller, Ctx, chrono_now_secs, connect, id_value, json_message, rpc_error, sse_response,
    upstream_of,
};
use crate::session::Session;

use portcullis_mcp::stateless::{
    META_CAPABILITIES, META_CLIENT_INFO, META_PREFIX, META_SERVER_INFO, META_SUBSCRIPTION,
    META_VERSION, decode_header_value as decoded, name_field, primitive_text,
};

/// JSON-RPC codes of the stateless revision.
pub const HEADER_MISMATCH: i64 = -32020;
pub const MISSING_CAPABILITY: i64 = -32021;
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// How long a call waits for the client's next input round.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(300);
/// Calls parked at most in a process, and per agent; beyond, a server request inside a call
/// ends it with an error.
const MAX_PARKED: usize = 10_000;
const MAX_PARKED_PER_AGENT: usize = 100;
/// The `inputRequests` key of a round (one server request per round).
const INPUT_KEY: &str = "input";
/// How long a client may keep a `server/discover` answer, in milliseconds. Lists and reads
/// get 0: a publish may change them at any moment (and `list_changed` says so).
const DISCOVER_TTL_MS: u64 = 60_000;

/// Methods a stateless client may call.
const METHODS: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "completion/complete",
    "subscriptions/listen",
];
/// Results that get `ttlMs` and `cacheScope`.
const CACHEABLE: &[&str] = &[
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];
/// Methods that may be answered `input_required` and retried with `requestState`.
const ROUND_METHODS: &[&str] = &["tools/call", "prompts/get", "resources/read"];

/// What a stateless request says about its client.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub version: String,
    pub capabilities: Value,
    pub client_info: Value,
}

/// Whether a request belongs on the stateless path: a stateless `MCP-Protocol-Version`, a
/// `server/discover`, or an envelope in `_meta` (a stateless client with a wrong or missing
/// header then gets the stateless errors, not a demand for a session).
pub fn is_stateless(headers: &HeaderMap, message: &Message) -> bool {
    let header_says = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .and_then(ProtocolVersion::parse)
        .is_some_and(|v| v.era() == Era::Stateless);
    header_says
        || match message {
            Message::Request(r) => {
                r.method == "server/discover"
                    || r.params
                        .as_ref()
                        .and_then(|p| p.pointer("/_meta"))
                        .is_some_and(|m| m.get(META_VERSION).is_some())
            }
            _ => false,
        }
}

fn bad_request(id: &RequestId, code: i64, message: String, data: Option<Value>) -> Response {
    let mut error = ErrorObject::new(code, message);
    if let Some(data) = data {
        error = error.with_data(data);
    }
    rpc_error(StatusCode::BAD_REQUEST, Some(id.clone()), error)
}

fn mismatch(id: &RequestId, reason: impl Into<String>) -> Response {
    bad_request(
        id,
        HEADER_MISMATCH,
        format!("Header mismatch: {}", reason.into()),
        None,
    )
}

/// The one value of a header; a duplicate or an unreadable value is a mismatch.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("duplicate {name} header"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("{name} header has invalid characters"))
}

/// Steps 1 to 4 of the module documentation (the `Mcp-Param-*` headers come later, with the
/// tool's schema).
fn validate(headers: &HeaderMap, req: &Request) -> Result<Envelope, Response> {
    let id = &req.id;
    let meta = req.params.as_ref().and_then(|p| p.get("_meta"));
    let version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    let capabilities = meta
        .and_then(|m| m.get(META_CAPABILITIES))
        .filter(|c| c.is_object());
    let discover = req.method == "server/discover";
    let header_version = single(headers, "mcp-protocol-version").map_err(|e| mismatch(id, e))?;
    // 1. The envelope (discover may do without: the header says the version).
    let version = match (version, capabilities) {
        (Some(v), Some(_)) => v.to_owned(),
        _ if discover => version
            .or(header_version)
            .unwrap_or(ProtocolVersion::V2026_07_28.as_str())
            .to_owned(),
        _ => {
            return Err(bad_request(
                id,
                code::INVALID_PARAMS,
                format!(
                    "Invalid params: a stateless request carries {META_VERSION} and {META_CAPABILITIES} in params._meta"
                ),
                None,
            ));
        }
    };
    // 2. The headers against the body.
    match header_version {
        None => return Err(mismatch(id, "missing MCP-Protocol-Version header")),
        Some(h) if h != version => {
            return Err(mismatch(
                id,
                format!(
                    "MCP-Protocol-Version header {h} does not match _meta protocolVersion {version}"
                ),
            ));
        }
        Some(_) => {}
    }
    match single(headers, "mcp-method").map_err(|e| mismatch(id, e))? {
        None => return Err(mismatch(id, "missing Mcp-Method header")),
        Some(m) if m != req.method => {
            return Err(mismatch(
                id,
                format!("Mcp-Method header {m} does not match method {}", req.method),
            ));
        }
        Some(_) => {}
    }
    if let Some(field) = name_field(&req.method)
        && let Some(expected) = req
            .params
            .as_ref()
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
    {
        match single(headers, "mcp-name").map_err(|e| mismatch(id, e))? {
            None => {
                return Err(mismatch(
                    id,
                    format!("missing Mcp-Name header for {}", req.method),
                ));
            }
            Some(raw) => match decoded(raw) {
                Some(name) if name == expected => {}
                Some(name) => {
                    return Err(mismatch(
                        id,
                        format!("Mcp-Name header {name} does not match params.{field} {expected}"),
                    ));
                }
                None => return Err(mismatch(id, "Mcp-Name header is not valid Base64")),
            },
        }
    }
    // 3. The version.
    if ProtocolVersion::parse(&version).is_none_or(|v| v.era() != Era::Stateless) {
        return Err(bad_request(
            id,
            UNSUPPORTED_VERSION,
            format!("Unsupported protocol version: {version}"),
            Some(json!({"supported": supported_versions(), "requested": version})),
        ));
    }
    // 4. The method.
    if !METHODS.contains(&req.method.as_str()) {
        return Err(rpc_error(
            StatusCode::NOT_FOUND,
            Some(id.clone()),
            ErrorObject::new(
                code::METHOD_NOT_FOUND,
                format!("Method not found: {} (not part of {version})", req.method),
            ),
        ));
    }
    Ok(Envelope {
        version,
        capabilities: capabilities.cloned().unwrap_or_else(|| json!({})),
        client_info: meta
            .and_then(|m| m.get(META_CLIENT_INFO))
            .cloned()
            .unwrap_or_else(|| json!({"name": "stateless-client", "version": "0"})),
    })
}

/// Every revision the gateway serves to clients, newest first.
fn supported_versions() -> Vec<&'static str> {
    [
        ProtocolVersion::V2026_07_28,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_03_26,
    ]
    .iter()
    .map(|v| v.as_str())
    .collect()
}

/// Per tool, its arguments tagged `x-mcp-header`: (path of property names, header name).
pub type ParamHeaders = HashMap<String, Vec<(Vec<String>, String)>>;

/// The `x-mcp-header` annotations of each tool that has any.
pub fn param_headers(tools: &[Value]) -> ParamHeaders {
    fn walk(
        properties: Option<&Value>,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, String)>,
    ) {
        let Some(properties) = properties.and_then(Value::as_object) else {
            return;
        };
        for (name, schema) in properties {
            path.push(name.clone());
            if let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) {
                out.push((path.clone(), header.to_owned()));
            }
            walk(schema.get("properties"), path, out);
            path.pop();
        }
    }
    let mut all = HashMap::new();
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        let mut found = Vec::new();
        walk(
            tool.pointer("/inputSchema/properties"),
            &mut Vec::new(),
            &mut found,
        );
        if !found.is_empty() {
            all.insert(name.to_owned(), found);
        }
    }
    all
}

/// Checks the `Mcp-Param-*` headers of a `tools/call` against its arguments.
fn check_param_headers(
    headers: &HeaderMap,
    annotated: &[(Vec<String>, String)],
    arguments: &Value,
) -> Result<(), String> {
    for (path, header) in annotated {
        let name = format!("mcp-param-{}", header.to_ascii_lowercase());
        let sent = single(headers, &name)?;
        let body = portcullis_mcp::stateless::argument_at(arguments, path).and_then(primitive_text);
        let shown = path.join(".");
        match (sent, body) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(format!(
                    "Mcp-Param-{header} header for absent argument {shown}"
                ));
            }
            (None, Some(_)) => {
                return Err(format!("missing Mcp-Param-{header} header for {shown}"));
            }
            (Some(raw), Some(expected)) => match decoded(raw) {
                Some(v) if v == expected => {}
                Some(v) => {
                    return Err(format!(
                        "Mcp-Param-{header} header {v} does not match argument {shown} {expected}"
                    ));
                }
                None => return Err(format!("Mcp-Param-{header} header is not valid Base64")),
            },
        }
    }
    Ok(())
}

/// The request as the handshake-era upstream gets it: the envelope's `_meta` keys and the
/// round fields removed.
fn stripped(req: &Request) -> Request {
    let mut req = req.clone();
    if let Some(params) = req.params.as_mut().and_then(Value::as_object_mut) {
        params.remove("inputResponses");
        params.remove("requestState");
        if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.retain(|k, _| !k.starts_with(META_PREFIX));
            if meta.is_empty() {
                params.remove("_meta");
            }
        }
    }
    req
}

/// The session a stateless client has with this server: derived from the agent, the server
/// and the envelope (capabilities and client info), so every request of the same client
/// lands in the same upstream session and the same session-scoped counters, in any process.
fn derived_session(caller: &Caller, envelope: &Envelope) -> Session {
    let seed = json!([
        caller.agent.id,
        caller.server_id,
        envelope.capabilities,
        envelope.client_info
    ]);
    let digest = portcullis_store::crypto::sha256(seed.to_string().as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Session {
        id: Uuid::from_bytes(bytes),
        org_id: caller.agent.org_id,
        server_id: caller.server_id,
        agent_id: caller.agent.id,
        protocol_version: ProtocolVersion::LATEST_HANDSHAKE.as_str().to_owned(),
        upstream_session: None,
        initialize_params: json!({
            "protocolVersion": ProtocolVersion::LATEST_HANDSHAKE.as_str(),
            "capabilities": envelope.capabilities,
            "clientInfo": envelope.client_info,
        }),
        issued_at: chrono_now_secs(),
    }
}

/// Serves one stateless POST (the caller is admitted, the body parsed).
pub(crate) async fn post(
    gw: &Arc<Gateway>,
    caller: Caller,
    headers: &HeaderMap,
    message: Message,
) -> Response {
    let req = match message {
        Message::Request(req) => req,
        // No server→client requests in this era, so no client responses; cancellation is
        // closing the stream. Anything else is accepted and dropped.
        _ => return StatusCode::ACCEPTED.into_response(),
    };
    let envelope = match validate(headers, &req) {
        Ok(e) => Arc::new(e),
        Err(r) => return r,
    };
    let upstream = match upstream_of(gw, &caller, Some(&req.id)).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client = match connect(&upstream, &caller, Some(&req.id)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let session = Arc::new(derived_session(&caller, &envelope));
    let mut ctx = Ctx {
        gw: gw.clone(),
        caller,
        session,
        upstream,
        client,
        client_version: None,
        round: None,
        stateless_client: true,
        call_digest: call_digest(&req),
    };
    // A handshake upstream: the upstream session of this client, opened on first use. A
    // stateless upstream has no session: requests pass with the client's own envelope.
    let mut initialized = None;
    if !ctx.upstream.stateless {
        let opened = match ctx.reopened() {
            Some(r) => Ok(r),
            None => ctx.reopen().await.map(|_| ctx.reopened()).and_then(|r| {
                r.ok_or_else(|| {
                    portcullis_mcp::upstream::UpstreamError::Protocol("no session".into())
                })
            }),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(server = %ctx.caller.server_id, error = %e, "cannot open an upstream session for a stateless client");
                return rpc_error(StatusCode::OK, Some(req.id), e.to_error_object());
            }
        };
        ctx.client_version = Some(opened.version.clone());
        Arc::make_mut(&mut ctx.session).protocol_version = opened.version.clone();
        initialized = Some(opened.result);
    }
    // What goes upstream: the envelope and round fields removed for a handshake upstream;
    // for a stateless one, the request as sent, with the upstream's own `requestState`
    // restored from the gateway's token.
    let upstream_request = |req: &Request, round: Option<&Round>| -> Request {
        if !ctx.upstream.stateless {
            return stripped(req);
        }
        let mut req = req.clone();
        if let (Some(state), Some(params)) = (
            round.and_then(|r| r.upstream_state.clone()),
            req.params.as_mut().and_then(Value::as_object_mut),
        ) {
            params.insert("requestState".into(), Value::from(state));
        }
        req
    };

    let method = req.method.clone();
    // Armed just before a request goes upstream (see `CancelGuard`).
    let armed = |ctx: &Ctx| CancelGuard::new(ctx, id_value(&req.id));
    let (response, guard) = match method.as_str() {
        "server/discover" => {
            let initialized = match initialized {
                Some(result) => result,
                None => match upstream_discover(&ctx).await {
                    Ok(result) => Arc::new(result),
                    Err(e) => return rpc_error(StatusCode::OK, Some(req.id), e.to_error_object()),
                },
            };
            return json_message(&discover_result(&req.id, &initialized), None);
        }
        "subscriptions/listen" => return listen(&ctx, &req),
        "tools/call" => {
            let params = req.params.clone().unwrap_or(Value::Null);
            if let Some(tool) = params.get("name").and_then(Value::as_str) {
                // The Mcp-Param-* headers, against the schema the upstream lists now.
                let _ = ctx.catalog().await;
                if let Some(annotated) = ctx.param_headers_of(tool) {
                    let empty = json!({});
                    let arguments = params.get("arguments").unwrap_or(&empty);
                    if let Err(reason) = check_param_headers(headers, &annotated, arguments) {
                        return mismatch(&req.id, reason);
                    }
                }
            }
            match round_of(&ctx, &req) {
                Ok(round) => ctx.round = round,
                Err(r) => return r,
            }
            let upstream_req = upstream_request(&req, ctx.round.as_ref());
            let guard = armed(&ctx);
            (ctx.tools_call(upstream_req).await, guard)
        }
        "tools/list" => {
            let guard = armed(&ctx);
            (ctx.tools_list(upstream_request(&req, None)).await, guard)
        }
        other => {
            if ROUND_METHODS.contains(&other) {
                match round_of(&ctx, &req) {
                    Ok(Some(round)) => {
                        ctx.round = Some(round.clone());
                        let upstream_req = upstream_request(&req, Some(&round));
                        // The resumed stream cancels the parked call itself.
                        let mut guard = armed(&ctx);
                        guard.disarm();
                        let resumed = resume(&ctx, &upstream_req, &round).await;
                        return finish(&ctx, resumed, &req.id, other, guard).await;
                    }
                    Ok(None) => {}
                    Err(r) => return r,
                }
            }
            let forwarded = Message::Request(upstream_request(&req, None)).to_value();
            let guard = armed(&ctx);
            (ctx.forward(&req.id, &forwarded, None).await, guard)
        }
    };
    finish(&ctx, response, &req.id, &method, guard).await
}

/// The `DiscoverResult`, built from the upstream's `InitializeResult`.
fn discover_result(id: &RequestId, initialized: &Value) -> Value {
    let mut capabilities = initialized
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(caps) = capabilities.as_object_mut() {
        // The gateway announces its own tool list changes (a publish).
        if let Some(tools) = caps.get_mut("tools").and_then(Value::as_object_mut) {
            tools.insert("listChanged".into(), Value::Bool(true));
        }
        // Not in this revision.
        caps.remove("logging");
    }
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": supported_versions(),
        "capabilities": capabilities,
        "ttlMs": DISCOVER_TTL_MS,
        "cacheScope": "private",
        "_meta": {META_SERVER_INFO: initialized.get("serverInfo").cloned().unwrap_or(Value::Null)},
    });
    if let Some(instructions) = initialized.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    Message::result(id.clone(), result).to_value()
}

/// A stateless upstream's `DiscoverResult`, as an `InitializeResult`.
async fn upstream_discover(ctx: &Ctx) -> Result<Value, portcullis_mcp::upstream::UpstreamError> {
    let id = RequestId::String("portcullis-discover".into());
    let request = json!({"jsonrpc": "2.0", "id": &id, "method": "server/discover", "params": {}});
    let answer = crate::translate::answer_of(ctx.post_to_stateless(&request).await?, &id).await?;
    let Some(result) = answer.get("result") else {
        return Err(portcullis_mcp::upstream::UpstreamError::Protocol(
            "server/discover was not answered with a result".into(),
        ));
    };
    Ok(portcullis_mcp::stateless::initialize_result_from_discover(
        result,
        portcullis_mcp::stateless::VERSION,
    ))
}

/// `subscriptions/listen`: acknowledged at once; the gateway's `tools/list_changed` when the
/// client asked for it; ends when the agent changes or the gateway stops.
fn listen(ctx: &Ctx, req: &Request) -> Response {
    let wants_tools = req
        .params
        .as_ref()
        .and_then(|p| p.pointer("/notifications/toolsListChanged"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let subscription = Uuid::new_v4().to_string();
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                     "params": {"_meta": {META_SUBSCRIPTION: subscription}}});
    let first = futures_util::stream::once({
        let bytes = sse(&ack);
        async move { Ok::<_, std::io::Error>(bytes) }
    });
    let gw = &ctx.gw;
    let changes = crate::mcp::tokio_stream_of(gw.list_changed.subscribe(), ctx.caller.server_id)
        .filter(move |_| futures_util::future::ready(wants_tools))
        .map(move |()| {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                              "params": {"_meta": {META_SUBSCRIPTION: subscription}}});
            Ok::<_, std::io::Error>(sse(&note))
        });
    let ended = futures_util::future::select(
        Box::pin(crate::mcp::agent_changed(
            gw.agent_changed.subscribe(),
            ctx.caller.agent.id,
        )),
        Box::pin(gw.stopped()),
    );
    sse_response(first.chain(changes).take_until(ended))
}

fn sse(message: &Value) -> Bytes {
    Bytes::from(encode_event(&SseEvent::message(message.to_string())))
}

/// Adds what a stateless client needs on a result: `resultType`, and `ttlMs` / `cacheScope`
/// on lists and reads.
fn modernize(message: &mut Value, method: &str) {
    let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    result
        .entry("resultType")
        .or_insert_with(|| Value::from("complete"));
    if CACHEABLE.contains(&method) {
        result.entry("ttlMs").or_insert_with(|| Value::from(0));
        // Filtered per agent: never shared.
        result.insert("cacheScope".into(), Value::from("private"));
    }
}

/// Cancels the upstream request when dropped armed: a stateless client cancels by closing its
/// answer's stream, and a handshake-era upstream must then be told with
/// `notifications/cancelled` (a dropped connection is not a cancellation there). A stateless
/// upstream needs nothing: closing the stream is its cancellation too.
pub(crate) struct CancelGuard {
    ctx: Option<Ctx>,
    upstream_id: Value,
}

impl CancelGuard {
    pub(crate) fn new(ctx: &Ctx, upstream_id: Value) -> CancelGuard {
        CancelGuard {
            ctx: (!ctx.upstream.stateless).then(|| ctx.clone()),
            upstream_id,
        }
    }

    fn disarm(&mut self) {
        self.ctx = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
            "requestId": self.upstream_id, "reason": "the client closed its stream"}});
        tokio::spawn(async move {
            let version = ctx.client_version.clone();
            if let Err(e) = ctx.post_upstream(&note, version.as_deref()).await {
                tracing::debug!(error = %e, "cannot tell the upstream a call was cancelled");
            }
        });
    }
}

/// A stateless upstream's `requestState` wrapped in a token of the gateway's, bound to the agent
/// and server (the gateway's own tokens are left as they are).
fn bind_request_state(
    gw: &Gateway,
    agent_id: Uuid,
    server_id: Uuid,
    call: &str,
    message: &mut Value,
) {
    let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
        return;
    }
    let Some(state) = result.get("requestState").and_then(Value::as_str) else {
        return;
    };
    if state.starts_with(ROUND_PREFIX) {
        return;
    }
    let round = Round {
        parked: None,
        upstream_state: Some(state.to_owned()),
        agent_id,
        server_id,
        call: call.to_owned(),
        issued_at: chrono_now_secs(),
        input: None,
    };
    let token = gw.sessions.seal_value(ROUND_PREFIX, ROUND_AAD, &round);
    result.insert("requestState".into(), Value::from(token));
}

/// The answer as a stateless client receives it: a JSON answer completed by [`modernize`]; an
/// SSE answer read as it comes (see [`modern_stream`]).
async fn finish(
    ctx: &Ctx,
    response: Response,
    id: &RequestId,
    method: &str,
    mut guard: CancelGuard,
) -> Response {
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (parts, body) = response.into_parts();
    if is_sse {
        let inner = body
            .into_data_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let state = StreamState {
            inner: Box::pin(inner),
            decoder: Box::new(SseDecoder::new(ctx.gw.config.max_body_bytes)),
            queue: VecDeque::new(),
        };
        let answer = id_value(id);
        return sse_response(modern_stream(
            ctx,
            state,
            answer.clone(),
            answer,
            method,
            guard,
        ));
    }
    // A whole JSON answer: the call is over.
    guard.disarm();
    let Ok(bytes) = axum::body::to_bytes(body, ctx.gw.config.max_body_bytes.max(1 << 20)).await
    else {
        return rpc_error(
            StatusCode::OK,
            Some(id.clone()),
            ErrorObject::new(code::INTERNAL_ERROR, "The answer could not be read"),
        );
    };
    let Ok(mut message) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    modernize(&mut message, method);
    bind_request_state(
        &ctx.gw,
        ctx.caller.agent.id,
        ctx.caller.server_id,
        &ctx.call_digest,
        &mut message,
    );
    let mut out = json_message(&message, None);
    *out.status_mut() = parts.status;
    out
}

type ByteStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// An answer being read: the bytes still to come, and the events decoded but not yet sent.
pub(crate) struct StreamState {
    inner: ByteStream,
    decoder: Box<SseDecoder>,
    queue: VecDeque<SseEvent>,
}

/// A call waiting for its client's next input round.
struct ParkedCall {
    state: StreamState,
    /// The id of the upstream's request the client's input answers.
    upstream_request: Value,
    /// The id the upstream's final answer carries (the first round's request id).
    answer_id: Value,
    agent_id: Uuid,
    server_id: Uuid,
    at: Instant,
}

/// Calls waiting for their next input round, in this process.
#[derive(Default)]
pub struct Parked {
    calls: Mutex<HashMap<Uuid, ParkedCall>>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.calls.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Parked").field("calls", &n).finish()
    }
}

impl Parked {
    fn park(&self, call: ParkedCall) -> Option<Uuid> {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.retain(|_, c| c.at.elapsed() < ROUND_TIMEOUT);
        let agent = call.agent_id;
        if calls.len() >= MAX_PARKED
            || calls.values().filter(|c| c.agent_id == agent).count() >= MAX_PARKED_PER_AGENT
        {
            return None;
        }
        let id = Uuid::new_v4();
        calls.insert(id, call);
        Some(id)
    }

    /// Drops the calls whose round expired (their upstream streams close); answers how many.
    pub(crate) fn sweep(&self) -> usize {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let before = calls.len();
        calls.retain(|_, c| c.at.elapsed() < ROUND_TIMEOUT);
        before - calls.len()
    }

    fn take(&self, id: Uuid) -> Option<ParkedCall> {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.remove(&id).filter(|c| c.at.elapsed() < ROUND_TIMEOUT)
    }
}

/// What a `requestState` of the gateway's carries (sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// A call parked in this process (a handshake upstream's server request).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    parked: Option<Uuid>,
    /// A stateless upstream's own `requestState`, passed back to it byte for byte.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    upstream_state: Option<String>,
    #[serde(rename = "a")]
    agent_id: Uuid,
    #[serde(rename = "s")]
    server_id: Uuid,
    /// The call (method, name, arguments) the rounds belong to: a retry must repeat it.
    #[serde(rename = "c")]
    call: String,
    /// Unix seconds; the token is refused after [`ROUND_TIMEOUT`].
    #[serde(rename = "t")]
    issued_at: i64,
    /// The client's answer (`inputResponses`), from the retry; never sealed.
    #[serde(skip)]
    input: Option<Value>,
}

impl Round {
    /// A call parked in this process (else a stateless upstream's round).
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.is_some()
    }
}

/// A digest of what a retry must repeat: the method, the name or URI, the arguments.
fn call_digest(req: &Request) -> String {
    let params = req.params.as_ref();
    let seed = json!([
        req.method,
        params.and_then(|p| p.get("name").or_else(|| p.get("uri"))),
        params.and_then(|p| p.get("arguments")),
    ]);
    let digest = portcullis_store::crypto::sha256(seed.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

const ROUND_PREFIX: &str = "pcr_";
const ROUND_AAD: &[u8] = b"portcullis input round v1";

/// The round a retry continues: `None` without `requestState`; a refusal when it is not one
/// of this gateway's, or another agent's or server's.
fn round_of(ctx: &Ctx, req: &Request) -> Result<Option<Round>, Response> {
    let Some(state) = req.params.as_ref().and_then(|p| p.get("requestState")) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        rpc_error(
            StatusCode::OK,
            Some(req.id.clone()),
            ErrorObject::new(
                code::INVALID_PARAMS,
                format!("Invalid params: requestState {why}"),
            ),
        )
    };
    let mut round: Round = state
        .as_str()
        .and_then(|s| ctx.gw.sessions.open_value(ROUND_PREFIX, ROUND_AAD, s))
        .ok_or_else(|| invalid("was not issued by this gateway"))?;
    if round.agent_id != ctx.caller.agent.id || round.server_id != ctx.caller.server_id {
        return Err(invalid("belongs to another agent or server"));
    }
    if round.call != ctx.call_digest {
        return Err(invalid(
            "belongs to another call: repeat the original request (method, name, arguments)",
        ));
    }
    let age = chrono_now_secs().saturating_sub(round.issued_at);
    if !(0..=ROUND_TIMEOUT.as_secs() as i64).contains(&age) {
        return Err(invalid("expired: call again without it"));
    }
    round.input = req
        .params
        .as_ref()
        .and_then(|p| p.pointer(&format!("/inputResponses/{INPUT_KEY}")))
        .cloned();
    Ok(Some(round))
}

/// Reads an upstream answer for a stateless client: notifications pass as they come; the
/// response (its id set to `reply_id`) gets [`modernize`]d and ends the stream; a server
/// request parks the call and ends the stream with an `input_required` result.
fn modern_stream(
    ctx: &Ctx,
    state: StreamState,
    reply_id: Value,
    answer_id: Value,
    method: &str,
    guard: CancelGuard,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let gw = ctx.gw.clone();
    let agent_id = ctx.caller.agent.id;
    let server_id = ctx.caller.server_id;
    let call = ctx.call_digest.clone();
    let method = method.to_owned();
    futures_util::stream::unfold(Some((state, guard)), move |state| {
        let gw = gw.clone();
        let call = call.clone();
        let reply_id = reply_id.clone();
        let answer_id = answer_id.clone();
        let method = method.clone();
        async move {
            let (mut state, mut guard) = state?;
            loop {
                if let Some(event) = state.queue.pop_front() {
                    let Ok(mut message) = serde_json::from_str::<Value>(&event.data) else {
                        continue; // priming events, comments: nothing for this era
                    };
                    let is_response = message.get("method").is_none()
                        && (message.get("result").is_some() || message.get("error").is_some());
                    if is_response && message.get("id") == Some(&answer_id) {
                        message["id"] = reply_id;
                        modernize(&mut message, &method);
                        bind_request_state(&gw, agent_id, server_id, &call, &mut message);
                        guard.disarm();
                        return Some((Ok(sse(&message)), None));
                    }
                    if is_response {
                        continue;
                    }
                    if let (Some(upstream_request), Some(request_method)) =
                        (message.get("id").cloned(), message.get("method").cloned())
                    {
                        let input = json!({"method": request_method,
                                           "params": message.get("params").cloned().unwrap_or(json!({}))});
                        let parked = gw.mcp.parked.park(ParkedCall {
                            state,
                            upstream_request,
                            answer_id,
                            agent_id,
                            server_id,
                            at: Instant::now(),
                        });
                        let result = match parked {
                            Some(parked) => {
                                let round = Round {
                                    parked: Some(parked),
                                    upstream_state: None,
                                    agent_id,
                                    server_id,
                                    call,
                                    issued_at: chrono_now_secs(),
                                    input: None,
                                };
                                let token = gw.sessions.seal_value(ROUND_PREFIX, ROUND_AAD, &round);
                                json!({"jsonrpc": "2.0", "id": reply_id, "result": {
                                    "resultType": "input_required",
                                    "inputRequests": {INPUT_KEY: input},
                                    "requestState": token,
                                }})
                            }
                            None => json!({"jsonrpc": "2.0", "id": reply_id, "error": {
                                "code": code::INTERNAL_ERROR,
                                "message": "Too many calls are waiting for input: try again later"}}),
                        };
                        guard.disarm();
                        return Some((Ok(sse(&result)), None));
                    }
                    return Some((Ok(sse(&message)), Some((state, guard))));
                }
                match state.inner.next().await {
                    Some(Ok(chunk)) => {
                        if state.decoder.push(&chunk).is_err() {
                            let error = json!({"jsonrpc": "2.0", "id": reply_id, "error": {
                                "code": code::INTERNAL_ERROR,
                                "message": "Upstream message exceeds the size limit"}});
                            guard.disarm();
                            return Some((Ok(sse(&error)), None));
                        }
                        while let Some(event) = state.decoder.pop() {
                            state.queue.push_back(event);
                        }
                    }
                    _ => {
                        let error = json!({"jsonrpc": "2.0", "id": reply_id, "error": {
                            "code": code::INTERNAL_ERROR,
                            "message": "Upstream closed the stream without answering"}});
                        guard.disarm();
                        return Some((Ok(sse(&error)), None));
                    }
                }
            }
        }
    })
}

/// Continues a parked call with the client's input: the answer goes upstream as the response
/// to the server's request, and the call's stream is read on.
pub(crate) async fn resume(ctx: &Ctx, req: &Request, round: &Round) -> Response {
    if round.upstream_state.is_some() {
        // The stateless upstream keeps the round itself: the retry goes to it as it is.
        let raw = req.to_value();
        return ctx.forward(&req.id, &raw, None).await;
    }
    let Some(input) = round.input.clone() else {
        return rpc_error(
            StatusCode::OK,
            Some(req.id.clone()),
            ErrorObject::new(
                code::INVALID_PARAMS,
                format!("Invalid params: inputResponses.{INPUT_KEY} is missing"),
            ),
        );
    };
    let Some(parked) = ctx
        .gw
        .mcp
        .parked
        .take(round.parked.unwrap_or_default())
        .filter(|p| p.agent_id == round.agent_id && p.server_id == round.server_id)
    else {
        return rpc_error(
            StatusCode::OK,
            Some(req.id.clone()),
            ErrorObject::new(
                code::INVALID_PARAMS,
                "Invalid params: this input round expired or was started on another gateway process; call again without requestState",
            ),
        );
    };
    let answer = json!({"jsonrpc": "2.0", "id": parked.upstream_request, "result": input});
    if let Err(e) = ctx
        .post_upstream(&answer, ctx.client_version.as_deref())
        .await
    {
        return rpc_error(StatusCode::OK, Some(req.id.clone()), e.to_error_object());
    }
    let method = req.method.clone();
    let guard = CancelGuard::new(ctx, parked.answer_id.clone());
    sse_response(modern_stream(
        ctx,
        parked.state,
        id_value(&req.id),
        parked.answer_id,
        &method,
        guard,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn param_headers_are_found_nested_and_checked() {
        let tools = vec![
            json!({"name": "deploy", "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "target": {"type": "object", "properties": {
                "env": {"type": "string", "x-mcp-header": "Env"}}},
            "plain": {"type": "string"}}}}),
        ];
        let all = param_headers(&tools);
        let deploy = &all["deploy"];
        assert_eq!(deploy.len(), 2);
        let args = json!({"region": "eu-west", "target": {"env": "prod"}});
        let good = headers(&[("mcp-param-region", "eu-west"), ("mcp-param-env", "prod")]);
        assert_eq!(check_param_headers(&good, deploy, &args), Ok(()));
        let encoded = headers(&[
            ("mcp-param-region", "=?base64?ZXUtd2VzdA==?="),
            ("mcp-param-env", "prod"),
        ]);
        assert_eq!(check_param_headers(&encoded, deploy, &args), Ok(()));
        let wrong = headers(&[("mcp-param-region", "us-east"), ("mcp-param-env", "prod")]);
        assert!(
            check_param_headers(&wrong, deploy, &args)
                .unwrap_err()
                .contains("does not match")
        );
        let missing = headers(&[("mcp-param-env", "prod")]);
        assert!(
            check_param_headers(&missing, deploy, &args)
                .unwrap_err()
                .contains("missing")
        );
        let duplicate = headers(&[
            ("mcp-param-region", "eu-west"),
            ("mcp-param-region", "eu-west"),
            ("mcp-param-env", "prod"),
        ]);
        assert!(
            check_param_headers(&duplicate, deploy, &args)
                .unwrap_err()
                .contains("duplicate")
        );
        let extra = headers(&[("mcp-param-env", "prod"), ("mcp-param-region", "eu-west")]);
        assert!(
            check_param_headers(&extra, deploy, &json!({"target": {"env": "prod"}}))
                .unwrap_err()
                .contains("absent")
        );
    }

    #[test]
    fn the_envelope_is_stripped_for_the_upstream() {
        let Ok(Message::Request(req)) = Message::from_value(json!({"jsonrpc": "2.0", "id": 1,
            "method": "tools/call",
            "params": {"name": "x", "requestState": "s", "inputResponses": {},
                       "_meta": {META_VERSION: "2026-07-28", "progressToken": 5}}}))
        else {
            panic!("a request")
        };
        let out = stripped(&req);
        assert_eq!(
            out.params,
            Some(json!({"name": "x", "_meta": {"progressToken": 5}}))
        );
    }

    #[test]
    fn results_get_the_fields_of_the_revision() {
        let mut list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}});
        modernize(&mut list, "tools/list");
        assert_eq!(
            list["result"],
            json!({"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"})
        );
        let mut call = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "resultType": "input_required"}});
        modernize(&mut call, "tools/call");
        assert_eq!(call["result"]["resultType"], "input_required");
        assert!(call["result"].get("ttlMs").is_none());
    }
}

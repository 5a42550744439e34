//! Upstreams that speak only the stateless revision (2026-07-28).
//!
//! Every request the gateway sends such a server carries the envelope in `params._meta`
//! (protocol version, the client's capabilities and info: a stateless client's own, or those a
//! handshake client gave in `initialize`) and the mirror headers (`Mcp-Method`, `Mcp-Name`,
//! `Mcp-Param-*` from the tool's `x-mcp-header` annotations), computed from the message as it is
//! sent, after any rewrite. For a handshake-era client, the gateway also translates:
//!
//! - `initialize` is answered here, from the server's `DiscoverResult`, and the session is the
//!   gateway's alone (nothing upstream); `ping` is answered here; `logging/setLevel` is
//!   remembered (in this process) and stamped on later requests as `_meta` `logLevel`;
//! - results lose `resultType`, `ttlMs` and `cacheScope`;
//! - an `input_required` result becomes server-to-client requests on the call's SSE stream; the
//!   client's answers (POSTed as responses) go back in a retry carrying `inputResponses` and
//!   the server's `requestState` byte for byte, at most [`MAX_ROUNDS`] times;
//! - the GET stream is the server's `subscriptions/listen` (list changes), merged with the
//!   gateway's own;
//! - what does not map is refused with -32601 saying so: `resources/subscribe`,
//!   `resources/unsubscribe`, `tasks/*`. Client notifications (`notifications/cancelled`
//!   among them) are accepted and dropped (the revision has none), but
//!   `notifications/cancelled` first aborts the request it names: its connection to the server
//!   is closed, which is how the stateless era cancels.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt as _;
use portcullis_mcp::jsonrpc::{ErrorObject, Message, Request, RequestId, code};
use portcullis_mcp::sse::{SseEvent, encode_event};
use portcullis_mcp::stateless::{
    self as wire, META_SUBSCRIPTION, initialize_result_from_discover, strip_for_handshake,
};
use portcullis_mcp::upstream::{
    Client, EventStream, PostResponse, UpstreamError, collect_until_response, post_stateless,
};
use portcullis_mcp::version::{Era, ProtocolVersion};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::limits::Reservation;
use crate::mcp::{Ctx, id_value, json_message, rpc_error, sse_response};

/// Input rounds one call may take.
pub const MAX_ROUNDS: usize = 10;
/// How long the gateway waits for a client's answer to one input request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

fn sse(message: &Value) -> Bytes {
    Bytes::from(encode_event(&SseEvent::message(message.to_string())))
}

fn http_of(
    client: &Client,
) -> Result<&portcullis_mcp::upstream::StreamableHttpClient, UpstreamError> {
    match client {
        Client::Http(http) => Ok(http),
        Client::Channel(_) => Err(UpstreamError::Config(
            "the stateless revision is served over Streamable HTTP only".into(),
        )),
    }
}

/// The answer to one request, from JSON or from a stream (notifications before it dropped).
pub(crate) async fn answer_of(
    response: PostResponse,
    id: &RequestId,
) -> Result<Value, UpstreamError> {
    match response {
        PostResponse::Json { message, .. } => Ok(message),
        PostResponse::Stream { mut events, .. } => {
            Ok(collect_until_response(&mut events, id).await?.1)
        }
        PostResponse::Accepted => Err(UpstreamError::Protocol(
            "the request was accepted without an answer".into(),
        )),
    }
}

/// `initialize` from a handshake client, answered from the server's `server/discover`.
pub(crate) async fn initialize(
    client: &Client,
    req: &Request,
) -> Result<(Value, String), Response> {
    let params = req.params.clone().unwrap_or(Value::Null);
    let version = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .and_then(ProtocolVersion::parse)
        .filter(|v| v.era() == Era::Handshake && *v >= ProtocolVersion::V2025_03_26)
        .unwrap_or(ProtocolVersion::LATEST_HANDSHAKE)
        .as_str()
        .to_owned();
    let fail =
        |e: UpstreamError| rpc_error(StatusCode::OK, Some(req.id.clone()), e.to_error_object());
    let http = http_of(client).map_err(fail)?;
    let id = RequestId::String("portcullis-discover".into());
    let discover = json!({"jsonrpc": "2.0", "id": &id, "method": "server/discover", "params": {}});
    let caps = params
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let info = params
        .get("clientInfo")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let answer = match post_stateless(http, discover, &caps, &info, &[]).await {
        Ok(response) => answer_of(response, &id).await.map_err(fail)?,
        Err(e) => return Err(fail(e)),
    };
    let Some(found) = answer.get("result") else {
        // The server's error, as it gave it, under the client's id.
        let mut answer = answer;
        answer["id"] = id_value(&req.id);
        return Err(json_message(&answer, None));
    };
    let mut result = initialize_result_from_discover(found, &version);
    if let Some(tools) = result
        .pointer_mut("/capabilities/tools")
        .and_then(Value::as_object_mut)
    {
        // The gateway announces publishes.
        tools.insert("listChanged".into(), Value::Bool(true));
    }
    Ok((result, version))
}

impl Ctx {
    /// The client's capabilities and info, for the envelope.
    fn envelope_parts(&self) -> (Value, Value) {
        let params = &self.session.initialize_params;
        (
            params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
            params.get("clientInfo").cloned().unwrap_or_else(
                || json!({"name": "portcullis", "version": env!("CARGO_PKG_VERSION")}),
            ),
        )
    }

    /// Sends `message` to a stateless server: requests stamped, the client's answers to input
    /// requests delivered to the waiting call, notifications dropped.
    pub(crate) async fn post_to_stateless(
        &self,
        message: &Value,
    ) -> Result<PostResponse, UpstreamError> {
        let http = http_of(&self.client)?;
        let method = message.get("method").and_then(Value::as_str);
        match (message.get("id"), method) {
            (Some(_), Some(method)) => {
                let mut message = message.clone();
                let level = self
                    .gw
                    .mcp
                    .log_levels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&self.session.id)
                    .cloned();
                let (caps, info) = self.envelope_parts();
                wire::stamp_envelope(&mut message, &caps, &info);
                if let Some(level) = level
                    && let Some(meta) = message
                        .pointer_mut("/params/_meta")
                        .and_then(Value::as_object_mut)
                {
                    meta.entry(wire::META_LOG_LEVEL)
                        .or_insert(Value::from(level));
                }
                let annotated = if method == "tools/call" {
                    message
                        .pointer("/params/name")
                        .and_then(Value::as_str)
                        .and_then(|tool| self.param_headers_of(tool))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let headers = wire::mirror_headers(&message, &annotated);
                if self.stateless_client {
                    // Its own cancellation is closing the stream.
                    return http
                        .post_with_headers(&message, Some(wire::VERSION), &headers)
                        .await;
                }
                // A handshake client cancels with `notifications/cancelled`: the exchange runs
                // as a task that notification can abort (which closes the connection, the
                // stateless era's cancellation).
                let key = (
                    self.session.id,
                    message.get("id").map(Value::to_string).unwrap_or_default(),
                );
                let http = http.clone();
                let task = tokio::spawn(async move {
                    http.post_with_headers(&message, Some(wire::VERSION), &headers)
                        .await
                });
                self.in_flight(key.clone(), Some(task.abort_handle()));
                let result = task.await;
                self.in_flight(key, None);
                result.unwrap_or_else(|_| {
                    Err(UpstreamError::Protocol(
                        "the client cancelled the request".into(),
                    ))
                })
            }
            (Some(id), None) => {
                let key = (self.session.id, id.to_string());
                let waiter = self
                    .gw
                    .mcp
                    .input_waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(message.clone());
                    }
                    None => {
                        tracing::debug!(session = %self.session.id, "an answer nobody waits for")
                    }
                }
                Ok(PostResponse::Accepted)
            }
            (None, Some("notifications/cancelled")) => {
                let key = (
                    self.session.id,
                    message
                        .pointer("/params/requestId")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                );
                let handle = self
                    .gw
                    .mcp
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                if let Some(handle) = handle {
                    handle.abort();
                    tracing::debug!(session = %self.session.id, "upstream request cancelled");
                }
                Ok(PostResponse::Accepted)
            }
            _ => Ok(PostResponse::Accepted),
        }
    }

    /// Registers (or, with `None`, forgets) what cancels a handshake client's request `key`.
    fn in_flight(&self, key: (Uuid, String), handle: Option<tokio::task::AbortHandle>) {
        let mut map = self
            .gw
            .mcp
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match handle {
            Some(handle) => {
                map.insert(key, handle);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// A request a handshake client sends that is answered here, or refused, for a stateless
    /// server; `None` to forward it.
    pub(crate) fn answer_locally(&self, req: &Request) -> Option<Response> {
        let refuse = |what: &str| {
            Some(rpc_error(
                StatusCode::OK,
                Some(req.id.clone()),
                ErrorObject::new(
                    code::METHOD_NOT_FOUND,
                    format!(
                        "Method not found: {what} does not map to this server's protocol revision (2026-07-28)"
                    ),
                ),
            ))
        };
        match req.method.as_str() {
            "ping" => Some(json_message(
                &Message::result(req.id.clone(), json!({})).to_value(),
                None,
            )),
            "logging/setLevel" => {
                let level = req
                    .params
                    .as_ref()
                    .and_then(|p| p.get("level"))
                    .and_then(Value::as_str)?;
                let mut levels = self
                    .gw
                    .mcp
                    .log_levels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if levels.len() >= crate::mcp::MAX_REOPENED {
                    // Forgetting only costs the level: the server's default applies.
                    levels.clear();
                }
                levels.insert(self.session.id, level.to_owned());
                drop(levels);
                Some(json_message(
                    &Message::result(req.id.clone(), json!({})).to_value(),
                    None,
                ))
            }
            m @ ("resources/subscribe" | "resources/unsubscribe") => refuse(m),
            m if m.starts_with("tasks/") => refuse(m),
            _ => None,
        }
    }

    /// Forwards a request to a stateless server and answers the client in its era (see the
    /// module documentation). `reservation` is released if the call fails.
    pub(crate) async fn forward_to_stateless(
        &self,
        id: &RequestId,
        raw: &Value,
        reservation: Option<Reservation>,
        stateless_client: bool,
    ) -> Response {
        let release = |r: Option<Reservation>| {
            if let Some(r) = r {
                self.gw.counters.release(r);
            }
        };
        let first = match self.post_to_stateless(raw).await {
            Ok(PostResponse::Accepted) => return self.unanswered(id, reservation, None),
            Err(e) => return self.unanswered(id, reservation, Some(e)),
            Ok(first) => first,
        };
        match first {
            PostResponse::Json { message, .. } if stateless_client || !needs_input(&message) => {
                if message.get("error").is_some() {
                    release(reservation);
                }
                let mut message = message;
                if !stateless_client {
                    strip_for_handshake(&mut message);
                }
                json_message(&message, None)
            }
            PostResponse::Stream { events, .. } if stateless_client => {
                crate::mcp::relayed_response(crate::mcp::relay(
                    self.gw.clone(),
                    id.clone(),
                    events,
                    reservation,
                ))
                .await
            }
            first => self.drive_rounds(id.clone(), raw.clone(), first, reservation),
        }
    }

    /// Answers a handshake client on an SSE stream: the server's notifications as they come,
    /// its input requests as server-to-client requests, the retries, then the result.
    fn drive_rounds(
        &self,
        id: RequestId,
        raw: Value,
        first: PostResponse,
        reservation: Option<Reservation>,
    ) -> Response {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let ctx = self.clone();
        let key = (self.session.id, id_value(&id).to_string());
        // Registered before it runs, so its own clean-up always comes after.
        let (registered, ready) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = ready.await;
            let outcome = ctx.rounds(&id, &raw, first, &tx).await;
            let message = match outcome {
                Ok(mut message) => {
                    strip_for_handshake(&mut message);
                    message["id"] = id_value(&id);
                    if message.get("error").is_some()
                        && let Some(r) = reservation
                    {
                        ctx.gw.counters.release(r);
                    }
                    message
                }
                Err(error) => {
                    if let Some(r) = reservation {
                        ctx.gw.counters.release(r);
                    }
                    Message::error(Some(id.clone()), error).to_value()
                }
            };
            let _ = tx.send(sse(&message)).await;
            ctx.in_flight((ctx.session.id, id_value(&id).to_string()), None);
        });
        // `notifications/cancelled` for this request stops the rounds and closes the upstream
        // stream.
        self.in_flight(key, Some(task.abort_handle()));
        let _ = registered.send(());
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let bytes = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(bytes), rx))
        });
        sse_response(stream)
    }

    async fn rounds(
        &self,
        id: &RequestId,
        raw: &Value,
        first: PostResponse,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Value, ErrorObject> {
        let mut answer = first;
        // Each retry is a new request (a new id), with the same params.
        let mut current = id.clone();
        for round in 0..=MAX_ROUNDS {
            let message = match answer {
                PostResponse::Json { message, .. } => message,
                PostResponse::Stream { mut events, .. } => pump(&mut events, &current, tx).await?,
                PostResponse::Accepted => {
                    return Err(ErrorObject::new(
                        code::INTERNAL_ERROR,
                        "Upstream accepted the request without answering it",
                    ));
                }
            };
            if !needs_input(&message) {
                return Ok(message);
            }
            if round == MAX_ROUNDS {
                break;
            }
            let result = &message["result"];
            let requests = result
                .get("inputRequests")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let responses = self.ask_client(&requests, tx).await?;
            let mut retry = raw.clone();
            current = RequestId::String(format!("portcullis-round-{}", Uuid::new_v4().simple()));
            retry["id"] = id_value(&current);
            if let Some(params) = retry.get_mut("params").and_then(Value::as_object_mut) {
                params.insert("inputResponses".into(), Value::Object(responses));
                params.insert(
                    "requestState".into(),
                    result.get("requestState").cloned().unwrap_or(Value::Null),
                );
            }
            answer = self
                .post_to_stateless(&retry)
                .await
                .map_err(|e| e.to_error_object())?;
        }
        Err(ErrorObject::new(
            code::INTERNAL_ERROR,
            format!("The upstream asked for input more than {MAX_ROUNDS} times"),
        ))
    }

    /// Sends each input request to the client as a server-to-client request and waits for its
    /// answer (POSTed by the client to this process).
    async fn ask_client(
        &self,
        requests: &Map<String, Value>,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Map<String, Value>, ErrorObject> {
        let mut responses = Map::new();
        for (key, request) in requests {
            let request_id = format!("portcullis-input-{}", Uuid::new_v4().simple());
            let (answer_tx, answer_rx) = oneshot::channel();
            let waiter_key = (self.session.id, Value::from(request_id.clone()).to_string());
            self.gw
                .mcp
                .input_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(waiter_key.clone(), answer_tx);
            let ask = json!({"jsonrpc": "2.0", "id": request_id, "method": request.get("method"),
                             "params": request.get("params").cloned().unwrap_or_else(|| json!({}))});
            let sent = tx.send(sse(&ask)).await.is_ok();
            let answer = if sent {
                tokio::time::timeout(ANSWER_TIMEOUT, answer_rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            let Some(answer) = answer else {
                self.gw
                    .mcp
                    .input_waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&waiter_key);
                return Err(ErrorObject::new(
                    code::INTERNAL_ERROR,
                    "The client did not answer the server's request",
                ));
            };
            match answer.get("result") {
                Some(result) => {
                    responses.insert(key.clone(), result.clone());
                }
                None => {
                    let why = answer
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no result");
                    return Err(ErrorObject::new(
                        code::INTERNAL_ERROR,
                        format!("The client refused the server's request: {why}"),
                    ));
                }
            }
        }
        Ok(responses)
    }

    /// The server's `subscriptions/listen` stream as a handshake client's GET stream: the
    /// acknowledgement dropped, the subscription id removed.
    pub(crate) async fn listen_upstream(&self) -> Option<EventStream> {
        let listen = json!({"jsonrpc": "2.0", "id": "portcullis-listen", "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": true, "promptsListChanged": true,
                                         "resourcesListChanged": true}}});
        match self.post_to_stateless(&listen).await {
            // A subscription may be quiet for hours: no idle timeout.
            Ok(PostResponse::Stream { events, .. }) => Some(events.with_idle_timeout(None)),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "no subscriptions/listen upstream");
                None
            }
        }
    }
}

/// A listen event as a handshake client gets it (`None` for the acknowledgement).
pub(crate) fn from_listen(event: SseEvent) -> Option<SseEvent> {
    let mut message: Value = serde_json::from_str(&event.data).ok()?;
    if message.get("method").and_then(Value::as_str)
        == Some("notifications/subscriptions/acknowledged")
    {
        return None;
    }
    if let Some(meta) = message
        .pointer_mut("/params/_meta")
        .and_then(Value::as_object_mut)
    {
        meta.remove(META_SUBSCRIPTION);
    }
    Some(SseEvent::message(message.to_string()))
}

fn needs_input(message: &Value) -> bool {
    message
        .pointer("/result/resultType")
        .and_then(Value::as_str)
        == Some("input_required")
}

/// Reads a stream until the response to `id`, passing everything else to the client.
async fn pump(
    events: &mut EventStream,
    id: &RequestId,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, ErrorObject> {
    let want = id_value(id);
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_error_object())?;
        if event.data.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        let is_response = message.get("method").is_none()
            && (message.get("result").is_some() || message.get("error").is_some());
        if is_response && message.get("id") == Some(&want) {
            return Ok(message);
        }
        if !is_response {
            let _ = tx.send(sse(&message)).await;
        }
    }
    Err(ErrorObject::new(
        code::INTERNAL_ERROR,
        "Upstream closed the stream without answering",
    ))
}

//! One long-lived MCP connection carrying messages both ways, shared by many requests: the
//! shape of the stdio transport and of the legacy HTTP+SSE transport (2024-11-05), where the
//! upstream has a single stream of messages and no per-request HTTP exchange.
//!
//! [`ChannelClient`] gives such a connection the interface of [`StreamableHttpClient`]
//! (`post`, `initialize`, `open_stream`, `delete_session`) so the gateway drives every
//! transport the same way:
//!
//! - Requests get ids of the channel's own (`portcullis-N`), so requests from several client
//!   sessions sharing the connection never collide; the answer goes back with the caller's id.
//! - A request's answer is JSON when the response is the first message for it, otherwise an
//!   event stream of what came for it (progress by `progressToken`, logging and server
//!   requests while it is the newest request in flight), then the response.
//! - Server requests and notifications tied to no request in flight go to the GET streams
//!   ([`open_stream`](ChannelClient::open_stream)); a `ping` from the server is answered here.
//! - The connection is its own session: its id is minted here, and a request naming another
//!   session (the connection was replaced after a crash) is [`UpstreamError::SessionExpired`],
//!   so the caller initializes the new connection and tries again.
//! - `initialize` is sent once per connection, with the first caller's params; later callers
//!   get the same result (`notifications/initialized` too is sent once).
//! - When the connection ends, every request in flight gets the reason (an exit status and the
//!   end of stderr, for a command), and every later one the same reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{EventStream, Initialized, PostResponse, UpstreamError, collect_until_response};
use crate::jsonrpc::RequestId;
use crate::sse::{SseEvent, encode_event};

/// Messages queued for one request or one GET stream, at most; beyond, notifications are
/// dropped (a response closes the request with an error instead).
const QUEUE: usize = 1024;
/// The prefix of the channel's own request ids.
const ID_PREFIX: &str = "portcullis-";

/// Writes one message to the upstream.
pub type SendFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<(), UpstreamError>> + Send + Sync>;
/// Ends the connection (for a command: close its input, then SIGTERM, then SIGKILL).
pub type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// A shared connection to one upstream. Cheap to clone.
#[derive(Clone)]
pub struct ChannelClient {
    shared: Arc<Shared>,
}

struct Shared {
    session_id: String,
    send: SendFn,
    timeout: Duration,
    max_event_bytes: usize,
    state: Mutex<State>,
    /// The `InitializeResult`, once the upstream gave it.
    init: tokio::sync::Mutex<Option<Value>>,
    closer: Mutex<Option<CloseFn>>,
    closing: AtomicBool,
    last_used: Mutex<Instant>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Requests in flight by their channel id number.
    pending: HashMap<u64, Pending>,
    listeners: Vec<mpsc::Sender<Value>>,
    /// Why the connection ended.
    closed: Option<UpstreamError>,
}

struct Pending {
    /// The caller's id, restored on the response.
    original: Value,
    progress_token: Option<Value>,
    tx: mpsc::Sender<Result<Value, UpstreamError>>,
}

impl std::fmt::Debug for ChannelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelClient")
            .field("session_id", &self.shared.session_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a request from the table when its caller stops waiting.
struct PendingGuard {
    shared: Arc<Shared>,
    n: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).pending.remove(&self.n);
    }
}

fn is_response(message: &Value) -> bool {
    message.get("method").is_none()
        && (message.get("result").is_some() || message.get("error").is_some())
}

fn sse(message: &Value) -> Bytes {
    Bytes::from(encode_event(&SseEvent::message(message.to_string())))
}

impl ChannelClient {
    /// A client writing with `send` and closing with `close`; the transport's reader hands
    /// every message it reads to [`receive`](Self::receive) and calls
    /// [`ended`](Self::ended) when the connection ends.
    pub fn new(send: SendFn, close: CloseFn, timeout: Duration, max_event_bytes: usize) -> Self {
        let id = uuid::Uuid::new_v4().simple();
        ChannelClient {
            shared: Arc::new(Shared {
                session_id: format!("channel-{id}"),
                send,
                timeout,
                max_event_bytes,
                state: Mutex::new(State::default()),
                init: tokio::sync::Mutex::new(None),
                closer: Mutex::new(Some(close)),
                closing: AtomicBool::new(false),
                last_used: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The connection's session id.
    pub fn session_id(&self) -> &str {
        &self.shared.session_id
    }

    /// Whether the connection has ended (or is being closed).
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst) || lock(&self.shared.state).closed.is_some()
    }

    /// How long since a caller last used the connection (requests in flight and open GET
    /// streams count as use).
    pub fn idle_for(&self) -> Duration {
        let state = lock(&self.shared.state);
        let listening = state.listeners.iter().any(|l| !l.is_closed());
        if !state.pending.is_empty() || listening {
            return Duration::ZERO;
        }
        drop(state);
        lock(&self.shared.last_used).elapsed()
    }

    fn touch(&self) {
        *lock(&self.shared.last_used) = Instant::now();
    }

    /// Hands a message read from the upstream to whoever waits for it (see the module
    /// documentation).
    pub fn receive(&self, message: Value) {
        let mut state = lock(&self.shared.state);
        let method = message.get("method").and_then(Value::as_str);
        match (message.get("id"), method) {
            (Some(id), None) => {
                let n = id
                    .as_str()
                    .and_then(|s| s.strip_prefix(ID_PREFIX))
                    .and_then(|n| n.parse::<u64>().ok());
                let Some(pending) = n.and_then(|n| state.pending.remove(&n)) else {
                    return;
                };
                let mut message = message;
                message["id"] = pending.original;
                let _ = pending.tx.try_send(Ok(message));
            }
            (Some(id), Some(method)) => {
                if method == "ping" {
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {}});
                    drop(state);
                    self.spawn_send(answer);
                    return;
                }
                let newest = state.pending.keys().max().copied();
                if let Some(n) = newest {
                    deliver(&mut state, n, message);
                } else if !broadcast(&mut state, &message) {
                    let answer = json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32601,
                        "message": "no client is connected to answer this request"}});
                    drop(state);
                    self.spawn_send(answer);
                }
            }
            (None, Some(method)) => {
                let target = match method {
                    "notifications/progress" => {
                        // The token is the channel's own (`portcullis-pN`): restore the
                        // caller's.
                        let n = message
                            .pointer("/params/progressToken")
                            .and_then(Value::as_str)
                            .and_then(|t| t.strip_prefix(ID_PREFIX))
                            .and_then(|t| t.strip_prefix('p'))
                            .and_then(|t| t.parse::<u64>().ok());
                        let original = n
                            .and_then(|n| state.pending.get(&n))
                            .and_then(|p| p.progress_token.clone());
                        match (n, original) {
                            (Some(n), Some(original)) => {
                                let mut message = message;
                                message["params"]["progressToken"] = original;
                                deliver(&mut state, n, message);
                                return;
                            }
                            _ => None,
                        }
                    }
                    "notifications/message" => state.pending.keys().max().copied(),
                    _ => None,
                };
                match target {
                    Some(n) => deliver(&mut state, n, message),
                    None => {
                        broadcast(&mut state, &message);
                    }
                }
            }
            _ => {}
        }
    }

    /// Marks the connection ended: every request in flight gets `reason`, GET streams end.
    pub fn ended(&self, reason: UpstreamError) {
        let mut state = lock(&self.shared.state);
        if state.closed.is_none() {
            state.closed = Some(reason.clone());
        }
        for (_, pending) in state.pending.drain() {
            let _ = pending.tx.try_send(Err(reason.clone()));
        }
        state.listeners.clear();
    }

    /// Ends the connection (for a command: close its input, then SIGTERM, then SIGKILL).
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let closer = lock(&self.shared.closer).take();
        if let Some(close) = closer {
            close().await;
        }
        self.ended(UpstreamError::Connect("the connection was closed".into()));
    }

    fn spawn_send(&self, message: Value) {
        let send = self.shared.send.clone();
        tokio::spawn(async move {
            let _ = send(message).await;
        });
    }

    fn closed_error(&self) -> Option<UpstreamError> {
        lock(&self.shared.state).closed.clone()
    }

    /// Sends one message the way [`StreamableHttpClient::post`](super::StreamableHttpClient::post)
    /// does. `session`, when given, must be this connection's; the protocol version is fixed
    /// by `initialize` and ignored here.
    pub async fn post(
        &self,
        message: &Value,
        session: Option<&str>,
        _protocol_version: Option<&str>,
    ) -> Result<PostResponse, UpstreamError> {
        self.touch();
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if session.is_some_and(|s| s != self.shared.session_id) && !is_initialize {
            return Err(UpstreamError::SessionExpired);
        }
        if let Some(reason) = self.closed_error() {
            return Err(reason);
        }
        let method = message.get("method").and_then(Value::as_str);
        match (message.get("id"), method) {
            (Some(id), Some("initialize")) => {
                let params = message.get("params").cloned().unwrap_or(Value::Null);
                let answer = match self.initialize_result(params).await {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                    Err(UpstreamError::Rejected(error)) => {
                        json!({"jsonrpc": "2.0", "id": id, "error": error})
                    }
                    Err(e) => return Err(e),
                };
                Ok(PostResponse::Json {
                    message: answer,
                    session_id: Some(self.shared.session_id.clone()),
                })
            }
            (Some(_), Some(_)) => self.request(message).await,
            (None, Some("notifications/initialized")) => Ok(PostResponse::Accepted),
            (None, Some("notifications/cancelled")) => {
                // The caller names its own id: cancel the newest request sent under it.
                let wanted = message.pointer("/params/requestId");
                let ours = {
                    let state = lock(&self.shared.state);
                    state
                        .pending
                        .iter()
                        .filter(|(_, p)| Some(&p.original) == wanted)
                        .map(|(n, _)| *n)
                        .max()
                };
                if let Some(n) = ours {
                    let mut message = message.clone();
                    message["params"]["requestId"] = json!(format!("{ID_PREFIX}{n}"));
                    (self.shared.send)(message).await?;
                }
                Ok(PostResponse::Accepted)
            }
            _ => {
                (self.shared.send)(message.clone()).await?;
                Ok(PostResponse::Accepted)
            }
        }
    }

    async fn request(&self, message: &Value) -> Result<PostResponse, UpstreamError> {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let n = {
            let mut state = lock(&self.shared.state);
            if let Some(reason) = &state.closed {
                return Err(reason.clone());
            }
            let n = state.next;
            state.next += 1;
            state.pending.insert(
                n,
                Pending {
                    original: message.get("id").cloned().unwrap_or(Value::Null),
                    progress_token: message.pointer("/params/_meta/progressToken").cloned(),
                    tx,
                },
            );
            n
        };
        let guard = PendingGuard {
            shared: self.shared.clone(),
            n,
        };
        let mut ours = message.clone();
        ours["id"] = json!(format!("{ID_PREFIX}{n}"));
        // Progress tokens are the callers' too: the channel gives its own, unique per request.
        if let Some(token) = ours.pointer_mut("/params/_meta/progressToken") {
            *token = json!(format!("{ID_PREFIX}p{n}"));
        }
        (self.shared.send)(ours).await?;
        let first = match tokio::time::timeout(self.shared.timeout, rx.recv()).await {
            Err(_) => return Err(UpstreamError::Timeout(self.shared.timeout)),
            Ok(None) => {
                return Err(self
                    .closed_error()
                    .unwrap_or_else(|| UpstreamError::Protocol("the request was dropped".into())));
            }
            Ok(Some(first)) => first?,
        };
        let session_id = Some(self.shared.session_id.clone());
        if is_response(&first) {
            return Ok(PostResponse::Json {
                message: first,
                session_id,
            });
        }
        // Notifications or server requests first: the answer is a stream, ending with the
        // response (the guard keeps the request registered until then).
        let state = (Some(first), rx, Some(guard));
        let bytes = futures_util::stream::unfold(state, |(first, mut rx, guard)| async move {
            guard.as_ref()?;
            let item = match first {
                Some(m) => Ok(m),
                None => rx.recv().await?,
            };
            match item {
                Ok(m) if is_response(&m) => Some((Ok(sse(&m)), (None, rx, None))),
                Ok(m) => Some((Ok(sse(&m)), (None, rx, guard))),
                Err(e) => Some((Err(e), (None, rx, None))),
            }
        });
        Ok(PostResponse::Stream {
            session_id,
            events: EventStream::new(bytes, self.shared.max_event_bytes)
                .with_idle_timeout(Some(self.shared.timeout)),
        })
    }

    /// The upstream's `InitializeResult`: sent on the first call (with `params`), then kept.
    async fn initialize_result(&self, params: Value) -> Result<Value, UpstreamError> {
        let mut init = self.shared.init.lock().await;
        if let Some(result) = &*init {
            return Ok(result.clone());
        }
        let id = RequestId::Number(0);
        let request = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params});
        let response = match self.request(&request).await? {
            PostResponse::Json { message, .. } => message,
            PostResponse::Stream { mut events, .. } => {
                collect_until_response(&mut events, &id).await?.1
            }
            PostResponse::Accepted => {
                return Err(UpstreamError::Protocol(
                    "initialize was answered with no result".into(),
                ));
            }
        };
        if let Some(error) = response.get("error") {
            return Err(UpstreamError::Rejected(
                serde_json::from_value(error.clone())
                    .map_err(|_| UpstreamError::Protocol("a malformed error".into()))?,
            ));
        }
        let result = response.get("result").cloned().unwrap_or(Value::Null);
        if result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(UpstreamError::Protocol(
                "the initialize result has no protocolVersion".into(),
            ));
        }
        (self.shared.send)(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        *init = Some(result.clone());
        Ok(result)
    }

    /// Initializes the connection (once; later calls get the same result), like
    /// [`StreamableHttpClient::initialize`](super::StreamableHttpClient::initialize).
    pub async fn initialize(&self, params: Value) -> Result<Initialized, UpstreamError> {
        self.touch();
        let result = self.initialize_result(params).await?;
        let protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Initialized {
            result,
            session_id: Some(self.shared.session_id.clone()),
            protocol_version,
        })
    }

    /// A stream of the server's messages tied to no request. No resumption: the connection
    /// keeps no history.
    pub async fn open_stream(
        &self,
        session: Option<&str>,
    ) -> Result<Option<EventStream>, UpstreamError> {
        if session.is_some_and(|s| s != self.shared.session_id) {
            return Err(UpstreamError::SessionExpired);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        {
            let mut state = lock(&self.shared.state);
            if let Some(reason) = &state.closed {
                return Err(reason.clone());
            }
            state.listeners.retain(|l| !l.is_closed());
            state.listeners.push(tx);
        }
        let bytes = futures_util::stream::unfold(rx, |mut rx| async move {
            let message = rx.recv().await?;
            Some((Ok(sse(&message)), rx))
        });
        Ok(Some(EventStream::new(bytes, self.shared.max_event_bytes)))
    }
}

/// Queues `message` for the request `n`; a full queue drops a notification, or fails the
/// request when it is the response.
fn deliver(state: &mut State, n: u64, message: Value) {
    let Some(pending) = state.pending.get(&n) else {
        return;
    };
    if pending.tx.try_send(Ok(message)).is_err() {
        tracing::debug!("a request's queue is full: a message for it was dropped");
    }
}

/// Queues `message` on every GET stream; false when there is none.
fn broadcast(state: &mut State, message: &Value) -> bool {
    state.listeners.retain(|l| !l.is_closed());
    for listener in &state.listeners {
        let _ = listener.try_send(message.clone());
    }
    !state.listeners.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A channel whose "upstream" is a task answering what it is sent, by a script.
    fn scripted(
        answer: impl Fn(&ChannelClient, Value) + Send + Sync + 'static,
    ) -> (ChannelClient, mpsc::UnboundedReceiver<Value>) {
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let (to_upstream, mut upstream_rx) = mpsc::unbounded_channel::<Value>();
        let send: SendFn = Arc::new(move |m: Value| {
            let to_upstream = to_upstream.clone();
            Box::pin(async move {
                to_upstream
                    .send(m)
                    .map_err(|_| UpstreamError::Connect("gone".into()))
            })
        });
        let client = ChannelClient::new(
            send,
            Box::new(|| Box::pin(async {})),
            Duration::from_secs(5),
            64 * 1024,
        );
        let upstream = client.clone();
        tokio::spawn(async move {
            while let Some(m) = upstream_rx.recv().await {
                let _ = sent_tx.send(m.clone());
                answer(&upstream, m);
            }
        });
        (client, sent_rx)
    }

    fn echo(client: &ChannelClient, m: Value) {
        if let (Some(id), Some(method)) = (m.get("id"), m.get("method").and_then(Value::as_str)) {
            let result = match method {
                "initialize" => json!({"protocolVersion": "2024-11-05", "capabilities": {}}),
                _ => json!({"method": method}),
            };
            client.receive(json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
    }

    #[tokio::test]
    async fn ids_are_the_channels_own_and_answers_carry_the_callers() {
        let (client, mut sent) = scripted(echo);
        let a = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                None,
                None,
            )
            .await
            .unwrap();
        let b = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/list"}),
                None,
                None,
            )
            .await
            .unwrap();
        for (answer, method) in [(a, "tools/list"), (b, "prompts/list")] {
            let PostResponse::Json {
                message,
                session_id,
            } = answer
            else {
                panic!("a JSON answer")
            };
            assert_eq!(message["id"], 1);
            assert_eq!(message["result"]["method"], method);
            assert_eq!(session_id.as_deref(), Some(client.session_id()));
        }
        let first = sent.recv().await.unwrap();
        let second = sent.recv().await.unwrap();
        assert_eq!(first["id"], "portcullis-0");
        assert_eq!(second["id"], "portcullis-1");
    }

    #[tokio::test]
    async fn initialize_is_sent_once_and_another_session_is_expired() {
        let (client, mut sent) = scripted(echo);
        let one = client
            .initialize(json!({"clientInfo": {"name": "a"}}))
            .await
            .unwrap();
        let two = client
            .initialize(json!({"clientInfo": {"name": "b"}}))
            .await
            .unwrap();
        assert_eq!(one.result, two.result);
        assert_eq!(one.protocol_version, "2024-11-05");
        assert_eq!(sent.recv().await.unwrap()["method"], "initialize");
        assert_eq!(
            sent.recv().await.unwrap()["method"],
            "notifications/initialized"
        );
        let expired = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
                Some("channel-old"),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(expired, UpstreamError::SessionExpired);
    }

    #[tokio::test]
    async fn progress_and_server_requests_stream_before_the_response() {
        let (client, _sent) = scripted(|client, m| {
            let Some(id) = m.get("id").cloned() else {
                return;
            };
            if m.get("method").is_none() {
                return;
            }
            let token = m.pointer("/params/_meta/progressToken").cloned();
            client.receive(json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                  "params": {"progressToken": token, "progress": 1}}));
            client.receive(
                json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create",
                                  "params": {}}),
            );
            client.receive(json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}));
        });
        let answer = client
            .post(
                &json!({"jsonrpc": "2.0", "id": "c1", "method": "tools/call",
                        "params": {"name": "x", "_meta": {"progressToken": "p"}}}),
                None,
                None,
            )
            .await
            .unwrap();
        let PostResponse::Stream { events, .. } = answer else {
            panic!("a stream")
        };
        let got: Vec<Value> = events
            .map(|e| serde_json::from_str(&e.unwrap().data).unwrap())
            .collect()
            .await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0]["params"]["progressToken"], "p");
        assert_eq!(got[1]["method"], "elicitation/create");
        assert_eq!(got[2]["id"], "c1");
    }

    #[tokio::test]
    async fn an_ended_connection_fails_the_request_in_flight_and_the_next() {
        let (client, _sent) = scripted(|client, m| {
            if m.get("id").is_some() {
                client.ended(UpstreamError::Connect(
                    "the command exited (exit status: 1)".into(),
                ));
            }
        });
        let error = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
                None,
                None,
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("exit status: 1"), "{error}");
        assert!(client.is_closed());
        let again = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call"}),
                None,
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(again, error);
    }

    #[tokio::test]
    async fn unrelated_messages_go_to_the_get_streams_and_pings_are_answered() {
        let (client, mut sent) = scripted(|_, _| {});
        let mut stream = client.open_stream(None).await.unwrap().unwrap();
        client.receive(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
        let event = stream.next().await.unwrap().unwrap();
        assert!(event.data.contains("list_changed"));
        client.receive(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}));
        assert_eq!(
            sent.recv().await.unwrap(),
            json!({"jsonrpc": "2.0", "id": 9, "result": {}})
        );
    }
}

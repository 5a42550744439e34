//! The Streamable HTTP transport, client side (handshake era, 2025-03-26 … 2025-11-25).

use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::HttpResponse;
use super::channel::{ChannelClient, SendFn};
use super::{EventStream, Initialized, UpstreamConfig, UpstreamError, collect_until_response};
use crate::jsonrpc::{Message, RequestId};

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
/// Headers the transport sets itself; configured headers may not name them.
const RESERVED: [&str; 10] = [
    "accept",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    SESSION_ID,
    PROTOCOL_VERSION,
    LAST_EVENT_ID,
    "upgrade",
];
/// How much of an error body is read (to look for "session") and how much is kept.
const ERROR_BODY_READ: usize = 4096;
const ERROR_BODY_KEPT: usize = 512;
/// Configured header values shorter than this are not scrubbed from upstream text (scrubbing
/// "1" would garble everything and protect nothing).
const MIN_SCRUBBED_LEN: usize = 4;

/// A Streamable HTTP client for one upstream. Cheap to clone; all clones share the
/// [`HttpClient`](super::HttpClient)s (and so the connection pools) given to [`new`](Self::new).
#[derive(Clone)]
pub struct StreamableHttpClient {
    http: super::HttpClients,
    inner: Arc<Inner>,
}

struct Inner {
    url: url::Url,
    /// The URL as hyper takes it (`None`: it cannot be one; see `config_error`).
    uri: Option<Uri>,
    /// The configured headers and the user agent.
    headers: HeaderMap,
    /// Configured header values, scrubbed from any upstream text put into an error.
    secrets: Vec<String>,
    /// Why the configuration cannot be used; every call fails with it.
    config_error: Option<String>,
    timeout: Duration,
    max_event_bytes: usize,
    max_body_bytes: usize,
}

/// How the upstream answered a POST.
#[derive(Debug)]
pub enum PostResponse {
    /// `202 Accepted`: the answer to a notification or a response. (A 2xx with an empty body
    /// is taken the same way.)
    Accepted,
    /// One JSON body: the response (or, for a batch, the array of responses). Checked to be
    /// JSON-RPC, otherwise passed through as received.
    Json {
        message: Value,
        session_id: Option<String>,
    },
    /// An SSE stream carrying messages tied to the request, then the response; see
    /// [`collect_until_response`].
    Stream {
        session_id: Option<String>,
        events: EventStream,
    },
}

impl StreamableHttpClient {
    /// A client for the upstream `config` describes, sending through `http` (build one
    /// [`HttpClient`](super::HttpClient) and share it). A configuration that cannot be
    /// used (an invalid or reserved header) makes every call fail with
    /// [`UpstreamError::Config`].
    pub fn new(http: impl Into<super::HttpClients>, config: UpstreamConfig) -> Self {
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        let mut config_error = None;
        for (i, (name, value)) in config.headers.iter().enumerate() {
            let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
                config_error.get_or_insert(format!("header #{} has an invalid name", i + 1));
                continue;
            };
            if RESERVED.contains(&header_name.as_str()) {
                config_error.get_or_insert(format!(
                    "header {header_name} is set by the transport and cannot be configured"
                ));
                continue;
            }
            let Ok(mut header_value) = HeaderValue::from_str(value) else {
                config_error.get_or_insert(format!("header {header_name} has an invalid value"));
                continue;
            };
            header_value.set_sensitive(true);
            headers.append(header_name, header_value);
            if value.len() >= MIN_SCRUBBED_LEN {
                secrets.push(value.clone());
            }
        }
        // Longest first, so a value containing another is scrubbed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        }
        let uri = config.url.as_str().parse::<Uri>().ok();
        if uri.is_none() {
            config_error.get_or_insert("the URL cannot be used for HTTP".into());
        }
        StreamableHttpClient {
            http: http.into(),
            inner: Arc::new(Inner {
                url: config.url,
                uri,
                headers,
                secrets,
                config_error,
                timeout: config.timeout,
                max_event_bytes: config.max_event_bytes,
                max_body_bytes: config.max_body_bytes,
            }),
        }
    }

    /// The endpoint this client talks to.
    pub fn url(&self) -> &url::Url {
        &self.inner.url
    }

    /// POSTs one JSON-RPC message (or, for 2025-03-26, a batch) with `Accept: application/json,
    /// text/event-stream`, `Content-Type: application/json`, the configured headers, and
    /// `Mcp-Session-Id` / `MCP-Protocol-Version` when given.
    ///
    /// The timeout bounds the whole call for a JSON answer; for a stream it bounds the wait for
    /// the headers, then each silence between chunks.
    pub async fn post(
        &self,
        message: &Value,
        session: Option<&str>,
        protocol_version: Option<&str>,
    ) -> Result<PostResponse, UpstreamError> {
        let body = serde_json::to_vec(message)
            .map_err(|e| UpstreamError::Protocol(format!("cannot serialize the message: {e}")))?;
        self.post_bytes(body, session, protocol_version).await
    }

    /// [`post`](Self::post) for a body already serialized (passed through unchanged).
    pub async fn post_bytes(
        &self,
        body: impl Into<Bytes>,
        session: Option<&str>,
        protocol_version: Option<&str>,
    ) -> Result<PostResponse, UpstreamError> {
        self.post_body(body.into(), session, protocol_version, &[])
            .await
    }

    /// [`post`](Self::post) with more headers: the stateless revision's mirror headers
    /// (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`), computed from the message as sent.
    pub async fn post_with_headers(
        &self,
        message: &Value,
        protocol_version: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<PostResponse, UpstreamError> {
        let body = serde_json::to_vec(message)
            .map_err(|e| UpstreamError::Protocol(format!("cannot serialize the message: {e}")))?;
        self.post_body(body.into(), None, protocol_version, extra)
            .await
    }

    async fn post_body(
        &self,
        body: Bytes,
        session: Option<&str>,
        protocol_version: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<PostResponse, UpstreamError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut headers = self.headers(session, protocol_version)?;
        headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_BOTH));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in extra {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UpstreamError::Protocol(format!("invalid header name {name}")))?;
            headers.append(name, header_value(value, "a mirror header")?);
        }
        let response = self
            .send(Method::POST, self.uri()?, headers, body, deadline)
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self
                .status_error(response, session.is_some(), deadline)
                .await);
        }
        if status == StatusCode::ACCEPTED {
            return Ok(PostResponse::Accepted);
        }
        let session_id = session_id_of(response.headers())?;
        match content_kind(response.headers()) {
            ContentKind::EventStream => Ok(PostResponse::Stream {
                session_id,
                events: self.event_stream(response, Some(self.inner.timeout)),
            }),
            ContentKind::Other(content_type) => Err(UpstreamError::NotMcp(format!(
                "unexpected content type {}",
                self.scrub(&content_type)
            ))),
            kind @ (ContentKind::Json | ContentKind::Missing) => {
                let body = self.read_body(response, deadline).await?;
                // Some servers answer a notification with an empty 200 instead of 202.
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(PostResponse::Accepted);
                }
                if kind == ContentKind::Missing {
                    return Err(UpstreamError::NotMcp(
                        "a 2xx answer with a body but no content type".into(),
                    ));
                }
                Ok(PostResponse::Json {
                    message: parse_json_rpc(&body)?,
                    session_id,
                })
            }
        }
    }

    /// Sends `initialize` with `params` (`protocolVersion`, `capabilities`, `clientInfo`), then
    /// `notifications/initialized` on the new session.
    ///
    /// Fails with [`UpstreamError::Rejected`] when the upstream answers with a JSON-RPC error,
    /// and [`UpstreamError::Protocol`] when the result lacks `protocolVersion`. The version is
    /// returned as the upstream gave it; whether the gateway can speak it is the caller's call.
    pub async fn initialize(&self, params: Value) -> Result<Initialized, UpstreamError> {
        let id = RequestId::Number(0);
        let request = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params});
        let (response, session_id) = match self.post(&request, None, None).await? {
            PostResponse::Accepted => {
                return Err(UpstreamError::Protocol(
                    "initialize was answered with no result".into(),
                ));
            }
            PostResponse::Json {
                message,
                session_id,
            } => (message, session_id),
            PostResponse::Stream {
                session_id,
                mut events,
            } => (
                collect_until_response(&mut events, &id).await?.1,
                session_id,
            ),
        };
        let response = match Message::from_value(response) {
            Ok(Message::Response(r)) if r.id.as_ref().is_none_or(|r| r == &id) => r,
            _ => {
                return Err(UpstreamError::Protocol(
                    "initialize was not answered with its response".into(),
                ));
            }
        };
        let result = response.outcome.map_err(UpstreamError::Rejected)?;
        let protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                UpstreamError::Protocol("the initialize result has no protocolVersion".into())
            })?
            .to_owned();
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        // Any 2xx will do (202 is expected; a stream would carry nothing for a notification).
        self.post(&initialized, session_id.as_deref(), Some(&protocol_version))
            .await?;
        Ok(Initialized {
            result,
            session_id,
            protocol_version,
        })
    }

    /// GETs the server-initiated SSE stream, resuming after `last_event_id` when given.
    /// `Ok(None)` when the upstream offers none (405). The stream has no idle timeout; set one
    /// with [`EventStream::with_idle_timeout`] if the upstream sends keep-alives.
    pub async fn open_stream(
        &self,
        session: Option<&str>,
        protocol_version: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Option<EventStream>, UpstreamError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut headers = self.headers(session, protocol_version)?;
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(id) = last_event_id {
            headers.insert(LAST_EVENT_ID, header_value(id, "the last event id")?);
        }
        let response = self
            .send(Method::GET, self.uri()?, headers, Bytes::new(), deadline)
            .await?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self
                .status_error(response, session.is_some(), deadline)
                .await);
        }
        match content_kind(response.headers()) {
            ContentKind::EventStream => Ok(Some(self.event_stream(response, None))),
            ContentKind::Json | ContentKind::Missing => Err(UpstreamError::NotMcp(
                "the GET stream is not text/event-stream".into(),
            )),
            ContentKind::Other(content_type) => Err(UpstreamError::NotMcp(format!(
                "unexpected content type {}",
                self.scrub(&content_type)
            ))),
        }
    }

    /// Ends `session` with DELETE. An upstream that does not allow it (405) or no longer knows
    /// the session (404, or 400 about the session) is fine.
    pub async fn delete_session(
        &self,
        session: &str,
        protocol_version: Option<&str>,
    ) -> Result<(), UpstreamError> {
        let deadline = Instant::now() + self.inner.timeout;
        let headers = self.headers(Some(session), protocol_version)?;
        let response = self
            .send(Method::DELETE, self.uri()?, headers, Bytes::new(), deadline)
            .await?;
        let status = response.status();
        if status.is_success()
            || status == StatusCode::NOT_FOUND
            || status == StatusCode::METHOD_NOT_ALLOWED
        {
            return Ok(());
        }
        match self.status_error(response, true, deadline).await {
            UpstreamError::SessionExpired => Ok(()),
            other => Err(other),
        }
    }

    /// Connects to a legacy HTTP+SSE endpoint (2024-11-05): GETs the SSE stream, waits for its
    /// `endpoint` event (a URI, possibly relative to the stream's URL, which must stay on the
    /// same origin), and returns a [`ChannelClient`] that POSTs each message there and reads
    /// the answers as `message` events of the stream. The connection is the session; when the
    /// stream ends, requests in flight fail and the caller connects anew.
    pub async fn connect_legacy_sse(&self) -> Result<ChannelClient, UpstreamError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut headers = self.headers(None, None)?;
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let response = self
            .send(Method::GET, self.uri()?, headers, Bytes::new(), deadline)
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, false, deadline).await);
        }
        match content_kind(response.headers()) {
            ContentKind::EventStream => {}
            ContentKind::Other(content_type) => {
                return Err(UpstreamError::NotMcp(format!(
                    "the SSE endpoint answered {}",
                    self.scrub(&content_type)
                )));
            }
            _ => {
                return Err(UpstreamError::NotMcp(
                    "the SSE endpoint did not answer with text/event-stream".into(),
                ));
            }
        }
        let mut events = self.event_stream(response, None);
        let endpoint = tokio::time::timeout_at(deadline, async {
            while let Some(event) = futures_util::StreamExt::next(&mut events).await {
                let event = event?;
                if event.event.as_deref() == Some("endpoint") {
                    return Ok(event.data);
                }
            }
            Err(UpstreamError::Protocol(
                "the SSE stream ended before its endpoint event".into(),
            ))
        })
        .await
        .map_err(|_| UpstreamError::Timeout(self.inner.timeout))??;
        let endpoint = self
            .inner
            .url
            .join(endpoint.trim())
            .map_err(|_| UpstreamError::Protocol("the endpoint event is not a URI".into()))?;
        if endpoint.origin() != self.inner.url.origin() {
            return Err(UpstreamError::Protocol(
                "the endpoint event points to another origin".into(),
            ));
        }
        let poster = self.clone();
        let send: SendFn = Arc::new(move |message: Value| {
            let poster = poster.clone();
            let endpoint = endpoint.clone();
            Box::pin(async move { poster.post_to_endpoint(endpoint, &message).await })
        });
        // Closing stops the reader, which drops the stream (and its connection).
        let reader_task: Arc<std::sync::Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
        let to_abort = reader_task.clone();
        let client = ChannelClient::new(
            send,
            Box::new(move || {
                Box::pin(async move {
                    if let Some(task) = to_abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        task.abort();
                    }
                })
            }),
            self.inner.timeout,
            self.inner.max_event_bytes,
        );
        let reader = client.clone();
        let scrubber = self.clone();
        let task = tokio::spawn(async move {
            let why = loop {
                match futures_util::StreamExt::next(&mut events).await {
                    None => break UpstreamError::Connect("the SSE stream ended".into()),
                    Some(Err(e)) => break e,
                    Some(Ok(event)) => {
                        if event.event.as_deref().is_some_and(|e| e != "message")
                            || event.data.trim().is_empty()
                        {
                            continue;
                        }
                        match serde_json::from_str::<Value>(&event.data) {
                            Ok(message) if message.is_object() => reader.receive(message),
                            _ => {
                                break UpstreamError::NotMcp(format!(
                                    "the SSE stream carried something that is not JSON-RPC: {}",
                                    scrubber
                                        .scrub(&event.data.chars().take(200).collect::<String>())
                                ));
                            }
                        }
                    }
                }
            };
            reader.ended(why);
        });
        *reader_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Ok(client)
    }

    /// POSTs one message to a legacy endpoint; the answer comes on the SSE stream.
    async fn post_to_endpoint(
        &self,
        endpoint: url::Url,
        message: &Value,
    ) -> Result<(), UpstreamError> {
        let deadline = Instant::now() + self.inner.timeout;
        let body = serde_json::to_vec(message)
            .map_err(|e| UpstreamError::Protocol(format!("cannot serialize the message: {e}")))?;
        let mut headers = self.headers(None, None)?;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let uri = endpoint
            .as_str()
            .parse::<Uri>()
            .map_err(|_| UpstreamError::Protocol("the endpoint event is not a URI".into()))?;
        let response = self
            .send(Method::POST, uri, headers, body.into(), deadline)
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, false, deadline).await);
        }
        // Read the (empty or ignored) body, so the connection can be reused.
        let _ = self.read_body(response, deadline).await;
        Ok(())
    }

    /// The configured headers with the session's, or the configuration's error.
    fn headers(
        &self,
        session: Option<&str>,
        protocol_version: Option<&str>,
    ) -> Result<HeaderMap, UpstreamError> {
        if let Some(e) = &self.inner.config_error {
            return Err(UpstreamError::Config(e.clone()));
        }
        let mut headers = self.inner.headers.clone();
        if let Some(session) = session {
            headers.insert(SESSION_ID, header_value(session, "the session id")?);
        }
        if let Some(version) = protocol_version {
            headers.insert(
                PROTOCOL_VERSION,
                header_value(version, "the protocol version")?,
            );
        }
        Ok(headers)
    }

    /// The endpoint's URI (when it has none, `new` recorded why as the configuration's error).
    fn uri(&self) -> Result<Uri, UpstreamError> {
        self.inner.uri.clone().ok_or_else(|| {
            UpstreamError::Config(self.inner.config_error.clone().unwrap_or_default())
        })
    }

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<HttpResponse, UpstreamError> {
        let mut request = ::http::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout_at(deadline, self.http.client().send(request)).await {
            Err(_) => Err(UpstreamError::Timeout(self.inner.timeout)),
            Ok(Err(e)) => Err(self.map_error(&e)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Reads a JSON body, refusing more than `max_body_bytes`.
    async fn read_body(
        &self,
        response: HttpResponse,
        deadline: Instant,
    ) -> Result<Bytes, UpstreamError> {
        let limit = self.inner.max_body_bytes;
        if response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n > limit as u64)
        {
            return Err(UpstreamError::TooLarge(limit));
        }
        let mut incoming = response.into_body();
        let mut body = BytesMut::new();
        loop {
            match tokio::time::timeout_at(deadline, incoming.frame()).await {
                Err(_) => return Err(UpstreamError::Timeout(self.inner.timeout)),
                Ok(None) => return Ok(body.freeze()),
                Ok(Some(Err(e))) => return Err(self.map_error(&e)),
                Ok(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    if body.len() + chunk.len() > limit {
                        return Err(UpstreamError::TooLarge(limit));
                    }
                    if body.is_empty() && incoming.is_end_stream() {
                        // The whole body in one piece, as a small answer usually is.
                        return Ok(chunk);
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// The error for a non-2xx answer. `sent_session`: the request carried a session id.
    async fn status_error(
        &self,
        response: HttpResponse,
        sent_session: bool,
        deadline: Instant,
    ) -> UpstreamError {
        let status = response.status();
        let mut incoming = response.into_body();
        // The start of the body is enough to classify and report; a body that cannot be read
        // in time does not change the answer.
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_READ {
            match tokio::time::timeout_at(deadline, incoming.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(chunk) = frame.into_data() {
                        body.extend_from_slice(&chunk);
                    }
                }
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_READ);
        let text = String::from_utf8_lossy(&body);
        if status == StatusCode::NOT_FOUND && sent_session
            || status == StatusCode::BAD_REQUEST && text.to_lowercase().contains("session")
        {
            return UpstreamError::SessionExpired;
        }
        let kept = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_KEPT)]);
        UpstreamError::Status {
            status: status.as_u16(),
            body: self.scrub(kept.trim_end_matches('\u{FFFD}').trim()),
        }
    }

    fn event_stream(&self, response: HttpResponse, idle: Option<Duration>) -> EventStream {
        let client = self.clone();
        let bytes = futures_util::stream::unfold(Some(response.into_body()), move |body| {
            let client = client.clone();
            async move {
                let mut body = body?;
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(chunk) = frame.into_data() {
                                return Some((Ok(chunk), Some(body)));
                            }
                        }
                        None => return None,
                        Some(Err(e)) => return Some((Err(client.map_error(&e)), None)),
                    }
                }
            }
        });
        EventStream::new(bytes, self.inner.max_event_bytes).with_idle_timeout(idle)
    }

    fn map_error(&self, error: &(dyn std::error::Error + 'static)) -> UpstreamError {
        UpstreamError::Connect(self.scrub(&plain_cause(error)))
    }

    /// `text` with every configured header value replaced.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.inner.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "[redacted]");
            }
        }
        text
    }
}

impl std::fmt::Debug for StreamableHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("StreamableHttpClient")
            .field("url", &super::display_url(&self.inner.url))
            .field("headers", &names)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq)]
enum ContentKind {
    Json,
    EventStream,
    Missing,
    Other(String),
}

fn content_kind(headers: &HeaderMap) -> ContentKind {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return ContentKind::Missing;
    };
    let raw = String::from_utf8_lossy(value.as_bytes());
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => ContentKind::Json,
        "text/event-stream" => ContentKind::EventStream,
        _ => ContentKind::Other(raw.chars().take(100).collect()),
    }
}

/// The `Mcp-Session-Id` of an answer, which must be visible ASCII.
fn session_id_of(headers: &HeaderMap) -> Result<Option<String>, UpstreamError> {
    let Some(value) = headers.get(SESSION_ID) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return Err(UpstreamError::Protocol(
            "the upstream set a session id that is not visible ASCII".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn header_value(value: &str, what: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(value)
        .map_err(|_| UpstreamError::Protocol(format!("{what} is not a valid header value")))
}

/// A JSON body checked to be JSON-RPC (one message or a batch).
fn parse_json_rpc(body: &[u8]) -> Result<Value, UpstreamError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::NotMcp(format!("the body is not JSON ({e})")))?;
    let valid = match &value {
        Value::Array(items) => {
            !items.is_empty()
                && items
                    .iter()
                    .all(|item| Message::from_value(item.clone()).is_ok())
        }
        single => Message::from_value(single.clone()).is_ok(),
    };
    if !valid {
        return Err(UpstreamError::NotMcp(
            "the body is JSON but not a JSON-RPC message".into(),
        ));
    }
    Ok(value)
}

/// The innermost cause of a transport error in plain words, without the URL.
fn plain_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut innermost: &(dyn std::error::Error + 'static) = error;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let words = match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused",
                ErrorKind::ConnectionReset => "connection reset",
                ErrorKind::ConnectionAborted => "connection aborted",
                ErrorKind::TimedOut => "connection timed out",
                ErrorKind::AddrNotAvailable => "address not available",
                ErrorKind::HostUnreachable => "host unreachable",
                ErrorKind::NetworkUnreachable => "network unreachable",
                ErrorKind::UnexpectedEof => "connection closed early",
                _ => return io.to_string(),
            };
            return words.to_owned();
        }
        innermost = e;
        source = e.source();
    }
    if std::ptr::addr_eq(innermost, error) {
        // hyper's own words ("connection closed before message completed") carry no URL;
        // hyper-util's wrappers say only "client error (Connect)" and the like.
        if let Some(e) = error.downcast_ref::<hyper::Error>() {
            return e.to_string();
        }
        return "request failed".into();
    }
    innermost.to_string()
}

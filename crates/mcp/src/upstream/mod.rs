//! The gateway's upstream side: the gateway acting as an MCP client toward a real MCP server.
//!
//! [`StreamableHttpClient`] speaks the Streamable HTTP transport of the handshake era
//! (2025-03-26 … 2025-11-25). Protocol decisions (what counts as an expired session, limits,
//! timeouts) are recorded in the crate's README.md.

pub mod addresses;
mod channel;
mod clients;
mod discover;
mod http;
mod stdio;
mod stream;
mod transport;

use std::time::Duration;

use serde_json::{Value, json};

use crate::jsonrpc::{ErrorObject, code};
use crate::sse::DEFAULT_MAX_EVENT_BYTES;

pub use channel::{ChannelClient, CloseFn, SendFn};
pub use clients::HttpClients;
pub use discover::{Discovery, MAX_TOOL_PAGES, discover, list_all_tools, post_stateless};
pub use http::{PostResponse, StreamableHttpClient};
pub use stdio::{
    INHERITED_ENV, STOP_GRACE, StdioClient, StdioConfig, discover_stdio, spawn_channel,
};
pub use stream::{EventStream, collect_until_response};
pub use transport::{HttpClient, HttpResponse};

/// A connection to an upstream, whatever its transport: Streamable HTTP (one HTTP exchange
/// per message) or a shared channel (stdio, legacy HTTP+SSE). Cheap to clone.
#[derive(Debug, Clone)]
pub enum Client {
    Http(StreamableHttpClient),
    Channel(ChannelClient),
}

impl Client {
    /// Sends one message; see [`StreamableHttpClient::post`] and [`ChannelClient::post`].
    pub async fn post(
        &self,
        message: &Value,
        session: Option<&str>,
        protocol_version: Option<&str>,
    ) -> Result<PostResponse, UpstreamError> {
        match self {
            Client::Http(c) => c.post(message, session, protocol_version).await,
            Client::Channel(c) => c.post(message, session, protocol_version).await,
        }
    }

    pub async fn initialize(&self, params: Value) -> Result<Initialized, UpstreamError> {
        match self {
            Client::Http(c) => c.initialize(params).await,
            Client::Channel(c) => c.initialize(params).await,
        }
    }

    /// The server-initiated stream (`Last-Event-ID` resumption over Streamable HTTP only).
    pub async fn open_stream(
        &self,
        session: Option<&str>,
        protocol_version: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Option<EventStream>, UpstreamError> {
        match self {
            Client::Http(c) => {
                c.open_stream(session, protocol_version, last_event_id)
                    .await
            }
            Client::Channel(c) => c.open_stream(session).await,
        }
    }

    /// Ends an upstream session. A channel is shared and outlives its callers' sessions: it is
    /// closed by its owner (idle timeout), not here.
    pub async fn delete_session(
        &self,
        session: &str,
        protocol_version: Option<&str>,
    ) -> Result<(), UpstreamError> {
        match self {
            Client::Http(c) => c.delete_session(session, protocol_version).await,
            Client::Channel(_) => Ok(()),
        }
    }
}

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default bound on one JSON response body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where an upstream is and how to talk to it.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The MCP endpoint (one URL for POST, GET and DELETE). Put credentials in `headers`, not
    /// in the URL.
    pub url: url::Url,
    /// Headers sent on every request, typically credentials (`Authorization`, an API key).
    /// Their values are never logged, printed by `Debug`, or copied into errors. Headers the
    /// transport sets itself (`Accept`, `Content-Type`, `Mcp-Session-Id`,
    /// `MCP-Protocol-Version`, `Last-Event-ID`, hop-by-hop headers) are refused.
    pub headers: Vec<(String, String)>,
    /// The bound on one call: from sending the request to the last byte of a JSON answer, or
    /// to the headers of a stream; then the bound on the silence between two chunks of a POST's
    /// stream. Default 60 s.
    pub timeout: Duration,
    /// The bound on one SSE event. Default 4 MiB.
    pub max_event_bytes: usize,
    /// The bound on one JSON body. Default 4 MiB.
    pub max_body_bytes: usize,
}

impl UpstreamConfig {
    /// A configuration with no extra headers and the default limits.
    pub fn new(url: url::Url) -> Self {
        UpstreamConfig {
            url,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Adds a header sent on every request (typically a credential).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UpstreamConfig")
            .field("url", &display_url(&self.url))
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The URL without user info or query, which may hold secrets.
pub fn display_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// What `initialize` established.
#[derive(Debug, Clone, PartialEq)]
pub struct Initialized {
    /// The `InitializeResult` as the upstream sent it.
    pub result: Value,
    /// The `Mcp-Session-Id` the upstream set, if any: send it on every later request.
    pub session_id: Option<String>,
    /// The negotiated revision (`result.protocolVersion`): send it as `MCP-Protocol-Version`.
    pub protocol_version: String,
}

/// Why an upstream call failed. Messages are plain words and never contain credential header
/// values, so they may be logged and shown to clients.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached, or the connection broke.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// No answer (or, on a stream, no bytes) within the timeout.
    #[error("upstream timed out after {}", human_duration(*.0))]
    Timeout(Duration),
    /// The upstream does not know the session (404 to a request that carried one, or 400 whose
    /// body mentions the session): initialize anew.
    #[error("upstream session expired")]
    SessionExpired,
    /// Any other status that is not 2xx. `body` is the start of the answer (at most 512 bytes).
    #[error("upstream answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    /// The answer is not MCP: an unexpected content type, or JSON that is not JSON-RPC.
    #[error("upstream is not an MCP server: {0}")]
    NotMcp(String),
    /// A body or an event exceeds the configured limit (the limit, in bytes).
    #[error("upstream message exceeds the {0}-byte limit")]
    TooLarge(usize),
    /// The upstream broke the protocol (a stream ended before the response, a bad session
    /// id, an initialize result without a version, …).
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The upstream answered `initialize` with a JSON-RPC error.
    #[error("upstream refused to initialize: {} ({})", .0.message, .0.code)]
    Rejected(ErrorObject),
    /// The [`UpstreamConfig`] cannot be used (a bad header name, a reserved header, …).
    #[error("invalid upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// The JSON-RPC error a client receives for this: -32000 when the upstream could not give
    /// an answer (unreachable, timed out, expired, refused, an HTTP error), -32603 when what it
    /// gave was unusable or the gateway is misconfigured. `data.reason` names the case.
    pub fn to_error_object(&self) -> ErrorObject {
        let (code, data) = match self {
            UpstreamError::Connect(_) => (code::SERVER_ERROR, json!({"reason": "connect"})),
            UpstreamError::Timeout(d) => (
                code::SERVER_ERROR,
                json!({"reason": "timeout", "timeoutMs": u64::try_from(d.as_millis()).unwrap_or(u64::MAX)}),
            ),
            UpstreamError::SessionExpired => {
                (code::SERVER_ERROR, json!({"reason": "session_expired"}))
            }
            UpstreamError::Status { status, .. } => (
                code::SERVER_ERROR,
                json!({"reason": "status", "status": status}),
            ),
            UpstreamError::Rejected(e) => (
                code::SERVER_ERROR,
                json!({"reason": "initialize_rejected", "upstreamError": e}),
            ),
            UpstreamError::NotMcp(_) => (code::INTERNAL_ERROR, json!({"reason": "not_mcp"})),
            UpstreamError::TooLarge(limit) => (
                code::INTERNAL_ERROR,
                json!({"reason": "too_large", "limit": limit}),
            ),
            UpstreamError::Protocol(_) => (code::INTERNAL_ERROR, json!({"reason": "protocol"})),
            UpstreamError::Config(_) => (code::INTERNAL_ERROR, json!({"reason": "config"})),
        };
        ErrorObject::new(code, capitalize(&self.to_string())).with_data(data)
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "60 s", "200 ms".
fn human_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A `reqwest` client builder set up for upstream calls: rustls with the ring provider
/// (installed as the process default if none is), `TCP_NODELAY`, no redirects (a redirect could
/// lead an upstream call to an address the gateway would refuse), a connect timeout.
///
/// Build one client from it and share it between all [`StreamableHttpClient`]s so connections
/// are reused. A client built without this function must be built after
/// [`install_crypto_provider`], or reqwest panics on the first TLS connection setup.
pub fn client_builder() -> reqwest::ClientBuilder {
    guarded_client_builder(true)
}

/// [`client_builder`], refusing private upstream addresses (after DNS resolution) unless
/// `allow_private`.
pub fn guarded_client_builder(allow_private: bool) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if allow_private {
        builder
    } else {
        builder.dns_resolver(addresses::PublicOnly)
    }
}

/// Makes ring the process-wide rustls crypto provider unless one is installed already.
pub fn install_crypto_provider() {
    // Err means another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_plainly() {
        assert_eq!(
            UpstreamError::Timeout(Duration::from_secs(60)).to_string(),
            "upstream timed out after 60 s"
        );
        assert_eq!(
            UpstreamError::Timeout(Duration::from_millis(200)).to_string(),
            "upstream timed out after 200 ms"
        );
    }

    #[test]
    fn error_objects_name_the_case() {
        let e = UpstreamError::Connect("connection refused".into()).to_error_object();
        assert_eq!(e.code, code::SERVER_ERROR);
        assert_eq!(e.message, "Upstream unreachable: connection refused");
        assert_eq!(e.data, Some(json!({"reason": "connect"})));
        let e = UpstreamError::TooLarge(1024).to_error_object();
        assert_eq!(e.code, code::INTERNAL_ERROR);
        assert_eq!(e.message, "Upstream message exceeds the 1024-byte limit");
        let e = UpstreamError::Status {
            status: 502,
            body: String::new(),
        };
        assert_eq!(e.to_string(), "upstream answered HTTP 502");
    }

    #[test]
    fn debug_hides_header_values_and_url_secrets() {
        let config = UpstreamConfig::new(
            "https://user:pw@mcp.example.com/mcp?key=abc"
                .parse()
                .unwrap(),
        )
        .header("Authorization", "Bearer sekrit-token");
        let shown = format!("{config:?}");
        assert!(shown.contains("Authorization"), "{shown}");
        for secret in ["sekrit", "pw", "abc", "user"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn the_client_builder_builds() {
        client_builder().build().unwrap();
    }
}

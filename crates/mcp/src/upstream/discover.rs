//! Reading what an upstream offers: `initialize`, then every page of `tools/list`.
//!
//! The console registers a server with [`discover`]; the gateway reads the live catalog with
//! [`list_all_tools`] over its own session (which re-initializes on expiry).

use std::future::Future;

use serde_json::{Map, Value, json};

use super::{
    Client, Initialized, PostResponse, StreamableHttpClient, UpstreamError, collect_until_response,
};
use crate::jsonrpc::RequestId;
use crate::stateless;
use crate::version::ProtocolVersion;

/// Upstream `tools/list` pages read at most: a guard against a cursor that never ends.
pub const MAX_TOOL_PAGES: usize = 100;

/// What [`discover`] found.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub initialized: Initialized,
    /// Every tool definition, in the upstream's order.
    pub tools: Vec<Value>,
}

impl Discovery {
    /// `serverInfo` of the initialize result, if the upstream sent one.
    pub fn server_info(&self) -> Option<&Value> {
        self.initialized.result.get("serverInfo")
    }
}

/// Initializes a session with the upstream, reads every page of `tools/list`, and ends the
/// session (a channel is closed). An upstream that does not declare the `tools` capability has
/// no tools.
///
/// Over Streamable HTTP, `server/discover` is tried first: a server that lists only the
/// stateless revision (2026-07-28) is read in that era (its `Discovery` says
/// `protocol_version: "2026-07-28"`, with an `InitializeResult` built from the
/// `DiscoverResult`); a server that also lists handshake versions, or answers discover with
/// an error (a handshake-era server), is read through `initialize`, which the gateway then
/// uses for every client (passing the handshake era through unchanged).
pub async fn discover(client: &Client, client_name: &str) -> Result<Discovery, UpstreamError> {
    if let Client::Http(http) = client
        && let Some(found) = discover_stateless_only(http, client_name).await?
    {
        return Ok(found);
    }
    let found = discover_in_session(client, client_name).await;
    if let Client::Channel(channel) = client {
        channel.close().await;
    }
    found
}

/// The request `message` stamped for a stateless server: the gateway's envelope, the mirror
/// headers.
pub async fn post_stateless(
    http: &StreamableHttpClient,
    mut message: Value,
    capabilities: &Value,
    client_info: &Value,
    param_headers: &[(Vec<String>, String)],
) -> Result<PostResponse, UpstreamError> {
    if message.get("id").is_some() {
        stateless::stamp_envelope(&mut message, capabilities, client_info);
    }
    let headers = stateless::mirror_headers(&message, param_headers);
    http.post_with_headers(&message, Some(stateless::VERSION), &headers)
        .await
}

/// `Some` when the server speaks only the stateless revision (see [`discover`]); `None` when
/// it should be read through `initialize`. A connection failure is an error either way.
async fn discover_stateless_only(
    http: &StreamableHttpClient,
    client_name: &str,
) -> Result<Option<Discovery>, UpstreamError> {
    let client_info = json!({"name": client_name, "version": env!("CARGO_PKG_VERSION")});
    let caps = json!({});
    let id = RequestId::String("portcullis-discover".into());
    let request = json!({"jsonrpc": "2.0", "id": &id, "method": "server/discover", "params": {}});
    let message = match post_stateless(http, request, &caps, &client_info, &[]).await {
        Ok(PostResponse::Json { message, .. }) => message,
        Ok(PostResponse::Stream { mut events, .. }) => {
            match collect_until_response(&mut events, &id).await {
                Ok((_, message)) => message,
                Err(_) => return Ok(None),
            }
        }
        Ok(PostResponse::Accepted) => return Ok(None),
        // Unreachable, timed out: the same failure would come from initialize.
        Err(
            e @ (UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Config(_)),
        ) => {
            return Err(e);
        }
        // A handshake-era server refuses discover (400, 404, an error): read it the old way.
        Err(_) => return Ok(None),
    };
    let Some(result) = message.get("result") else {
        return Ok(None);
    };
    let supported: Vec<&str> = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let speaks_handshake = supported
        .iter()
        .filter_map(|v| ProtocolVersion::parse(v))
        .any(|v| v.era() == crate::version::Era::Handshake);
    if !supported.contains(&stateless::VERSION) || speaks_handshake {
        return Ok(None);
    }
    let has_tools = result
        .get("capabilities")
        .is_some_and(|c| c.get("tools").is_some());
    let tools = if has_tools {
        list_all_tools(
            |request| {
                let caps = &caps;
                let client_info = &client_info;
                async move { post_stateless(http, request, caps, client_info, &[]).await }
            },
            "portcullis-discover",
        )
        .await?
        .0
    } else {
        Vec::new()
    };
    Ok(Some(Discovery {
        initialized: Initialized {
            result: stateless::initialize_result_from_discover(result, stateless::VERSION),
            session_id: None,
            protocol_version: stateless::VERSION.to_owned(),
        },
        tools,
    }))
}

async fn discover_in_session(
    client: &Client,
    client_name: &str,
) -> Result<Discovery, UpstreamError> {
    let initialized = client
        .initialize(json!({
            "protocolVersion": ProtocolVersion::LATEST_HANDSHAKE.as_str(),
            "capabilities": {},
            "clientInfo": {"name": client_name, "version": env!("CARGO_PKG_VERSION")},
        }))
        .await?;
    let session = initialized.session_id.as_deref();
    let version = Some(initialized.protocol_version.as_str());
    let has_tools = initialized
        .result
        .get("capabilities")
        .is_some_and(|c| c.get("tools").is_some());
    let tools = if has_tools {
        list_all_tools(
            |request| async move { client.post(&request, session, version).await },
            "portcullis-discover",
        )
        .await
        .map(|(tools, _)| tools)
    } else {
        Ok(Vec::new())
    };
    // Best effort: a server that keeps no sessions answers 405, which is fine.
    if let Some(session) = session {
        let _ = client.delete_session(session, version).await;
    }
    Ok(Discovery {
        initialized,
        tools: tools?,
    })
}

/// Every tool the upstream lists, following its cursors (at most [`MAX_TOOL_PAGES`] pages), and
/// whether any page came on an SSE stream. `post` sends one request and returns the upstream's
/// answer; request ids are `{id_prefix}-{page}`.
///
/// A JSON-RPC error, a page without a `tools` array, or an answer that is not the response is
/// [`UpstreamError::Protocol`].
pub async fn list_all_tools<F, Fut>(
    mut post: F,
    id_prefix: &str,
) -> Result<(Vec<Value>, bool), UpstreamError>
where
    F: FnMut(Value) -> Fut,
    Fut: Future<Output = Result<PostResponse, UpstreamError>>,
{
    let mut tools = Vec::new();
    let mut streamed = false;
    let mut cursor: Option<Value> = None;
    for page in 0..MAX_TOOL_PAGES {
        let id = RequestId::String(format!("{id_prefix}-{page}"));
        let mut params = Map::new();
        if let Some(c) = cursor.take() {
            params.insert("cursor".into(), c);
        }
        let request =
            json!({"jsonrpc": "2.0", "id": &id, "method": "tools/list", "params": params});
        let message = match post(request).await? {
            PostResponse::Json { message, .. } => message,
            PostResponse::Stream { mut events, .. } => {
                streamed = true;
                collect_until_response(&mut events, &id).await?.1
            }
            PostResponse::Accepted => {
                return Err(UpstreamError::Protocol(
                    "tools/list was not answered".into(),
                ));
            }
        };
        if let Some(error) = message.get("error") {
            let text = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(UpstreamError::Protocol(format!(
                "tools/list failed: {text}"
            )));
        }
        let result = message.get("result").unwrap_or(&Value::Null);
        let Some(page_tools) = result.get("tools").and_then(Value::as_array) else {
            return Err(UpstreamError::Protocol(
                "tools/list answered without a tools array".into(),
            ));
        };
        tools.extend(page_tools.iter().cloned());
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => return Ok((tools, streamed)),
        }
    }
    Err(UpstreamError::Protocol(format!(
        "tools/list gave more than {MAX_TOOL_PAGES} pages"
    )))
}

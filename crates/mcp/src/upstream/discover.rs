//! Reading what an upstream offers: `initialize`, then every page of `tools/list`.
//!
//! The console registers a server with [`discover`]; the gateway reads the live catalog with
//! [`list_all_tools`] over its own session (which re-initializes on expiry).

use std::future::Future;

use serde_json::{Map, Value, json};

use super::{
    Initialized, PostResponse, StreamableHttpClient, UpstreamError, collect_until_response,
};
use crate::jsonrpc::RequestId;
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
/// session. An upstream that does not declare the `tools` capability has no tools.
pub async fn discover(
    client: &StreamableHttpClient,
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
            |request| client.post_bytes(request.to_string(), session, version),
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

//! Live discovery of an upstream's tools, classified for the catalog.

use std::collections::{BTreeMap, HashSet};

use portcullis_mcp::upstream::{
    Client, Discovery, StdioConfig, StreamableHttpClient, UpstreamConfig, UpstreamError, discover,
};
use portcullis_policy::classify::classify;
use portcullis_store::servers::{Tool, definition_hash};
use serde_json::{Value, json};

use crate::ConsoleState;
use crate::error::ApiError;

/// What discovery found, ready to store.
#[derive(Debug)]
pub struct Found {
    /// The transport that answered: `streamable_http`, `sse` or `stdio`.
    pub transport: &'static str,
    pub protocol_version: String,
    pub server_info: Option<Value>,
    pub tools: Vec<Tool>,
    /// Tools dropped: no name, or a name listed twice (the first wins).
    pub skipped: Vec<String>,
}

/// Discovers the tools of the HTTP upstream at `url` with `headers`, over `transport`:
/// `streamable_http`, `sse` (legacy HTTP+SSE, 2024-11-05: `url` is the SSE stream), or `auto`
/// (Streamable HTTP first; when the URL answers a POST with 400, 404 or 405, or with something
/// that is not MCP, the legacy transport; the first error is reported if both fail).
pub async fn discover_http(
    state: &ConsoleState,
    url: &url::Url,
    headers: &BTreeMap<String, String>,
    transport: &str,
) -> Result<Found, ApiError> {
    if !state.config().allow_private_upstreams {
        portcullis_mcp::upstream::addresses::check_literal(url).map_err(|reason| {
            ApiError::invalid(
                "private_address",
                "/url",
                format!("{reason}; this instance refuses private upstream addresses"),
            )
        })?;
    }
    let mut config = UpstreamConfig::new(url.clone()).timeout(state.config().discovery_timeout);
    for (name, value) in headers {
        config = config.header(name, value);
    }
    let client = StreamableHttpClient::new(state.inner.http.clone(), config);
    let shown = portcullis_mcp::upstream::display_url(url);
    const NAME: &str = "portcullis-console";
    let legacy = |client: StreamableHttpClient| async move {
        let channel = client.connect_legacy_sse().await?;
        discover(&Client::Channel(channel), NAME).await
    };
    let (discovery, transport) = match transport {
        "sse" => (legacy(client).await, "sse"),
        "streamable_http" => (
            discover(&Client::Http(client), NAME).await,
            "streamable_http",
        ),
        _ => match discover(&Client::Http(client.clone()), NAME).await {
            Err(e) if may_be_legacy(&e) => match legacy(client).await {
                Ok(found) => (Ok(found), "sse"),
                Err(_) => (Err(e), "streamable_http"),
            },
            other => (other, "streamable_http"),
        },
    };
    let discovery = discovery.map_err(|e| discovery_error(&shown, "/url", &e))?;
    Ok(Found {
        transport,
        ..found(discovery)
    })
}

/// Whether a failed Streamable HTTP discovery may mean a legacy HTTP+SSE endpoint (which has
/// no POST on its URL, or answers it with something else than MCP).
fn may_be_legacy(error: &UpstreamError) -> bool {
    matches!(
        error,
        UpstreamError::Status {
            status: 400 | 404 | 405,
            ..
        } | UpstreamError::NotMcp(_)
            | UpstreamError::SessionExpired
    )
}

/// Discovers the tools of the stdio server started by `command` with `env`.
pub async fn discover_stdio(
    state: &ConsoleState,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Found, ApiError> {
    let config = StdioConfig {
        command: command.to_vec(),
        env: env.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        timeout: state.config().discovery_timeout,
        max_message_bytes: portcullis_mcp::upstream::DEFAULT_MAX_BODY_BYTES,
    };
    let discovery = portcullis_mcp::upstream::discover_stdio(&config, "portcullis-console")
        .await
        .map_err(|e| discovery_error(&format!("`{}`", command.join(" ")), "/command", &e))?;
    Ok(found(discovery))
}

fn found(discovery: Discovery) -> Found {
    let server_info = discovery.server_info().cloned();
    Found {
        transport: "stdio",
        protocol_version: discovery.initialized.protocol_version,
        server_info,
        ..catalog(discovery.tools)
    }
}

/// The 422 for a failed discovery, in plain words.
fn discovery_error(shown: &str, path: &str, error: &UpstreamError) -> ApiError {
    let what = match error {
        UpstreamError::Connect(cause) => {
            let lower = cause.to_ascii_lowercase();
            if lower.contains("connection refused") {
                "connection refused".to_owned()
            } else if lower.contains("private address") {
                return ApiError::invalid(
                    "private_address",
                    path,
                    format!("{cause}; this instance refuses private upstream addresses"),
                );
            } else if path == "/command" {
                cause.clone()
            } else {
                format!("could not connect: {cause}")
            }
        }
        UpstreamError::Timeout(_) => error.to_string().replace("upstream ", ""),
        UpstreamError::Status { status, .. } => format!("answered {status}"),
        UpstreamError::NotMcp(reason) => format!("not an MCP server: {reason}"),
        UpstreamError::Rejected(e) => format!("refused to initialize: {}", e.message),
        UpstreamError::SessionExpired => "answered 404 (no such session) during discovery".into(),
        UpstreamError::TooLarge(limit) => format!("sent a message over the {limit}-byte limit"),
        UpstreamError::Protocol(reason) => format!("broke the MCP protocol: {reason}"),
        UpstreamError::Config(reason) => {
            return ApiError::invalid("invalid_headers", "/headers", reason.clone());
        }
    };
    ApiError::invalid(
        "discovery_failed",
        path,
        format!("cannot discover the tools of {shown}: {what}"),
    )
}

/// Classifies tool definitions into catalog rows, keeping the first of duplicate names.
pub fn catalog(definitions: Vec<Value>) -> Found {
    let mut seen = HashSet::new();
    let mut tools = Vec::new();
    let mut skipped = Vec::new();
    for definition in definitions {
        let Some(name) = definition
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            skipped.push("(a tool without a name)".into());
            continue;
        };
        if name.is_empty() || !seen.insert(name.clone()) {
            skipped.push(name);
            continue;
        }
        let c = classify(&definition);
        tools.push(Tool {
            definition_hash: definition_hash(&definition),
            category: c.category.as_str().into(),
            risk: c.risk.as_str().into(),
            evidence: json!(c.evidence),
            recommended: serde_json::to_value(&c.recommended).unwrap_or(Value::Null),
            name,
            definition,
        });
    }
    Found {
        transport: "stdio",
        protocol_version: String::new(),
        server_info: None,
        tools,
        skipped,
    }
}

/// The draft proposed for a server without a policy: `default: deny` (a tool nobody reviewed
/// is not callable), changed tools hidden, and each tool's recommended rule.
pub fn recommended_policy(tools: &[Tool]) -> Value {
    let mut hide = Vec::new();
    let mut rules = serde_json::Map::new();
    for tool in tools {
        match tool.recommended.get("rule") {
            Some(rule) => {
                rules.insert(tool.name.clone(), rule.clone());
            }
            None => hide.push(Value::String(tool.name.clone())),
        }
    }
    json!({
        "version": "1",
        "default": "deny",
        "changed_tools": "hide",
        "hide": hide,
        "tools": rules,
    })
}

/// Added, removed and changed tool names between two catalogs.
pub fn changes(before: &[Tool], after: &[Tool]) -> Value {
    let old: BTreeMap<&str, &str> = before
        .iter()
        .map(|t| (t.name.as_str(), t.definition_hash.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = after
        .iter()
        .map(|t| (t.name.as_str(), t.definition_hash.as_str()))
        .collect();
    let added: Vec<&str> = new
        .keys()
        .filter(|n| !old.contains_key(*n))
        .copied()
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .copied()
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|(n, h)| old.get(*n).is_some_and(|o| o != *h))
        .map(|(n, _)| *n)
        .collect();
    json!({"added": added, "removed": removed, "changed": changed})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, description: &str) -> Value {
        json!({"name": name, "description": description,
               "inputSchema": {"type": "object", "properties": {}}})
    }

    #[test]
    fn catalog_classifies_and_drops_duplicates_and_nameless_tools() {
        let found = catalog(vec![
            tool("list_items", "List the items."),
            tool("delete_item", "Delete an item permanently."),
            tool("list_items", "A second definition."),
            json!({"description": "no name"}),
        ]);
        let names: Vec<&str> = found.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["list_items", "delete_item"]);
        assert_eq!(found.tools[0].category, "read");
        assert_eq!(found.tools[1].category, "destructive");
        assert_eq!(found.tools[1].recommended, json!({"hide": true}));
        assert_eq!(found.skipped, ["list_items", "(a tool without a name)"]);
        let policy = recommended_policy(&found.tools);
        assert_eq!(policy["hide"], json!(["delete_item"]));
        assert!(policy["tools"].get("list_items").is_some());
        portcullis_policy::Policy::from_value(&policy).expect("the recommended draft is valid");
    }

    #[test]
    fn changes_name_added_removed_and_changed_tools() {
        let before = catalog(vec![tool("a", "A"), tool("b", "B"), tool("c", "C")]).tools;
        let after = catalog(vec![tool("a", "A"), tool("b", "B2"), tool("d", "D")]).tools;
        assert_eq!(
            changes(&before, &after),
            json!({"added": ["d"], "removed": ["c"], "changed": ["b"]})
        );
    }
}

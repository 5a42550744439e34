//! Servers: registration with live discovery, the classified catalog, re-discovery, removal.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use portcullis_store::servers::{self, Discovered, NewServer, Server, ServerSecrets, Tool};
use portcullis_store::{new_id, policies};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::discovery::{self, Found};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldProblem, Json, Path};
use portcullis_store::audit::Entry;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(list_servers, create_server))
        .routes(routes!(get_server, delete_server))
        .routes(routes!(rediscover))
}

/// Credential headers per server at most, and the bound on each name and value.
const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServerRequest {
    /// Unique in the organization.
    pub name: String,
    /// The MCP endpoint of an HTTP server (`http` or `https`).
    pub url: Option<String>,
    /// `auto` (default) or `streamable_http` for a URL (`sse`, the 2024-11-05 transport, comes
    /// later); `stdio` (or nothing) for a command.
    pub transport: Option<String>,
    /// Credential headers sent to the upstream on every request: stored encrypted, never
    /// returned (only their names).
    pub headers: Option<BTreeMap<String, String>>,
    /// A stdio server's command and arguments (self-hosted with `--allow-stdio-servers`).
    pub command: Option<Vec<String>>,
    /// A stdio server's environment: stored encrypted, never returned.
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub input_schema: Value,
    pub annotations: Value,
    /// `read`, `write`, `execute`, `financial` or `destructive`.
    pub category: String,
    /// `low`, `medium`, `high` or `critical`.
    pub risk: String,
    /// The signals behind the category.
    pub evidence: Value,
    /// `{"rule": {...}}` or `{"hide": true}`.
    pub recommended: Value,
    /// The definition differs from the one reviewed when the enforced policy was published.
    pub changed_since_publish: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    pub id: Uuid,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Value>,
    /// `streamable_http`, `sse` or `stdio`.
    pub transport: String,
    /// `active`, `unreachable` (the last re-discovery could not reach it) or `error`.
    pub status: String,
    pub status_detail: Option<String>,
    /// The URL to give MCP clients, with an agent key as `Authorization: Bearer pcl_…`.
    pub gateway_url: String,
    /// The names of the stored credential headers (never their values).
    pub header_names: Vec<String>,
    pub protocol_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolView>>,
    /// How many tools the catalog holds.
    pub tool_count: usize,
    pub last_discovered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServersResponse {
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoverResponse {
    pub server: ServerView,
    #[schema(value_type = Changes)]
    pub changes: Value,
}

fn tool_view(tool: Tool, reviewed: Option<&Value>) -> ToolView {
    let def = &tool.definition;
    let text = |key: &str| def.get(key).and_then(Value::as_str).map(str::to_owned);
    let changed_since_publish = reviewed
        .and_then(|r| r.get(&tool.name))
        .and_then(Value::as_str)
        .is_some_and(|hash| hash != tool.definition_hash);
    ToolView {
        title: text("title").or_else(|| {
            def.pointer("/annotations/title")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }),
        description: text("description"),
        input_schema: def.get("inputSchema").cloned().unwrap_or(Value::Null),
        annotations: def.get("annotations").cloned().unwrap_or(Value::Null),
        category: tool.category,
        risk: tool.risk,
        evidence: tool.evidence,
        recommended: tool.recommended,
        changed_since_publish,
        name: tool.name,
    }
}

/// The server as the API shows it; with its tools when `with_tools`.
pub(crate) async fn server_view(
    state: &ConsoleState,
    server: Server,
    with_tools: bool,
) -> ApiResult<ServerView> {
    let tools = servers::tools(state.db(), server.org_id, server.id).await?;
    let tool_count = tools.len();
    let tools = if with_tools {
        let reviewed = policies::reviewed_tools(state.db(), server.org_id, server.id).await?;
        Some(
            tools
                .into_iter()
                .map(|t| tool_view(t, reviewed.as_ref()))
                .collect(),
        )
    } else {
        None
    };
    Ok(ServerView {
        gateway_url: state.gateway_url(server.id),
        id: server.id,
        name: server.name,
        url: server.url,
        command: server.command,
        transport: server.transport,
        status: server.status,
        status_detail: server.status_detail,
        header_names: server.header_names,
        protocol_version: server.protocol_version,
        tools,
        tool_count,
        last_discovered_at: server.last_discovered_at,
        created_at: server.created_at,
    })
}

/// Checks credential headers: valid HTTP names and values, not ones the transport sets.
fn check_headers(headers: &BTreeMap<String, String>) -> Vec<FieldProblem> {
    const RESERVED: [&str; 10] = [
        "accept",
        "content-type",
        "content-length",
        "host",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "connection",
        "transfer-encoding",
        "upgrade",
    ];
    let mut problems = Vec::new();
    if headers.len() > MAX_HEADERS {
        problems.push(FieldProblem::new(
            "/headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let path = format!("/headers/{}", name.replace('~', "~0").replace('/', "~1"));
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(FieldProblem::new(path, "is not a valid HTTP header name"));
        } else if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            problems.push(FieldProblem::new(
                path,
                "is set by the MCP transport and cannot be configured",
            ));
        } else if axum::http::HeaderValue::from_str(value).is_err() {
            problems.push(FieldProblem::new(
                path,
                "has characters not allowed in an HTTP header value",
            ));
        } else if name.len() + value.len() > MAX_HEADER_BYTES {
            problems.push(FieldProblem::new(
                path,
                format!("is longer than {MAX_HEADER_BYTES} bytes"),
            ));
        }
    }
    problems
}

/// Checks a URL for registration: absolute, `http` or `https`, no credentials in it.
fn check_url(raw: &str) -> Result<url::Url, FieldProblem> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| FieldProblem::new("/url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldProblem::new(
            "/url",
            format!("must be http or https, not {}", url.scheme()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldProblem::new(
            "/url",
            "must not contain credentials; put them in headers, which are stored encrypted",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldProblem::new("/url", "must name a host"));
    }
    Ok(url)
}

/// Register a server: discovers its tools live, classifies them, and proposes a draft policy.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers", tag = "servers",
    params(("org" = String, Path, description = "the organization's slug")),
    request_body = CreateServerRequest,
    responses(
        (status = 201, body = ServerView),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "invalid, or the upstream cannot be reached or is not MCP", body = ErrorBody),
    ))]
pub(crate) async fn create_server(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Json(body): Json<CreateServerRequest>,
) -> ApiResult<(StatusCode, Json<ServerView>)> {
    access.require_manager()?;
    let mut problems = Vec::new();
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        problems.push(FieldProblem::new(
            "/name",
            "must be a name of 1 to 200 characters",
        ));
    }
    let transport = body.transport.as_deref().unwrap_or("auto");
    let target = match (body.url, body.command) {
        (Some(url), None) => {
            let headers = body.headers.unwrap_or_default();
            problems.extend(check_headers(&headers));
            if body.env.is_some() {
                problems.push(FieldProblem::new("/env", "is for stdio servers only"));
            }
            match transport {
                "auto" | "streamable_http" | "sse" => {}
                other => problems.push(FieldProblem::new(
                    "/transport",
                    format!("must be auto, streamable_http or sse, not {other:?}"),
                )),
            }
            match check_url(&url) {
                Ok(url) => Some(Target::Http {
                    url,
                    headers,
                    transport: transport.to_owned(),
                }),
                Err(problem) => {
                    problems.push(problem);
                    None
                }
            }
        }
        (None, Some(command)) => {
            if !state.config().allow_stdio_servers {
                return Err(ApiError::invalid(
                    "stdio_disabled",
                    "/command",
                    "stdio servers run a command on the Portcullis host: only a self-hosted \
                     instance started with --allow-stdio-servers accepts them",
                ));
            }
            let env = body.env.unwrap_or_default();
            problems.extend(check_command(&command));
            problems.extend(check_env(&env));
            if body.headers.is_some() {
                problems.push(FieldProblem::new(
                    "/headers",
                    "is for HTTP servers only; use env",
                ));
            }
            if !matches!(transport, "auto" | "stdio") {
                problems.push(FieldProblem::new(
                    "/transport",
                    "a command is a stdio server: leave transport out or set it to stdio",
                ));
            }
            Some(Target::Stdio { command, env })
        }
        (Some(_), Some(_)) => {
            problems.push(FieldProblem::new(
                "",
                "give either url or command, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(FieldProblem::new(
                "/url",
                "is required (or command, for a stdio server)",
            ));
            None
        }
    };
    let Some(target) = target.filter(|_| problems.is_empty()) else {
        return Err(ApiError::invalid_all(
            "invalid_server",
            "the server",
            problems,
        ));
    };
    let found = target.discover(&state).await?;
    let id = new_id();
    let seal = |secrets: &BTreeMap<String, String>| -> ApiResult<Option<Vec<u8>>> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let plain = serde_json::to_vec(secrets).map_err(|_| ApiError::internal())?;
        state
            .inner
            .credentials
            .seal(&plain, id.as_bytes())
            .map(Some)
            .map_err(|_| ApiError::internal())
    };
    let (url, command, header_names, secrets, transport) = match &target {
        Target::Http { url, headers, .. } => (
            Some(url.as_str()),
            None,
            headers.keys().cloned().collect::<Vec<_>>(),
            ServerSecrets {
                headers_enc: seal(headers)?,
                env_enc: None,
            },
            found.transport,
        ),
        Target::Stdio { command, env } => (
            None,
            Some(serde_json::json!(command)),
            Vec::new(),
            ServerSecrets {
                headers_enc: None,
                env_enc: seal(env)?,
            },
            "stdio",
        ),
    };
    let server = servers::insert(
        state.db(),
        access.org_id(),
        &NewServer {
            id,
            name: &name,
            url,
            command: command.as_ref(),
            header_names: &header_names,
            secrets,
            transport_requested: if transport == "stdio" {
                "stdio"
            } else {
                body.transport.as_deref().unwrap_or("auto")
            },
            transport,
            protocol_version: Some(&found.protocol_version),
            server_info: found.server_info.as_ref(),
        },
    )
    .await
    .map_err(|e| {
        if e.is_conflict_on("servers_org_name_key") {
            ApiError::conflict(
                "name_taken",
                format!("a server named {name:?} exists in this organization"),
            )
        } else {
            e.into()
        }
    })?;
    if let Err(e) = store_catalog(&state, &access, server.id, &found).await {
        // Leave nothing half-registered.
        let _ = servers::delete(state.db(), access.org_id(), server.id).await;
        return Err(e);
    }
    tracing::info!(org = %access.org.slug, server = %server.id, transport, tools = found.tools.len(), skipped = found.skipped.len(), by = %access.user_id, "server registered");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "server_registered",
            target_type: Some("server"),
            target_id: Some(server.id),
            after: Some(&serde_json::json!({"name": server.name, "url": server.url,
                                             "command": server.command, "header_names": server.header_names})),
            ..Entry::default()
        })
        .await;
    let server = servers::get(state.db(), access.org_id(), server.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(server_view(&state, server, true).await?),
    ))
}

/// Where an upstream is, with its secrets in clear (for discovery only).
enum Target {
    Http {
        url: url::Url,
        headers: BTreeMap<String, String>,
        /// `auto`, `streamable_http` or `sse`.
        transport: String,
    },
    Stdio {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
}

impl Target {
    async fn discover(&self, state: &ConsoleState) -> ApiResult<Found> {
        match self {
            Target::Http {
                url,
                headers,
                transport,
            } => discovery::discover_http(state, url, headers, transport).await,
            Target::Stdio { command, env } => discovery::discover_stdio(state, command, env).await,
        }
    }

    /// The target of a registered server, its secrets opened.
    async fn of(state: &ConsoleState, server: &Server) -> ApiResult<Target> {
        let secrets = servers::secrets(state.db(), server.org_id, server.id).await?;
        let open = |sealed: Option<Vec<u8>>, path: &str| -> ApiResult<BTreeMap<String, String>> {
            match sealed {
                None => Ok(BTreeMap::new()),
                Some(sealed) => state
                    .inner
                    .credentials
                    .open(&sealed, server.id.as_bytes())
                    .and_then(|plain| serde_json::from_slice(&plain).ok())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "credentials_unreadable",
                            path,
                            "the stored credentials cannot be decrypted (was the secret key changed?); register the server again",
                        )
                    }),
            }
        };
        match (&server.url, &server.command) {
            (Some(url), _) => Ok(Target::Http {
                url: url::Url::parse(url).map_err(|_| ApiError::internal())?,
                headers: open(secrets.headers_enc, "/headers")?,
                // Rediscovery keeps the transport found at registration.
                transport: server.transport.clone(),
            }),
            (None, Some(command)) => {
                if !state.config().allow_stdio_servers {
                    return Err(ApiError::invalid(
                        "stdio_disabled",
                        "/command",
                        "this instance was started without --allow-stdio-servers",
                    ));
                }
                Ok(Target::Stdio {
                    command: serde_json::from_value(command.clone())
                        .map_err(|_| ApiError::internal())?,
                    env: open(secrets.env_enc, "/env")?,
                })
            }
            (None, None) => Err(ApiError::internal()),
        }
    }
}

/// Checks a stdio command: a program and at most 64 arguments of at most 4 KiB, no NUL.
fn check_command(command: &[String]) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    if command.first().is_none_or(|p| p.trim().is_empty()) {
        problems.push(FieldProblem::new(
            "/command",
            "must start with the program to run",
        ));
    }
    if command.len() > 65 {
        problems.push(FieldProblem::new("/command", "at most 64 arguments"));
    }
    for (i, arg) in command.iter().enumerate() {
        if arg.len() > 4096 || arg.contains('\0') {
            problems.push(FieldProblem::new(
                format!("/command/{i}"),
                "must be at most 4096 bytes, without NUL",
            ));
        }
    }
    problems
}

/// Checks a stdio environment: names like `API_KEY`, at most 64, values without NUL.
fn check_env(env: &BTreeMap<String, String>) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    if env.len() > 64 {
        problems.push(FieldProblem::new("/env", "at most 64 variables"));
    }
    for (name, value) in env {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let path = format!("/env/{name}");
        if !valid_name {
            problems.push(FieldProblem::new(
                path,
                "must be a variable name like API_KEY",
            ));
        } else if value.contains('\0') || value.len() > MAX_HEADER_BYTES {
            problems.push(FieldProblem::new(
                path,
                format!("must be at most {MAX_HEADER_BYTES} bytes, without NUL"),
            ));
        }
    }
    problems
}

/// Stores a discovered catalog and, for a server without a policy, the recommended draft.
pub(crate) async fn store_catalog(
    state: &ConsoleState,
    access: &OrgAccess,
    server_id: Uuid,
    found: &Found,
) -> ApiResult<()> {
    servers::replace_tools(
        state.db(),
        access.org_id(),
        server_id,
        &Discovered {
            protocol_version: Some(&found.protocol_version),
            server_info: found.server_info.as_ref(),
        },
        &found.tools,
    )
    .await?;
    match policies::get(state.db(), access.org_id(), server_id, None).await {
        Ok(_) => Ok(()),
        Err(portcullis_store::Error::NotFound) => {
            policies::put_draft(
                state.db(),
                access.org_id(),
                server_id,
                None,
                &discovery::recommended_policy(&found.tools),
                Some(access.user_id),
            )
            .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The organization's servers (without their tools).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers", tag = "servers",
    params(("org" = String, Path, description = "the organization's slug")),
    responses((status = 200, body = ServersResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_servers(
    State(state): State<ConsoleState>,
    access: OrgAccess,
) -> ApiResult<Json<ServersResponse>> {
    let mut views = Vec::new();
    for server in servers::list(state.db(), access.org_id()).await? {
        views.push(server_view(&state, server, false).await?);
    }
    Ok(Json(ServersResponse { servers: views }))
}

pub(crate) fn not_found_server(e: portcullis_store::Error) -> ApiError {
    match e {
        portcullis_store::Error::NotFound => ApiError::not_found("server"),
        other => other.into(),
    }
}

/// A server with its classified tools.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}", tag = "servers",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 200, body = ServerView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_server(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<ServerView>> {
    let id = ids.1;
    let server = servers::get(state.db(), access.org_id(), id)
        .await
        .map_err(not_found_server)?;
    Ok(Json(server_view(&state, server, true).await?))
}

/// Discover the server's tools again and report what was added, removed and changed.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/discover", tag = "servers",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 200, body = DiscoverResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 422, description = "the upstream cannot be reached or is not MCP", body = ErrorBody)))]
pub(crate) async fn rediscover(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<DiscoverResponse>> {
    let id = ids.1;
    access.require_manager()?;
    let server = servers::get(state.db(), access.org_id(), id)
        .await
        .map_err(not_found_server)?;
    let target = Target::of(&state, &server).await?;
    let before = servers::tools(state.db(), access.org_id(), id).await?;
    let found = match target.discover(&state).await {
        Ok(found) => found,
        Err(e) => {
            let status =
                if e.message.contains("connection refused") || e.message.contains("timed out") {
                    "unreachable"
                } else {
                    "error"
                };
            servers::record_discovery_failure(state.db(), access.org_id(), id, status, &e.message)
                .await?;
            return Err(e);
        }
    };
    let changes = discovery::changes(&before, &found.tools);
    store_catalog(&state, &access, id, &found).await?;
    tracing::info!(org = %access.org.slug, server = %id, %changes, by = %access.user_id, "server re-discovered");
    let server = servers::get(state.db(), access.org_id(), id).await?;
    Ok(Json(DiscoverResponse {
        server: server_view(&state, server, true).await?,
        changes,
    }))
}

/// Remove a server with its catalog and policies.
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/servers/{id}", tag = "servers",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_server(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    let id = ids.1;
    access.require_manager()?;
    let before = servers::get(state.db(), access.org_id(), id)
        .await
        .ok()
        .map(|s| serde_json::json!({"name": s.name, "url": s.url, "command": s.command}));
    servers::delete(state.db(), access.org_id(), id)
        .await
        .map_err(not_found_server)?;
    tracing::info!(org = %access.org.slug, server = %id, by = %access.user_id, "server deleted");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "server_deleted",
            target_type: Some("server"),
            target_id: Some(id),
            before: before.as_ref(),
            ..Entry::default()
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_without_credentials() {
        assert!(check_url("https://mcp.example.com/mcp").is_ok());
        assert!(check_url("http://127.0.0.1:3000/mcp").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "https://user:pw@example.com/mcp",
            "mcp.example.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_must_be_valid_and_not_the_transports() {
        let mut headers = BTreeMap::new();
        headers.insert("Authorization".to_owned(), "Bearer x".to_owned());
        assert!(check_headers(&headers).is_empty());
        headers.insert("Mcp-Session-Id".to_owned(), "x".to_owned());
        headers.insert("Bad Name".to_owned(), "x".to_owned());
        headers.insert("X-Ok".to_owned(), "line\nbreak".to_owned());
        let paths: Vec<String> = check_headers(&headers)
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(
            paths,
            [
                "/headers/Bad Name",
                "/headers/Mcp-Session-Id",
                "/headers/X-Ok"
            ]
        );
    }
}

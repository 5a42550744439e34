//! Agents: the keys MCP clients present to the gateway.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use portcullis_store::agents::{self, Agent, AgentKey, NewAgent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path};
use portcullis_store::audit::Entry;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(revoke_agent))
        .routes(routes!(rotate_agent))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRequest {
    pub name: String,
    /// The servers this agent may reach; absent: every server, now and later.
    pub servers: Option<Vec<Uuid>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    /// The servers this agent may reach; `null` when it may reach all of them.
    pub servers: Option<Vec<Uuid>>,
    /// True when the agent may reach every server of the organization, now and later.
    pub all_servers: bool,
    /// The first characters of the key, to tell keys apart.
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<Agent> for AgentView {
    fn from(a: Agent) -> Self {
        AgentView {
            id: a.id,
            name: a.name,
            all_servers: a.servers.is_none(),
            servers: a.servers,
            key_prefix: a.key_prefix,
            created_at: a.created_at,
            last_used_at: a.last_used_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAgent {
    #[serde(flatten)]
    pub agent: AgentView,
    /// The key (`pcl_…`): shown only here. Store it in the MCP client's configuration.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentsResponse {
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    /// The new key: shown only here. The old one stops working.
    pub key: String,
    pub key_prefix: String,
}

fn new_key() -> ApiResult<AgentKey> {
    AgentKey::generate().map_err(|e| {
        tracing::error!(error = %e, "cannot generate an agent key");
        ApiError::internal()
    })
}

/// Create an agent and its key (admin only).
#[utoipa::path(post, path = "/api/v1/orgs/{org}/agents", tag = "agents",
    params(("org" = String, Path, description = "the organization's slug")),
    request_body = CreateAgentRequest,
    responses(
        (status = 201, body = CreatedAgent),
        (status = 403, body = ErrorBody),
        (status = 422, description = "a bad name or an unknown server", body = ErrorBody),
    ))]
pub(crate) async fn create_agent(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Json(body): Json<CreateAgentRequest>,
) -> ApiResult<(StatusCode, Json<CreatedAgent>)> {
    access.require_admin()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "invalid_agent",
            "/name",
            "must be a name of 1 to 200 characters",
        ));
    }
    let key = new_key()?;
    let agent = agents::insert(
        state.db(),
        access.org_id(),
        &NewAgent {
            name,
            key_hash: &key.digest(),
            key_prefix: key.prefix(),
            servers: body.servers.as_deref(),
            created_by: Some(access.user_id),
        },
    )
    .await
    .map_err(|e| match e {
        portcullis_store::Error::NotFound => ApiError::invalid(
            "unknown_server",
            "/servers",
            "every server must be a server of this organization",
        ),
        other => other.into(),
    })?;
    tracing::info!(org = %access.org.slug, agent = %agent.id, key_prefix = %agent.key_prefix, by = %access.user_id, "agent created");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "agent_created",
            target_type: Some("agent"),
            target_id: Some(agent.id),
            after: Some(
                &serde_json::json!({"name": agent.name, "servers": agent.servers,
                                             "key_prefix": agent.key_prefix}),
            ),
            ..Entry::default()
        })
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAgent {
            agent: agent.into(),
            key: key.expose().to_owned(),
        }),
    ))
}

/// The organization's live (not revoked) agents, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/agents", tag = "agents",
    params(("org" = String, Path, description = "the organization's slug")),
    responses((status = 200, body = AgentsResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_agents(
    State(state): State<ConsoleState>,
    access: OrgAccess,
) -> ApiResult<Json<AgentsResponse>> {
    let agents = agents::list(state.db(), access.org_id())
        .await?
        .into_iter()
        .map(AgentView::from)
        .collect();
    Ok(Json(AgentsResponse { agents }))
}

/// Replace an agent's key (admin only); the old key stops working within 1 s on every gateway.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/agents/{id}/rotate", tag = "agents",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the agent's id")),
    responses((status = 200, body = KeyResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn rotate_agent(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<KeyResponse>> {
    let id = ids.1;
    access.require_admin()?;
    let key = new_key()?;
    agents::rotate(state.db(), access.org_id(), id, &key.digest(), key.prefix())
        .await
        .map_err(not_found_agent)?;
    tracing::info!(org = %access.org.slug, agent = %id, key_prefix = %key.prefix(), by = %access.user_id, "agent key rotated");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "agent_key_rotated",
            target_type: Some("agent"),
            target_id: Some(id),
            after: Some(&serde_json::json!({"key_prefix": key.prefix()})),
            ..Entry::default()
        })
        .await;
    Ok(Json(KeyResponse {
        key_prefix: key.prefix().to_owned(),
        key: key.expose().to_owned(),
    }))
}

/// Revoke an agent (admin only): its key stops working within 1 s on every gateway.
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/agents/{id}", tag = "agents",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the agent's id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_agent(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    let id = ids.1;
    access.require_admin()?;
    agents::revoke(state.db(), access.org_id(), id)
        .await
        .map_err(not_found_agent)?;
    tracing::info!(org = %access.org.slug, agent = %id, by = %access.user_id, "agent revoked");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "agent_revoked",
            target_type: Some("agent"),
            target_id: Some(id),
            ..Entry::default()
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found_agent(e: portcullis_store::Error) -> ApiError {
    match e {
        portcullis_store::Error::NotFound => ApiError::not_found("agent"),
        other => other.into(),
    }
}

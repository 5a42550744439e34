//! A server's policy, and agents' own policies on it: the draft, publishing (enforced or in
//! shadow), versions, and simulation. `?agent={id}` on these routes addresses that agent's own
//! policy instead of the server's; `POST …/policy/agents` creates one from a copy of the
//! server's, `DELETE …/policy/agents/{agent}` removes it (the agent falls back to the server's).

use axum::extract::State;
use chrono::{DateTime, Utc};
use portcullis_policy::{Call, Decision, Policy};
use portcullis_store::{agents, policies, servers};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::discovery::recommended_policy;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldProblem, Json, OptionalJson, Path, Query};
use crate::routes::servers::not_found_server;
use portcullis_store::audit::Entry;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(get_policy, put_policy))
        .routes(routes!(publish))
        .routes(routes!(create_agent_policy))
        .routes(routes!(delete_agent_policy))
        .routes(routes!(stop_shadow))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(simulate))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedView {
    pub version: i32,
    pub document: Value,
    pub published_at: DateTime<Utc>,
    pub published_by: Option<Uuid>,
}

/// Which policy of a server a request addresses.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PolicyScope {
    /// An agent's id: that agent's own policy on this server (absent: the server's policy).
    pub agent: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowView {
    pub version: i32,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentPolicyView {
    pub agent_id: Uuid,
    pub agent_name: String,
    /// The enforced version of the agent's own policy (`null`: a draft only, so the agent is
    /// still governed by the server's policy).
    pub version: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyResponse {
    /// The agent whose own policy this is (`null`: the server's policy).
    pub agent_id: Option<Uuid>,
    /// The draft being edited (for a server never given one: the recommended rules of its
    /// tools).
    pub draft: Value,
    pub draft_updated_at: DateTime<Utc>,
    /// The enforced version, or `null` before the first publish.
    pub published: Option<PublishedView>,
    /// The version evaluated in shadow beside the enforced one, if any.
    pub shadow: Option<ShadowView>,
    /// For the server's policy: the agents that have their own policy on this server.
    pub agent_policies: Vec<AgentPolicyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DraftResponse {
    pub draft: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    pub version: i32,
    pub published_at: DateTime<Utc>,
    /// `enforced` or `shadow`.
    pub mode: &'static str,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// `enforced` (the default) or `shadow`: evaluated beside the enforced version on every
    /// call and only recorded (needs an enforced version).
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentPolicyRequest {
    /// The agent that gets its own policy on this server.
    pub agent_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummaryView {
    pub version: i32,
    /// `enforced` or `shadow`: how the version was published.
    pub mode: String,
    pub published_at: DateTime<Utc>,
    pub published_by: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionsResponse {
    pub versions: Vec<VersionSummaryView>,
}

/// The server's policy, created from the recommended rules of its tools when it has none.
pub(crate) async fn server_policy(
    state: &ConsoleState,
    access: &OrgAccess,
    server_id: Uuid,
) -> ApiResult<policies::Policy> {
    // The server must be this organization's (404 otherwise, before anything is created).
    servers::get(state.db(), access.org_id(), server_id)
        .await
        .map_err(not_found_server)?;
    match policies::get(state.db(), access.org_id(), server_id, None).await {
        Ok(policy) => Ok(policy),
        Err(portcullis_store::Error::NotFound) => {
            let tools = servers::tools(state.db(), access.org_id(), server_id).await?;
            policies::put_draft(
                state.db(),
                access.org_id(),
                server_id,
                None,
                &recommended_policy(&tools),
                None,
            )
            .await
            .map_err(not_found_server)?;
            Ok(policies::get(state.db(), access.org_id(), server_id, None).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The policy a request addresses: the server's (created from the recommended rules when it
/// has none) or, with `agent`, that agent's own (404 `no_agent_policy` when it has none).
pub(crate) async fn scoped_policy(
    state: &ConsoleState,
    access: &OrgAccess,
    server_id: Uuid,
    agent: Option<Uuid>,
) -> ApiResult<policies::Policy> {
    let Some(agent_id) = agent else {
        return server_policy(state, access, server_id).await;
    };
    servers::get(state.db(), access.org_id(), server_id)
        .await
        .map_err(not_found_server)?;
    live_agent(state, access, agent_id).await?;
    match policies::get(state.db(), access.org_id(), server_id, Some(agent_id)).await {
        Ok(policy) => Ok(policy),
        Err(portcullis_store::Error::NotFound) => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "no_agent_policy",
            "this agent has no policy of its own on this server (the server's policy governs it); create one with POST …/policy/agents",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The agent, if it is this organization's and not revoked (404 otherwise).
async fn live_agent(
    state: &ConsoleState,
    access: &OrgAccess,
    agent_id: Uuid,
) -> ApiResult<agents::Agent> {
    match agents::get(state.db(), access.org_id(), agent_id).await {
        Ok(agent) if agent.revoked_at.is_none() => Ok(agent),
        Ok(_) | Err(portcullis_store::Error::NotFound) => Err(ApiError::not_found("agent")),
        Err(e) => Err(e.into()),
    }
}

async fn policy_response(
    state: &ConsoleState,
    access: &OrgAccess,
    policy: policies::Policy,
) -> ApiResult<PolicyResponse> {
    let agent_policies = if policy.agent_id.is_none() {
        policies::agent_policies(state.db(), access.org_id(), policy.server_id)
            .await?
            .into_iter()
            .map(|a| AgentPolicyView {
                agent_id: a.agent_id,
                agent_name: a.agent_name,
                version: a.version,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(PolicyResponse {
        agent_id: policy.agent_id,
        draft: policy.draft,
        draft_updated_at: policy.draft_updated_at,
        published: policy.published.map(|v| PublishedView {
            version: v.version,
            document: v.document,
            published_at: v.published_at,
            published_by: v.published_by,
        }),
        shadow: policy.shadow.map(|v| ShadowView {
            version: v.version,
            published_at: v.published_at,
        }),
        agent_policies,
    })
}

/// The draft and the published version of a server's policy (or, with `?agent=`, of that
/// agent's own policy on the server).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    responses((status = 200, body = PolicyResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
) -> ApiResult<Json<PolicyResponse>> {
    let policy = scoped_policy(&state, &access, ids.1, scope.agent).await?;
    Ok(Json(policy_response(&state, &access, policy).await?))
}

/// Give an agent its own policy on this server, starting from a copy of the server's (its
/// published version, else its draft). It governs the agent once published.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/policy/agents", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    request_body = CreateAgentPolicyRequest,
    responses((status = 201, body = PolicyResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "the agent already has its own policy", body = ErrorBody)))]
pub(crate) async fn create_agent_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Json(body): Json<CreateAgentPolicyRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<PolicyResponse>)> {
    let id = ids.1;
    access.require_manager()?;
    let server = server_policy(&state, &access, id).await?;
    let agent = live_agent(&state, &access, body.agent_id).await?;
    if policies::get(state.db(), access.org_id(), id, Some(agent.id))
        .await
        .is_ok()
    {
        return Err(ApiError::conflict(
            "agent_policy_exists",
            format!("{} already has its own policy on this server", agent.name),
        ));
    }
    let copy = server.published.map(|p| p.document).unwrap_or(server.draft);
    policies::put_draft(
        state.db(),
        access.org_id(),
        id,
        Some(agent.id),
        &copy,
        Some(access.user_id),
    )
    .await
    .map_err(not_found_server)?;
    tracing::info!(org = %access.org.slug, server = %id, agent = %agent.id, by = %access.user_id, "agent policy created");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "agent_policy_created",
            target_type: Some("agent"),
            target_id: Some(agent.id),
            after: Some(&json!({"server_id": id, "draft": copy})),
            ..Entry::default()
        })
        .await;
    let policy = policies::get(state.db(), access.org_id(), id, Some(agent.id)).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(policy_response(&state, &access, policy).await?),
    ))
}

/// Remove an agent's own policy on this server (with its versions): within 1 s every gateway
/// governs the agent by the server's policy again.
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/servers/{id}/policy/agents/{agent}", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"),
           ("agent" = Uuid, Path, description = "the agent's id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_agent_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid, Uuid)>,
) -> ApiResult<axum::http::StatusCode> {
    let (id, agent_id) = (ids.1, ids.2);
    access.require_manager()?;
    let before = scoped_policy(&state, &access, id, Some(agent_id)).await?;
    policies::delete_agent_policy(state.db(), access.org_id(), id, agent_id)
        .await
        .map_err(|e| match e {
            portcullis_store::Error::NotFound => ApiError::not_found("agent policy"),
            other => other.into(),
        })?;
    tracing::info!(org = %access.org.slug, server = %id, agent = %agent_id, by = %access.user_id, "agent policy removed");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "agent_policy_removed",
            target_type: Some("agent"),
            target_id: Some(agent_id),
            before: Some(&json!({"server_id": id, "draft": before.draft,
                                 "version": before.published.map(|p| p.version)})),
            ..Entry::default()
        })
        .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Stop evaluating the shadow version (it stays in the version history).
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/servers/{id}/policy/shadow", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn stop_shadow(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
) -> ApiResult<axum::http::StatusCode> {
    access.require_manager()?;
    let policy = scoped_policy(&state, &access, ids.1, scope.agent).await?;
    let Some(shadow) = policy.shadow else {
        return Err(ApiError::not_found("shadow version"));
    };
    policies::stop_shadow(state.db(), access.org_id(), policy.id).await?;
    tracing::info!(org = %access.org.slug, server = %ids.1, version = shadow.version, by = %access.user_id, "shadow stopped");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "policy_shadow_stopped",
            target_type: Some("server"),
            target_id: Some(ids.1),
            before: Some(&json!({"shadow_version": shadow.version, "agent_id": scope.agent})),
            ..Entry::default()
        })
        .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn invalid_policy(errors: portcullis_policy::ValidationErrors) -> ApiError {
    ApiError::invalid_all(
        "invalid_policy",
        "policy",
        errors
            .problems
            .into_iter()
            .map(|p| FieldProblem::new(p.path, p.message))
            .collect(),
    )
}

/// Save the draft. Every problem of an invalid document is reported at once, each with a JSON
/// pointer.
#[utoipa::path(put, path = "/api/v1/orgs/{org}/servers/{id}/policy", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    request_body(content = Object, description = "a policy document (POLICY.md)"),
    responses((status = 200, body = DraftResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 422, description = "invalid_policy, with every problem", body = ErrorBody)))]
pub(crate) async fn put_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
    Json(document): Json<Value>,
) -> ApiResult<Json<DraftResponse>> {
    let id = ids.1;
    access.require_manager()?;
    Policy::from_value(&document).map_err(invalid_policy)?;
    if let Some(agent_id) = scope.agent {
        live_agent(&state, &access, agent_id).await?;
    }
    let before = policies::get(state.db(), access.org_id(), id, scope.agent)
        .await
        .ok()
        .map(|p| p.draft);
    policies::put_draft(
        state.db(),
        access.org_id(),
        id,
        scope.agent,
        &document,
        Some(access.user_id),
    )
    .await
    .map_err(not_found_server)?;
    tracing::info!(org = %access.org.slug, server = %id, agent = ?scope.agent, by = %access.user_id, "policy draft saved");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "policy_saved",
            target_type: Some(if scope.agent.is_some() {
                "agent"
            } else {
                "server"
            }),
            target_id: Some(scope.agent.unwrap_or(id)),
            before: before.as_ref(),
            after: Some(&document),
            ..Entry::default()
        })
        .await;
    Ok(Json(DraftResponse { draft: document }))
}

/// Publish the draft as a new immutable version; every gateway enforces it within 1 s. With
/// `{"mode": "shadow"}`, gateways evaluate it beside the enforced version on every call and
/// only record where the two differ.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/policy/publish", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    request_body(content = Option<PublishRequest>, description = "optional: `{\"mode\": \"shadow\"}`"),
    responses((status = 200, body = PublishResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "shadow without an enforced version", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
    OptionalJson(body): OptionalJson<PublishRequest>,
) -> ApiResult<Json<PublishResponse>> {
    let id = ids.1;
    access.require_manager()?;
    let mode = match body.and_then(|b| b.mode).as_deref() {
        None | Some("enforced") => policies::Mode::Enforced,
        Some("shadow") => policies::Mode::Shadow,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_body",
                "/mode",
                "must be \"enforced\" or \"shadow\"",
            ));
        }
    };
    let policy = scoped_policy(&state, &access, id, scope.agent).await?;
    // Drafts are validated when saved; check again in case the language tightened since.
    Policy::from_value(&policy.draft).map_err(invalid_policy)?;
    let version = policies::publish(state.db(), access.org_id(), policy.id, Some(access.user_id), mode)
        .await
        .map_err(|e| match e {
            portcullis_store::Error::Conflict { .. } => ApiError::conflict(
                "not_published",
                "a shadow version is evaluated beside the enforced one: publish an enforced version first",
            ),
            other => not_found_server(other),
        })?;
    tracing::info!(org = %access.org.slug, server = %id, agent = ?scope.agent, version = version.version, mode = mode.as_str(), by = %access.user_id, "policy published");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: if mode == policies::Mode::Shadow {
                "policy_published_shadow"
            } else {
                "policy_published"
            },
            target_type: Some(if scope.agent.is_some() {
                "agent"
            } else {
                "server"
            }),
            target_id: Some(scope.agent.unwrap_or(id)),
            before: policy
                .published
                .as_ref()
                .map(|p| serde_json::json!({"version": p.version, "document": p.document}))
                .as_ref(),
            after: Some(
                &serde_json::json!({"version": version.version, "document": version.document}),
            ),
            ..Entry::default()
        })
        .await;
    Ok(Json(PublishResponse {
        version: version.version,
        published_at: version.published_at,
        mode: mode.as_str(),
    }))
}

/// The published versions, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy/versions", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    responses((status = 200, body = VersionsResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_versions(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
) -> ApiResult<Json<VersionsResponse>> {
    let id = ids.1;
    let policy = scoped_policy(&state, &access, id, scope.agent).await?;
    let versions = policies::versions(state.db(), access.org_id(), policy.id)
        .await?
        .into_iter()
        .map(|v| VersionSummaryView {
            version: v.version,
            mode: v.mode,
            published_at: v.published_at,
            published_by: v.published_by,
        })
        .collect();
    Ok(Json(VersionsResponse { versions }))
}

/// One published version.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy/versions/{n}", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"),
           ("n" = i32, Path, description = "the version number"), PolicyScope),
    responses((status = 200, body = PublishedView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_version(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid, i32)>,
    Query(scope): Query<PolicyScope>,
) -> ApiResult<Json<PublishedView>> {
    let (id, n) = (ids.1, ids.2);
    let policy = scoped_policy(&state, &access, id, scope.agent).await?;
    let v = policies::version(state.db(), access.org_id(), policy.id, n)
        .await
        .map_err(|e| match e {
            portcullis_store::Error::NotFound => ApiError::not_found("policy version"),
            other => other.into(),
        })?;
    Ok(Json(PublishedView {
        version: v.version,
        document: v.document,
        published_at: v.published_at,
        published_by: v.published_by,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    pub tool: String,
    /// The call's arguments (absent: none).
    #[serde(default)]
    pub arguments: Value,
    /// Simulate as this agent (limits with scope `agent` count per agent).
    pub agent_id: Option<Uuid>,
    /// Simulate the draft instead of the published version.
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimulateResponse {
    /// `allow`, `deny`, `hidden` or `approval`. Simulation reserves nothing, so it never says
    /// `rate_limited`: the limits the call would count against are listed instead.
    pub decision: &'static str,
    /// The JSON pointer of the rule that decided.
    pub rule: String,
    /// Why the call is refused (`null` when it proceeds).
    pub reason: Option<String>,
    /// The text the agent would see for a refused call.
    pub agent_text: Option<String>,
    /// Limits the call would count against: `{counter, max, window_seconds, scope, increment, rule}`.
    pub limits: Vec<Value>,
    /// The approval the call would wait for: `{rule, timeout_seconds, reason}`.
    pub approval: Option<Value>,
    /// `draft` or `published`.
    pub policy: &'static str,
    /// The version simulated (`null` for the draft).
    pub version: Option<i32>,
    /// The tool's definition differs from the one reviewed at publish time.
    pub changed: bool,
    /// The tool is in the server's catalog.
    pub tool_known: bool,
}

/// The decision a call would get, under the draft or the published version.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/policy/simulate", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    request_body = SimulateRequest,
    responses((status = 200, body = SimulateResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "nothing published yet (simulate the draft)", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn simulate(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
    Json(body): Json<SimulateRequest>,
) -> ApiResult<Json<SimulateResponse>> {
    let id = ids.1;
    let policy = scoped_policy(&state, &access, id, scope.agent).await?;
    if let Some(agent_id) = body.agent_id {
        agents::get(state.db(), access.org_id(), agent_id)
            .await
            .map_err(|e| match e {
                portcullis_store::Error::NotFound => ApiError::not_found("agent"),
                other => other.into(),
            })?;
    }
    if !(body.arguments.is_object() || body.arguments.is_null()) {
        return Err(ApiError::invalid(
            "invalid_body",
            "/arguments",
            "must be an object of the tool's arguments",
        ));
    }
    let (document, version) = if body.draft {
        (policy.draft, None)
    } else {
        let Some(published) = policy.published else {
            return Err(ApiError::conflict(
                "not_published",
                "this server has no published policy yet; simulate the draft with \"draft\": true",
            ));
        };
        (published.document, Some(published.version))
    };
    let parsed = Policy::from_value(&document).map_err(invalid_policy)?;
    let tools = servers::tools(state.db(), access.org_id(), id).await?;
    let current = tools.iter().find(|t| t.name == body.tool);
    // Changed tools exist only against a published version's reviewed definitions.
    let changed = match (&version, current) {
        (Some(_), Some(tool)) => policies::reviewed_tools(state.db(), access.org_id(), id)
            .await?
            .and_then(|r| r.get(&body.tool).and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|reviewed| reviewed != tool.definition_hash),
        _ => false,
    };
    let empty = json!({});
    let arguments = if body.arguments.is_null() {
        &empty
    } else {
        &body.arguments
    };
    let decision = parsed.evaluate(&Call {
        tool: &body.tool,
        arguments,
        changed,
    });
    let (limits, approval) = match &decision {
        Decision::Proceed {
            limits, approval, ..
        } => (
            limits
                .iter()
                .map(|l| {
                    json!({"counter": l.counter, "max": l.max, "window_seconds": l.window.as_secs(),
                           "scope": l.scope.as_str(), "increment": l.increment, "rule": l.rule})
                })
                .collect(),
            approval.as_ref().map(|a| {
                json!({"rule": a.rule, "timeout_seconds": a.timeout.as_secs(), "reason": a.reason})
            }),
        ),
        _ => (Vec::new(), None),
    };
    Ok(Json(SimulateResponse {
        decision: decision.kind().as_str(),
        rule: decision.rule().to_owned(),
        reason: decision.reason().map(str::to_owned),
        agent_text: decision.agent_text(),
        limits,
        approval,
        policy: if version.is_some() {
            "published"
        } else {
            "draft"
        },
        version,
        changed,
        tool_known: current.is_some(),
    }))
}

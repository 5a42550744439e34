//! A server's policy: the draft, publishing, versions, and simulation.

use axum::extract::State;
use chrono::{DateTime, Utc};
use portcullis_policy::{Call, Decision, Policy};
use portcullis_store::{agents, policies, servers};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::discovery::recommended_policy;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldProblem, Json, Path};
use crate::routes::servers::not_found_server;
use portcullis_store::audit::Entry;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(get_policy, put_policy))
        .routes(routes!(publish))
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

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyResponse {
    /// The draft being edited (for a server never given one: the recommended rules of its
    /// tools).
    pub draft: Value,
    pub draft_updated_at: DateTime<Utc>,
    /// The enforced version, or `null` before the first publish.
    pub published: Option<PublishedView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DraftResponse {
    pub draft: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    pub version: i32,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummaryView {
    pub version: i32,
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

/// The draft and the published version of a server's policy.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 200, body = PolicyResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<PolicyResponse>> {
    let id = ids.1;
    let policy = server_policy(&state, &access, id).await?;
    Ok(Json(PolicyResponse {
        draft: policy.draft,
        draft_updated_at: policy.draft_updated_at,
        published: policy.published.map(|v| PublishedView {
            version: v.version,
            document: v.document,
            published_at: v.published_at,
            published_by: v.published_by,
        }),
    }))
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
           ("id" = Uuid, Path, description = "the server's id")),
    request_body(content = Object, description = "a policy document (POLICY.md)"),
    responses((status = 200, body = DraftResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 422, description = "invalid_policy, with every problem", body = ErrorBody)))]
pub(crate) async fn put_policy(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Json(document): Json<Value>,
) -> ApiResult<Json<DraftResponse>> {
    let id = ids.1;
    access.require_manager()?;
    Policy::from_value(&document).map_err(invalid_policy)?;
    let before = policies::get(state.db(), access.org_id(), id, None)
        .await
        .ok()
        .map(|p| p.draft);
    policies::put_draft(
        state.db(),
        access.org_id(),
        id,
        None,
        &document,
        Some(access.user_id),
    )
    .await
    .map_err(not_found_server)?;
    tracing::info!(org = %access.org.slug, server = %id, by = %access.user_id, "policy draft saved");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "policy_saved",
            target_type: Some("server"),
            target_id: Some(id),
            before: before.as_ref(),
            after: Some(&document),
            ..Entry::default()
        })
        .await;
    Ok(Json(DraftResponse { draft: document }))
}

/// Publish the draft as a new immutable version; every gateway enforces it within 1 s.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/policy/publish", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 200, body = PublishResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<PublishResponse>> {
    let id = ids.1;
    access.require_manager()?;
    let policy = server_policy(&state, &access, id).await?;
    // Drafts are validated when saved; check again in case the language tightened since.
    Policy::from_value(&policy.draft).map_err(invalid_policy)?;
    let version = policies::publish(state.db(), access.org_id(), policy.id, Some(access.user_id))
        .await
        .map_err(not_found_server)?;
    tracing::info!(org = %access.org.slug, server = %id, version = version.version, by = %access.user_id, "policy published");
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "policy_published",
            target_type: Some("server"),
            target_id: Some(id),
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
    }))
}

/// The published versions, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy/versions", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id")),
    responses((status = 200, body = VersionsResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_versions(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
) -> ApiResult<Json<VersionsResponse>> {
    let id = ids.1;
    let policy = server_policy(&state, &access, id).await?;
    let versions = policies::versions(state.db(), access.org_id(), policy.id)
        .await?
        .into_iter()
        .map(|v| VersionSummaryView {
            version: v.version,
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
           ("n" = i32, Path, description = "the version number")),
    responses((status = 200, body = PublishedView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_version(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid, i32)>,
) -> ApiResult<Json<PublishedView>> {
    let (id, n) = (ids.1, ids.2);
    let policy = server_policy(&state, &access, id).await?;
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
           ("id" = Uuid, Path, description = "the server's id")),
    request_body = SimulateRequest,
    responses((status = 200, body = SimulateResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "nothing published yet (simulate the draft)", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn simulate(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Json(body): Json<SimulateRequest>,
) -> ApiResult<Json<SimulateResponse>> {
    let id = ids.1;
    let policy = server_policy(&state, &access, id).await?;
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

//! Approvals: calls held by a gateway until a person decides.

use axum::extract::State;
use chrono::{DateTime, Utc};
use portcullis_store::approvals::{self, Approval};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, OptionalJson, Path, Query};

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(list_approvals))
        .routes(routes!(approve))
        .routes(routes!(deny))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: Uuid,
    pub server_id: Uuid,
    pub server_name: String,
    pub agent: AgentRef,
    pub tool: String,
    /// The call's arguments in full: what the approver decides on.
    pub arguments: Value,
    /// The rule that asked for approval, and its reason.
    pub rule: String,
    pub reason: Option<String>,
    /// The version of the server's policy that asked for approval.
    pub policy_version: Option<i32>,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `pending`, `approved`, `denied`, `expired`, `abandoned` or `used`.
    pub status: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub note: Option<String>,
}

impl From<Approval> for ApprovalView {
    fn from(a: Approval) -> Self {
        // A pending approval past its time is expired, whether or not its holder said so yet.
        let status = if a.status == "pending" && a.expires_at <= Utc::now() {
            "expired".to_owned()
        } else {
            a.status
        };
        ApprovalView {
            id: a.id,
            server_id: a.server_id,
            server_name: a.server_name,
            agent: AgentRef {
                id: a.agent_id,
                name: a.agent_name,
            },
            tool: a.tool,
            arguments: a.arguments,
            rule: a.rule,
            reason: a.reason,
            policy_version: a.policy_version,
            requested_at: a.requested_at,
            expires_at: a.expires_at,
            status,
            decided_at: a.decided_at,
            decided_by: a.decided_by_email,
            note: a.note,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalsResponse {
    pub approvals: Vec<ApprovalView>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ApprovalsQuery {
    /// `pending` (default), `approved`, `denied`, `expired`, `abandoned`, `used` or `all`.
    pub status: Option<String>,
    /// At most this many, newest first (default 100, at most 500).
    pub limit: Option<i64>,
}

const STATUSES: [&str; 7] = [
    "pending",
    "approved",
    "denied",
    "expired",
    "abandoned",
    "used",
    "all",
];

/// The organization's approvals, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/approvals", tag = "approvals",
    params(("org" = String, Path, description = "the organization's slug"), ApprovalsQuery),
    responses((status = 200, body = ApprovalsResponse), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn list_approvals(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Query(query): Query<ApprovalsQuery>,
) -> ApiResult<Json<ApprovalsResponse>> {
    let status = query.status.as_deref().unwrap_or("pending");
    if !STATUSES.contains(&status) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("status must be one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let rows = approvals::list(
        state.db(),
        access.org_id(),
        (status != "all").then_some(status),
        limit,
    )
    .await?;
    let approvals = rows
        .into_iter()
        .map(ApprovalView::from)
        // "pending" lists only what a person can still decide.
        .filter(|a| status != "pending" || a.status == "pending")
        .collect();
    Ok(Json(ApprovalsResponse { approvals }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Shown to the agent with a denial, and kept in the activity log.
    pub note: Option<String>,
}

async fn decide(
    state: &ConsoleState,
    access: &OrgAccess,
    id: Uuid,
    approve: bool,
    note: Option<String>,
) -> ApiResult<ApprovalView> {
    access.require_manager()?;
    let note = note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
        return Err(ApiError::invalid(
            "invalid_note",
            "/note",
            "must be at most 1000 characters",
        ));
    }
    let decided = approvals::decide(
        state.db(),
        access.org_id(),
        id,
        approve,
        access.user_id,
        note.as_deref(),
    )
    .await
    .map_err(|e| match e {
        portcullis_store::Error::NotFound => ApiError::not_found("approval"),
        e if e.is_conflict_on(approvals::NOT_PENDING) => ApiError::conflict(
            "not_pending",
            "this call is no longer waiting: it was decided, expired, or abandoned",
        ),
        other => other.into(),
    })?;
    tracing::info!(org = %access.org.slug, approval = %id, approve, by = %access.user_id, "approval decided");
    state
        .audit(portcullis_store::audit::Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: if approve {
                "approval_approved"
            } else {
                "approval_denied"
            },
            target_type: Some("approval"),
            target_id: Some(id),
            after: Some(
                &serde_json::json!({"tool": decided.tool,
                                    "arguments": portcullis_store::activity::redact(&decided.arguments),
                                             "note": decided.note}),
            ),
            ..Default::default()
        })
        .await;
    Ok(decided.into())
}

/// Approve a held call (admin or policy_manager); the gateway holding it forwards it at once.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/approvals/{id}/approve", tag = "approvals",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the approval's id")),
    request_body(content = DecisionRequest, description = "optional"),
    responses((status = 200, body = ApprovalView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "already decided, expired or abandoned", body = ErrorBody)))]
pub(crate) async fn approve(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    OptionalJson(body): OptionalJson<DecisionRequest>,
) -> ApiResult<Json<ApprovalView>> {
    let note = body.and_then(|b| b.note);
    Ok(Json(decide(&state, &access, ids.1, true, note).await?))
}

/// Deny a held call (admin or policy_manager); the agent gets `[APPROVAL DENIED] <note>`.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/approvals/{id}/deny", tag = "approvals",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the approval's id")),
    request_body(content = DecisionRequest, description = "optional"),
    responses((status = 200, body = ApprovalView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "already decided, expired or abandoned", body = ErrorBody)))]
pub(crate) async fn deny(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    OptionalJson(body): OptionalJson<DecisionRequest>,
) -> ApiResult<Json<ApprovalView>> {
    let note = body.and_then(|b| b.note);
    Ok(Json(decide(&state, &access, ids.1, false, note).await?))
}

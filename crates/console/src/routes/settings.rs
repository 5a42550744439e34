//! Organization settings.

use axum::extract::State;
use portcullis_store::orgs::{self, Settings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::error::{ApiError, ApiResult, ErrorBody, Json};

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(audit_trail))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    /// Receives a JSON POST for every new approval request.
    pub approval_webhook_url: Option<String>,
    /// Store argument values in the activity log (secret-looking keys are redacted).
    pub store_argument_values: bool,
    /// The latest webhook deliveries (at most 10), newest first: failures show here.
    pub webhook_deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `pending` (retrying), `delivered` or `failed` (given up).
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn view(state: &ConsoleState, org_id: uuid::Uuid, s: Settings) -> ApiResult<SettingsView> {
    let webhook_deliveries = portcullis_store::webhooks::recent(state.db(), org_id, 10)
        .await?
        .into_iter()
        .map(|d| DeliveryView {
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        })
        .collect();
    Ok(SettingsView {
        approval_webhook_url: s.approval_webhook_url,
        store_argument_values: s.store_argument_values,
        webhook_deliveries,
    })
}

/// A partial update: fields left out keep their value; `approval_webhook_url: null` removes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub approval_webhook_url: Option<Option<String>>,
    pub store_argument_values: Option<bool>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// The organization's settings.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/settings", tag = "organizations",
    params(("org" = String, Path, description = "the organization's slug")),
    responses((status = 200, body = SettingsView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_settings(
    State(state): State<ConsoleState>,
    access: OrgAccess,
) -> ApiResult<Json<SettingsView>> {
    let mut settings = orgs::settings(state.db(), access.org_id()).await?;
    if !access.role.is_admin() {
        // The URL is a credential (a Slack webhook's path is its secret): admins only.
        settings.approval_webhook_url = settings
            .approval_webhook_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default()));
    }
    Ok(Json(view(&state, access.org_id(), settings).await?))
}

/// Change the organization's settings (admin only).
#[utoipa::path(put, path = "/api/v1/orgs/{org}/settings", tag = "organizations",
    params(("org" = String, Path, description = "the organization's slug")),
    request_body = SettingsUpdate,
    responses((status = 200, body = SettingsView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn put_settings(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Json(update): Json<SettingsUpdate>,
) -> ApiResult<Json<SettingsView>> {
    access.require_admin()?;
    let mut settings = orgs::settings(state.db(), access.org_id()).await?;
    let before = serde_json::json!({"approval_webhook_url": settings.approval_webhook_url,
                                    "store_argument_values": settings.store_argument_values});
    if let Some(url) = update.approval_webhook_url {
        let url = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        if let Some(u) = &url {
            let ok = url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
            if !ok || u.len() > 2048 {
                return Err(ApiError::invalid(
                    "invalid_settings",
                    "/approval_webhook_url",
                    "must be an http or https URL",
                ));
            }
        }
        settings.approval_webhook_url = url;
    }
    if let Some(store) = update.store_argument_values {
        settings.store_argument_values = store;
    }
    let saved = orgs::update_settings(state.db(), access.org_id(), &settings).await?;
    tracing::info!(org = %access.org.slug, by = %access.user_id, "settings changed");
    state
        .audit(portcullis_store::audit::Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "settings_changed",
            target_type: Some("organization"),
            target_id: Some(access.org_id()),
            before: Some(&before),
            after: Some(
                &serde_json::json!({"approval_webhook_url": saved.approval_webhook_url,
                                             "store_argument_values": saved.store_argument_values}),
            ),
            ..Default::default()
        })
        .await;
    Ok(Json(view(&state, access.org_id(), saved).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: uuid::Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who (their email), `null` when the account is gone.
    pub actor: Option<String>,
    /// `signed_in`, `account_created`, `member_set`, `server_registered`, `server_deleted`,
    /// `policy_saved`, `policy_published`, `agent_created`, `agent_key_rotated`,
    /// `agent_revoked`, `settings_changed`, `approval_approved`, `approval_denied`.
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<uuid::Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditResponse {
    pub entries: Vec<AuditEntryView>,
}

/// The admin audit trail, newest first (admin only): the last 200 entries.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/audit", tag = "organizations",
    params(("org" = String, Path, description = "the organization's slug")),
    responses((status = 200, body = AuditResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn audit_trail(
    State(state): State<ConsoleState>,
    access: OrgAccess,
) -> ApiResult<Json<AuditResponse>> {
    access.require_admin()?;
    let entries = portcullis_store::audit::recent(state.db(), access.org_id(), 200)
        .await?
        .into_iter()
        .map(|e| AuditEntryView {
            id: e.id,
            at: e.at,
            actor: e.actor_email,
            action: e.action,
            target_type: e.target_type,
            target_id: e.target_id,
            before: e.before,
            after: e.after,
        })
        .collect();
    Ok(Json(AuditResponse { entries }))
}

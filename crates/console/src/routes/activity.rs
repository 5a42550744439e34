//! The activity log: every gateway decision, filtered, newest first, in keyset pages, and
//! exported as JSON Lines or CSV.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use portcullis_store::activity::{self, Event, Filter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Query};
use crate::routes::approvals::AgentRef;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(list_activity))
        .routes(routes!(export_activity))
}

/// The decisions an event can record (API.md).
pub const DECISIONS: [&str; 10] = [
    "allow",
    "deny",
    "hidden",
    "rate_limited",
    "approval_requested",
    "approval_granted",
    "approval_denied",
    "approval_expired",
    "approval_abandoned",
    "upstream_error",
];

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct ActivityQuery {
    /// A server id.
    pub server: Option<Uuid>,
    /// An agent id.
    pub agent: Option<Uuid>,
    /// A tool name.
    pub tool: Option<String>,
    /// One of the decisions (`allow`, `deny`, `hidden`, `rate_limited`, `approval_*`,
    /// `upstream_error`).
    pub decision: Option<String>,
    /// Only events older than this event id: the `next` of the previous page.
    pub before: Option<Uuid>,
    /// Only events at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only the last `1h`, `24h` or `7d` (instead of `since`).
    pub period: Option<String>,
    /// `differs`: only calls where a version published in shadow decided otherwise.
    pub shadow: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<i64>,
    /// Export only: `jsonl` (default) or `csv`.
    pub format: Option<String>,
}

impl ActivityQuery {
    pub fn filter(&self) -> ApiResult<Filter> {
        if let Some(d) = &self.decision
            && !DECISIONS.contains(&d.as_str())
        {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("decision must be one of {}", DECISIONS.join(", ")),
            ));
        }
        let period = match self.period.as_deref().unwrap_or("") {
            "" => None,
            "1h" => Some(chrono::Duration::hours(1)),
            "24h" => Some(chrono::Duration::hours(24)),
            "7d" => Some(chrono::Duration::days(7)),
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("period must be 1h, 24h or 7d, not {other:?}"),
                ));
            }
        };
        let shadow_differs = match self.shadow.as_deref().unwrap_or("") {
            "" => false,
            "differs" => true,
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("shadow must be \"differs\", not {other:?}"),
                ));
            }
        };
        Ok(Filter {
            server_id: self.server,
            agent_id: self.agent,
            tool: self.tool.clone().filter(|t| !t.is_empty()),
            decision: self.decision.clone().filter(|d| !d.is_empty()),
            before: self.before,
            since: period.map(|p| Utc::now() - p).or(self.since),
            shadow_differs,
            server_policy_only: false,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub server_id: Option<Uuid>,
    pub agent: Option<AgentRef>,
    pub session: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub argument_keys: Vec<String>,
    /// The argument values, when the organization stores them (secret-looking keys redacted).
    pub arguments: Option<Value>,
    pub decision: String,
    /// The JSON pointer of the rule that decided.
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub policy_version: Option<i32>,
    /// Which document decided: `server` (the server's policy) or `agent` (the agent's own).
    pub policy_scope: Option<&'static str>,
    pub latency_ms: Option<f64>,
    pub upstream_status: Option<i32>,
    /// On a call evaluated beside a shadow version: `{version, decision, rule, differs}`.
    pub shadow: Option<Value>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            id: e.id,
            at: e.at,
            server_id: e.server_id,
            agent: e.agent_id.map(|id| AgentRef {
                id,
                name: e.agent_name.clone().unwrap_or_default(),
            }),
            session: e.session,
            method: e.method,
            tool: e.tool,
            argument_keys: e.argument_keys,
            arguments: e.arguments,
            decision: e.decision,
            rule: e.rule,
            reason: e.reason,
            policy_scope: e.policy_version.map(|_| {
                if e.policy_agent_id.is_some() {
                    "agent"
                } else {
                    "server"
                }
            }),
            policy_version: e.policy_version,
            latency_ms: e.latency_ms,
            upstream_status: e.upstream_status,
            shadow: e.shadow,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityResponse {
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next: Option<Uuid>,
}

/// A page of events and the cursor of the next.
pub async fn page(
    state: &ConsoleState,
    org_id: Uuid,
    query: &ActivityQuery,
) -> ApiResult<ActivityResponse> {
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let mut events = activity::query(state.db(), org_id, &filter, limit + 1).await?;
    let more = events.len() as i64 > limit;
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        events.last().map(|e| e.id)
    } else {
        None
    };
    Ok(ActivityResponse {
        events: events.into_iter().map(EventView::from).collect(),
        next,
    })
}

/// The organization's activity, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/activity", tag = "activity",
    params(("org" = String, Path, description = "the organization's slug"), ActivityQuery),
    responses((status = 200, body = ActivityResponse), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn list_activity(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Query(query): Query<ActivityQuery>,
) -> ApiResult<Json<ActivityResponse>> {
    Ok(Json(page(&state, access.org_id(), &query).await?))
}

/// Events exported at most.
pub const MAX_EXPORT: usize = 100_000;

/// Every matching event (at most 100,000, newest first) as JSON Lines or CSV.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/activity/export", tag = "activity",
    params(("org" = String, Path, description = "the organization's slug"), ActivityQuery),
    responses((status = 200, description = "application/x-ndjson or text/csv"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn export_activity(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Query(query): Query<ActivityQuery>,
) -> ApiResult<Response> {
    let csv = match query.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => false,
        "csv" => true,
        other => {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("format must be jsonl or csv, not {other:?}"),
            ));
        }
    };
    let mut filter = query.filter()?;
    let mut body = String::new();
    if csv {
        body.push_str("id,at,server_id,agent_id,agent_name,session,method,tool,argument_keys,decision,rule,reason,policy_version,latency_ms,upstream_status\n");
    }
    let mut written = 0;
    loop {
        let events = activity::query(state.db(), access.org_id(), &filter, 1000).await?;
        let Some(last) = events.last().map(|e| e.id) else {
            break;
        };
        for event in events {
            if written == MAX_EXPORT {
                break;
            }
            written += 1;
            if csv {
                csv_row(&mut body, &event);
            } else {
                body.push_str(&serde_json::to_string(&EventView::from(event)).unwrap_or_default());
                body.push('\n');
            }
        }
        if written == MAX_EXPORT {
            break;
        }
        filter.before = Some(last);
    }
    let (content_type, extension) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "jsonl")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"portcullis-activity-{}.{extension}\"",
                    access.org.slug
                ),
            ),
        ],
        body,
    )
        .into_response())
}

/// One CSV row (RFC 4180: fields with a comma, quote or line break are quoted, quotes doubled).
/// Fields starting with `=`, `+`, `-` or `@` are prefixed with `'` so a spreadsheet does not run
/// them as formulas (tool names and reasons come from upstreams and agents).
fn csv_row(out: &mut String, e: &Event) {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let fields = [
        e.id.to_string(),
        e.at.to_rfc3339(),
        opt(e.server_id.map(|v| v.to_string())),
        opt(e.agent_id.map(|v| v.to_string())),
        opt(e.agent_name.clone()),
        opt(e.session.clone()),
        e.method.clone(),
        opt(e.tool.clone()),
        e.argument_keys.join(" "),
        e.decision.clone(),
        opt(e.rule.clone()),
        opt(e.reason.clone()),
        opt(e.policy_version.map(|v| v.to_string())),
        opt(e.latency_ms.map(|v| format!("{v:.1}"))),
        opt(e.upstream_status.map(|v| v.to_string())),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(field));
    }
    out.push('\n');
}

fn csv_field(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }
}

//! Before and beside publishing: the impact preview (replay a server's recorded calls against a
//! draft) and the shadow summary (what a version published in shadow would have done).

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use chrono::{Duration, Utc};
use portcullis_policy::{Call, Policy};
use portcullis_store::{activity, policies};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::OrgAccess;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldProblem, Json, OptionalJson, Path, Query};
use crate::routes::activity::EventView;
use crate::routes::policies::{PolicyScope, scoped_policy};

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(preview))
        .routes(routes!(shadow_summary))
}

/// The longest history a preview replays.
const MAX_DAYS: u32 = 90;
/// How many distinct changed calls a preview lists.
const MAX_CHANGES: usize = 50;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// How many days of recorded calls to replay (1 to 90; default 7).
    pub days: Option<u32>,
    /// The document to preview (default: the saved draft).
    pub document: Option<Value>,
}

/// Counts of one group of replayed calls.
#[derive(Debug, Default, Clone, Serialize, ToSchema)]
pub struct ImpactCounts {
    /// Calls replayed.
    pub calls: i64,
    /// Of those, calls whose outcome the document changes.
    pub changed: i64,
    /// Calls whose outcome cannot be told: the document's rule for the tool reads argument
    /// values, and the organization does not store them.
    pub unknown: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolImpact {
    pub tool: String,
    #[serde(flatten)]
    pub counts: ImpactCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentImpact {
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    #[serde(flatten)]
    pub counts: ImpactCounts,
}

/// Calls of one shape (tool, agent, recorded outcome, new outcome) that change.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImpactChange {
    pub tool: String,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    /// The recorded outcome: `allow`, `approval`, `deny` or `hidden` (a rate-limited or
    /// failed call counts as allowed by the policy).
    pub from: String,
    /// The document's outcome.
    pub to: String,
    /// The rule of the document that decides.
    pub rule: String,
    pub calls: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    pub days: u32,
    /// Every replayed call.
    #[serde(flatten)]
    pub total: ImpactCounts,
    /// Per tool, most changed first.
    pub by_tool: Vec<ToolImpact>,
    /// Per agent, most changed first.
    pub by_agent: Vec<AgentImpact>,
    /// The changes, largest first (at most 50).
    pub changes: Vec<ImpactChange>,
}

/// What the policy decided about a recorded call, in the simulate API's words.
fn recorded_outcome(decision: &str) -> &'static str {
    match decision {
        "deny" => "deny",
        "hidden" => "hidden",
        "approval_requested" => "approval",
        // Rate limits and upstream failures come after the policy let the call through.
        _ => "allow",
    }
}

/// A change's shape: tool, agent, recorded outcome, new outcome, the rule that decides.
type ChangeKey<'a> = (&'a str, Option<Uuid>, &'a str, &'static str, String);

/// Replays recorded call groups against `policy`.
pub fn replay(policy: &Policy, days: u32, groups: &[activity::RecordedCalls]) -> PreviewResponse {
    let mut total = ImpactCounts::default();
    let mut by_tool: BTreeMap<&str, ImpactCounts> = BTreeMap::new();
    let mut by_agent: HashMap<Option<Uuid>, (Option<String>, ImpactCounts)> = HashMap::new();
    let mut changes: HashMap<ChangeKey<'_>, (Option<String>, i64)> = HashMap::new();
    let empty = json!({});
    for group in groups {
        let from = recorded_outcome(&group.decision);
        // Tool definitions are taken as reviewed: the preview asks what the rules change.
        let outcome = match &group.arguments {
            None if policy.reads_argument_values(&group.tool, false) => None,
            arguments => {
                let decision = policy.evaluate(&Call {
                    tool: &group.tool,
                    arguments: arguments.as_ref().unwrap_or(&empty),
                    changed: false,
                });
                Some((decision.kind().as_str(), decision.rule().to_owned()))
            }
        };
        let (changed, unknown) = match &outcome {
            None => (0, group.count),
            Some((to, _)) if *to != from => (group.count, 0),
            Some(_) => (0, 0),
        };
        for counts in [
            &mut total,
            by_tool.entry(group.tool.as_str()).or_default(),
            &mut by_agent
                .entry(group.agent_id)
                .or_insert_with(|| (group.agent_name.clone(), ImpactCounts::default()))
                .1,
        ] {
            counts.calls += group.count;
            counts.changed += changed;
            counts.unknown += unknown;
        }
        if let Some((to, rule)) = outcome
            && to != from
        {
            let entry = changes
                .entry((group.tool.as_str(), group.agent_id, from, to, rule))
                .or_insert_with(|| (group.agent_name.clone(), 0));
            entry.1 += group.count;
        }
    }
    let mut by_tool: Vec<ToolImpact> = by_tool
        .into_iter()
        .map(|(tool, counts)| ToolImpact {
            tool: tool.to_owned(),
            counts,
        })
        .collect();
    by_tool.sort_by(|a, b| {
        (b.counts.changed, b.counts.unknown, b.counts.calls)
            .cmp(&(a.counts.changed, a.counts.unknown, a.counts.calls))
            .then_with(|| a.tool.cmp(&b.tool))
    });
    let mut by_agent: Vec<AgentImpact> = by_agent
        .into_iter()
        .map(|(agent_id, (agent_name, counts))| AgentImpact {
            agent_id,
            agent_name,
            counts,
        })
        .collect();
    by_agent.sort_by(|a, b| {
        (b.counts.changed, b.counts.unknown, b.counts.calls)
            .cmp(&(a.counts.changed, a.counts.unknown, a.counts.calls))
            .then_with(|| a.agent_name.cmp(&b.agent_name))
    });
    let mut changes: Vec<ImpactChange> = changes
        .into_iter()
        .map(
            |((tool, agent_id, from, to, rule), (agent_name, calls))| ImpactChange {
                tool: tool.to_owned(),
                agent_id,
                agent_name,
                from: from.to_owned(),
                to: to.to_owned(),
                rule,
                calls,
            },
        )
        .collect();
    changes.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| (&a.tool, &a.agent_name).cmp(&(&b.tool, &b.agent_name)))
    });
    changes.truncate(MAX_CHANGES);
    PreviewResponse {
        days,
        total,
        by_tool,
        by_agent,
        changes,
    }
}

/// Replay the server's recorded calls of the last days against the draft (or the document
/// given) and count the calls whose outcome changes, by tool and by agent. The server's policy
/// replays the calls of agents without a policy of their own; an agent's policy (`?agent=`)
/// replays that agent's calls.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/servers/{id}/policy/preview", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), PolicyScope),
    request_body(content = Option<PreviewRequest>, description = "optional: `{days, document}`"),
    responses((status = 200, body = PreviewResponse), (status = 404, body = ErrorBody),
              (status = 422, description = "an invalid document or days", body = ErrorBody)))]
pub(crate) async fn preview(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(scope): Query<PolicyScope>,
    OptionalJson(body): OptionalJson<PreviewRequest>,
) -> ApiResult<Json<PreviewResponse>> {
    let id = ids.1;
    let body = body.unwrap_or_default();
    let days = body.days.unwrap_or(7);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(
            "invalid_body",
            "/days",
            format!("must be a whole number of days from 1 to {MAX_DAYS}"),
        ));
    }
    let policy = scoped_policy(&state, &access, id, scope.agent).await?;
    let document = body.document.unwrap_or(policy.draft);
    let parsed = Policy::from_value(&document).map_err(|errors| {
        ApiError::invalid_all(
            "invalid_policy",
            "policy",
            errors
                .problems
                .into_iter()
                .map(|p| FieldProblem::new(format!("/document{}", p.path), p.message))
                .collect(),
        )
    })?;
    let since = Utc::now() - Duration::days(i64::from(days));
    let groups = match scope.agent {
        Some(agent) => {
            activity::recorded_calls(state.db(), access.org_id(), id, since, Some(&[agent]), &[])
                .await?
        }
        None => {
            // Agents governed by a published policy of their own are not the server policy's.
            let own: Vec<Uuid> = policies::agent_policies(state.db(), access.org_id(), id)
                .await?
                .into_iter()
                .filter(|a| a.version.is_some())
                .map(|a| a.agent_id)
                .collect();
            activity::recorded_calls(state.db(), access.org_id(), id, since, None, &own).await?
        }
    };
    Ok(Json(replay(&parsed, days, &groups)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ShadowQuery {
    /// Hours of calls to summarize (1 to 720; default 24).
    pub hours: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowSummary {
    pub hours: u32,
    /// The shadow version of the server's policy now (`null`: none).
    pub version: Option<i32>,
    /// Calls evaluated beside a shadow version in the period.
    pub calls: i64,
    /// Of those, calls where the shadow decided otherwise.
    pub differences: i64,
    /// Of the differences, calls the enforced version let through and the shadow would have
    /// denied or hidden.
    pub would_deny: i64,
    /// The calls that differ, newest first (at most 50).
    pub events: Vec<EventView>,
}

/// What the shadow version would have done to the server's calls: "shadow would have denied N of
/// M calls in the last 24 h", with the calls.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/servers/{id}/policy/shadow", tag = "policies",
    params(("org" = String, Path, description = "the organization's slug"),
           ("id" = Uuid, Path, description = "the server's id"), ShadowQuery),
    responses((status = 200, body = ShadowSummary), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn shadow_summary(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Path(ids): Path<(String, Uuid)>,
    Query(query): Query<ShadowQuery>,
) -> ApiResult<Json<ShadowSummary>> {
    let id = ids.1;
    let hours = query.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::invalid(
            "invalid_query",
            "hours",
            "must be a whole number of hours from 1 to 720",
        ));
    }
    let policy = scoped_policy(&state, &access, id, None).await?;
    let since = Utc::now() - Duration::hours(i64::from(hours));
    let counts = activity::shadow_counts(state.db(), access.org_id(), id, since).await?;
    let events = activity::query(
        state.db(),
        access.org_id(),
        &activity::Filter {
            server_id: Some(id),
            since: Some(since),
            shadow_differs: true,
            server_policy_only: true,
            ..activity::Filter::default()
        },
        50,
    )
    .await?
    .into_iter()
    .map(EventView::from)
    .collect();
    Ok(Json(ShadowSummary {
        hours,
        version: policy.shadow.map(|s| s.version),
        calls: counts.calls,
        differences: counts.differences,
        would_deny: counts.would_deny,
        events,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(
        tool: &str,
        agent: u128,
        decision: &str,
        arguments: Option<Value>,
        count: i64,
    ) -> activity::RecordedCalls {
        activity::RecordedCalls {
            tool: tool.into(),
            agent_id: Some(Uuid::from_u128(agent)),
            agent_name: Some(format!("agent-{agent}")),
            decision: decision.into(),
            argument_keys: arguments
                .as_ref()
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
            arguments,
            count,
        }
    }

    #[test]
    fn replay_counts_changes_and_unknowns_by_tool_and_agent() {
        let draft = Policy::from_value(&json!({
            "version": "1", "default": "allow", "hide": ["drop_*"],
            "tools": {"pay": {"action": "allow", "deny_if": [{"conditions": [
                {"path": "args.amount", "op": "gt", "value": 100}]}]}}
        }))
        .unwrap();
        let groups = [
            group("read", 1, "allow", None, 10),
            group("drop_table", 1, "allow", None, 3),
            group("drop_table", 2, "deny", None, 2),
            group("pay", 1, "allow", Some(json!({"amount": 500})), 4),
            group("pay", 2, "allow", Some(json!({"amount": 5})), 6),
            group("pay", 2, "rate_limited", None, 5),
        ];
        let r = replay(&draft, 7, &groups);
        assert_eq!(
            (r.total.calls, r.total.changed, r.total.unknown),
            (30, 9, 5)
        );
        let tool = |name: &str| {
            let t = r.by_tool.iter().find(|t| t.tool == name).unwrap();
            (t.counts.calls, t.counts.changed, t.counts.unknown)
        };
        assert_eq!(tool("read"), (10, 0, 0));
        assert_eq!(tool("drop_table"), (5, 5, 0));
        assert_eq!(tool("pay"), (15, 4, 5));
        assert_eq!(r.by_tool[0].tool, "drop_table", "most changed first");
        let agent = |n: u128| {
            let a = r
                .by_agent
                .iter()
                .find(|a| a.agent_id == Some(Uuid::from_u128(n)))
                .unwrap();
            (a.counts.calls, a.counts.changed, a.counts.unknown)
        };
        assert_eq!(agent(1), (17, 7, 0));
        assert_eq!(agent(2), (13, 2, 5));
        let change = |tool: &str, agent: u128| {
            r.changes
                .iter()
                .find(|c| c.tool == tool && c.agent_id == Some(Uuid::from_u128(agent)))
                .map(|c| (c.from.as_str(), c.to.as_str(), c.rule.as_str(), c.calls))
        };
        assert_eq!(
            change("drop_table", 1),
            Some(("allow", "hidden", "/hide/0", 3))
        );
        assert_eq!(
            change("drop_table", 2),
            Some(("deny", "hidden", "/hide/0", 2))
        );
        assert_eq!(
            change("pay", 1),
            Some(("allow", "deny", "/tools/pay/deny_if/0", 4))
        );
        assert_eq!(change("pay", 2), None);
    }
}

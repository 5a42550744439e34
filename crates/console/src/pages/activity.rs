//! The activity page: filters, newest first, keyset pages, a live tail, exports.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use portcullis_store::{agents, servers};
use uuid::Uuid;

use super::{Flash, Nav, OrgPage, PageResult, render};
use crate::ConsoleState;
use crate::error::Query;
use crate::routes::activity::{self as activity_routes, ActivityQuery, DECISIONS, EventView};

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/app/{org}/activity", get(page))
        .route("/app/{org}/activity/list", get(list))
}

pub struct Choice {
    pub id: String,
    pub name: String,
    pub selected: bool,
}

pub struct Row {
    pub when: String,
    pub tool: String,
    pub method: String,
    pub agent: String,
    pub server: String,
    pub keys: String,
    pub arguments: String,
    pub decision: String,
    pub badge: &'static str,
    pub reason: String,
    pub rule: String,
    pub version: Option<i32>,
    pub version_link: String,
    pub latency: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    servers: Vec<Choice>,
    agents: Vec<Choice>,
    decisions: Vec<Choice>,
    periods: Vec<Choice>,
    tool: String,
    /// The filters as `&k=v…` (for links), and without the leading `&`.
    query: String,
    query_plain: String,
    live: bool,
    events: Vec<Row>,
    next: Option<Uuid>,
}

#[derive(Template)]
#[template(path = "activity_list.html")]
struct ActivityList {
    slug: String,
    query: String,
    events: Vec<Row>,
    next: Option<Uuid>,
}

fn badge(decision: &str) -> &'static str {
    match decision {
        "allow" | "approval_granted" => "risk-low",
        "approval_requested" => "risk-medium",
        "rate_limited" | "approval_expired" | "approval_abandoned" | "upstream_error" => {
            "risk-high"
        }
        _ => "risk-critical",
    }
}

/// The filters of `query` (not the cursor) as URL parameters, each `&k=v`.
fn filters(query: &ActivityQuery) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    if let Some(s) = query.server {
        out.append_pair("server", &s.to_string());
    }
    if let Some(a) = query.agent {
        out.append_pair("agent", &a.to_string());
    }
    if let Some(t) = query.tool.as_deref().filter(|t| !t.is_empty()) {
        out.append_pair("tool", t);
    }
    if let Some(d) = query.decision.as_deref().filter(|d| !d.is_empty()) {
        out.append_pair("decision", d);
    }
    if let Some(p) = query.period.as_deref().filter(|p| !p.is_empty()) {
        out.append_pair("period", p);
    }
    out.finish()
}

async fn rows(
    state: &ConsoleState,
    page: &OrgPage,
    query: &ActivityQuery,
) -> Result<(Vec<Row>, Option<Uuid>), super::PageError> {
    let names: HashMap<Uuid, String> = servers::list(state.db(), page.access.org_id())
        .await?
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    let answer = activity_routes::page(state, page.access.org_id(), query).await?;
    let slug = page.slug();
    let rows = answer
        .events
        .into_iter()
        .map(|e: EventView| Row {
            when: e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            tool: e.tool.unwrap_or_default(),
            method: e.method,
            agent: e.agent.map(|a| a.name).unwrap_or_default(),
            server: e
                .server_id
                .and_then(|id| names.get(&id).cloned())
                .unwrap_or_else(|| "a removed server".into()),
            keys: e.argument_keys.join(", "),
            arguments: e
                .arguments
                .map(|a| serde_json::to_string_pretty(&a).unwrap_or_default())
                .unwrap_or_default(),
            badge: badge(&e.decision),
            decision: e.decision,
            reason: e.reason.unwrap_or_default(),
            rule: e.rule.unwrap_or_default(),
            version: e.policy_version,
            version_link: match (e.server_id, e.policy_version) {
                (Some(server), Some(v)) => {
                    format!("/api/v1/orgs/{slug}/servers/{server}/policy/versions/{v}")
                }
                _ => String::new(),
            },
            latency: e.latency_ms.map(|l| format!("{l:.0}")).unwrap_or_default(),
        })
        .collect();
    Ok((rows, answer.next))
}

async fn page(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Query(query): Query<ActivityQuery>,
) -> PageResult {
    let (events, next) = rows(&state, &page, &query).await?;
    let plain = filters(&query);
    let org_id = page.access.org_id();
    let servers = servers::list(state.db(), org_id)
        .await?
        .into_iter()
        .map(|s| Choice {
            selected: query.server == Some(s.id),
            id: s.id.to_string(),
            name: s.name,
        })
        .collect();
    let agents = agents::list(state.db(), org_id)
        .await?
        .into_iter()
        .map(|a| Choice {
            selected: query.agent == Some(a.id),
            id: a.id.to_string(),
            name: a.name,
        })
        .collect();
    let decisions = DECISIONS
        .iter()
        .map(|d| Choice {
            id: (*d).to_owned(),
            name: d.replace('_', " "),
            selected: query.decision.as_deref() == Some(d),
        })
        .collect();
    let periods = [
        ("1h", "last hour"),
        ("24h", "last 24 hours"),
        ("7d", "last 7 days"),
    ]
    .iter()
    .map(|(id, name)| Choice {
        id: (*id).to_owned(),
        name: (*name).to_owned(),
        selected: query.period.as_deref() == Some(id),
    })
    .collect();
    Ok(render(&ActivityPage {
        periods,
        nav: page.nav("activity"),
        flash: None,
        slug: page.slug().to_owned(),
        servers,
        agents,
        decisions,
        tool: query.tool.clone().unwrap_or_default(),
        query: if plain.is_empty() {
            String::new()
        } else {
            format!("&{plain}")
        },
        live: query.before.is_none(),
        query_plain: plain,
        events,
        next,
    }))
}

/// The first page alone, for the live tail.
async fn list(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Query(query): Query<ActivityQuery>,
) -> PageResult {
    let (events, next) = rows(&state, &page, &query).await?;
    let plain = filters(&query);
    Ok(render(&ActivityList {
        slug: page.slug().to_owned(),
        query: if plain.is_empty() {
            String::new()
        } else {
            format!("&{plain}")
        },
        events,
        next,
    }))
}

//! A server's pages: adding one, its tools, the policy builder, simulation, and connecting a
//! client.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use portcullis_store::{orgs, policies, servers};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::org::{NewKey, target_of};
use super::{Flash, FormData, FormState, Nav, OrgPage, PageError, PageResult, render, when};
use crate::ConsoleState;
use crate::error::{FieldProblem, Json, OptionalJson, Path, Query as ApiQuery};
use crate::routes::agents::{self as agent_routes, CreateAgentRequest};
use crate::routes::policies::{self as policy_routes, PolicyScope, SimulateRequest};
use crate::routes::servers::{self as server_routes, CreateServerRequest, not_found_server};

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/app/{org}/servers", get(servers_home))
        .route("/app/{org}/servers/new", get(new_form).post(create))
        .route("/app/{org}/servers/{id}", get(tools_page))
        .route("/app/{org}/servers/{id}/discover", post(rediscover))
        .route("/app/{org}/servers/{id}/delete", post(delete))
        .route(
            "/app/{org}/servers/{id}/policy",
            get(policy_page).post(save_policy),
        )
        .route("/app/{org}/servers/{id}/policy/restore/{n}", post(restore))
        .route(
            "/app/{org}/servers/{id}/policy/agents",
            post(create_agent_policy),
        )
        .route(
            "/app/{org}/servers/{id}/policy/agents/{agent}/delete",
            post(delete_agent_policy),
        )
        .route(
            "/app/{org}/servers/{id}/policy/shadow/stop",
            post(stop_shadow),
        )
        .route("/app/{org}/servers/{id}/policy/preview", post(preview))
        .route(
            "/app/{org}/servers/{id}/simulate",
            get(simulate_page).post(simulate),
        )
        .route(
            "/app/{org}/servers/{id}/connect",
            get(connect_page).post(connect_key),
        )
}

async fn servers_home(page: OrgPage) -> PageResult {
    Ok(Redirect::to(&format!("/app/{}", page.slug())).into_response())
}

pub struct CatalogEntry {
    pub title: &'static str,
    pub name: &'static str,
    pub url: &'static str,
    pub note: &'static str,
}

/// Popular remote MCP servers, to fill the form with one click.
const CATALOG: [CatalogEntry; 6] = [
    CatalogEntry {
        title: "GitHub",
        name: "github",
        url: "https://api.githubcopilot.com/mcp/",
        note: "a personal access token as Authorization: Bearer",
    },
    CatalogEntry {
        title: "Linear",
        name: "linear",
        url: "https://mcp.linear.app/mcp",
        note: "an API key as Authorization: Bearer",
    },
    CatalogEntry {
        title: "Sentry",
        name: "sentry",
        url: "https://mcp.sentry.dev/mcp",
        note: "an auth token",
    },
    CatalogEntry {
        title: "Notion",
        name: "notion",
        url: "https://mcp.notion.com/mcp",
        note: "an integration token",
    },
    CatalogEntry {
        title: "Stripe",
        name: "stripe",
        url: "https://mcp.stripe.com",
        note: "a restricted API key: money moves",
    },
    CatalogEntry {
        title: "Cloudflare docs",
        name: "cloudflare-docs",
        url: "https://docs.mcp.cloudflare.com/mcp",
        note: "no credentials",
    },
];

#[derive(Template)]
#[template(path = "server_new.html")]
struct NewServer {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    form: FormState,
    catalog: &'static [CatalogEntry],
}

async fn new_form(page: OrgPage) -> PageResult {
    page.access.require_manager()?;
    Ok(render(&NewServer {
        nav: page.nav("servers"),
        flash: None,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        form: FormState::default(),
        catalog: &CATALOG,
    }))
}

/// `Name: value` lines into headers; a line without a colon is a problem.
fn parse_headers(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut headers = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("line {} is not `Name: value`", i + 1));
        };
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    Ok(headers)
}

async fn create(State(state): State<ConsoleState>, page: OrgPage, form: FormData) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let values = vec![
        ("url".to_owned(), form.text("url")),
        ("name".to_owned(), form.text("name")),
        (
            "headers".to_owned(),
            form.get("headers").unwrap_or_default().to_owned(),
        ),
    ];
    let failed = |form: FormState, status: StatusCode| {
        Ok((
            status,
            render(&NewServer {
                nav: page.nav("servers"),
                flash: None,
                slug: page.slug().to_owned(),
                csrf: page.session.csrf.clone(),
                form,
                catalog: &CATALOG,
            }),
        )
            .into_response())
    };
    let headers = match parse_headers(form.get("headers").unwrap_or_default()) {
        Ok(h) => h,
        Err(problem) => {
            let state = FormState {
                values,
                errors: vec![("headers".into(), problem)],
                general: None,
            };
            return failed(state, StatusCode::UNPROCESSABLE_ENTITY);
        }
    };
    let request = CreateServerRequest {
        name: form.text("name"),
        url: Some(form.text("url")),
        transport: None,
        headers: (!headers.is_empty()).then_some(headers),
        command: None,
        env: None,
    };
    match server_routes::create_server(State(state.clone()), page.access.clone(), Json(request))
        .await
    {
        Ok((_, Json(server))) => Ok(Redirect::to(&format!(
            "/app/{}/servers/{}?done=registered",
            page.slug(),
            server.id
        ))
        .into_response()),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(e.into()),
        Err(e) => {
            let mut state = FormState::from_api_error(values, &e);
            if e.code == "name_taken" {
                state.general = None;
                state.errors.push(("name".into(), e.message.clone()));
            }
            failed(state, e.status)
        }
    }
}

/// The header of every server page.
pub struct ServerHead {
    pub id: Uuid,
    pub name: String,
    pub target: String,
    pub transport: String,
    pub status: String,
    pub status_detail: String,
    pub gateway_url: String,
    pub tool_count: usize,
    pub published: Option<i32>,
}

async fn head(state: &ConsoleState, page: &OrgPage, id: Uuid) -> Result<ServerHead, PageError> {
    let server = servers::get(state.db(), page.access.org_id(), id)
        .await
        .map_err(not_found_server)?;
    let tool_count = servers::tools(state.db(), page.access.org_id(), id)
        .await?
        .len();
    let published = policies::get(state.db(), page.access.org_id(), id, None)
        .await
        .ok()
        .and_then(|p| p.published.map(|v| v.version));
    Ok(ServerHead {
        id,
        target: target_of(&server),
        gateway_url: state.gateway_url(id),
        name: server.name,
        transport: server.transport,
        status: server.status,
        status_detail: server.status_detail.unwrap_or_default(),
        tool_count,
        published,
    })
}

pub struct ToolRow {
    /// For a changed tool: its reviewed definition against the current one.
    pub diff: Vec<DiffLine>,
    pub name: String,
    pub description: String,
    pub category: String,
    pub risk: String,
    pub evidence: Vec<String>,
    pub params: Vec<String>,
    pub changed: bool,
}

#[derive(Template)]
#[template(path = "server_tools.html")]
struct ToolsPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    can_manage: bool,
    tab: &'static str,
    server: ServerHead,
    tools: Vec<ToolRow>,
    changes: Option<String>,
    /// Calls of the last 24 h evaluated beside a shadow version (when there were any).
    shadow: Option<crate::routes::impact::ShadowSummary>,
}

#[derive(Debug, Deserialize)]
struct Done {
    done: Option<String>,
    v: Option<i32>,
    /// The builder addresses this agent's own policy.
    agent: Option<Uuid>,
}

async fn tools_view(
    state: &ConsoleState,
    page: &OrgPage,
    id: Uuid,
    flash: Option<Flash>,
    changes: Option<String>,
) -> PageResult {
    let server = head(state, page, id).await?;
    let Json(view) = server_routes::get_server(
        State(state.clone()),
        page.access.clone(),
        Path((page.slug().to_owned(), id)),
    )
    .await?;
    let reviewed = policies::reviewed_definitions(state.db(), page.access.org_id(), id)
        .await?
        .unwrap_or(Value::Null);
    // What the definition hash covers, for the diff of a changed tool.
    let reviewed_part = |d: &Value| {
        json!({"description": d.get("description"), "inputSchema": d.get("inputSchema"),
               "annotations": d.get("annotations")})
    };
    let tools = view
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| ToolRow {
            diff: match reviewed.get(&t.name) {
                Some(before) if t.changed_since_publish => diff(
                    &reviewed_part(before),
                    &json!({"description": t.description, "inputSchema": t.input_schema,
                            "annotations": t.annotations}),
                ),
                _ => Vec::new(),
            },
            params: t
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
            evidence: t
                .evidence
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            description: t.description.unwrap_or_default(),
            name: t.name,
            category: t.category,
            risk: t.risk,
            changed: t.changed_since_publish,
        })
        .collect();
    let Json(shadow) = crate::routes::impact::shadow_summary(
        State(state.clone()),
        page.access.clone(),
        Path((page.slug().to_owned(), id)),
        ApiQuery(crate::routes::impact::ShadowQuery { hours: None }),
    )
    .await?;
    Ok(render(&ToolsPage {
        nav: page.nav("servers"),
        flash,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        can_manage: page.can_manage(),
        tab: "tools",
        server,
        tools,
        changes,
        shadow: (shadow.calls > 0 || shadow.version.is_some()).then_some(shadow),
    }))
}

async fn tools_page(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    Query(done): Query<Done>,
) -> PageResult {
    let flash = match done.done.as_deref() {
        Some("registered") => Flash::ok(
            "Server added. Review its tools, then set its policy: nothing is callable until you publish one.",
        ),
        _ => None,
    };
    tools_view(&state, &page, ids.1, flash, None).await
}

async fn rediscover(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    match server_routes::rediscover(State(state.clone()), page.access.clone(), Path(ids)).await {
        Ok(Json(found)) => {
            let list = |key: &str| {
                found.changes[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "none".into())
            };
            let text = format!(
                "Discovered again. Added: {}. Removed: {}. Changed: {}.",
                list("added"),
                list("removed"),
                list("changed")
            );
            tools_view(&state, &page, id, None, Some(text)).await
        }
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            tools_view(&state, &page, id, Flash::error(e.message), None).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    server_routes::delete_server(State(state.clone()), page.access.clone(), Path(ids)).await?;
    Ok(Redirect::to(&format!("/app/{}", page.slug())).into_response())
}

pub struct DiffLine {
    /// `add`, `del` or `same`.
    pub kind: &'static str,
    pub sign: &'static str,
    pub text: String,
}

pub struct VersionRow {
    pub version: i32,
    pub published_at: String,
    pub published_by: String,
    pub enforced: bool,
    pub shadow: bool,
}

#[derive(Template)]
#[template(path = "server_policy.html")]
struct PolicyPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    can_manage: bool,
    tab: &'static str,
    server: ServerHead,
    /// The tools for the builder: `[{name, category, risk, recommended, params}]`.
    tools_json: String,
    document: String,
    problems: Vec<FieldProblem>,
    problems_json: String,
    diff: Vec<DiffLine>,
    versions: Vec<VersionRow>,
    /// The agent whose own policy is shown (`None`: the server's policy).
    agent: Option<AgentOption>,
    /// The agents with their own policy on this server, to switch to.
    agent_policies: Vec<AgentOption>,
    /// Live agents without their own policy, to give one.
    other_agents: Vec<AgentOption>,
    /// This policy's enforced and shadow versions.
    published: Option<i32>,
    shadow: Option<i32>,
}

pub struct AgentOption {
    pub id: Uuid,
    pub name: String,
    /// Its own policy's enforced version (`None`: a draft only).
    pub version: Option<i32>,
}

/// The hidden `agent` field of the builder's forms.
fn agent_field(form: &FormData) -> Result<Option<Uuid>, PageError> {
    match form.get("agent").map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            crate::error::ApiError::bad_request("invalid_body", "agent must be an agent id").into()
        }),
    }
}

fn policy_url(slug: &str, id: Uuid, agent: Option<Uuid>, done: &str) -> String {
    match agent {
        Some(a) => format!("/app/{slug}/servers/{id}/policy?agent={a}&{done}"),
        None => format!("/app/{slug}/servers/{id}/policy?{done}"),
    }
}

/// A line diff of two documents, pretty-printed.
fn diff(published: &Value, draft: &Value) -> Vec<DiffLine> {
    let old = serde_json::to_string_pretty(published).unwrap_or_default();
    let new = serde_json::to_string_pretty(draft).unwrap_or_default();
    if old == new {
        return Vec::new();
    }
    similar::TextDiff::from_lines(&old, &new)
        .iter_all_changes()
        .map(|change| {
            let (kind, sign) = match change.tag() {
                similar::ChangeTag::Insert => ("add", "+"),
                similar::ChangeTag::Delete => ("del", "-"),
                similar::ChangeTag::Equal => ("same", " "),
            };
            DiffLine {
                kind,
                sign,
                text: change.value().to_owned(),
            }
        })
        .collect()
}

async fn policy_view(
    state: &ConsoleState,
    page: &OrgPage,
    id: Uuid,
    agent: Option<Uuid>,
    flash: Option<Flash>,
    submitted: Option<(String, Vec<FieldProblem>)>,
) -> PageResult {
    let server = head(state, page, id).await?;
    let org_id = page.access.org_id();
    let Json(policy) = policy_routes::get_policy(
        State(state.clone()),
        page.access.clone(),
        Path((page.slug().to_owned(), id)),
        ApiQuery(PolicyScope { agent }),
    )
    .await?;
    let tools: Vec<Value> = servers::tools(state.db(), org_id, id)
        .await?
        .into_iter()
        .map(|t| {
            let params: Vec<Value> = t
                .definition
                .pointer("/inputSchema/properties")
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, schema)| {
                            json!({"name": name,
                                   "type": schema.get("type").cloned().unwrap_or(Value::Null)})
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({"name": t.name, "category": t.category, "risk": t.risk,
                   "recommended": t.recommended, "params": params})
        })
        .collect();
    let emails: HashMap<Uuid, String> = orgs::members(state.db(), org_id)
        .await?
        .into_iter()
        .map(|m| (m.user.id, m.user.email))
        .collect();
    let enforced = policy.published.as_ref().map(|p| p.version);
    let shadow = policy.shadow.as_ref().map(|p| p.version);
    let live_agents = portcullis_store::agents::list(state.db(), org_id).await?;
    let agent_policies: Vec<AgentOption> = if agent.is_some() {
        policies::agent_policies(state.db(), org_id, id)
            .await?
            .into_iter()
            .map(|a| AgentOption {
                id: a.agent_id,
                name: a.agent_name,
                version: a.version,
            })
            .collect()
    } else {
        policy
            .agent_policies
            .iter()
            .map(|a| AgentOption {
                id: a.agent_id,
                name: a.agent_name.clone(),
                version: a.version,
            })
            .collect()
    };
    let other_agents = live_agents
        .iter()
        .filter(|a| !agent_policies.iter().any(|p| p.id == a.id))
        .map(|a| AgentOption {
            id: a.id,
            name: a.name.clone(),
            version: None,
        })
        .collect();
    let current_agent = agent
        .and_then(|a| agent_policies.iter().find(|p| p.id == a))
        .map(|p| AgentOption {
            id: p.id,
            name: p.name.clone(),
            version: p.version,
        });
    let Json(versions) = policy_routes::list_versions(
        State(state.clone()),
        page.access.clone(),
        Path((page.slug().to_owned(), id)),
        ApiQuery(PolicyScope { agent }),
    )
    .await?;
    let versions = versions
        .versions
        .into_iter()
        .map(|v| VersionRow {
            version: v.version,
            published_at: when(&v.published_at),
            published_by: v
                .published_by
                .and_then(|u| emails.get(&u).cloned())
                .unwrap_or_else(|| "a former member".into()),
            enforced: Some(v.version) == enforced,
            shadow: Some(v.version) == shadow,
        })
        .collect();
    let diff = policy
        .published
        .as_ref()
        .map(|p| diff(&p.document, &policy.draft))
        .unwrap_or_default();
    let (document, problems) = submitted.unwrap_or_else(|| {
        (
            serde_json::to_string_pretty(&policy.draft).unwrap_or_default(),
            Vec::new(),
        )
    });
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        status,
        render(&PolicyPage {
            nav: page.nav("servers"),
            flash,
            slug: page.slug().to_owned(),
            csrf: page.session.csrf.clone(),
            can_manage: page.can_manage(),
            tab: "policy",
            server,
            tools_json: Value::Array(tools).to_string(),
            document,
            problems_json: serde_json::to_string(&problems).unwrap_or_else(|_| "[]".into()),
            problems,
            diff,
            versions,
            agent: current_agent,
            agent_policies,
            other_agents,
            published: enforced,
            shadow,
        }),
    )
        .into_response())
}

async fn policy_page(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    Query(done): Query<Done>,
) -> PageResult {
    let flash = match (done.done.as_deref(), done.v) {
        (Some("saved"), _) => Flash::ok("Draft saved. Publish it to enforce it."),
        (Some("published"), Some(v)) => Flash::ok(format!(
            "Published version {v}: every gateway enforces it now."
        )),
        (Some("shadow"), Some(v)) => Flash::ok(format!(
            "Version {v} runs in shadow: every call is evaluated against it too, and only recorded."
        )),
        (Some("stopped"), _) => Flash::ok("The shadow version is no longer evaluated."),
        (Some("created"), _) => Flash::ok(
            "This agent has its own policy now, copied from the server's. Publish it to make it govern the agent.",
        ),
        (Some("removed"), _) => {
            Flash::ok("The agent's own policy is removed: the server's policy governs it again.")
        }
        (Some("restored"), Some(v)) => Flash::ok(format!(
            "Version {v} is in the draft. Publish to enforce it again."
        )),
        _ => None,
    };
    policy_view(&state, &page, ids.1, done.agent, flash, None).await
}

async fn save_policy(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    let agent = agent_field(&form)?;
    let text = form.get("document").unwrap_or_default().to_owned();
    let document: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let problem = FieldProblem::new("", format!("the document is not valid JSON: {e}"));
            return policy_view(&state, &page, id, agent, None, Some((text, vec![problem]))).await;
        }
    };
    match policy_routes::put_policy(
        State(state.clone()),
        page.access.clone(),
        Path(ids.clone()),
        ApiQuery(PolicyScope { agent }),
        Json(document),
    )
    .await
    {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            return policy_view(&state, &page, id, agent, None, Some((text, e.problems))).await;
        }
        Err(e) => return Err(e.into()),
    }
    let action = form.get("action").unwrap_or("save");
    let target = if matches!(action, "publish" | "shadow") {
        let Json(published) = policy_routes::publish(
            State(state.clone()),
            page.access.clone(),
            Path(ids),
            ApiQuery(PolicyScope { agent }),
            OptionalJson(Some(policy_routes::PublishRequest {
                mode: Some(
                    if action == "shadow" {
                        "shadow"
                    } else {
                        "enforced"
                    }
                    .into(),
                ),
            })),
        )
        .await?;
        let done = if action == "shadow" {
            "shadow"
        } else {
            "published"
        };
        policy_url(
            page.slug(),
            id,
            agent,
            &format!("done={done}&v={}", published.version),
        )
    } else {
        policy_url(page.slug(), id, agent, "done=saved")
    };
    Ok(Redirect::to(&target).into_response())
}

async fn restore(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid, i32)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let (slug, id, n) = ids;
    let agent = agent_field(&form)?;
    let Json(version) = policy_routes::get_version(
        State(state.clone()),
        page.access.clone(),
        Path((slug.clone(), id, n)),
        ApiQuery(PolicyScope { agent }),
    )
    .await?;
    policy_routes::put_policy(
        State(state.clone()),
        page.access.clone(),
        Path((slug, id)),
        ApiQuery(PolicyScope { agent }),
        Json(version.document),
    )
    .await?;
    Ok(Redirect::to(&policy_url(
        page.slug(),
        id,
        agent,
        &format!("done=restored&v={n}"),
    ))
    .into_response())
}

async fn create_agent_policy(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    let Some(agent) = agent_field(&form)? else {
        return Err(crate::error::ApiError::bad_request("invalid_body", "choose an agent").into());
    };
    policy_routes::create_agent_policy(
        State(state.clone()),
        page.access.clone(),
        Path(ids),
        Json(policy_routes::CreateAgentPolicyRequest { agent_id: agent }),
    )
    .await?;
    Ok(Redirect::to(&policy_url(page.slug(), id, Some(agent), "done=created")).into_response())
}

async fn delete_agent_policy(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    policy_routes::delete_agent_policy(State(state.clone()), page.access.clone(), Path(ids))
        .await?;
    Ok(Redirect::to(&policy_url(page.slug(), id, None, "done=removed")).into_response())
}

async fn stop_shadow(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    let agent = agent_field(&form)?;
    policy_routes::stop_shadow(
        State(state.clone()),
        page.access.clone(),
        Path(ids),
        ApiQuery(PolicyScope { agent }),
    )
    .await?;
    Ok(Redirect::to(&policy_url(page.slug(), id, agent, "done=stopped")).into_response())
}

#[derive(Template)]
#[template(path = "server_preview.html")]
struct PreviewFragment {
    preview: Option<crate::routes::impact::PreviewResponse>,
    error: Option<String>,
    problems: Vec<FieldProblem>,
}

/// The impact preview of the document in the builder (an htmx fragment).
async fn preview(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let agent = agent_field(&form)?;
    let days = form.get("days").and_then(|d| d.trim().parse().ok());
    let text = form.get("document").unwrap_or_default();
    let document: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Ok(render(&PreviewFragment {
                preview: None,
                error: Some(format!("The document is not valid JSON: {e}")),
                problems: Vec::new(),
            })
            .into_response());
        }
    };
    let outcome = crate::routes::impact::preview(
        State(state.clone()),
        page.access.clone(),
        Path(ids),
        ApiQuery(PolicyScope { agent }),
        OptionalJson(Some(crate::routes::impact::PreviewRequest {
            days,
            document: Some(document),
        })),
    )
    .await;
    let fragment = match outcome {
        Ok(Json(preview)) => PreviewFragment {
            preview: Some(preview),
            error: None,
            problems: Vec::new(),
        },
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => PreviewFragment {
            preview: None,
            error: Some(e.message.clone()),
            problems: e.problems,
        },
        Err(e) => return Err(e.into()),
    };
    Ok(render(&fragment).into_response())
}

pub struct SimResult {
    pub decision: String,
    pub rule: String,
    pub policy: String,
    pub agent_text: Option<String>,
    pub limits: Vec<String>,
    pub approval: Option<String>,
}

#[derive(Template)]
#[template(path = "server_simulate.html")]
struct SimulatePage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    tab: &'static str,
    server: ServerHead,
    tools: Vec<String>,
    selected: String,
    arguments: String,
    draft: bool,
    skeletons_json: String,
    result: Option<SimResult>,
    error: Option<String>,
    /// The agents with their own policy: simulate theirs instead of the server's.
    agent_policies: Vec<AgentOption>,
    agent: Option<Uuid>,
}

/// Example arguments from a tool's input schema: each property with an empty value of its type.
fn skeleton(definition: &Value) -> Value {
    let mut args = serde_json::Map::new();
    if let Some(props) = definition
        .pointer("/inputSchema/properties")
        .and_then(Value::as_object)
    {
        for (name, schema) in props {
            let value = match schema.get("type").and_then(Value::as_str) {
                Some("number" | "integer") => json!(0),
                Some("boolean") => json!(false),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!(""),
            };
            args.insert(name.clone(), value);
        }
    }
    Value::Object(args)
}

async fn simulate_view(
    state: &ConsoleState,
    page: &OrgPage,
    id: Uuid,
    input: Option<(String, String, bool, Option<Uuid>)>,
    result: Option<SimResult>,
    error: Option<String>,
) -> PageResult {
    let server = head(state, page, id).await?;
    let agent_policies = policies::agent_policies(state.db(), page.access.org_id(), id)
        .await?
        .into_iter()
        .map(|a| AgentOption {
            id: a.agent_id,
            name: a.agent_name,
            version: a.version,
        })
        .collect();
    let tools = servers::tools(state.db(), page.access.org_id(), id).await?;
    let skeletons: serde_json::Map<String, Value> = tools
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                Value::String(
                    serde_json::to_string_pretty(&skeleton(&t.definition)).unwrap_or_default(),
                ),
            )
        })
        .collect();
    let (selected, arguments, draft, agent) = input.unwrap_or_else(|| {
        let first = tools.first();
        (
            first.map(|t| t.name.clone()).unwrap_or_default(),
            first
                .map(|t| serde_json::to_string_pretty(&skeleton(&t.definition)).unwrap_or_default())
                .unwrap_or_else(|| "{}".into()),
            server.published.is_none(),
            None,
        )
    });
    Ok(render(&SimulatePage {
        nav: page.nav("servers"),
        flash: None,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        tab: "simulate",
        server,
        tools: tools.into_iter().map(|t| t.name).collect(),
        selected,
        arguments,
        draft,
        skeletons_json: Value::Object(skeletons).to_string(),
        result,
        error,
        agent_policies,
        agent,
    }))
}

async fn simulate_page(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
) -> PageResult {
    simulate_view(&state, &page, ids.1, None, None, None).await
}

async fn simulate(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    let tool = form.text("tool");
    let text = form.get("arguments").unwrap_or_default().to_owned();
    let draft = form.get("draft") == Some("true");
    let agent = agent_field(&form)?;
    let input = Some((tool.clone(), text.clone(), draft, agent));
    let arguments: Value = if text.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                let error = format!("The arguments are not valid JSON: {e}");
                return simulate_view(&state, &page, id, input, None, Some(error)).await;
            }
        }
    };
    let request = SimulateRequest {
        tool,
        arguments,
        agent_id: agent,
        draft,
    };
    match policy_routes::simulate(
        State(state.clone()),
        page.access.clone(),
        Path(ids),
        ApiQuery(PolicyScope { agent }),
        Json(request),
    )
    .await
    {
        Ok(Json(r)) => {
            let result = SimResult {
                decision: r.decision.to_owned(),
                rule: r.rule,
                policy: match (r.version, agent.is_some()) {
                    (Some(v), false) => format!("published version {v}"),
                    (None, false) => "draft".into(),
                    (Some(v), true) => format!("the agent's own policy, published version {v}"),
                    (None, true) => "the agent's own policy, draft".into(),
                },
                agent_text: r.agent_text,
                limits: r
                    .limits
                    .iter()
                    .map(|l| {
                        format!(
                            "{}: {} per {} s, per {}",
                            l["counter"].as_str().unwrap_or_default(),
                            l["max"],
                            l["window_seconds"],
                            l["scope"].as_str().unwrap_or_default()
                        )
                    })
                    .collect(),
                approval: r
                    .approval
                    .map(|a| format!("up to {} s", a["timeout_seconds"])),
            };
            simulate_view(&state, &page, id, input, Some(result), None).await
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(e.into()),
        Err(e) => simulate_view(&state, &page, id, input, None, Some(e.message)).await,
    }
}

pub struct Snippet {
    pub title: &'static str,
    pub hint: &'static str,
    pub body: String,
}

#[derive(Template)]
#[template(path = "server_connect.html")]
struct ConnectPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    is_admin: bool,
    tab: &'static str,
    server: ServerHead,
    key: Option<NewKey>,
    snippets: Vec<Snippet>,
    /// Agents that may reach this server, whose key can be rotated into the snippets.
    agents: Vec<super::org::Named>,
}

/// Ready-to-paste client configuration for the gateway URL and a key.
fn snippets(name: &str, url: &str, key: &str) -> Vec<Snippet> {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let bearer = format!("Bearer {key}");
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    vec![
        Snippet {
            title: "Claude Code",
            hint: "Run in a terminal.",
            body: format!(
                "claude mcp add --transport http {name} {url} --header \"Authorization: {bearer}\""
            ),
        },
        Snippet {
            title: "Claude Desktop",
            hint: "In claude_desktop_config.json (Settings → Developer → Edit config); needs Node for mcp-remote.",
            body: pretty(json!({"mcpServers": {name.clone(): {
                "command": "npx",
                "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
                "env": {"AUTH_HEADER": bearer}
            }}})),
        },
        Snippet {
            title: "Cursor",
            hint: "In ~/.cursor/mcp.json (or .cursor/mcp.json in a project).",
            body: pretty(
                json!({"mcpServers": {name.clone(): {"url": url, "headers": {"Authorization": bearer}}}}),
            ),
        },
        Snippet {
            title: "VS Code",
            hint: "In .vscode/mcp.json.",
            body: pretty(
                json!({"servers": {name: {"type": "http", "url": url, "headers": {"Authorization": bearer}}}}),
            ),
        },
    ]
}

async fn connect_view(
    state: &ConsoleState,
    page: &OrgPage,
    id: Uuid,
    key: Option<NewKey>,
) -> PageResult {
    let server = head(state, page, id).await?;
    let shown = key
        .as_ref()
        .map(|k| k.key.as_str())
        .unwrap_or("pcl_YOUR_KEY");
    let snippets = snippets(&server.name, &server.gateway_url, shown);
    let agents = portcullis_store::agents::list(state.db(), page.access.org_id())
        .await?
        .into_iter()
        .filter(|a| a.may_reach(id))
        .map(|a| super::org::Named {
            id: a.id,
            name: a.name,
        })
        .collect();
    Ok(render(&ConnectPage {
        agents,
        nav: page.nav("servers"),
        flash: None,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        is_admin: page.is_admin(),
        tab: "connect",
        server,
        key,
        snippets,
    }))
}

async fn connect_page(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
) -> PageResult {
    connect_view(&state, &page, ids.1, None).await
}

async fn connect_key(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let id = ids.1;
    let key = if let Some(agent_id) = form.get("agent_id").and_then(|a| a.parse::<Uuid>().ok()) {
        // An existing agent: its key is never shown again, so give it a new one.
        let agent = portcullis_store::agents::get(state.db(), page.access.org_id(), agent_id)
            .await
            .map_err(|_| PageError::NotFound)?;
        let Json(rotated) = agent_routes::rotate_agent(
            State(state.clone()),
            page.access.clone(),
            Path((page.slug().to_owned(), agent_id)),
        )
        .await?;
        NewKey {
            agent: agent.name,
            key: rotated.key,
        }
    } else {
        let request = CreateAgentRequest {
            name: form.text("name"),
            servers: Some(vec![id]),
        };
        let (_, Json(created)) =
            agent_routes::create_agent(State(state.clone()), page.access.clone(), Json(request))
                .await?;
        NewKey {
            agent: created.agent.name,
            key: created.key,
        }
    };
    connect_view(&state, &page, id, Some(key)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_one_per_line() {
        let h = parse_headers("Authorization: Bearer a:b\n\n X-Api-Key : k \n").unwrap();
        assert_eq!(h["Authorization"], "Bearer a:b");
        assert_eq!(h["X-Api-Key"], "k");
        assert!(parse_headers("no colon here").is_err());
    }

    #[test]
    fn skeletons_follow_the_schema_types() {
        let def = json!({"inputSchema": {"properties": {"a": {"type": "number"}, "b": {"type": "string"}, "c": {"type": "boolean"}}}});
        assert_eq!(skeleton(&def), json!({"a": 0, "b": "", "c": false}));
    }
}

//! An organization's pages: the dashboard, agents, members and settings.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use portcullis_store::orgs::Role;
use portcullis_store::{activity, agents, policies, servers};
use uuid::Uuid;

use super::{Flash, FormData, Nav, OrgPage, PageError, PageResult, render, when};
use crate::ConsoleState;
use crate::error::{Json, Path};
use crate::routes::accounts::{self, AddMemberRequest};
use crate::routes::agents::{self as agent_routes, CreateAgentRequest};
use crate::routes::settings::{self as settings_routes, SettingsUpdate};

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/app/{org}", get(dashboard))
        .route("/app/{org}/agents", get(agents_page).post(create_agent))
        .route("/app/{org}/agents/{id}/rotate", post(rotate_agent))
        .route("/app/{org}/agents/{id}/revoke", post(revoke_agent))
        .route("/app/{org}/members", get(members_page).post(add_member))
        .route(
            "/app/{org}/settings",
            get(settings_page).post(save_settings),
        )
}

pub struct ServerRow {
    pub id: Uuid,
    pub name: String,
    pub target: String,
    pub status: String,
    pub tools: usize,
    pub low: usize,
    pub medium: usize,
    pub high: usize,
    pub critical: usize,
    pub version: Option<i32>,
    pub calls: i64,
    pub denials: i64,
    /// `p50 / p95` latency in ms, or empty.
    pub latency: String,
}

/// `url`, or the command line of a stdio server.
pub fn target_of(server: &servers::Server) -> String {
    match (&server.url, &server.command) {
        (Some(url), _) => url.clone(),
        (None, Some(command)) => command
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    org_name: String,
    can_manage: bool,
    servers: Vec<ServerRow>,
    agents: usize,
    pending: i64,
    calls: i64,
    denials: i64,
}

async fn dashboard(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    let org_id = page.access.org_id();
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let counts: HashMap<Option<Uuid>, activity::ServerCounts> =
        activity::counts_since(state.db(), org_id, since)
            .await?
            .into_iter()
            .map(|c| (c.server_id, c))
            .collect();
    let mut rows = Vec::new();
    for server in servers::list(state.db(), org_id).await? {
        let tools = servers::tools(state.db(), org_id, server.id).await?;
        let risk = |r: &str| tools.iter().filter(|t| t.risk == r).count();
        let version = policies::get(state.db(), org_id, server.id, None)
            .await
            .ok()
            .and_then(|p| p.published.map(|v| v.version));
        let c = counts.get(&Some(server.id)).cloned().unwrap_or_default();
        rows.push(ServerRow {
            id: server.id,
            target: target_of(&server),
            name: server.name,
            status: server.status,
            tools: tools.len(),
            low: risk("low"),
            medium: risk("medium"),
            high: risk("high"),
            critical: risk("critical"),
            version,
            calls: c.calls,
            denials: c.denials,
            latency: match (c.p50_ms, c.p95_ms) {
                (Some(p50), Some(p95)) => format!("{p50:.0} / {p95:.0} ms"),
                _ => String::new(),
            },
        });
    }
    Ok(render(&Dashboard {
        nav: page.nav("dashboard"),
        flash: None,
        slug: page.slug().to_owned(),
        org_name: page.access.org.name.clone(),
        can_manage: page.can_manage(),
        agents: agents::list(state.db(), org_id).await?.len(),
        pending: portcullis_store::approvals::pending_count(state.db(), org_id).await?,
        calls: counts.values().map(|c| c.calls).sum(),
        denials: counts.values().map(|c| c.denials).sum(),
        servers: rows,
    }))
}

pub struct AgentRow {
    pub id: Uuid,
    pub name: String,
    pub key_prefix: String,
    pub servers: String,
    pub created_at: String,
    pub last_used: String,
}

pub struct NewKey {
    pub agent: String,
    pub key: String,
}

pub struct Named {
    pub id: Uuid,
    pub name: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    is_admin: bool,
    agents: Vec<AgentRow>,
    servers: Vec<Named>,
    new_key: Option<NewKey>,
    name_error: Option<String>,
}

async fn agents_view(
    state: &ConsoleState,
    page: &OrgPage,
    flash: Option<Flash>,
    new_key: Option<NewKey>,
    name_error: Option<String>,
) -> PageResult {
    let org_id = page.access.org_id();
    let server_list = servers::list(state.db(), org_id).await?;
    let names: HashMap<Uuid, String> = server_list.iter().map(|s| (s.id, s.name.clone())).collect();
    let rows = agents::list(state.db(), org_id)
        .await?
        .into_iter()
        .map(|a| AgentRow {
            servers: match &a.servers {
                None => "every server".into(),
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| names.get(id).cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            created_at: when(&a.created_at),
            last_used: a
                .last_used_at
                .as_ref()
                .map(when)
                .unwrap_or_else(|| "never".into()),
            id: a.id,
            name: a.name,
            key_prefix: a.key_prefix,
        })
        .collect();
    let status = if name_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        render(&Agents {
            nav: page.nav("agents"),
            flash,
            slug: page.slug().to_owned(),
            csrf: page.session.csrf.clone(),
            is_admin: page.is_admin(),
            agents: rows,
            servers: server_list
                .into_iter()
                .map(|s| Named {
                    id: s.id,
                    name: s.name,
                })
                .collect(),
            new_key,
            name_error,
        }),
    )
        .into_response())
}

async fn agents_page(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    agents_view(&state, &page, None, None, None).await
}

async fn create_agent(
    State(state): State<ConsoleState>,
    page: OrgPage,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let servers = if form.get("scope") == Some("some") {
        Some(
            form.all("server")
                .into_iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        )
    } else {
        None
    };
    let name = form.text("name");
    let request = CreateAgentRequest {
        name: name.clone(),
        servers,
    };
    match agent_routes::create_agent(State(state.clone()), page.access.clone(), Json(request)).await
    {
        Ok((_, Json(created))) => {
            let key = NewKey {
                agent: created.agent.name.clone(),
                key: created.key,
            };
            agents_view(&state, &page, None, Some(key), None).await
        }
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            agents_view(&state, &page, None, None, Some(e.message)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn rotate_agent(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let agent = agents::get(state.db(), page.access.org_id(), ids.1)
        .await
        .map_err(|_| PageError::NotFound)?;
    let Json(rotated) =
        agent_routes::rotate_agent(State(state.clone()), page.access.clone(), Path(ids)).await?;
    let key = NewKey {
        agent: agent.name,
        key: rotated.key,
    };
    agents_view(
        &state,
        &page,
        Flash::ok("Key rotated: the old key no longer works."),
        Some(key),
        None,
    )
    .await
}

async fn revoke_agent(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    agent_routes::revoke_agent(State(state.clone()), page.access.clone(), Path(ids)).await?;
    agents_view(
        &state,
        &page,
        Flash::ok("Agent revoked: its key no longer works."),
        None,
        None,
    )
    .await
}

pub struct MemberRow {
    pub email: String,
    pub role: &'static str,
    pub joined: String,
}

#[derive(Template)]
#[template(path = "members.html")]
struct Members {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    is_admin: bool,
    members: Vec<MemberRow>,
    error: Option<String>,
}

async fn members_view(
    state: &ConsoleState,
    page: &OrgPage,
    flash: Option<Flash>,
    error: Option<String>,
) -> PageResult {
    let members = portcullis_store::orgs::members(state.db(), page.access.org_id())
        .await?
        .into_iter()
        .map(|m| MemberRow {
            email: m.user.email,
            role: m.role.as_str(),
            joined: when(&m.joined_at),
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        render(&Members {
            nav: page.nav("members"),
            flash,
            slug: page.slug().to_owned(),
            csrf: page.session.csrf.clone(),
            is_admin: page.is_admin(),
            members,
            error,
        }),
    )
        .into_response())
}

async fn members_page(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    members_view(&state, &page, None, None).await
}

async fn add_member(
    State(state): State<ConsoleState>,
    page: OrgPage,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let Some(role) = Role::parse(form.get("role").unwrap_or_default()) else {
        return members_view(&state, &page, None, Some("Pick a role.".into())).await;
    };
    let request = AddMemberRequest {
        email: form.text("email"),
        role,
    };
    match accounts::add_member(State(state.clone()), page.access.clone(), Json(request)).await {
        Ok(_) => members_view(&state, &page, Flash::ok("Member saved."), None).await,
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(e.into()),
        Err(e) => members_view(&state, &page, None, Some(e.message)).await,
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
struct Settings {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    is_admin: bool,
    webhook: String,
    store_values: bool,
    error: Option<String>,
    deliveries: Vec<DeliveryRow>,
}

pub struct DeliveryRow {
    pub status: String,
    pub attempts: i32,
    pub error: String,
    pub when: String,
}

fn delivery_rows(view: &crate::routes::settings::SettingsView) -> Vec<DeliveryRow> {
    view.webhook_deliveries
        .iter()
        .map(|d| DeliveryRow {
            status: d.status.clone(),
            attempts: d.attempts,
            error: d.last_error.clone().unwrap_or_default(),
            when: when(&d.created_at),
        })
        .collect()
}

async fn settings_page(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    let Json(settings) =
        settings_routes::get_settings(State(state.clone()), page.access.clone()).await?;
    Ok(render(&Settings {
        deliveries: delivery_rows(&settings),
        nav: page.nav("settings"),
        flash: None,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        is_admin: page.is_admin(),
        webhook: settings.approval_webhook_url.clone().unwrap_or_default(),
        store_values: settings.store_argument_values,
        error: None,
    }))
}

async fn save_settings(
    State(state): State<ConsoleState>,
    page: OrgPage,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let webhook = form.text("approval_webhook_url");
    let update = SettingsUpdate {
        approval_webhook_url: Some((!webhook.is_empty()).then_some(webhook.clone())),
        store_argument_values: Some(form.get("store_argument_values") == Some("true")),
    };
    // The saved settings come back with the deliveries; only a refusal reads them again.
    let (flash, error, store_values, deliveries) = match settings_routes::put_settings(
        State(state.clone()),
        page.access.clone(),
        Json(update),
    )
    .await
    {
        Ok(Json(saved)) => (
            Flash::ok("Settings saved."),
            None,
            saved.store_argument_values,
            delivery_rows(&saved),
        ),
        Err(e) if e.status == StatusCode::FORBIDDEN => return Err(e.into()),
        Err(e) => {
            let Json(current) =
                settings_routes::get_settings(State(state.clone()), page.access.clone()).await?;
            (
                None,
                Some(e.message),
                form.get("store_argument_values") == Some("true"),
                delivery_rows(&current),
            )
        }
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        render(&Settings {
            nav: page.nav("settings"),
            flash,
            slug: page.slug().to_owned(),
            csrf: page.session.csrf.clone(),
            is_admin: page.is_admin(),
            webhook,
            store_values,
            error,
            deliveries,
        }),
    )
        .into_response())
}

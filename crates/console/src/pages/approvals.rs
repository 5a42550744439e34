//! The approvals page: what waits for a person, refreshed every 2 s (htmx), and the decisions.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use portcullis_store::approvals;
use uuid::Uuid;

use super::{Flash, FormData, Nav, OrgPage, PageResult, render, when};
use crate::ConsoleState;
use crate::error::{OptionalJson, Path};
use crate::routes::approvals::{self as approval_routes, DecisionRequest};

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/app/{org}/approvals", get(page))
        .route("/app/{org}/approvals/list", get(list))
        .route("/app/{org}/approvals/{id}", post(decide))
}

pub struct Pending {
    pub id: Uuid,
    pub tool: String,
    pub server_id: Uuid,
    pub server_name: String,
    pub agent: String,
    pub reason: Option<String>,
    /// The arguments, pretty-printed: what the person decides on.
    pub arguments: String,
    pub expires: String,
}

pub struct Recent {
    pub tool: String,
    pub agent: String,
    pub server_name: String,
    pub status: String,
    pub by: String,
    pub when: String,
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    slug: String,
    csrf: String,
    can_decide: bool,
    pending: Vec<Pending>,
    recent: Vec<Recent>,
}

#[derive(Template)]
#[template(path = "approvals_list.html")]
struct ApprovalsList {
    slug: String,
    csrf: String,
    can_decide: bool,
    pending: Vec<Pending>,
    recent: Vec<Recent>,
}

async fn rows(
    state: &ConsoleState,
    page: &OrgPage,
) -> Result<(Vec<Pending>, Vec<Recent>), super::PageError> {
    let now = chrono::Utc::now();
    let all = approvals::list(state.db(), page.access.org_id(), None, 50).await?;
    let mut pending = Vec::new();
    let mut recent = Vec::new();
    for a in all {
        if a.status == "pending" && a.expires_at > now {
            pending.push(Pending {
                id: a.id,
                arguments: serde_json::to_string_pretty(&a.arguments).unwrap_or_default(),
                expires: a.expires_at.format("%H:%M:%S UTC").to_string(),
                tool: a.tool,
                server_id: a.server_id,
                server_name: a.server_name,
                agent: a.agent_name,
                reason: a.reason,
            });
        } else if recent.len() < 20 {
            let status = if a.status == "pending" {
                "expired".to_owned()
            } else {
                a.status
            };
            recent.push(Recent {
                by: match (&a.decided_by_email, &a.note) {
                    (Some(who), Some(note)) => format!("by {who}: {note}"),
                    (Some(who), None) => format!("by {who}"),
                    _ => String::new(),
                },
                when: when(&a.decided_at.unwrap_or(a.requested_at)),
                tool: a.tool,
                agent: a.agent_name,
                server_name: a.server_name,
                status,
            });
        }
    }
    pending.reverse();
    Ok((pending, recent))
}

async fn page(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    let (pending, recent) = rows(&state, &page).await?;
    Ok(render(&ApprovalsPage {
        nav: page.nav("approvals"),
        flash: None,
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        can_decide: page.can_manage(),
        pending,
        recent,
    }))
}

/// The list alone, for the page's refresh.
async fn list(State(state): State<ConsoleState>, page: OrgPage) -> PageResult {
    let (pending, recent) = rows(&state, &page).await?;
    Ok(render(&ApprovalsList {
        slug: page.slug().to_owned(),
        csrf: page.session.csrf.clone(),
        can_decide: page.can_manage(),
        pending,
        recent,
    }))
}

async fn decide(
    State(state): State<ConsoleState>,
    page: OrgPage,
    Path(ids): Path<(String, Uuid)>,
    form: FormData,
) -> PageResult {
    page.session.check_csrf(&state, &form)?;
    let body = OptionalJson(Some(DecisionRequest {
        note: Some(form.text("note")).filter(|n| !n.is_empty()),
    }));
    let decided = if form.get("decision") == Some("approve") {
        approval_routes::approve(State(state.clone()), page.access.clone(), Path(ids), body).await
    } else {
        approval_routes::deny(State(state.clone()), page.access.clone(), Path(ids), body).await
    };
    match decided {
        Ok(_) => Ok(Redirect::to(&format!("/app/{}/approvals", page.slug())).into_response()),
        Err(e) if e.status == StatusCode::CONFLICT => {
            let (pending, recent) = rows(&state, &page).await?;
            Ok((
                StatusCode::CONFLICT,
                render(&ApprovalsPage {
                    nav: page.nav("approvals"),
                    flash: Flash::error(
                        "Too late: this call was already decided, expired, or abandoned.",
                    ),
                    slug: page.slug().to_owned(),
                    csrf: page.session.csrf.clone(),
                    can_decide: page.can_manage(),
                    pending,
                    recent,
                }),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

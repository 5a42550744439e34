//! The console in the browser: server-rendered pages (askama templates in `templates/`), a
//! little htmx, one stylesheet, and a small script for the policy builder and copy buttons.
//!
//! Pages call the same handlers as the JSON API, so a rule (a role, a validation, tenant
//! scoping) lives in one place. The session is the API token in an HttpOnly, SameSite=Lax cookie;
//! every form carries a CSRF token derived from the session (an HMAC), checked on every POST.

mod account;
mod activity;
mod approvals;
mod org;
mod server;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use portcullis_store::orgs::{self, Role};
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::{OrgAccess, session_token};
use crate::error::ApiError;

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        .route("/static/htmx-2.0.11.min.js", get(htmx))
        .merge(account::router())
        .merge(org::router())
        .merge(approvals::router())
        .merge(activity::router())
        .merge(server::router())
        .layer(axum::middleware::map_response(security_headers))
}

/// Pages may not be framed, run only our own scripts, and post only to us.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/style.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    )
}

async fn htmx() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/htmx-2.0.11.min.js"),
    )
}

/// What the navigation bar shows.
#[derive(Debug, Clone)]
pub struct Nav {
    pub email: String,
    pub org_slug: String,
    pub org_name: String,
    pub role: &'static str,
    pub csrf: String,
    /// Which section is open: `dashboard`, `servers`, `approvals`, `agents`, `members`,
    /// `settings`.
    pub current: &'static str,
    /// Calls waiting for approval (the badge).
    pub pending: i64,
}

/// A one-line message above the page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: &'static str,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Option<Flash> {
        Some(Flash {
            kind: "ok",
            text: text.into(),
        })
    }

    pub fn error(text: impl Into<String>) -> Option<Flash> {
        Some(Flash {
            kind: "error",
            text: text.into(),
        })
    }
}

/// Why a page cannot be shown.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in: to the log-in page, then back to `next`.
    SignIn {
        next: String,
    },
    NotFound,
    Forbidden(String),
    /// The form's CSRF token is missing or wrong.
    Csrf,
    Failed(String),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        match e.status {
            StatusCode::NOT_FOUND => PageError::NotFound,
            StatusCode::FORBIDDEN => PageError::Forbidden(e.message),
            StatusCode::UNAUTHORIZED => PageError::SignIn {
                next: "/app".into(),
            },
            _ => PageError::Failed(e.message),
        }
    }
}

impl From<portcullis_store::Error> for PageError {
    fn from(e: portcullis_store::Error) -> Self {
        ApiError::from(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Option<Nav>,
    flash: Option<Flash>,
    title: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::SignIn { next } => {
                let target = format!(
                    "/login?next={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
                return Redirect::to(&target).into_response();
            }
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it belongs to an organization you are not in.".into(),
            ),
            PageError::Forbidden(message) => (StatusCode::FORBIDDEN, "Not allowed", message),
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was not sent from this session's page. Go back, reload the page and try again."
                    .into(),
            ),
            PageError::Failed(message) => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", message),
        };
        let page = ErrorPage {
            nav: None,
            flash: None,
            title: title.into(),
            message,
        };
        (status, render(&page)).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;

/// Renders a template to an HTML response (a 500 page if the template fails).
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The signed-in user of a page request (from the session cookie).
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: Uuid,
    /// The session token (the cookie's value).
    pub token: String,
    pub csrf: String,
}

impl Session {
    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, state: &ConsoleState, form: &FormData) -> Result<(), PageError> {
        if state.csrf_matches(&self.token, form.get("_csrf").unwrap_or_default()) {
            Ok(())
        } else {
            Err(PageError::Csrf)
        }
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let sign_in = || PageError::SignIn {
            next: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/app".into()),
        };
        let token = session_token(&parts.headers, state.secure_cookies()).ok_or_else(sign_in)?;
        let user_id = state.signed_in(&token).await?.ok_or_else(sign_in)?;
        Ok(Session {
            user_id,
            csrf: state.csrf_token(&token),
            token,
        })
    }
}

/// A page of an organization (`/app/{org}/…`): the session, the caller's role there, and the
/// navigation bar.
#[derive(Debug, Clone)]
pub struct OrgPage {
    pub session: Session,
    pub access: OrgAccess,
    pub email: String,
    pub pending: i64,
}

impl OrgPage {
    pub fn slug(&self) -> &str {
        &self.access.org.slug
    }

    pub fn nav(&self, current: &'static str) -> Option<Nav> {
        Some(Nav {
            email: self.email.clone(),
            org_slug: self.access.org.slug.clone(),
            org_name: self.access.org.name.clone(),
            role: self.access.role.as_str(),
            csrf: self.session.csrf.clone(),
            current,
            pending: self.pending,
        })
    }

    pub fn can_manage(&self) -> bool {
        self.access.role.can_manage_policies()
    }

    pub fn is_admin(&self) -> bool {
        self.access.role == Role::Admin
    }
}

impl FromRequestParts<ConsoleState> for OrgPage {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| PageError::NotFound)?;
        let slug = params
            .iter()
            .find(|(name, _)| *name == "org")
            .map(|(_, value)| value.to_owned())
            .ok_or(PageError::NotFound)?;
        let membership = orgs::membership(state.db(), &slug, session.user_id)
            .await
            .map_err(|e| match e {
                portcullis_store::Error::NotFound => PageError::NotFound,
                other => other.into(),
            })?;
        let user = orgs::user_by_id(state.db(), session.user_id)
            .await
            .map_err(|_| PageError::SignIn {
                next: "/app".into(),
            })?;
        let pending =
            portcullis_store::approvals::pending_count(state.db(), membership.organization.id)
                .await?;
        Ok(OrgPage {
            pending,
            access: OrgAccess {
                user_id: session.user_id,
                org: membership.organization,
                role: membership.role,
            },
            session,
            email: user.email,
        })
    }
}

/// A URL-encoded form, with repeated fields kept (checkbox groups).
#[derive(Debug, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field, trimmed, or empty.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(FormData(
            url::form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// A form's values and the problems to show beside its fields.
#[derive(Debug, Default, Clone)]
pub struct FormState {
    pub values: Vec<(String, String)>,
    /// Problems by field name (`email`, `url`, …).
    pub errors: Vec<(String, String)>,
    /// A problem that belongs to no one field.
    pub general: Option<String>,
}

impl FormState {
    pub fn error(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, m)| m.as_str())
    }

    pub fn value(&self, field: &str) -> &str {
        self.values
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Places an API error's problems beside their fields (`/email` → `email`); the rest, and
    /// an error without problems, become the general message.
    pub fn from_api_error(values: Vec<(String, String)>, error: &ApiError) -> FormState {
        let mut state = FormState {
            values,
            ..FormState::default()
        };
        for problem in &error.problems {
            let field = problem
                .path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default();
            if field.is_empty() || !state.values.iter().any(|(f, _)| f == field) {
                state.general = Some(problem.message.clone());
            } else if state.error(field).is_none() {
                state
                    .errors
                    .push((field.to_owned(), problem.message.clone()));
            }
        }
        if error.problems.is_empty() {
            state.general = Some(error.message.clone());
        }
        state
    }
}

/// Times as people read them: `2026-11-24 12:36 UTC`.
pub fn when(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

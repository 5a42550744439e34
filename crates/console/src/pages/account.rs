//! The landing page, sign-up, log-in and log-out.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use portcullis_store::orgs;
use serde::Deserialize;

use super::{Flash, FormData, FormState, Nav, PageError, PageResult, Session, render};
use crate::ConsoleState;
use crate::auth::{ClientAddr, clear_session_cookie, session_cookie, session_token};
use crate::error::Json;
use crate::routes::accounts::{self, LoginRequest, SignupRequest};

pub fn router() -> Router<ConsoleState> {
    Router::new()
        .route("/", get(landing))
        .route("/signup", get(signup_form).post(signup))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/app", get(app_home))
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing {
    nav: Option<Nav>,
    flash: Option<Flash>,
}

async fn landing(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let signed_in = match session_token(&headers, state.secure_cookies()) {
        Some(token) => matches!(state.signed_in(&token).await, Ok(Some(_))),
        None => false,
    };
    if signed_in {
        return Redirect::to("/app").into_response();
    }
    render(&Landing {
        nav: None,
        flash: None,
    })
}

#[derive(Template)]
#[template(path = "signup.html")]
struct Signup {
    nav: Option<Nav>,
    flash: Option<Flash>,
    form: FormState,
}

async fn signup_form() -> Response {
    render(&Signup {
        nav: None,
        flash: None,
        form: FormState::default(),
    })
}

/// Signs the browser in: the session cookie, then to `target`.
fn signed_in(state: &ConsoleState, token: &str, target: &str) -> Response {
    let mut response = Redirect::to(target).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session_cookie(token, state.secure_cookies())) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A sign-up or log-in posted from another site (a page that signs the victim into the
/// attacker's account) is refused: browsers say where a form came from.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (
        headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
        host,
    ) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_none_or(|(_, rest)| rest != host),
        _ => false,
    }
}

fn refused_cross_site() -> Response {
    PageError::Forbidden(
        "This form was sent from another site. Open Portcullis and try again.".into(),
    )
    .into_response()
}

async fn signup(State(state): State<ConsoleState>, headers: HeaderMap, form: FormData) -> Response {
    if cross_site(&headers) {
        return refused_cross_site();
    }
    let values = vec![
        ("email".to_owned(), form.text("email")),
        ("organization".to_owned(), form.text("organization")),
        ("password".to_owned(), String::new()),
    ];
    let request = SignupRequest {
        email: form.text("email"),
        password: form.get("password").unwrap_or_default().to_owned(),
        organization: form.text("organization"),
    };
    match accounts::signup(State(state.clone()), Json(request)).await {
        Ok((_, Json(created))) => signed_in(
            &state,
            &created.token,
            &format!("/app/{}", created.organization.slug),
        ),
        Err(error) => {
            let mut form = FormState::from_api_error(values, &error);
            if error.code == "email_taken" {
                form.general = None;
                form.errors.push((
                    "email".into(),
                    "An account with this email exists: log in instead.".into(),
                ));
            }
            (
                error.status,
                render(&Signup {
                    nav: None,
                    flash: None,
                    form,
                }),
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    nav: Option<Nav>,
    flash: Option<Flash>,
    form: FormState,
    next: String,
}

#[derive(Debug, Deserialize)]
struct Next {
    next: Option<String>,
}

/// Only paths of this console, so a link cannot send someone elsewhere after log-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/app") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/app".to_owned(),
    }
}

async fn login_form(Query(query): Query<Next>) -> Response {
    render(&Login {
        nav: None,
        flash: None,
        form: FormState::default(),
        next: safe_next(query.next.as_deref()),
    })
}

async fn login(
    State(state): State<ConsoleState>,
    addr: ClientAddr,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    if cross_site(&headers) {
        return refused_cross_site();
    }
    let next = safe_next(form.get("next"));
    let request = LoginRequest {
        email: form.text("email"),
        password: form.get("password").unwrap_or_default().to_owned(),
    };
    match accounts::login(State(state.clone()), addr, Json(request)).await {
        Ok(Json(answer)) => signed_in(&state, &answer.token, &next),
        Err(error) => {
            let message = if error.status == axum::http::StatusCode::UNAUTHORIZED {
                "Wrong email or password.".to_owned()
            } else {
                error.message.clone()
            };
            let form = FormState {
                values: vec![("email".into(), form.text("email"))],
                errors: Vec::new(),
                general: Some(message),
            };
            (
                error.status,
                render(&Login {
                    nav: None,
                    flash: None,
                    form,
                    next,
                }),
            )
                .into_response()
        }
    }
}

async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: FormData,
) -> PageResult {
    if let Some(token) = session_token(&headers, state.secure_cookies())
        && !state.csrf_matches(&token, form.get("_csrf").unwrap_or_default())
    {
        return Err(PageError::Csrf);
    }
    // The token itself ends, not only the browser's copy: a copied cookie stops working too.
    if let Some(token) = session_token(&headers, state.secure_cookies()) {
        state.revoke(&token).await?;
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&clear_session_cookie(state.secure_cookies())) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// `/app`: the first organization's dashboard.
async fn app_home(State(state): State<ConsoleState>, session: Session) -> PageResult {
    let memberships = orgs::memberships_of(state.db(), session.user_id).await?;
    match memberships.first() {
        Some(m) => Ok(Redirect::to(&format!("/app/{}", m.organization.slug)).into_response()),
        None => Err(PageError::Forbidden(
            "You are not a member of any organization; ask an admin to add you.".into(),
        )),
    }
}

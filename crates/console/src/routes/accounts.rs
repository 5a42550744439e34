//! Sign-up, log-in, the caller's organizations, and members.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use portcullis_store::orgs::{self, NewAccount, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ConsoleState;
use crate::auth::{self, Caller, ClientAddr, OrgAccess, Verdict};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldProblem, Json};
use portcullis_store::audit::Entry;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(list_members, add_member))
}

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest password accepted (Argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub email: String,
    /// At least 10 characters.
    pub password: String,
    /// The organization's name; its slug is derived from it.
    pub organization: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupResponse {
    pub user: UserView,
    pub organization: OrgView,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Normalizes an email (trimmed, lower-case) and checks its form, plainly: one `@`, a local part,
/// a domain with a dot, no spaces, at most 254 characters.
fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(email)
}

/// A slug from a name: lower-case ASCII letters and digits, runs of anything else as one `-`.
fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(48).collect();
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() { "org".into() } else { slug }
}

/// Create an account: a user, their organization, and the user as its `admin`.
#[utoipa::path(post, path = "/api/v1/signup", tag = "accounts", security(()),
    request_body = SignupRequest,
    responses(
        (status = 201, body = SignupResponse),
        (status = 409, description = "email taken", body = ErrorBody),
        (status = 422, description = "weak password or bad email", body = ErrorBody),
    ))]
pub(crate) async fn signup(
    State(state): State<ConsoleState>,
    Json(body): Json<SignupRequest>,
) -> ApiResult<(StatusCode, Json<SignupResponse>)> {
    let mut problems = Vec::new();
    let email = normalize_email(&body.email);
    if email.is_none() {
        problems.push(FieldProblem::new(
            "/email",
            "must be an email address like name@example.com",
        ));
    }
    if body.password.chars().count() < MIN_PASSWORD_CHARS {
        problems.push(FieldProblem::new(
            "/password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    } else if body.password.len() > MAX_PASSWORD_BYTES {
        problems.push(FieldProblem::new(
            "/password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let org_name = body.organization.trim();
    if org_name.is_empty() || org_name.chars().count() > 200 {
        problems.push(FieldProblem::new(
            "/organization",
            "must be a name of 1 to 200 characters",
        ));
    }
    let Some(email) = email.filter(|_| problems.is_empty()) else {
        return Err(ApiError::invalid_all(
            "invalid_signup",
            "the sign-up",
            problems,
        ));
    };
    if orgs::user_by_email(state.db(), &email).await?.is_some() {
        return Err(email_taken());
    }
    let password_hash = auth::hash_password(body.password).await?;
    let base = slugify(org_name);
    // The slug is unique across tenants: add a short random suffix when the name's is taken.
    let mut attempt = 0;
    let (user, org) = loop {
        let slug = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{}", &Uuid::new_v4().simple().to_string()[..6])
        };
        let created = orgs::create_account(
            state.db(),
            &NewAccount {
                email: &email,
                password_hash: &password_hash,
                org_slug: &slug,
                org_name,
            },
        )
        .await;
        match created {
            Ok(created) => break created,
            Err(e) if e.is_conflict_on("organizations_slug_key") && attempt < 5 => attempt += 1,
            Err(e) if e.is_conflict_on("users_email_key") => return Err(email_taken()),
            Err(e) => return Err(e.into()),
        }
    };
    let (token, expires_at) = state.inner.tokens.issue(user.id)?;
    tracing::info!(user = %user.id, org = %org.slug, "account created");
    state
        .audit(Entry {
            org_id: Some(org.id),
            actor_id: Some(user.id),
            action: "account_created",
            target_type: Some("organization"),
            target_id: Some(org.id),
            ..Entry::default()
        })
        .await;
    Ok((
        StatusCode::CREATED,
        Json(SignupResponse {
            user: UserView {
                id: user.id,
                email: user.email,
            },
            organization: OrgView {
                id: org.id,
                slug: org.slug,
                name: org.name,
            },
            token,
            expires_at,
        }),
    ))
}

fn email_taken() -> ApiError {
    ApiError::conflict(
        "email_taken",
        "an account with this email exists; log in instead",
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Exchange an email and password for a token (1 hour).
///
/// An unknown email and a wrong password get the same answer in the same time. Repeated
/// failures for one email or from one address are slowed, then answered 429.
#[utoipa::path(post, path = "/api/v1/login", tag = "accounts", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub(crate) async fn login(
    State(state): State<ConsoleState>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let email = body.email.trim().to_lowercase();
    match state.inner.throttle.check(&email, addr) {
        Verdict::Go => {}
        Verdict::Delay(delay) => tokio::time::sleep(delay).await,
        Verdict::Refuse(retry) => {
            return Err(ApiError::too_many(
                "too many failed log-ins; wait and try again",
                retry.as_secs(),
            ));
        }
    }
    let password = if body.password.len() > MAX_PASSWORD_BYTES {
        String::new()
    } else {
        body.password
    };
    let credentials = orgs::credentials_by_email(state.db(), &email).await?;
    // Without a user, verify against a real hash anyway: the same work, the same time.
    let (user_id, hash) = match credentials {
        Some(c) => (Some(c.user_id), c.password_hash),
        None => (None, dummy_hash(&state).await?),
    };
    let matched = auth::verify_password(hash, password).await;
    match user_id.filter(|_| matched) {
        Some(user_id) => {
            state.inner.throttle.record_success(&email);
            orgs::record_login(state.db(), user_id).await?;
            let (token, expires_at) = state.inner.tokens.issue(user_id)?;
            tracing::info!(user = %user_id, "signed in");
            state
                .audit(Entry {
                    actor_id: Some(user_id),
                    action: "signed_in",
                    ip: addr,
                    ..Entry::default()
                })
                .await;
            Ok(Json(LoginResponse { token, expires_at }))
        }
        None => {
            state.inner.throttle.record_failure(&email, addr);
            Err(ApiError::unauthorized("wrong email or password"))
        }
    }
}

pub(crate) async fn dummy_hash(state: &ConsoleState) -> ApiResult<String> {
    state
        .inner
        .dummy_hash
        .get_or_try_init(|| auth::hash_password(Uuid::new_v4().to_string()))
        .await
        .cloned()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipView {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    #[schema(value_type = String, example = "admin")]
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    pub user: UserView,
    pub organizations: Vec<MembershipView>,
}

/// The signed-in user and their organizations.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
pub(crate) async fn me(
    State(state): State<ConsoleState>,
    caller: Caller,
) -> ApiResult<Json<MeResponse>> {
    let user = orgs::user_by_id(state.db(), caller.user_id)
        .await
        .map_err(|e| match e {
            // A token for a user deleted since.
            portcullis_store::Error::NotFound => {
                ApiError::unauthorized("this account no longer exists")
            }
            other => other.into(),
        })?;
    let organizations = orgs::memberships_of(state.db(), caller.user_id)
        .await?
        .into_iter()
        .map(|m| MembershipView {
            id: m.organization.id,
            slug: m.organization.slug,
            name: m.organization.name,
            role: m.role,
        })
        .collect();
    Ok(Json(MeResponse {
        user: UserView {
            id: user.id,
            email: user.email,
        },
        organizations,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user: UserView,
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersResponse {
    pub members: Vec<MemberView>,
}

/// The members of an organization.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/members", tag = "organizations",
    params(("org" = String, Path, description = "the organization's slug")),
    responses((status = 200, body = MembersResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_members(
    State(state): State<ConsoleState>,
    access: OrgAccess,
) -> ApiResult<Json<MembersResponse>> {
    Ok(Json(members_of(&state, access.org_id()).await?))
}

pub(crate) async fn members_of(state: &ConsoleState, org_id: Uuid) -> ApiResult<MembersResponse> {
    let members = orgs::members(state.db(), org_id)
        .await?
        .into_iter()
        .map(|m| MemberView {
            user: UserView {
                id: m.user.id,
                email: m.user.email,
            },
            role: m.role,
            joined_at: m.joined_at,
        })
        .collect();
    Ok(MembersResponse { members })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The email of an existing user.
    pub email: String,
    /// `admin`, `policy_manager` or `viewer`.
    #[schema(value_type = String, example = "policy_manager")]
    pub role: Role,
}

/// Add an existing user with a role, or change a member's role (admin only).
#[utoipa::path(post, path = "/api/v1/orgs/{org}/members", tag = "organizations",
    params(("org" = String, Path, description = "the organization's slug")),
    request_body = AddMemberRequest,
    responses(
        (status = 200, body = MembersResponse),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the last admin cannot be demoted", body = ErrorBody),
        (status = 422, description = "no user has this email", body = ErrorBody),
    ))]
pub(crate) async fn add_member(
    State(state): State<ConsoleState>,
    access: OrgAccess,
    Json(body): Json<AddMemberRequest>,
) -> ApiResult<Json<MembersResponse>> {
    access.require_admin()?;
    let email = body.email.trim().to_lowercase();
    let Some(user) = orgs::user_by_email(state.db(), &email).await? else {
        return Err(ApiError::invalid(
            "unknown_user",
            "/email",
            "no user has this email; ask them to sign up first",
        ));
    };
    let current = orgs::members(state.db(), access.org_id()).await?;
    let admins = current.iter().filter(|m| m.role == Role::Admin).count();
    let demoting_last_admin = body.role != Role::Admin
        && admins == 1
        && current
            .iter()
            .any(|m| m.user.id == user.id && m.role == Role::Admin);
    if demoting_last_admin {
        return Err(ApiError::conflict(
            "last_admin",
            "an organization needs an admin; make someone else admin first",
        ));
    }
    let before = current
        .iter()
        .find(|m| m.user.id == user.id)
        .map(|m| serde_json::json!({"email": email, "role": m.role.as_str()}));
    orgs::upsert_member(state.db(), access.org_id(), user.id, body.role).await?;
    state
        .audit(Entry {
            org_id: Some(access.org_id()),
            actor_id: Some(access.user_id),
            action: "member_set",
            target_type: Some("user"),
            target_id: Some(user.id),
            before: before.as_ref(),
            after: Some(&serde_json::json!({"email": email, "role": body.role.as_str()})),
            ..Entry::default()
        })
        .await;
    tracing::info!(org = %access.org.slug, member = %user.id, role = body.role.as_str(), by = %access.user_id, "member set");
    Ok(Json(members_of(&state, access.org_id()).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM "),
            Some("ada@example.com".into())
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a da@example.com",
            "ada@.com",
            "a@b@c.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn slugs_are_url_safe() {
        assert_eq!(slugify("Acme, Inc."), "acme-inc");
        assert_eq!(slugify("  ---  "), "org");
        assert_eq!(slugify("Ünïcode Team 42"), "n-code-team-42");
        assert!(slugify(&"x".repeat(300)).len() <= 48);
    }
}

//! Organizations, users and memberships.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result, new_id};

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including members, agents and settings.
    Admin,
    /// Servers, policies and approvals.
    PolicyManager,
    /// Read only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::PolicyManager => "policy_manager",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "policy_manager" => Some(Role::PolicyManager),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// May change servers, policies and approvals.
    pub fn can_manage_policies(self) -> bool {
        matches!(self, Role::Admin | Role::PolicyManager)
    }

    /// May change members, agents and settings.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

fn role_from_db(s: &str) -> Result<Role> {
    Role::parse(s)
        .ok_or_else(|| Error::Database(sqlx::Error::Decode(format!("unknown role {s:?}").into())))
}

#[derive(Debug, Clone, Serialize)]
pub struct Organization {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// A user as needed to log in: the password hash never leaves the console's auth code.
#[derive(Clone)]
pub struct Credentials {
    pub user_id: Uuid,
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub organization: Organization,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user: User,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub approval_webhook_url: Option<String>,
    pub store_argument_values: bool,
}

/// What sign-up creates: a user, their organization, and the user's `admin` membership.
#[derive(Debug)]
pub struct NewAccount<'a> {
    /// Already normalized (trimmed, lower-case).
    pub email: &'a str,
    /// An Argon2id PHC string.
    pub password_hash: &'a str,
    pub org_slug: &'a str,
    pub org_name: &'a str,
}

/// Creates the user, the organization and the admin membership in one transaction.
/// `Error::Conflict` on `users_email_key` or `organizations_slug_key`.
pub async fn create_account(pool: &PgPool, new: &NewAccount<'_>) -> Result<(User, Organization)> {
    let mut tx = pool.begin().await?;
    let user = sqlx::query_as!(
        User,
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, email, created_at",
        new_id(),
        new.email,
        new.password_hash,
    )
    .fetch_one(&mut *tx)
    .await?;
    let org = sqlx::query_as!(
        Organization,
        "INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3)
         RETURNING id, slug, name, created_at",
        new_id(),
        new.org_slug,
        new.org_name,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'admin')",
        org.id,
        user.id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((user, org))
}

/// The credentials of the user with this (normalized) email, if any.
pub async fn credentials_by_email(pool: &PgPool, email: &str) -> Result<Option<Credentials>> {
    Ok(sqlx::query_as!(
        Credentials,
        "SELECT id AS user_id, password_hash FROM users WHERE email = $1",
        email
    )
    .fetch_optional(pool)
    .await?)
}

pub async fn user_by_id(pool: &PgPool, user_id: Uuid) -> Result<User> {
    Ok(sqlx::query_as!(
        User,
        "SELECT id, email, created_at FROM users WHERE id = $1",
        user_id
    )
    .fetch_one(pool)
    .await?)
}

pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<User>> {
    Ok(sqlx::query_as!(
        User,
        "SELECT id, email, created_at FROM users WHERE email = $1",
        email
    )
    .fetch_optional(pool)
    .await?)
}

pub async fn record_login(pool: &PgPool, user_id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE users SET last_login_at = now() WHERE id = $1",
        user_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Every organization the user belongs to, with their role, oldest first.
pub async fn memberships_of(pool: &PgPool, user_id: Uuid) -> Result<Vec<Membership>> {
    let rows = sqlx::query!(
        "SELECT o.id, o.slug, o.name, o.created_at, m.role
         FROM memberships m JOIN organizations o ON o.id = m.org_id
         WHERE m.user_id = $1 ORDER BY m.created_at, o.slug",
        user_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Membership {
                role: role_from_db(&r.role)?,
                organization: Organization {
                    id: r.id,
                    slug: r.slug,
                    name: r.name,
                    created_at: r.created_at,
                },
            })
        })
        .collect()
}

/// The organization with this slug and the user's role in it; `NotFound` when the user is not a
/// member (whether or not the organization exists: nothing reveals another tenant).
pub async fn membership(pool: &PgPool, slug: &str, user_id: Uuid) -> Result<Membership> {
    let r = sqlx::query!(
        "SELECT o.id, o.slug, o.name, o.created_at, m.role
         FROM organizations o JOIN memberships m ON m.org_id = o.id AND m.user_id = $2
         WHERE o.slug = $1",
        slug,
        user_id
    )
    .fetch_one(pool)
    .await?;
    Ok(Membership {
        role: role_from_db(&r.role)?,
        organization: Organization {
            id: r.id,
            slug: r.slug,
            name: r.name,
            created_at: r.created_at,
        },
    })
}

pub async fn members(pool: &PgPool, org_id: Uuid) -> Result<Vec<Member>> {
    let rows = sqlx::query!(
        "SELECT u.id, u.email, u.created_at, m.role, m.created_at AS joined_at
         FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.org_id = $1 ORDER BY m.created_at, u.email",
        org_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Member {
                role: role_from_db(&r.role)?,
                joined_at: r.joined_at,
                user: User {
                    id: r.id,
                    email: r.email,
                    created_at: r.created_at,
                },
            })
        })
        .collect()
}

/// Adds a member, or changes the role of an existing one.
pub async fn upsert_member(pool: &PgPool, org_id: Uuid, user_id: Uuid, role: Role) -> Result<()> {
    sqlx::query!(
        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)
         ON CONFLICT ON CONSTRAINT memberships_pkey DO UPDATE SET role = EXCLUDED.role",
        org_id,
        user_id,
        role.as_str()
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn settings(pool: &PgPool, org_id: Uuid) -> Result<Settings> {
    Ok(sqlx::query_as!(
        Settings,
        "SELECT approval_webhook_url, store_argument_values FROM organizations WHERE id = $1",
        org_id
    )
    .fetch_one(pool)
    .await?)
}

pub async fn update_settings(pool: &PgPool, org_id: Uuid, settings: &Settings) -> Result<Settings> {
    Ok(sqlx::query_as!(
        Settings,
        "UPDATE organizations SET approval_webhook_url = $2, store_argument_values = $3
         WHERE id = $1 RETURNING approval_webhook_url, store_argument_values",
        org_id,
        settings.approval_webhook_url,
        settings.store_argument_values
    )
    .fetch_one(pool)
    .await?)
}

/// The slug of an organization (for links the data plane builds).
pub async fn slug_of(pool: &PgPool, org_id: Uuid) -> Result<String> {
    Ok(
        sqlx::query_scalar!("SELECT slug FROM organizations WHERE id = $1", org_id)
            .fetch_one(pool)
            .await?,
    )
}

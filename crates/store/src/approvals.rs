//! Approvals: a call held by a gateway until a person approves or denies it.
//!
//! The life of one: `pending` → `approved` | `denied` (a person) | `expired` (its time ran out) |
//! `abandoned` (the client went away, or the gateway holding it died); `approved` → `used` when
//! the gateway forwards the call (an approval is used once). Every status change NOTIFYs
//! `portcullis_approval` with the id.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// What a gateway records when it holds a call.
#[derive(Debug)]
pub struct NewApproval<'a> {
    pub id: Uuid,
    pub org_id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Uuid,
    pub session: &'a str,
    pub tool: &'a str,
    pub arguments: &'a Value,
    /// SHA-256 (hex) of the canonical arguments: the approval is bound to this exact call.
    pub arguments_hash: &'a str,
    pub rule: &'a str,
    pub reason: Option<&'a str>,
    /// The policy and version that asked for approval (recorded as the version's row).
    pub policy: Option<(Uuid, i32)>,
    pub expires_at: DateTime<Utc>,
    /// The gateway process holding the call (its listener's `application_name`).
    pub holder: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: Uuid,
    pub server_id: Uuid,
    pub server_name: String,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub tool: String,
    pub arguments: Value,
    pub rule: String,
    pub reason: Option<String>,
    /// The version of the policy that asked for approval.
    pub policy_version: Option<i32>,
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<Uuid>,
    pub decided_by_email: Option<String>,
    pub note: Option<String>,
}

pub async fn insert(pool: &PgPool, new: &NewApproval<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO approvals (id, org_id, server_id, agent_id, session, tool, arguments,
                                arguments_hash, rule, reason, expires_at, holder, policy_version_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 (SELECT id FROM policy_versions
                  WHERE org_id = $2 AND policy_id = $13 AND version = $14))",
        new.id,
        new.org_id,
        new.server_id,
        new.agent_id,
        new.session,
        new.tool,
        new.arguments,
        new.arguments_hash,
        new.rule,
        new.reason,
        new.expires_at,
        new.holder,
        new.policy.map(|(id, _)| id),
        new.policy.map(|(_, version)| version),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The organization's approvals with this status (all when `None`), newest first.
pub async fn list(
    pool: &PgPool,
    org_id: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Approval>> {
    Ok(sqlx::query_as!(
        Approval,
        r#"SELECT a.id, a.server_id, s.name AS server_name, a.agent_id, g.name AS agent_name,
                  a.tool, a.arguments, a.rule, a.reason, pv.version AS "policy_version?", a.status, a.requested_at, a.expires_at,
                  a.decided_at, a.decided_by, u.email AS "decided_by_email?", a.note
           FROM approvals a
           JOIN servers s ON s.org_id = a.org_id AND s.id = a.server_id
           JOIN agents g ON g.org_id = a.org_id AND g.id = a.agent_id
           LEFT JOIN users u ON u.id = a.decided_by
           LEFT JOIN policy_versions pv ON pv.id = a.policy_version_id
           WHERE a.org_id = $1 AND ($2::text IS NULL OR a.status = $2)
           ORDER BY a.requested_at DESC, a.id
           LIMIT $3"#,
        org_id,
        status,
        limit
    )
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<Approval> {
    Ok(sqlx::query_as!(
        Approval,
        r#"SELECT a.id, a.server_id, s.name AS server_name, a.agent_id, g.name AS agent_name,
                  a.tool, a.arguments, a.rule, a.reason, pv.version AS "policy_version?", a.status, a.requested_at, a.expires_at,
                  a.decided_at, a.decided_by, u.email AS "decided_by_email?", a.note
           FROM approvals a
           JOIN servers s ON s.org_id = a.org_id AND s.id = a.server_id
           JOIN agents g ON g.org_id = a.org_id AND g.id = a.agent_id
           LEFT JOIN users u ON u.id = a.decided_by
           LEFT JOIN policy_versions pv ON pv.id = a.policy_version_id
           WHERE a.org_id = $1 AND a.id = $2"#,
        org_id,
        id
    )
    .fetch_one(pool)
    .await?)
}

/// The constraint name of the conflict returned when an approval is no longer pending.
pub const NOT_PENDING: &str = "approval_not_pending";

/// A person's decision. `NotFound` for another organization's id; `Conflict` on
/// [`NOT_PENDING`] when it was decided already, expired, or abandoned.
pub async fn decide(
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
    approve: bool,
    user_id: Uuid,
    note: Option<&str>,
) -> Result<Approval> {
    let done = sqlx::query!(
        "UPDATE approvals SET status = $3, decided_at = now(), decided_by = $4, note = $5
         WHERE org_id = $1 AND id = $2 AND status = 'pending' AND expires_at > now()
           AND NOT EXISTS (SELECT 1 FROM agents g
                           WHERE g.id = approvals.agent_id AND g.revoked_at IS NOT NULL)",
        org_id,
        id,
        if approve { "approved" } else { "denied" },
        user_id,
        note
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        // Tell "not yours or no such" from "too late".
        get(pool, org_id, id).await?;
        return Err(Error::Conflict {
            constraint: NOT_PENDING.into(),
        });
    }
    get(pool, org_id, id).await
}

/// The status and note of an approval (the gateway holding it; the id came from its own
/// insert).
pub async fn state(pool: &PgPool, id: Uuid) -> Result<(String, Option<String>)> {
    let r = sqlx::query!("SELECT status, note FROM approvals WHERE id = $1", id)
        .fetch_one(pool)
        .await?;
    Ok((r.status, r.note))
}

/// Moves an approval from `from` to `to` (`approved` → `used`, `pending` → `expired` or
/// `abandoned`); false when it was not in `from`.
pub async fn settle(pool: &PgPool, id: Uuid, from: &str, to: &str) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE approvals SET status = $3,
                decided_at = CASE WHEN $3 IN ('expired', 'abandoned') THEN now() ELSE decided_at END
         WHERE id = $1 AND status = $2",
        id,
        from,
        to
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks abandoned every pending approval whose holder no longer has a connection to the
/// database (its process died); answers `(org, approval)` for each.
pub async fn abandon_orphans(pool: &PgPool) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query!(
        "UPDATE approvals SET status = 'abandoned', decided_at = now()
         WHERE status = 'pending'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = approvals.holder)
         RETURNING org_id, id"
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.org_id, r.id)).collect())
}

/// Approvals of the organization waiting for a person.
pub async fn pending_count(pool: &PgPool, org_id: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM approvals WHERE org_id = $1 AND status = 'pending' AND expires_at > now()"#,
        org_id
    )
    .fetch_one(pool)
    .await?)
}

//! The admin audit trail: who signed in, changed or published a policy, created, rotated or
//! revoked a key, registered or removed a server, set a member, changed settings, approved or
//! denied, with before and after where something changed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Result, new_id};

/// One entry to record.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// `None` for entries of no one organization (a sign-in).
    pub org_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    /// `signed_in`, `policy_saved`, `policy_published`, `agent_created`, …
    pub action: &'a str,
    pub target_type: Option<&'a str>,
    pub target_id: Option<Uuid>,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
    pub ip: Option<std::net::IpAddr>,
}

pub async fn record(pool: &PgPool, entry: &Entry<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (id, org_id, actor_id, action, target_type, target_id, before, after, ip)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::inet)",
        new_id(),
        entry.org_id,
        entry.actor_id,
        entry.action,
        entry.target_type,
        entry.target_id,
        entry.before,
        entry.after,
        entry.ip.map(|ip| ip.to_string()),
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor_email: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<Uuid>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// The organization's entries, newest first (sign-ins of its members included).
pub async fn recent(pool: &PgPool, org_id: Uuid, limit: i64) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as!(
        AuditEntry,
        r#"SELECT a.id, a.at, u.email AS "actor_email?", a.action, a.target_type, a.target_id,
                  a.before, a.after
           FROM audit_log a LEFT JOIN users u ON u.id = a.actor_id
           WHERE a.org_id = $1
              OR (a.org_id IS NULL AND a.actor_id IN (SELECT user_id FROM memberships WHERE org_id = $1))
           ORDER BY a.at DESC, a.id DESC
           LIMIT $2"#,
        org_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

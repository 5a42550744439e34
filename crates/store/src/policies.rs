//! Policy drafts and immutable published versions.
//!
//! A server has one policy, and each agent may have its own on that server (replacing the
//! server's for that agent). Each policy has a draft, edited freely, and numbered versions,
//! created by publishing and never changed; `policy_heads` says which version is enforced.
//! Documents are validated by `portcullis-policy` before they reach this module.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result, new_id};

/// The policy of a server (agent `None`) or of one agent on a server.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub draft: Value,
    pub draft_updated_at: DateTime<Utc>,
    pub published: Option<Version>,
    pub shadow: Option<VersionSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: i32,
    pub document: Value,
    pub published_at: DateTime<Utc>,
    pub published_by: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub version: i32,
    /// `enforced` or `shadow`: how it was published.
    pub mode: String,
    pub published_at: DateTime<Utc>,
    pub published_by: Option<Uuid>,
}

/// A version published in shadow: evaluated beside the enforced one, only recorded.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub version: i32,
    pub document: Value,
}

/// An agent's own policy on a server, as the server's policy page lists them.
#[derive(Debug, Clone, Serialize)]
pub struct AgentPolicy {
    pub agent_id: Uuid,
    pub agent_name: String,
    /// The enforced version, `None` while only a draft exists.
    pub version: Option<i32>,
}

/// An enforced version as the gateway caches it.
#[derive(Debug, Clone)]
pub struct Enforced {
    pub org_id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub policy_id: Uuid,
    pub version: i32,
    pub document: Value,
    /// `{"tool": "definition hash"}` as reviewed at publish time.
    pub reviewed_tools: Value,
    /// The version published in shadow, if any.
    pub shadow_version: Option<i32>,
    pub shadow_document: Option<Value>,
}

/// The policy of `server_id` (for `agent_id`, or the server's own), `NotFound` when none exists.
pub async fn get(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    agent_id: Option<Uuid>,
) -> Result<Policy> {
    let r = sqlx::query!(
        r#"SELECT p.id, p.server_id, p.agent_id, p.draft, p.draft_updated_at,
                  v.version AS "version?", v.document AS "document?",
                  v.published_at AS "published_at?", v.published_by,
                  sv.version AS "shadow_version?", sv.published_at AS "shadow_published_at?",
                  sv.published_by AS shadow_published_by
           FROM policies p
           LEFT JOIN policy_heads h ON h.policy_id = p.id
           LEFT JOIN policy_versions v ON v.id = h.enforced_version_id
           LEFT JOIN policy_versions sv ON sv.id = h.shadow_version_id
           WHERE p.org_id = $1 AND p.server_id = $2 AND p.agent_id IS NOT DISTINCT FROM $3"#,
        org_id,
        server_id,
        agent_id
    )
    .fetch_one(pool)
    .await?;
    let published = match (r.version, r.document, r.published_at) {
        (Some(version), Some(document), Some(published_at)) => Some(Version {
            version,
            document,
            published_at,
            published_by: r.published_by,
        }),
        _ => None,
    };
    let shadow = match (r.shadow_version, r.shadow_published_at) {
        (Some(version), Some(published_at)) => Some(VersionSummary {
            version,
            mode: "shadow".into(),
            published_at,
            published_by: r.shadow_published_by,
        }),
        _ => None,
    };
    Ok(Policy {
        id: r.id,
        server_id: r.server_id,
        agent_id: r.agent_id,
        draft: r.draft,
        draft_updated_at: r.draft_updated_at,
        published,
        shadow,
    })
}

/// Saves the draft, creating the policy if needed. The server (and agent) must be this
/// organization's, or `NotFound`.
pub async fn put_draft(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    agent_id: Option<Uuid>,
    document: &Value,
    user_id: Option<Uuid>,
) -> Result<Uuid> {
    let id = sqlx::query_scalar!(
        "INSERT INTO policies (id, org_id, server_id, agent_id, draft, draft_updated_by)
         SELECT $1, s.org_id, s.id, $4, $5::text::json, $6 FROM servers s WHERE s.org_id = $2 AND s.id = $3
         ON CONFLICT ON CONSTRAINT policies_server_agent_key
         DO UPDATE SET draft = EXCLUDED.draft, draft_updated_at = now(),
                       draft_updated_by = EXCLUDED.draft_updated_by
         WHERE policies.org_id = $2
         RETURNING id",
        new_id(),
        org_id,
        server_id,
        agent_id,
        // As text: a JSON parameter travels as jsonb, which would reorder the keys.
        document.to_string(),
        user_id
    )
    .fetch_optional(pool)
    .await
    .map_err(|e| match Error::from(e) {
        // An agent of another organization trips the composite foreign key.
        Error::Database(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
            Error::NotFound
        }
        other => other,
    })?;
    id.ok_or(Error::NotFound)
}

/// How a version is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Enforced by every gateway.
    Enforced,
    /// Evaluated beside the enforced version and only recorded; needs an enforced version.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforced => "enforced",
            Mode::Shadow => "shadow",
        }
    }
}

/// Publishes the current draft as the next version and makes it the enforced one (or the
/// shadow one). The tool definitions known now are recorded as reviewed. Gateways hear of it
/// through NOTIFY. A shadow publish without an enforced version is a `Conflict` on
/// `policy_heads_enforced_required`.
pub async fn publish(
    pool: &PgPool,
    org_id: Uuid,
    policy_id: Uuid,
    user_id: Option<Uuid>,
    mode: Mode,
) -> Result<Version> {
    let mut tx = pool.begin().await?;
    let policy = sqlx::query!(
        "SELECT id, server_id FROM policies WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        policy_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if mode == Mode::Shadow {
        let enforced = sqlx::query_scalar!(
            "SELECT enforced_version_id FROM policy_heads WHERE policy_id = $1",
            policy.id
        )
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        if enforced.is_none() {
            return Err(Error::Conflict {
                constraint: "policy_heads_enforced_required".into(),
            });
        }
    }
    let version = sqlx::query!(
        r#"INSERT INTO policy_versions (id, org_id, policy_id, version, document, reviewed_tools,
                                        reviewed_definitions, published_by, mode)
           VALUES ($1, $2, $3,
                   (SELECT COALESCE(max(version), 0) + 1 FROM policy_versions WHERE policy_id = $3),
                   (SELECT draft FROM policies WHERE id = $3),
                   (SELECT COALESCE(jsonb_object_agg(name, definition_hash), '{}')
                    FROM tools WHERE org_id = $2 AND server_id = $4),
                   (SELECT COALESCE(jsonb_object_agg(name, definition), '{}')
                    FROM tools WHERE org_id = $2 AND server_id = $4),
                   $5, $6)
           RETURNING id, version, document, published_at, published_by"#,
        new_id(),
        org_id,
        policy.id,
        policy.server_id,
        user_id,
        mode.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    if mode == Mode::Shadow {
        sqlx::query!(
            "UPDATE policy_heads SET shadow_version_id = $2, updated_at = now() WHERE policy_id = $1",
            policy.id,
            version.id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Version {
            version: version.version,
            document: version.document,
            published_at: version.published_at,
            published_by: version.published_by,
        });
    }
    sqlx::query!(
        "INSERT INTO policy_heads (policy_id, org_id, enforced_version_id) VALUES ($1, $2, $3)
         ON CONFLICT ON CONSTRAINT policy_heads_pkey
         DO UPDATE SET enforced_version_id = EXCLUDED.enforced_version_id, updated_at = now()",
        policy.id,
        org_id,
        version.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Version {
        version: version.version,
        document: version.document,
        published_at: version.published_at,
        published_by: version.published_by,
    })
}

/// The versions of a policy, newest first.
pub async fn versions(pool: &PgPool, org_id: Uuid, policy_id: Uuid) -> Result<Vec<VersionSummary>> {
    Ok(sqlx::query_as!(
        VersionSummary,
        "SELECT version, mode, published_at, published_by FROM policy_versions
         WHERE org_id = $1 AND policy_id = $2 ORDER BY version DESC",
        org_id,
        policy_id
    )
    .fetch_all(pool)
    .await?)
}

pub async fn version(
    pool: &PgPool,
    org_id: Uuid,
    policy_id: Uuid,
    version: i32,
) -> Result<Version> {
    Ok(sqlx::query_as!(
        Version,
        "SELECT version, document, published_at, published_by FROM policy_versions
         WHERE org_id = $1 AND policy_id = $2 AND version = $3",
        org_id,
        policy_id,
        version
    )
    .fetch_one(pool)
    .await?)
}

/// Every enforced version of every organization: the gateway's cache at start. This is the one
/// deliberate cross-tenant read, for the data plane, which serves all tenants.
pub async fn all_enforced(pool: &PgPool) -> Result<Vec<Enforced>> {
    Ok(sqlx::query_as!(
        Enforced,
        r#"SELECT p.org_id, p.server_id, p.agent_id, p.id AS policy_id, v.version, v.document,
                  v.reviewed_tools, sv.version AS "shadow_version?", sv.document AS "shadow_document?"
           FROM policy_heads h
           JOIN policies p ON p.id = h.policy_id
           JOIN policy_versions v ON v.id = h.enforced_version_id
           LEFT JOIN policy_versions sv ON sv.id = h.shadow_version_id"#
    )
    .fetch_all(pool)
    .await?)
}

/// The enforced version of one policy (after a NOTIFY names it); `None` when it has none.
pub async fn enforced(pool: &PgPool, policy_id: Uuid) -> Result<Option<Enforced>> {
    Ok(sqlx::query_as!(
        Enforced,
        r#"SELECT p.org_id, p.server_id, p.agent_id, p.id AS policy_id, v.version, v.document,
                  v.reviewed_tools, sv.version AS "shadow_version?", sv.document AS "shadow_document?"
           FROM policy_heads h
           JOIN policies p ON p.id = h.policy_id
           JOIN policy_versions v ON v.id = h.enforced_version_id
           LEFT JOIN policy_versions sv ON sv.id = h.shadow_version_id
           WHERE h.policy_id = $1"#,
        policy_id
    )
    .fetch_optional(pool)
    .await?)
}

/// Stops evaluating the shadow version (the version itself stays in the history).
pub async fn stop_shadow(pool: &PgPool, org_id: Uuid, policy_id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE policy_heads SET shadow_version_id = NULL, updated_at = now()
         WHERE org_id = $1 AND policy_id = $2",
        org_id,
        policy_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes an agent's own policy (with its versions): the agent falls back to the server's.
pub async fn delete_agent_policy(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    agent_id: Uuid,
) -> Result<()> {
    let deleted = sqlx::query!(
        "DELETE FROM policies WHERE org_id = $1 AND server_id = $2 AND agent_id = $3",
        org_id,
        server_id,
        agent_id
    )
    .execute(pool)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// The agents with their own policy on a server, by name.
pub async fn agent_policies(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
) -> Result<Vec<AgentPolicy>> {
    Ok(sqlx::query_as!(
        AgentPolicy,
        r#"SELECT a.id AS agent_id, a.name AS agent_name, v.version AS "version?"
           FROM policies p
           JOIN agents a ON a.org_id = p.org_id AND a.id = p.agent_id
           LEFT JOIN policy_heads h ON h.policy_id = p.id
           LEFT JOIN policy_versions v ON v.id = h.enforced_version_id
           WHERE p.org_id = $1 AND p.server_id = $2 AND p.agent_id IS NOT NULL
             AND a.revoked_at IS NULL
           ORDER BY a.name, a.id"#,
        org_id,
        server_id
    )
    .fetch_all(pool)
    .await?)
}

/// `{"tool": "definition hash"}` reviewed when the server's enforced policy (not an agent's)
/// was published; `None` when nothing is published.
pub async fn reviewed_tools(pool: &PgPool, org_id: Uuid, server_id: Uuid) -> Result<Option<Value>> {
    Ok(sqlx::query_scalar!(
        "SELECT v.reviewed_tools
         FROM policies p
         JOIN policy_heads h ON h.policy_id = p.id
         JOIN policy_versions v ON v.id = h.enforced_version_id
         WHERE p.org_id = $1 AND p.server_id = $2 AND p.agent_id IS NULL",
        org_id,
        server_id
    )
    .fetch_optional(pool)
    .await?)
}

/// `{"tool": definition}` as reviewed when the server's enforced policy was published; `None`
/// when nothing is published.
pub async fn reviewed_definitions(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
) -> Result<Option<Value>> {
    Ok(sqlx::query_scalar!(
        "SELECT v.reviewed_definitions
         FROM policies p
         JOIN policy_heads h ON h.policy_id = p.id
         JOIN policy_versions v ON v.id = h.enforced_version_id
         WHERE p.org_id = $1 AND p.server_id = $2 AND p.agent_id IS NULL",
        org_id,
        server_id
    )
    .fetch_optional(pool)
    .await?)
}

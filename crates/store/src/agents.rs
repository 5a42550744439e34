//! Agents: the keys MCP clients present to the gateway.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result, new_id};

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub key_prefix: String,
    /// `None`: every server of the organization.
    pub servers: Option<Vec<Uuid>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Agent {
    /// May this agent reach this server (of its own organization)?
    pub fn may_reach(&self, server_id: Uuid) -> bool {
        self.revoked_at.is_none() && self.servers.as_ref().is_none_or(|s| s.contains(&server_id))
    }
}

#[derive(Debug)]
pub struct NewAgent<'a> {
    pub name: &'a str,
    /// SHA-256 of the key.
    pub key_hash: &'a [u8],
    pub key_prefix: &'a str,
    /// `None`: every server, now and later.
    pub servers: Option<&'a [Uuid]>,
    pub created_by: Option<Uuid>,
}

/// Creates an agent. Every granted server must belong to the organization, or `NotFound`.
pub async fn insert(pool: &PgPool, org_id: Uuid, new: &NewAgent<'_>) -> Result<Agent> {
    let mut tx = pool.begin().await?;
    let id = new_id();
    sqlx::query!(
        "INSERT INTO agents (id, org_id, name, key_hash, key_prefix, all_servers, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        id,
        org_id,
        new.name,
        new.key_hash,
        new.key_prefix,
        new.servers.is_none(),
        new.created_by,
    )
    .execute(&mut *tx)
    .await?;
    if let Some(servers) = new.servers {
        let inserted = sqlx::query!(
            "INSERT INTO agent_servers (org_id, agent_id, server_id)
             SELECT $1, $2, s.id FROM servers s WHERE s.org_id = $1 AND s.id = ANY($3)
             ON CONFLICT DO NOTHING",
            org_id,
            id,
            servers,
        )
        .execute(&mut *tx)
        .await?;
        let distinct = servers
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
        if inserted.rows_affected() != distinct as u64 {
            // Some id is unknown or another organization's: say not found, reveal nothing.
            return Err(Error::NotFound);
        }
    }
    tx.commit().await?;
    get(pool, org_id, id).await
}

pub async fn get(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<Agent> {
    Ok(sqlx::query_as!(
        Agent,
        r#"SELECT a.id, a.org_id, a.name, a.key_prefix, a.created_at, a.last_used_at, a.revoked_at,
                  CASE WHEN a.all_servers THEN NULL
                       ELSE ARRAY(SELECT server_id FROM agent_servers g
                                  WHERE g.agent_id = a.id ORDER BY server_id) END AS "servers: Vec<Uuid>"
           FROM agents a WHERE a.org_id = $1 AND a.id = $2"#,
        org_id,
        id
    )
    .fetch_one(pool)
    .await?)
}

/// The organization's agents that are not revoked, newest first.
pub async fn list(pool: &PgPool, org_id: Uuid) -> Result<Vec<Agent>> {
    Ok(sqlx::query_as!(
        Agent,
        r#"SELECT a.id, a.org_id, a.name, a.key_prefix, a.created_at, a.last_used_at, a.revoked_at,
                  CASE WHEN a.all_servers THEN NULL
                       ELSE ARRAY(SELECT server_id FROM agent_servers g
                                  WHERE g.agent_id = a.id ORDER BY server_id) END AS "servers: Vec<Uuid>"
           FROM agents a WHERE a.org_id = $1 AND a.revoked_at IS NULL
           ORDER BY a.created_at DESC, a.id"#,
        org_id
    )
    .fetch_all(pool)
    .await?)
}

/// The agent holding the key with this digest (data plane: the key itself says which
/// organization it belongs to). Revoked agents are returned too, so callers can tell "revoked"
/// from "unknown" in their logs; [`Agent::may_reach`] refuses them.
pub async fn by_key_hash(pool: &PgPool, key_hash: &[u8]) -> Result<Option<Agent>> {
    Ok(sqlx::query_as!(
        Agent,
        r#"SELECT a.id, a.org_id, a.name, a.key_prefix, a.created_at, a.last_used_at, a.revoked_at,
                  CASE WHEN a.all_servers THEN NULL
                       ELSE ARRAY(SELECT server_id FROM agent_servers g
                                  WHERE g.agent_id = a.id ORDER BY server_id) END AS "servers: Vec<Uuid>"
           FROM agents a WHERE a.key_hash = $1"#,
        key_hash
    )
    .fetch_optional(pool)
    .await?)
}

/// Replaces the key of a live agent. `NotFound` for a revoked or foreign agent.
pub async fn rotate(
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
    key_hash: &[u8],
    key_prefix: &str,
) -> Result<()> {
    let done = sqlx::query!(
        "UPDATE agents SET key_hash = $3, key_prefix = $4
         WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL",
        org_id,
        id,
        key_hash,
        key_prefix
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// Revokes an agent: its key stops working (gateways hear of it through NOTIFY).
pub async fn revoke(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<()> {
    let done = sqlx::query!(
        "UPDATE agents SET revoked_at = now() WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL",
        org_id,
        id
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// Records use of the agents' keys (batched by the gateway, at most once a minute per agent).
pub async fn touch(pool: &PgPool, ids: &[Uuid]) -> Result<()> {
    sqlx::query!(
        "UPDATE agents SET last_used_at = now() WHERE id = ANY($1)",
        ids
    )
    .execute(pool)
    .await?;
    Ok(())
}

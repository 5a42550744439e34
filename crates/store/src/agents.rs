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

/// The prefix of every agent key.
pub const KEY_PREFIX: &str = "pcl_";
/// Base62 characters of the random part (32 bytes need 43).
const KEY_BODY_LEN: usize = 43;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An agent key: `pcl_` + 32 random bytes in base62. Shown once at creation; only its SHA-256
/// digest and its first characters are stored. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey(String);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentKey({}…)", self.prefix())
    }
}

impl AgentKey {
    /// A new random key.
    pub fn generate() -> Result<AgentKey, crate::crypto::KeyError> {
        let bytes = crate::crypto::random_bytes::<32>()?;
        Ok(AgentKey(format!("{KEY_PREFIX}{}", base62(&bytes))))
    }

    /// A key as presented by a client; `None` when it does not have the shape of one (so a
    /// malformed key costs no database lookup).
    pub fn parse(text: &str) -> Option<AgentKey> {
        let body = text.strip_prefix(KEY_PREFIX)?;
        (body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| AgentKey(text.to_owned()))
    }

    /// The key itself, to show once or to send as a credential.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored and looked up: SHA-256 of the key. A fast digest is right here: the key
    /// has 256 random bits, so there is nothing to brute-force.
    pub fn digest(&self) -> [u8; 32] {
        crate::crypto::sha256(self.0.as_bytes())
    }

    /// The first characters, stored so people can tell their keys apart (`pcl_3fX9a1Bc`).
    pub fn prefix(&self) -> &str {
        &self.0[..KEY_PREFIX.len() + 8]
    }
}

/// Fixed-width base62 of 32 bytes (big-endian), by repeated division.
fn base62(bytes: &[u8; 32]) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(KEY_BODY_LEN);
    for _ in 0..KEY_BODY_LEN {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(BASE62[remainder as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_never_print() {
        let key = AgentKey::generate().unwrap();
        assert!(key.expose().starts_with("pcl_"));
        assert_eq!(key.expose().len(), 4 + KEY_BODY_LEN);
        assert_eq!(AgentKey::parse(key.expose()), Some(key.clone()));
        assert_eq!(key.prefix().len(), 12);
        assert!(!format!("{key:?}").contains(&key.expose()[12..]));
        assert_ne!(AgentKey::generate().unwrap(), key);
        assert_eq!(key.digest(), crate::crypto::sha256(key.expose().as_bytes()));
    }

    #[test]
    fn malformed_keys_are_refused_before_any_lookup() {
        for bad in [
            "",
            "pcl_",
            "pcl_short",
            "sk_0000000000000000000000000000000000000000000",
            "pcl_000000000000000000000000000000000000000000!",
        ] {
            assert!(AgentKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn base62_is_fixed_width() {
        assert_eq!(base62(&[0; 32]), "0".repeat(KEY_BODY_LEN));
        assert_eq!(base62(&[0xff; 32]).len(), KEY_BODY_LEN);
        let mut one = [0u8; 32];
        one[31] = 61;
        assert!(base62(&one).ends_with('z'));
    }
}

//! Registered upstream MCP servers and their discovered tool catalogs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// How the gateway reaches an upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub url: Option<String>,
    /// argv of a stdio server.
    pub command: Option<Value>,
    /// Names of the credential headers (their values are encrypted and never read back here).
    pub header_names: Vec<String>,
    pub transport: String,
    pub protocol_version: Option<String>,
    pub status: String,
    pub status_detail: Option<String>,
    pub last_discovered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The encrypted upstream secrets of a server, for the gateway and discovery only.
#[derive(Clone, Default)]
pub struct ServerSecrets {
    pub headers_enc: Option<Vec<u8>>,
    pub env_enc: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecrets(..)")
    }
}

#[derive(Debug)]
pub struct NewServer<'a> {
    /// Chosen by the caller (with [`crate::new_id`]) because credentials are sealed with the
    /// server's id as associated data before the row exists.
    pub id: Uuid,
    pub name: &'a str,
    pub url: Option<&'a str>,
    pub command: Option<&'a Value>,
    pub header_names: &'a [String],
    pub secrets: ServerSecrets,
    pub transport_requested: &'a str,
    pub transport: &'a str,
    pub protocol_version: Option<&'a str>,
    pub server_info: Option<&'a Value>,
}

/// A discovered tool, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: String,
    pub definition: Value,
    pub definition_hash: String,
    pub category: String,
    pub risk: String,
    pub evidence: Value,
    pub recommended: Value,
}

/// Registers a server. `Conflict` on `servers_org_name_key` when the name is taken.
pub async fn insert(pool: &PgPool, org_id: Uuid, new: &NewServer<'_>) -> Result<Server> {
    let id = new.id;
    sqlx::query!(
        "INSERT INTO servers (id, org_id, name, url, command, header_names, headers_enc, env_enc,
                              transport_requested, transport, protocol_version, server_info,
                              last_discovered_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())",
        id,
        org_id,
        new.name,
        new.url,
        new.command,
        new.header_names,
        new.secrets.headers_enc.as_deref(),
        new.secrets.env_enc.as_deref(),
        new.transport_requested,
        new.transport,
        new.protocol_version,
        new.server_info,
    )
    .execute(pool)
    .await?;
    get(pool, org_id, id).await
}

pub async fn get(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<Server> {
    Ok(sqlx::query_as!(
        Server,
        "SELECT id, org_id, name, url, command, header_names, transport, protocol_version, status,
                status_detail, last_discovered_at, created_at
         FROM servers WHERE org_id = $1 AND id = $2",
        org_id,
        id
    )
    .fetch_one(pool)
    .await?)
}

pub async fn list(pool: &PgPool, org_id: Uuid) -> Result<Vec<Server>> {
    Ok(sqlx::query_as!(
        Server,
        "SELECT id, org_id, name, url, command, header_names, transport, protocol_version, status,
                status_detail, last_discovered_at, created_at
         FROM servers WHERE org_id = $1 ORDER BY created_at, name",
        org_id
    )
    .fetch_all(pool)
    .await?)
}

pub async fn secrets(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<ServerSecrets> {
    Ok(sqlx::query_as!(
        ServerSecrets,
        "SELECT headers_enc, env_enc FROM servers WHERE org_id = $1 AND id = $2",
        org_id,
        id
    )
    .fetch_one(pool)
    .await?)
}

/// Deletes a server with its catalog and policies. `NotFound` when it is not this org's.
pub async fn delete(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<()> {
    let done = sqlx::query!(
        "DELETE FROM servers WHERE org_id = $1 AND id = $2",
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

/// What a discovery learnt of the upstream besides its tools.
#[derive(Debug, Default)]
pub struct Discovered<'a> {
    pub protocol_version: Option<&'a str>,
    pub server_info: Option<&'a Value>,
}

/// Replaces the tool catalog of a server with a fresh discovery, in upstream order, and marks
/// the server active.
pub async fn replace_tools(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    discovered: &Discovered<'_>,
    tools: &[Tool],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Scoping: the server must be this organization's, or nothing is touched.
    sqlx::query!(
        "SELECT id FROM servers WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        server_id
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM tools WHERE org_id = $1 AND server_id = $2",
        org_id,
        server_id
    )
    .execute(&mut *tx)
    .await?;
    for (position, tool) in tools.iter().enumerate() {
        sqlx::query!(
            "INSERT INTO tools (org_id, server_id, name, position, definition, definition_hash,
                                category, risk, evidence, recommended)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            org_id,
            server_id,
            tool.name,
            i32::try_from(position).unwrap_or(i32::MAX),
            tool.definition,
            tool.definition_hash,
            tool.category,
            tool.risk,
            tool.evidence,
            tool.recommended,
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE servers SET last_discovered_at = now(), status = 'active', status_detail = NULL,
                            protocol_version = COALESCE($3, protocol_version),
                            server_info = COALESCE($4, server_info)
         WHERE org_id = $1 AND id = $2",
        org_id,
        server_id,
        discovered.protocol_version,
        discovered.server_info,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn tools(pool: &PgPool, org_id: Uuid, server_id: Uuid) -> Result<Vec<Tool>> {
    Ok(sqlx::query_as!(
        Tool,
        "SELECT name, definition, definition_hash, category, risk, evidence, recommended
         FROM tools WHERE org_id = $1 AND server_id = $2 ORDER BY position",
        org_id,
        server_id
    )
    .fetch_all(pool)
    .await?)
}

/// Records that a re-discovery failed (`status` is `unreachable` or `error`); the catalog is
/// kept as it was.
pub async fn record_discovery_failure(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    status: &str,
    detail: &str,
) -> Result<()> {
    let done = sqlx::query!(
        "UPDATE servers SET status = $3, status_detail = $4 WHERE org_id = $1 AND id = $2",
        org_id,
        server_id,
        status,
        detail
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// The hash a tool definition is reviewed under: SHA-256 (hex) of the canonical JSON (keys
/// sorted, no white space) of its description, input schema and annotations. A change of any of
/// these makes the tool "changed" for `changed_tools`; a new title or icon does not.
pub fn definition_hash(tool: &Value) -> String {
    let reviewed = serde_json::json!({
        "description": tool.get("description").cloned().unwrap_or(Value::Null),
        "inputSchema": tool.get("inputSchema").cloned().unwrap_or(Value::Null),
        "annotations": tool.get("annotations").cloned().unwrap_or(Value::Null),
    });
    let mut canonical = String::new();
    write_canonical(&reviewed, &mut canonical);
    crate::crypto::sha256(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of the canonical JSON of any value (keys sorted, no white space): equal for
/// equal values whatever their key order.
pub fn canonical_hash(value: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    crate::crypto::sha256(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Re-seals every server's credentials (all organizations: an operator's maintenance step) from
/// the `old` key to the `new` one, in one transaction: either every server moves to the new key
/// or none does. Fails, changing nothing, if a credential does not open with `old` (the wrong
/// current key was given). Answers how many servers had credentials.
pub async fn reseal_credentials(
    pool: &PgPool,
    old: &crate::crypto::Sealer,
    new: &crate::crypto::Sealer,
) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        "SELECT id, headers_enc, env_enc FROM servers
         WHERE headers_enc IS NOT NULL OR env_enc IS NOT NULL
         ORDER BY id FOR UPDATE"
    )
    .fetch_all(&mut *tx)
    .await?;
    let reseal = |id: Uuid, sealed: Option<Vec<u8>>| -> Result<Option<Vec<u8>>> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = old.open(&sealed, id.as_bytes()).ok_or_else(|| {
            Error::Key(format!(
                "the credentials of server {id} do not open with the current key: give the key the servers were registered under"
            ))
        })?;
        new.seal(&plain, id.as_bytes())
            .map(Some)
            .map_err(|e| Error::Key(e.to_string()))
    };
    for row in &rows {
        let headers = reseal(row.id, row.headers_enc.clone())?;
        let env = reseal(row.id, row.env_enc.clone())?;
        sqlx::query!(
            "UPDATE servers SET headers_enc = $2, env_enc = $3 WHERE id = $1",
            row.id,
            headers,
            env
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// The purpose under which credential headers and stdio environments are sealed (with the
/// server's id as associated data, so a ciphertext cannot be moved to another server).
pub const CREDENTIALS_PURPOSE: &str = "upstream-credentials";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definition_hash_ignores_key_order_and_title_but_not_schema() {
        let a = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}});
        let b = json!({"inputSchema": {"properties": {"x": {"type": "string"}}, "type": "object"}, "title": "T", "description": "d", "name": "t"});
        assert_eq!(definition_hash(&a), definition_hash(&b));
        let c = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {"x": {"type": "number"}}}});
        assert_ne!(definition_hash(&a), definition_hash(&c));
        let d = json!({"name": "t", "description": "d", "inputSchema": a["inputSchema"], "annotations": {"readOnlyHint": true}});
        assert_ne!(definition_hash(&a), definition_hash(&d));
        assert_eq!(definition_hash(&a).len(), 64);
    }
}

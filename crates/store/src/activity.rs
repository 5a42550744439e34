//! Activity events: every gateway decision.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// One decision, as the gateway records it.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    /// UUIDv7: time-ordered.
    pub id: Uuid,
    pub org_id: Uuid,
    pub at: DateTime<Utc>,
    pub server_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub session: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub argument_keys: Vec<String>,
    pub arguments: Option<Value>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub policy_id: Option<Uuid>,
    pub policy_version: Option<i32>,
    pub latency_ms: Option<f64>,
    pub upstream_status: Option<i32>,
}

/// Writes a batch of events in one transaction.
pub async fn insert_batch(pool: &PgPool, events: &[NewEvent]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for e in events {
        sqlx::query!(
            "INSERT INTO activity_events (id, org_id, at, server_id, agent_id, agent_name, session,
                 method, tool, argument_keys, arguments, decision, rule, reason, policy_id,
                 policy_version, latency_ms, upstream_status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT ON CONSTRAINT activity_events_pkey DO NOTHING",
            e.id,
            e.org_id,
            e.at,
            e.server_id,
            e.agent_id,
            e.agent_name,
            e.session,
            e.method,
            e.tool,
            &e.argument_keys,
            e.arguments,
            e.decision,
            e.rule,
            e.reason,
            e.policy_id,
            e.policy_version,
            e.latency_ms,
            e.upstream_status,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// An event as the activity API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub server_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub session: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub argument_keys: Vec<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub policy_version: Option<i32>,
    pub latency_ms: Option<f64>,
    pub upstream_status: Option<i32>,
}

/// The organization's newest events, newest first (filters and keyset pages come with the
/// activity API).
pub async fn recent(pool: &PgPool, org_id: Uuid, limit: i64) -> Result<Vec<Event>> {
    Ok(sqlx::query_as!(
        Event,
        "SELECT id, at, server_id, agent_id, agent_name, session, method, tool, argument_keys,
                decision, rule, reason, policy_version, latency_ms, upstream_status
         FROM activity_events WHERE org_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        org_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

//! Webhook deliveries: a JSON POST per new approval to the organization's
//! `approval_webhook_url`, retried with backoff by whichever process claims it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Result, new_id};

/// Queues a delivery when the organization has a webhook URL; answers whether it did.
pub async fn enqueue_for_approval(
    pool: &PgPool,
    org_id: Uuid,
    approval_id: Uuid,
    payload: &Value,
) -> Result<bool> {
    let done = sqlx::query!(
        "INSERT INTO webhook_deliveries (id, org_id, approval_id, url, payload)
         SELECT $1, o.id, $3, o.approval_webhook_url, $4
         FROM organizations o WHERE o.id = $2 AND o.approval_webhook_url IS NOT NULL",
        new_id(),
        org_id,
        approval_id,
        payload
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One delivery to attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: Uuid,
    pub url: String,
    pub payload: Value,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// Claims up to `limit` due deliveries: each is pushed `lease` into the future so no other
/// process attempts it meanwhile (a process that dies mid-attempt leaves it due again after the
/// lease).
pub async fn claim_due(pool: &PgPool, limit: i64, lease_seconds: f64) -> Result<Vec<Due>> {
    Ok(sqlx::query_as!(
        Due,
        "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM webhook_deliveries
                      WHERE status = 'pending' AND next_attempt_at <= now()
                      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, url, payload, attempts",
        limit,
        lease_seconds
    )
    .fetch_all(pool)
    .await?)
}

pub async fn delivered(pool: &PgPool, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,
                delivered_at = now(), last_error = NULL
         WHERE id = $1",
        id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed attempt: retried after `retry_in` seconds, or given up (`failed`) when
/// `retry_in` is `None`.
pub async fn attempt_failed(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    retry_in: Option<f64>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $2,
                status = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                next_attempt_at = now() + make_interval(secs => COALESCE($3::float8, 0))
         WHERE id = $1",
        id,
        error,
        retry_in
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A delivery as the settings page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The organization's latest deliveries, newest first.
pub async fn recent(pool: &PgPool, org_id: Uuid, limit: i64) -> Result<Vec<Delivery>> {
    Ok(sqlx::query_as!(
        Delivery,
        "SELECT id, url, status, attempts, last_error, created_at, delivered_at
         FROM webhook_deliveries WHERE org_id = $1 ORDER BY created_at DESC, id LIMIT $2",
        org_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

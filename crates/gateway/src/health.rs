//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use portcullis_store::PgPool;
use serde_json::json;

pub fn router(db: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(db)
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(db): State<PgPool>) -> Response {
    let ping = tokio::time::timeout(Duration::from_secs(2), sqlx_ping(&db)).await;
    match ping {
        Ok(Ok(())) => Json(json!({"status": "ready", "database": "ok"})).into_response(),
        Ok(Err(e)) => not_ready(&format!("database: {e}")),
        Err(_) => not_ready("database: no answer within 2 s"),
    }
}

async fn sqlx_ping(db: &PgPool) -> Result<(), portcullis_store::Error> {
    portcullis_store::ping(db).await
}

fn not_ready(detail: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": "not_ready", "message": detail}})),
    )
        .into_response()
}

//! The Portcullis data plane (gateway): `/mcp/{server id}` for MCP clients, plus health.
//!
//! Exposes [`router`] so the binary can serve it alone (`portcullis gateway`) or merged with the
//! console (`portcullis serve`), and tests can bind it to port 0.

pub mod health;

use axum::Router;
use portcullis_store::PgPool;

/// What every gateway handler needs.
#[derive(Clone, Debug)]
pub struct GatewayState {
    pub db: PgPool,
}

/// The gateway's routes.
pub fn router(state: GatewayState) -> Router {
    Router::new().merge(health::router(state.db.clone()))
}

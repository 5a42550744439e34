//! The Portcullis control plane (console): the JSON API under `/api/v1` and the pages.
//!
//! Exposes [`router`] so the binary can serve it alone (`portcullis console`) or merged with
//! the gateway (`portcullis serve`), and tests can bind it to port 0.

use axum::Router;
use portcullis_store::PgPool;

/// What every console handler needs.
#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub db: PgPool,
    /// The public URL of the gateway, for the `gateway_url` of each server.
    pub public_gateway_url: String,
}

/// The console's routes.
pub fn router(state: ConsoleState) -> Router {
    Router::new().with_state(state)
}

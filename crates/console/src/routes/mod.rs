//! The API's routes, one module per resource of API.md.

pub(crate) mod accounts;
pub(crate) mod activity;
pub(crate) mod agents;
pub(crate) mod approvals;
pub(crate) mod impact;
pub(crate) mod policies;
pub(crate) mod servers;
pub(crate) mod settings;

use utoipa_axum::router::OpenApiRouter;

use crate::ConsoleState;

pub fn router() -> OpenApiRouter<ConsoleState> {
    OpenApiRouter::new()
        .merge(accounts::router())
        .merge(agents::router())
        .merge(servers::router())
        .merge(policies::router())
        .merge(impact::router())
        .merge(settings::router())
        .merge(approvals::router())
        .merge(activity::router())
}

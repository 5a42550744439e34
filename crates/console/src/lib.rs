//! The Portcullis control plane (console): the JSON API under `/api/v1` (API.md) and the pages
//! people use in the browser (`pages`), which call the same handlers.
//!
//! Exposes [`router`] so the binary can serve it alone (`portcullis console`) or merged with
//! the gateway (`portcullis serve`), and tests can bind it to port 0. Serve it with
//! `into_make_service_with_connect_info::<SocketAddr>()` so failed log-ins are also counted
//! per client address.
//!
//! Every route is declared through `utoipa-axum`, so the OpenAPI document served at
//! `/api/v1/openapi.json` is generated from the same declarations as the router: a route cannot
//! exist without being documented.

pub mod auth;
mod discovery;
pub mod error;
mod pages;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use portcullis_store::PgPool;
use portcullis_store::crypto::{Sealer, SecretKey};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

pub use auth::LoginLimits;
use error::ApiError;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How the console behaves; [`Default`] suits tests and development.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The public URL of the gateway, for the `gateway_url` of each server (no trailing `/`).
    pub public_gateway_url: String,
    /// The URL people reach the console at, when it differs from the gateway's (`None`: the
    /// gateway's). Session cookies are `Secure` when it is https.
    pub public_url: Option<String>,
    /// Register upstreams on loopback, private, link-local and metadata addresses.
    pub allow_private_upstreams: bool,
    /// Register stdio servers (a local command): self-hosted only.
    pub allow_stdio_servers: bool,
    /// The bound on each request of a discovery (initialize, each tools/list page).
    pub discovery_timeout: Duration,
    pub login_limits: LoginLimits,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            public_gateway_url: "http://127.0.0.1:8080".into(),
            public_url: None,
            allow_private_upstreams: false,
            allow_stdio_servers: false,
            discovery_timeout: Duration::from_secs(10),
            login_limits: LoginLimits::default(),
        }
    }
}

/// What every console handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct ConsoleState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: PgPool,
    config: ConsoleConfig,
    tokens: auth::Tokens,
    /// Seals upstream credential headers (with the server id as associated data).
    credentials: Sealer,
    /// The HTTP client for discovery, refusing private addresses unless allowed.
    http: portcullis_mcp::upstream::HttpClient,
    throttle: auth::LoginThrottle,
    /// Derives each session's CSRF token.
    csrf_key: [u8; 32],
    /// A real Argon2id hash checked when the email is unknown, so that answer takes as long
    /// as a wrong password.
    dummy_hash: tokio::sync::OnceCell<String>,
}

impl ConsoleState {
    /// Fails only when the TLS stack of the discovery client cannot start.
    pub fn new(db: PgPool, key: &SecretKey, mut config: ConsoleConfig) -> Result<Self, String> {
        while config.public_gateway_url.ends_with('/') {
            config.public_gateway_url.pop();
        }
        let http = portcullis_mcp::upstream::HttpClient::guarded(config.allow_private_upstreams)?;
        Ok(ConsoleState {
            inner: Arc::new(Inner {
                db,
                tokens: auth::Tokens::new(key),
                csrf_key: key.derive("console-csrf"),
                credentials: Sealer::new(key, portcullis_store::servers::CREDENTIALS_PURPOSE),
                http,
                throttle: auth::LoginThrottle::new(config.login_limits),
                dummy_hash: tokio::sync::OnceCell::new(),
                config,
            }),
        })
    }

    pub(crate) fn db(&self) -> &PgPool {
        &self.inner.db
    }

    pub(crate) fn config(&self) -> &ConsoleConfig {
        &self.inner.config
    }

    /// The user a session token names, if it is validly signed, unexpired and not logged out.
    pub(crate) async fn signed_in(&self, token: &str) -> Result<Option<Uuid>, ApiError> {
        let Some((user_id, _)) = self.inner.tokens.verify(token) else {
            return Ok(None);
        };
        if portcullis_store::sessions::is_revoked(&self.inner.db, token).await? {
            return Ok(None);
        }
        Ok(Some(user_id))
    }

    /// Ends a session token before it expires (log-out); a token that is not valid is ignored.
    pub(crate) async fn revoke(&self, token: &str) -> Result<(), ApiError> {
        if let Some((_, expires_at)) = self.inner.tokens.verify(token) {
            portcullis_store::sessions::revoke(&self.inner.db, token, expires_at).await?;
        }
        Ok(())
    }

    /// The CSRF token of a session: an HMAC of the session token, so it needs no storage and
    /// dies with the session.
    pub(crate) fn csrf_token(&self, session: &str) -> String {
        portcullis_store::crypto::hmac_sha256(&self.inner.csrf_key, session.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn csrf_matches(&self, session: &str, sent: &str) -> bool {
        portcullis_store::crypto::constant_time_eq(
            self.csrf_token(session).as_bytes(),
            sent.as_bytes(),
        )
    }

    /// Cookies get `Secure` when people reach the console over https.
    pub(crate) fn secure_cookies(&self) -> bool {
        let config = &self.inner.config;
        config
            .public_url
            .as_deref()
            .unwrap_or(&config.public_gateway_url)
            .starts_with("https://")
    }

    /// Records an audit entry; a failure is logged and never fails the action it records.
    pub(crate) async fn audit(&self, entry: portcullis_store::audit::Entry<'_>) {
        if let Err(e) = portcullis_store::audit::record(&self.inner.db, &entry).await {
            tracing::error!(error = %e, action = entry.action, "cannot record an audit entry");
        }
    }

    /// `{public gateway URL}/mcp/{server id}`.
    pub(crate) fn gateway_url(&self, server_id: uuid::Uuid) -> String {
        format!("{}/mcp/{server_id}", self.inner.config.public_gateway_url)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis console API",
        version = "1",
        description = "Accounts, organizations, agents, servers and policies. See API.md."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

fn api() -> (Router<ConsoleState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::router())
        .split_for_parts()
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The console's routes.
pub fn router(state: ConsoleState) -> Router {
    let (api, doc) = api();
    let doc = Arc::new(doc);
    api.route(
        "/api/v1/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    )
    .route("/api/v1", axum::routing::any(no_route))
    .route("/api/v1/{*rest}", axum::routing::any(no_route))
    .method_not_allowed_fallback(method_not_allowed)
    .merge(pages::router())
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::from_fn(refuse_declared_oversize))
    .with_state(state)
}

/// A body whose declared length is over the limit is refused before a byte of it is read
/// (a client sending `Expect: 100-continue` never sends it); bodies without a length are
/// bounded while read, by `DefaultBodyLimit`.
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is larger than the 1 MiB limit",
        )
        .into_response();
    }
    next.run(request).await
}

/// Unknown paths under `/api/v1` answer in the API's error shape.
async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such API route; see /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method; see /api/v1/openapi.json",
    )
}

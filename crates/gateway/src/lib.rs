//! The Portcullis data plane (gateway): `/mcp/{server id}` for MCP clients, plus health.
//!
//! One file per protocol concern: [`mcp`] (the client-facing Streamable HTTP endpoint),
//! [`session`] (sealed session ids), [`auth`] (agent keys), [`policies`] (the published-policy
//! cache), [`limits`] (counters), [`upstreams`] (reaching registered servers), [`activity`]
//! (the decision log). Exposes [`router`] so the binary can serve it alone or with the console,
//! and tests can bind it to port 0.

pub mod activity;
pub mod approvals;
pub mod arguments;
pub mod auth;
pub mod health;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod policies;
pub mod redis_limits;
pub mod session;
pub mod stateless;
pub(crate) mod translate;
pub mod upstreams;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use portcullis_store::PgPool;
use portcullis_store::crypto::{Sealer, SecretKey};
use uuid::Uuid;

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Browser origins allowed to call the MCP endpoint besides the gateway's own (an `Origin`
    /// header neither listed nor same-origin → 403; requests without `Origin`, as MCP clients
    /// send them, pass).
    pub allowed_origins: Vec<String>,
    /// `Host` values served (`host:port` as clients send it); anything else → 403, against DNS
    /// rebinding. Empty: any host (then only listed origins pass).
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Timeout of every upstream call.
    pub upstream_timeout: Duration,
    /// Full policy reload interval (NOTIFY brings publishes within a second; this is the net).
    pub policy_reload: Duration,
    /// Redis for counters shared by every gateway (None: in this process).
    pub redis_url: Option<String>,
    /// While Redis is unreachable, refuse calls with rate limits instead of counting them in
    /// this process.
    pub limits_fail_closed: bool,
    /// Allow upstreams on loopback, private, link-local and metadata addresses (checked after
    /// DNS resolution on every connection). Off by default.
    pub allow_private_upstreams: bool,
    /// Run stdio servers (a local command per server and agent). Off by default.
    pub allow_stdio_servers: bool,
    /// A stdio server's process, or a legacy SSE upstream's connection, is closed after this
    /// long without a call or an open stream.
    pub upstream_idle_timeout: Duration,
    /// How often a held call sends a progress notification (when the client gave a token).
    pub approval_progress_interval: Duration,
    /// How often pending approvals of dead gateways are marked abandoned.
    pub approval_sweep: Duration,
    /// The console's public URL, for the link in approval webhooks.
    pub console_url: Option<String>,
    /// The first retry delay of a failed webhook delivery (then doubled each time).
    pub webhook_retry_base: Duration,
    /// Where activity events wait while the database is unreachable (the data directory).
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(60),
            policy_reload: Duration::from_secs(30),
            redis_url: None,
            limits_fail_closed: false,
            allow_private_upstreams: false,
            allow_stdio_servers: false,
            upstream_idle_timeout: Duration::from_secs(300),
            approval_progress_interval: Duration::from_secs(10),
            approval_sweep: Duration::from_secs(30),
            console_url: None,
            webhook_retry_base: Duration::from_secs(1),
            spill_dir: None,
        }
    }
}

/// Everything the data plane shares between requests.
#[derive(Debug)]
pub struct Gateway {
    pub db: PgPool,
    pub config: GatewayConfig,
    pub agents: Arc<auth::AgentCache>,
    pub policies: Arc<policies::PolicyCache>,
    pub sessions: session::SessionSealer,
    pub upstreams: upstreams::Upstreams,
    /// Long-lived upstream connections (stdio processes, legacy SSE streams).
    pub channels: Arc<upstreams::Channels>,
    pub counters: limits::Counters,
    pub activity: activity::ActivitySink,
    pub list_changed: tokio::sync::broadcast::Sender<Uuid>,
    /// Agents changed (revoked, rotated, grants): their open streams end.
    pub agent_changed: tokio::sync::broadcast::Sender<Uuid>,
    pub(crate) mcp: mcp::McpState,
    /// Calls held for approval in this process.
    pub approvals: Arc<approvals::Waiters>,
    /// Prometheus metrics (`/metrics` on the admin listener).
    pub metrics: Arc<metrics::Metrics>,
    /// Which organizations store argument values.
    pub arguments: arguments::ArgumentPolicy,
    /// Wakes the webhook delivery loop.
    pub webhooks: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    origin: Instant,
    /// Set when the process begins to shut down: long-lived streams end.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the published policies: {0}")]
    Policies(#[from] portcullis_store::Error),
    #[error("cannot connect to Redis: {0}")]
    Redis(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

impl Gateway {
    /// Loads the policies (failing closed: no policies, no gateway) and starts the background
    /// tasks (policy and agent listeners, the activity writer, counter sweeping).
    pub async fn start(
        db: PgPool,
        key: &SecretKey,
        config: GatewayConfig,
    ) -> Result<Arc<Gateway>, StartError> {
        let policies = Arc::new(policies::PolicyCache::new());
        let n = policies.load_all(&db).await?;
        tracing::info!(policies = n, "published policies loaded");
        let allow_private = config.allow_private_upstreams;
        let build = move || portcullis_mcp::upstream::HttpClient::guarded(allow_private);
        // Built once here so a client that cannot be built stops the start; then one per
        // thread (the data plane runs a runtime per core: see `HttpClients`).
        let first = build().map_err(StartError::Http)?;
        let http = portcullis_mcp::upstream::HttpClients::per_thread(move || {
            build().unwrap_or_else(|_| first.clone())
        });
        let (list_changed, _) = tokio::sync::broadcast::channel(256);
        let (agent_changed, _) = tokio::sync::broadcast::channel(256);
        let agents = Arc::new(auth::AgentCache::new(Duration::from_secs(30)));
        let metrics = Arc::new(metrics::Metrics::new());
        let (activity, _writer) =
            activity::ActivitySink::spawn(db.clone(), metrics.clone(), config.spill_dir.clone());
        let redis = match &config.redis_url {
            // Bounded: a Redis that accepts connections and never answers would otherwise hold
            // the start for the client's own timeouts (16 s measured).
            Some(url) => Some(
                tokio::time::timeout(
                    REDIS_CONNECT_TIMEOUT,
                    redis_limits::RedisCounters::connect(url),
                )
                .await
                .map_err(|_| {
                    StartError::Redis(format!(
                        "no answer within {} s",
                        REDIS_CONNECT_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| StartError::Redis(e.to_string()))?,
            ),
            None => None,
        };
        let channels = upstreams::Channels::new(config.upstream_idle_timeout);
        let idle = config.upstream_idle_timeout;
        let reaper = Arc::downgrade(&channels);
        tokio::spawn(async move {
            let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                let Some(channels) = reaper.upgrade() else {
                    break;
                };
                channels.close_idle().await;
            }
        });
        let gateway = Arc::new(Gateway {
            channels: channels.clone(),
            upstreams: upstreams::Upstreams::new(
                http,
                Sealer::new(key, portcullis_store::servers::CREDENTIALS_PURPOSE),
                config.upstream_timeout,
                config.max_body_bytes,
                config.allow_private_upstreams,
                config.allow_stdio_servers,
                channels.clone(),
            ),
            sessions: session::SessionSealer::new(key),
            counters: limits::Counters::new(redis, config.limits_fail_closed, metrics.clone()),
            mcp: mcp::McpState::default(),
            approvals: Arc::new(approvals::Waiters::new()),
            webhooks: std::sync::OnceLock::new(),
            arguments: arguments::ArgumentPolicy::default(),
            metrics,
            origin: Instant::now(),
            stopping: tokio::sync::watch::Sender::new(false),
            policies: policies.clone(),
            agents: agents.clone(),
            activity,
            list_changed: list_changed.clone(),
            agent_changed: agent_changed.clone(),
            config,
            db: db.clone(),
        });
        // A policy change may come from the server being deleted or changed: read the server's
        // settings afresh on the next request rather than after the cache's TTL.
        let mut changed_servers = list_changed.subscribe();
        let weak = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            loop {
                let changed = changed_servers.recv().await;
                let Some(gw) = weak.upgrade() else { break };
                match changed {
                    Ok(server) => {
                        gw.metrics.policy_reloaded();
                        gw.upstreams.forget(Some(server));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        gw.upstreams.forget(None);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        approvals::spawn(&gateway, gateway.config.approval_sweep);
        let _ = gateway.webhooks.set(webhooks::spawn(&gateway));
        policies.spawn_refresher(db.clone(), gateway.config.policy_reload, list_changed);
        agents.spawn_listener(db, agent_changed);
        let weak = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticker.tick().await;
                let Some(gw) = weak.upgrade() else { break };
                gw.counters.memory.sweep(Instant::now());
                gw.mcp.parked.sweep();
            }
        });
        Ok(gateway)
    }

    /// The process is shutting down: server-initiated streams (GET) end now, so that only
    /// calls in flight hold the shutdown (a held approval among them, until the grace period).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Gateway::begin_shutdown`] has been called.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Writes every activity event queued so far (to the database, or to the spill file while
    /// the database is unreachable). For shutdown: bound it with a timeout.
    pub async fn flush_activity(&self) {
        self.activity.flush().await;
    }

    /// Closes every stdio server and legacy SSE connection (at shutdown, after the calls in
    /// flight): a stdio server's input is closed, then SIGTERM, then SIGKILL.
    pub async fn close_upstreams(&self) -> usize {
        self.channels.close_all().await
    }

    pub(crate) async fn reserve(&self, keys: &[limits::LimitKey]) -> limits::Outcome {
        self.counters
            .reserve(keys, self.origin.elapsed(), Instant::now())
            .await
    }
}

/// How long a starting gateway waits for Redis to answer.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection listening on `channel`, retried every second until it works; `None` once the
/// pool is closed (the process is shutting down). Shared by the policy and agent listeners.
pub(crate) async fn listen(db: &PgPool, channel: &str) -> Option<sqlx::postgres::PgListener> {
    loop {
        if db.is_closed() {
            return None;
        }
        let outcome = match sqlx::postgres::PgListener::connect_with(db).await {
            Ok(mut listener) => listener.listen(channel).await.map(|()| listener),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(listener) => return Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, channel, "cannot LISTEN; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Never ends: keeps a timer due within [`TIMER_TICK`] on the runtime it runs on. Run it on
/// every runtime that serves the gateway.
///
/// Tokio's timer wakes its runtime's driver (a write to an eventfd, then a spurious return from
/// `epoll_wait`) whenever a new timer is due earlier than the driver's planned wake-up, and with
/// no timer pending, any new timer is. Each proxied call sets deadlines (the upstream timeout,
/// the wait for the first chunk of a relayed answer) and clears them when answered, so on an
/// otherwise idle thread every call paid that wake-up: two system calls per call. With this
/// tick pending, a call's deadlines (a second or more away) are never the earliest, and the
/// thread wakes once a second instead.
pub async fn keep_a_timer_armed() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// See [`keep_a_timer_armed`]. The gateway's per-call timers are no shorter.
pub const TIMER_TICK: Duration = Duration::from_secs(1);

/// The admin listener's routes: health and Prometheus metrics.
pub fn admin_router(gateway: Arc<Gateway>) -> Router {
    let db = gateway.db.clone();
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(gw): axum::extract::State<Arc<Gateway>>| async move {
                    let text = gw.metrics.render(
                        gw.approvals.held(),
                        gw.activity.depth(),
                        gw.policies.len(),
                        gw.activity.spilled_bytes(),
                    );
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                },
            ),
        )
        .with_state(gateway)
        .merge(health::router(db))
}

/// The gateway's routes: the MCP endpoint and health.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let db = gateway.db.clone();
    Router::new()
        .route(
            "/mcp/{server}",
            post(mcp::post).get(mcp::get).delete(mcp::delete),
        )
        .route(
            "/mcp/{server}/key/{key}",
            post(mcp::post_with_key)
                .get(mcp::get_with_key)
                .delete(mcp::delete_with_key),
        )
        // POST bodies are bounded by their extractor, `mcp::McpBody`.
        .with_state(gateway)
        .merge(health::router(db))
}

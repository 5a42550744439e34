//! `serve`, `console`, `gateway` and `migrate`: resolve the database (a URL, or the embedded
//! default), migrate, bind, and serve until SIGTERM or Ctrl-C.

use std::str::FromStr as _;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use portcullis_store::PgPool;
use portcullis_store::crypto::SecretKey;
use portcullis_store::embedded::EmbeddedPostgres;
use tokio::net::TcpListener;

use crate::cli::{DatabaseOpts, RotateKeyOpts, ServerOpts};

/// Which planes a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planes {
    Both,
    Console,
    Gateway,
}

/// The database a process uses, and the embedded cluster behind it if any (stopped on exit).
struct Database {
    pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    async fn open(opts: &DatabaseOpts) -> anyhow::Result<Database> {
        match &opts.database_url {
            Some(url) => {
                let options = sqlx_options(url)?;
                let pool = portcullis_store::connect(options, 20)
                    .await
                    .context("cannot reach the database at DATABASE_URL")?;
                Ok(Database {
                    pool,
                    embedded: None,
                })
            }
            None => {
                let dir = opts.data_dir.join("postgres");
                tracing::info!(dir = %dir.display(), "DATABASE_URL is not set: starting the embedded PostgreSQL cluster");
                let cluster = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
                    .await?
                    .context("cannot start the embedded PostgreSQL cluster")?;
                cluster.ensure_database("portcullis").await?;
                let pool =
                    portcullis_store::connect(cluster.connect_options("portcullis"), 20).await?;
                Ok(Database {
                    pool,
                    embedded: Some(cluster),
                })
            }
        }
    }

    async fn close(self) {
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => tracing::info!("embedded PostgreSQL cluster stopped"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not stop the embedded PostgreSQL cluster")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not stop the embedded PostgreSQL cluster")
                }
            }
        }
    }
}

pub(crate) fn sqlx_options(
    url: &str,
) -> anyhow::Result<portcullis_store::embedded::PgConnectOptions> {
    // The URL may hold a password: the error names the problem, never the URL.
    portcullis_store::embedded::PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn migrate(opts: DatabaseOpts) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let db = Database::open(&opts).await?;
        let outcome = portcullis_store::migrate(&db.pool).await;
        db.close().await;
        outcome?;
        tracing::info!("migrations applied");
        Ok(())
    })
}

/// `rotate-key`: re-seal the credentials under the new key, then keep the new key where the old
/// one was kept (the key file) or tell the operator to set it.
pub fn rotate_key(opts: RotateKeyOpts) -> anyhow::Result<()> {
    let new = SecretKey::parse(&opts.new_secret_key).context("PORTCULLIS_NEW_SECRET_KEY")?;
    let key_file = opts
        .secret_key_file
        .clone()
        .unwrap_or_else(|| opts.database.data_dir.join("secret.key"));
    let (old, from_file) = match opts.secret_key.as_deref().filter(|k| !k.trim().is_empty()) {
        Some(text) => (
            SecretKey::parse(text).context("PORTCULLIS_SECRET_KEY")?,
            false,
        ),
        None => {
            let text = std::fs::read_to_string(&key_file).with_context(|| {
                format!(
                    "PORTCULLIS_SECRET_KEY is not set and the key file {} cannot be read",
                    key_file.display()
                )
            })?;
            (SecretKey::parse(&text).context("the key file")?, true)
        }
    };
    let purpose = portcullis_store::servers::CREDENTIALS_PURPOSE;
    let (old_sealer, new_sealer) = (
        portcullis_store::crypto::Sealer::new(&old, purpose),
        portcullis_store::crypto::Sealer::new(&new, purpose),
    );
    runtime()?.block_on(async {
        let db = Database::open(&opts.database.normalized()).await?;
        let resealed =
            portcullis_store::servers::reseal_credentials(&db.pool, &old_sealer, &new_sealer).await;
        db.close().await;
        let count = resealed.context("cannot re-seal the upstream credentials")?;
        tracing::info!(servers = count, "upstream credentials re-sealed under the new key");
        if from_file {
            // Written beside and renamed over, so the file is never half-written.
            let temp = key_file.with_extension("key.new");
            // Created 0600 from the start; removed if anything fails.
            let written = (|| {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let _ = std::fs::remove_file(&temp);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)?;
                file.write_all(opts.new_secret_key.trim().as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temp, &key_file)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            written
                .with_context(|| format!("credentials re-sealed, but {} could not be rewritten: write the new key there yourself", key_file.display()))?;
            println!(
                "Re-sealed the credentials of {count} server(s) and wrote the new key to {}. Restart every Portcullis process: people log in again and MCP clients start new sessions.",
                key_file.display()
            );
        } else {
            println!(
                "Re-sealed the credentials of {count} server(s). Set PORTCULLIS_SECRET_KEY to the new key on every Portcullis process and restart them: people log in again and MCP clients start new sessions."
            );
        }
        Ok(())
    })
}

pub fn run(planes: Planes, opts: ServerOpts) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let db = Database::open(&opts.database).await?;
        let mut opts = opts;
        if db.embedded.is_some() && !opts.allow_private_upstreams {
            // The embedded default is a single-user, self-hosted setup whose MCP servers are
            // usually on the same machine or network.
            tracing::warn!(
                "embedded database: allowing upstream MCP servers on private addresses (as --allow-private-upstreams); set DATABASE_URL for a shared deployment"
            );
            opts.allow_private_upstreams = true;
        }
        let served = serve(planes, &opts, &db.pool).await;
        db.close().await;
        served
    })
}

async fn serve(planes: Planes, opts: &ServerOpts, pool: &PgPool) -> anyhow::Result<()> {
    if opts.no_migrate {
        tracing::info!("--no-migrate: not applying migrations");
    } else {
        portcullis_store::migrate(pool)
            .await
            .context("cannot migrate the database")?;
    }
    let public_url = opts.public_url();
    let key = secret_key(opts)?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    // The bound address (port 0 picks one) is what clients put in their Host header.
    let bound = listener.local_addr()?;
    let mut app = axum::Router::new();
    let mut gateway = None;
    // Health everywhere; metrics where a gateway runs.
    let mut admin_app = portcullis_gateway::health::router(pool.clone());
    if planes != Planes::Console {
        let mut allowed_origins = opts.allowed_origins();
        allowed_origins.push(opts.public_origin());
        let allowed_hosts = opts.allowed_hosts(bound);
        if allowed_hosts.is_empty() {
            tracing::warn!(
                "listening on every address with no --public-url or --allowed-hosts: any Host header is served (set one to protect against DNS rebinding)"
            );
        }
        let config = portcullis_gateway::GatewayConfig {
            allowed_origins,
            allowed_hosts,
            max_body_bytes: opts.max_body_bytes,
            upstream_timeout: std::time::Duration::from_secs(opts.upstream_timeout),
            redis_url: opts.redis_url.clone(),
            limits_fail_closed: opts.limits_fail_closed,
            allow_private_upstreams: opts.allow_private_upstreams,
            allow_stdio_servers: opts.allow_stdio_servers,
            upstream_idle_timeout: std::time::Duration::from_secs(opts.upstream_idle_timeout),
            console_url: Some(public_url.clone()),
            spill_dir: Some(opts.database.data_dir.clone()),
            ..portcullis_gateway::GatewayConfig::default()
        };
        // Fails closed: a gateway that cannot load the published policies does not serve.
        let started = portcullis_gateway::Gateway::start(pool.clone(), &key, config).await?;
        admin_app = portcullis_gateway::admin_router(started.clone());
        app = app.merge(portcullis_gateway::router(started.clone()));
        gateway = Some(started);
    } else {
        app = app.merge(portcullis_gateway::health::router(pool.clone()));
    }
    if planes != Planes::Gateway {
        let console = portcullis_console::ConsoleState::new(
            pool.clone(),
            &key,
            portcullis_console::ConsoleConfig {
                public_gateway_url: public_url.clone(),
                public_url: Some(public_url.clone()),
                allow_private_upstreams: opts.allow_private_upstreams,
                allow_stdio_servers: opts.allow_stdio_servers,
                ..portcullis_console::ConsoleConfig::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot start the console: {e}"))?;
        app = app.merge(portcullis_console::router(console));
    }

    let admin = TcpListener::bind(opts.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", opts.admin_listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        public_url,
        ?planes,
        "Portcullis is serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn({
        let mut stop_rx = stop_rx.clone();
        async move {
            axum::serve(admin, admin_app)
                .with_graceful_shutdown(async move {
                    stop_rx.wait_for(|stop| *stop).await.ok();
                })
                .await
        }
    });
    // Requests are served by one single-threaded runtime per core, each accepting on the same
    // listener (see `Shards`); the background work stays on this runtime.
    let mut shards = Shards::start(listener, app, stop_rx.clone())?;
    let signal = tokio::spawn({
        let gateway = gateway.clone();
        let grace_seconds = opts.shutdown_grace;
        async move {
            shutdown_signal().await;
            tracing::info!(
                grace_seconds,
                "shutting down: no new connections; finishing requests in flight"
            );
            // Streams that would never end by themselves (GET) end now.
            if let Some(gateway) = &gateway {
                gateway.begin_shutdown();
            }
            stop_tx.send(true).ok();
        }
    });
    // In-flight requests get the grace period from the signal on, no longer.
    let mut signalled = stop_rx.clone();
    let grace = std::time::Duration::from_secs(opts.shutdown_grace);
    tokio::select! {
        served = shards.served() => served?,
        () = async {
            signalled.wait_for(|stop| *stop).await.ok();
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_seconds = opts.shutdown_grace, "requests still in flight after the grace period: stopping anyway");
        }
    }
    signal.abort();
    drop(stop_rx);
    if let Some(gateway) = gateway {
        let closed = gateway.close_upstreams().await;
        if closed > 0 {
            tracing::info!(closed, "stdio servers and SSE upstreams closed");
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), gateway.flush_activity())
            .await
        {
            Ok(()) => tracing::info!("activity events written"),
            Err(_) => tracing::warn!(
                "activity events could not all be written within 10 s (those in the spill file are written at the next start)"
            ),
        }
    }
    admin_task.await??;
    // Last: tasks the requests started (upstream connections, stdio servers) live on the
    // shards' runtimes, and were closed above.
    drop(shards);
    Ok(())
}

/// The data plane's threads: one single-threaded tokio runtime per core (or
/// `TOKIO_WORKER_THREADS`), each accepting connections from the same listening socket (a
/// duplicate of its descriptor, so the port stays exclusive to this process) and serving them
/// to the end on that thread.
///
/// Why not one multi-threaded runtime: at low load its idle workers are woken to steal every
/// newly ready task, and a proxied call (client socket, upstream socket, answer) crossed threads
/// several times: 6 context switches and ~135 µs of CPU per call on the benchmark, against 2 and
/// ~100 µs here (docs/BENCHMARKS.md). A connection's work, and the upstream connections it
/// opens, stay on one thread; an idle shard takes the next connection.
struct Shards {
    done: Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>,
    exit: Option<tokio::sync::watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    fn start(
        listener: TcpListener,
        app: axum::Router,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Shards> {
        let count = std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        let listener = listener.into_std()?;
        let (exit, exit_rx) = tokio::sync::watch::channel(false);
        let mut shards = Shards {
            done: Vec::with_capacity(count),
            exit: Some(exit),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let listener = listener
                .try_clone()
                .context("cannot share the listening socket")?;
            let app = app.clone();
            let mut stop = stop.clone();
            let mut exit = exit_rx.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-serve-{index}"))
                .spawn(move || {
                    let serve = async move {
                        let served = async {
                            let listener = TcpListener::from_std(listener)?;
                            axum::serve(
                                // Nagle's algorithm with delayed ACKs adds ~40 ms to every
                                // small answer.
                                listener.tap_io(|tcp| {
                                    let _ = tcp.set_nodelay(true);
                                }),
                                // The client address counts failed log-ins per address.
                                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                            )
                            .with_graceful_shutdown(async move {
                                stop.wait_for(|stop| *stop).await.ok();
                            })
                            .await
                        }
                        .await;
                        let _ = done_tx.send(served);
                        // The runtime keeps running the requests' tasks until the process
                        // has closed them.
                        std::future::pending::<()>().await;
                    };
                    runtime.block_on(async move {
                        // Exit also ends requests still in flight after the grace period.
                        tokio::select! {
                            () = serve => {}
                            _ = exit.wait_for(|exit| *exit) => {}
                            () = portcullis_gateway::keep_a_timer_armed() => {}
                        }
                    });
                    // Blocking work still running (a DNS lookup, a password hash) is not
                    // waited for long.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
                })
                .context("cannot start a serving thread")?;
            shards.done.push(done_rx);
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// Waits until every shard has stopped serving (after the stop signal and its requests);
    /// a shard that fails ends the wait at once, whichever it is.
    async fn served(&mut self) -> anyhow::Result<()> {
        let shards = self.done.iter_mut().map(|done| async move {
            match done.await {
                Ok(served) => served.context("serving failed"),
                Err(_) => Err(anyhow::anyhow!("a serving thread stopped unexpectedly")),
            }
        });
        futures_util::future::try_join_all(shards).await.map(drop)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        if let Some(exit) = self.exit.take() {
            exit.send(true).ok();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The secret key: PORTCULLIS_SECRET_KEY, or the key file (generated once if missing).
fn secret_key(opts: &ServerOpts) -> anyhow::Result<SecretKey> {
    match &opts.secret_key {
        Some(text) => Ok(SecretKey::parse(text).context("PORTCULLIS_SECRET_KEY")?),
        None => {
            let path = opts.secret_key_path();
            let (key, generated) = SecretKey::load_or_generate(&path)?;
            if opts.secret_key_file.is_some() {
                tracing::info!(path = %path.display(), generated, "secret key from PORTCULLIS_SECRET_KEY_FILE");
            } else if generated {
                tracing::warn!(path = %path.display(), "PORTCULLIS_SECRET_KEY is not set: generated a secret key and kept it in the data directory; set PORTCULLIS_SECRET_KEY in production, the same on every process");
            } else {
                tracing::warn!(path = %path.display(), "PORTCULLIS_SECRET_KEY is not set: using the key kept in the data directory");
            }
            Ok(key)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

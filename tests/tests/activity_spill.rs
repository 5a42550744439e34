//! No activity event is lost when PostgreSQL goes away: the gateway's connection to the database
//! runs through a TCP proxy the test cuts and restores. While it is cut, allowed calls keep
//! flowing (cached policies and keys) and their events go to the spill file; once it is back,
//! they arrive, once each, in order. The console, meanwhile, answers 503 and recovers by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use portcullis_gateway::Gateway;
use portcullis_store::crypto::SecretKey;
use portcullis_store::embedded::PgConnectOptions;
use portcullis_tests::client::{self, result_text};
use portcullis_tests::console::eventually;
use portcullis_tests::gateway::{seed, test_config};
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;
use tokio::task::JoinSet;

/// Forwards 127.0.0.1:PORT to the database (its Unix socket or TCP address); `cut` closes the
/// listener and every connection, `restore` listens on the same port again.
struct Proxy {
    port: u16,
    target: Target,
    tasks: Option<JoinSet<()>>,
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Proxy {
    async fn start(options: &PgConnectOptions) -> Proxy {
        let target = match options.get_socket() {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
            None => Target::Tcp(format!("{}:{}", options.get_host(), options.get_port())),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut proxy = Proxy {
            port,
            target,
            tasks: None,
        };
        proxy.restore().await;
        proxy
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port");
        let target = self.target.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    match target {
                        Target::Unix(path) => {
                            if let Ok(mut server) = tokio::net::UnixStream::connect(path).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                        Target::Tcp(addr) => {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(addr).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Aborting the accept task drops its listener and its JoinSet of connections.
    fn cut(&mut self) {
        self.tasks = None;
    }

    fn options(&self, direct: &PgConnectOptions, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(direct.get_username())
            .database(database)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_the_database_is_away_arrive_once_in_order() {
    let upstream = TestUpstream::start().await;
    let seeded = seed(
        &upstream.url,
        Some(json!({"version": "1", "default": "allow"})),
    )
    .await;
    let mut proxy = Proxy::start(&seeded.db.options).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(proxy.options(&seeded.db.options, &seeded.db.name))
        .await
        .expect("a pool through the proxy");
    let spill = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.spill_dir = Some(spill.path().to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.allowed_hosts = vec![addr.to_string()];
    let gateway: Arc<Gateway> = Gateway::start(pool, &SecretKey::generate().unwrap(), config)
        .await
        .unwrap();
    let app = portcullis_gateway::router(gateway.clone());
    tokio::spawn(async move {
        axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), app)
            .await
            .ok()
    });
    let url = format!("http://{addr}/mcp/{}", seeded.server_id);
    let mcp = client::connect(&url, Some(&seeded.agent_key))
        .await
        .unwrap();
    let echo = |n: usize| {
        let mcp = &mcp;
        async move {
            let result = mcp
                .call("echo", json!({"text": format!("call {n}")}))
                .await
                .unwrap();
            assert_eq!(result_text(&result), format!("call {n}"));
        }
    };
    let in_db = |n: usize| {
        let db = seeded.db.pool.clone();
        async move {
            let texts: Vec<String> = sqlx::query_scalar(
                "SELECT id::text FROM activity_events WHERE tool = 'echo' ORDER BY at, id",
            )
            .fetch_all(&db)
            .await
            .unwrap();
            (texts.len() >= n).then_some(texts)
        }
    };
    for n in 0..3 {
        echo(n).await;
    }
    eventually("the first events", Duration::from_secs(5), || in_db(3)).await;

    // The database goes away; calls keep flowing, their events wait in the spill file.
    proxy.cut();
    for n in 3..8 {
        echo(n).await;
    }
    let file = spill.path().join("activity-spill.jsonl");
    eventually("the spill file", Duration::from_secs(15), || async {
        let lines = std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        (lines >= 5).then_some(())
    })
    .await;
    assert_eq!(
        in_db(0).await.unwrap().len(),
        3,
        "nothing reached the database meanwhile"
    );

    // It comes back: every event arrives, once, in order, and the file is gone.
    proxy.restore().await;
    let ids = eventually("the spilled events", Duration::from_secs(20), || in_db(8)).await;
    assert_eq!(ids.len(), 8, "each event once");
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 8);
    eventually("the spill file removed", Duration::from_secs(5), || async {
        (!file.exists()).then_some(())
    })
    .await;
    mcp.close().await.unwrap();
}

/// The console while PostgreSQL is away: every API answer is 503 with the error shape and a
/// `Retry-After` (never a hang, never a 500), and it recovers by itself when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_503_while_the_database_is_away_and_recovers_by_itself() {
    let db = portcullis_store::testing::fresh_database().await.unwrap();
    let mut proxy = Proxy::start(&db.options).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(proxy.options(&db.options, &db.name))
        .await
        .expect("a pool through the proxy");
    let console = portcullis_console::ConsoleState::new(
        pool,
        &SecretKey::generate().unwrap(),
        portcullis_tests::console::test_config(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = portcullis_console::router(console)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let api = portcullis_tests::console::Api::new(&base);
    let account = api.signup("ops@down.test", "Down").await;
    let me = |api: portcullis_tests::console::Api, token: String| async move {
        api.http
            .get(format!("{}/api/v1/me", api.base_url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(me(api.clone(), account.token.clone()).await.status(), 200);

    proxy.cut();
    let started = std::time::Instant::now();
    let down = eventually(
        "503 while the database is away",
        Duration::from_secs(10),
        || {
            let (api, token) = (api.clone(), account.token.clone());
            async move {
                let resp = me(api, token).await;
                (resp.status() == 503).then_some(resp)
            }
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(down.headers().contains_key("retry-after"));
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    proxy.restore().await;
    eventually("the console recovers", Duration::from_secs(15), || {
        let (api, token) = (api.clone(), account.token.clone());
        async move { (me(api, token).await.status() == 200).then_some(()) }
    })
    .await;
}

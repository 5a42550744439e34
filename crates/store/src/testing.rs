//! A fresh, migrated database per test.
//!
//! With `DATABASE_URL` set, test databases are created on that server; without it, on an
//! embedded cluster shared by every test process of this machine (in the system's temporary
//! directory, left running between runs so each test pays only for `CREATE DATABASE`). Each test
//! database is a copy of a migrated template, made once per set of migrations.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use crate::embedded::{EmbeddedPostgres, quote_ident};
use crate::{Error, PgPool, Result};

/// A test database: its pool, and options to open more connections to it (a second gateway
/// process, a LISTEN connection).
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub pool: PgPool,
    pub options: PgConnectOptions,
    pub name: String,
}

impl TestDatabase {
    /// A `postgres://` URL for this database, for child processes.
    pub fn url(&self) -> String {
        let o = &self.options;
        let mut url = format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            if o.get_socket().is_some() {
                "localhost"
            } else {
                o.get_host()
            },
            o.get_port(),
            self.name
        );
        if let Some(socket) = o.get_socket() {
            url.push_str(&format!("?host={}", socket.display()));
        }
        url
    }
}

/// Where the shared test cluster lives when `DATABASE_URL` is unset.
pub fn shared_cluster_dir() -> PathBuf {
    std::env::temp_dir().join("portcullis-test-pg")
}

static SERVER: OnceLock<std::result::Result<PgConnectOptions, String>> = OnceLock::new();

fn server_options() -> Result<PgConnectOptions> {
    SERVER
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                PgConnectOptions::from_str(&url).map_err(|e| format!("DATABASE_URL: {e}"))
            }
            _ => EmbeddedPostgres::start_disposable(&shared_cluster_dir())
                .map(|cluster| {
                    let options = cluster.connect_options("postgres");
                    cluster.detach();
                    options
                })
                .map_err(|e| e.to_string()),
        })
        .clone()
        .map_err(Error::Embedded)
}

/// The name of the migrated template for the migrations compiled in.
fn template_name() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for m in crate::MIGRATOR.iter() {
        m.version.hash(&mut hasher);
        m.checksum.hash(&mut hasher);
    }
    format!("pcl_tpl_{:016x}", hasher.finish())
}

/// Creates a fresh database migrated to the current schema, and a pool on it.
pub async fn fresh_database() -> Result<TestDatabase> {
    create_database(true).await
}

/// Creates an empty database (no schema at all), for tests of migrating itself.
pub async fn empty_database() -> Result<TestDatabase> {
    create_database(false).await
}

async fn create_database(migrated: bool) -> Result<TestDatabase> {
    let server = tokio::task::spawn_blocking(server_options)
        .await
        .map_err(|e| Error::Embedded(e.to_string()))??;
    let mut admin = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(Error::Unavailable)?;
    let template = if migrated {
        let template = template_name();
        ensure_template(&mut admin, &server, &template).await?;
        template
    } else {
        "template0".to_owned()
    };

    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("pcl_t_{secs}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {} TEMPLATE {}",
        quote_ident(&name),
        quote_ident(&template)
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await.ok();

    let options = server.database(&name);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.clone())
        .await
        .map_err(Error::Unavailable)?;
    Ok(TestDatabase {
        pool,
        options,
        name,
    })
}

/// Makes the template once (under an advisory lock, so concurrent test processes agree), and
/// drops test databases left behind by runs more than an hour old.
async fn ensure_template(
    admin: &mut PgConnection,
    server: &PgConnectOptions,
    template: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_lock(7123401)")
        .execute(&mut *admin)
        .await?;
    let outcome = async {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(template)
                .fetch_one(&mut *admin)
                .await?;
        if !exists {
            let building = format!("{template}_building");
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {}",
                quote_ident(&building)
            )))
            .execute(&mut *admin)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                quote_ident(&building)
            )))
            .execute(&mut *admin)
            .await?;
            let mut conn = server
                .clone()
                .database(&building)
                .connect()
                .await
                .map_err(Error::Unavailable)?;
            crate::MIGRATOR.run(&mut conn).await?;
            conn.close().await.ok();
            sqlx::query(AssertSqlSafe(format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(template)
            )))
            .execute(&mut *admin)
            .await?;
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'pcl\\_t\\_%'",
            )
            .fetch_all(&mut *admin)
            .await?;
            for name in stale {
                let created: u64 = name
                    .split('_')
                    .nth(2)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if created + 3600 < secs {
                    sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_ident(&name)
                    )))
                    .execute(&mut *admin)
                    .await?;
                }
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(7123401)")
        .execute(&mut *admin)
        .await?;
    outcome
}

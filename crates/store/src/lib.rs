//! PostgreSQL access for Portcullis.
//!
//! One module per aggregate. Every function that reads or writes tenant data takes the
//! organization id and filters by it, so no caller can read across tenants by forgetting a
//! `WHERE`; the few data-plane lookups that start from a secret (an agent key digest) or load
//! every published policy say so in their names and docs. Queries are checked at compile time
//! against the schema in `migrations/` (offline data in `.sqlx/`).

pub mod activity;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod crypto;
pub mod embedded;
pub mod orgs;
pub mod policies;
pub mod servers;
pub mod sessions;
pub mod testing;
pub mod webhooks;

use std::time::Duration;

pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Errors of the store. Callers map each variant to an answer; there is no catch-all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A unique constraint was violated; the constraint's name says which.
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    /// The row does not exist, or belongs to another organization.
    #[error("not found")]
    NotFound,
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The embedded cluster could not be created, started or stopped.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
    /// Sealed data does not open with the key given, or cannot be sealed.
    #[error("{0}")]
    Key(String),
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Error::NotFound,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Error::Unavailable(err),
            sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict {
                constraint: db.constraint().unwrap_or("unique").to_owned(),
            },
            _ => Error::Database(err),
        }
    }
}

impl Error {
    /// True for a unique violation of the named constraint (turned into a 409 by callers).
    pub fn is_conflict_on(&self, name: &str) -> bool {
        matches!(self, Error::Conflict { constraint } if constraint == name)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a pool. Fails fast (5 s) when the database cannot be reached, so a gateway that cannot
/// load its policies does not start serving.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(Error::Unavailable)
}

/// Applies pending migrations. Safe with several processes starting at once: sqlx holds a
/// PostgreSQL advisory lock while it migrates.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A new random id for rows that are not time-ordered.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// Checks that the database answers.
pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query_scalar!("SELECT 1 AS one")
        .fetch_one(pool)
        .await?;
    Ok(())
}

//! The embedded default database: a private PostgreSQL cluster run from the machine's own
//! PostgreSQL binaries inside Portcullis's data directory.
//!
//! `portcullis serve` with no `DATABASE_URL` uses this, and so does the test suite. The cluster
//! listens on a Unix socket only (no TCP port, so nothing else on the machine can reach it; the
//! socket directory is private to the cluster's owner) with `trust` authentication behind it.
//!
//! PostgreSQL refuses to run as root. When Portcullis runs as root (containers, CI machines), the
//! cluster's files and processes belong to the unprivileged `postgres` user instead.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use crate::Error;

/// The role and database the embedded cluster is created with.
const SUPERUSER: &str = "portcullis";
/// The port only names the socket file; the cluster opens no TCP port.
const SOCKET_PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 100;

/// A running embedded cluster. Stopping is explicit ([`EmbeddedPostgres::stop`]) or on drop,
/// but only for a cluster this process started.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<Account>,
    started_here: bool,
    stopped: bool,
    disposable: bool,
}

/// How long `pg_ctl start` may wait for the server to accept connections. Long on purpose: after
/// an unclean stop (a killed machine, a restored snapshot) PostgreSQL replays its write-ahead log
/// before it accepts anyone, and giving up during that replay only makes the next start replay
/// it again. A busy machine has been seen to need more than a minute.
const START_TIMEOUT_SECS: &str = "600";

/// An unprivileged account to run the cluster as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

impl EmbeddedPostgres {
    /// Starts (creating it first if needed) the cluster in `dir`, or attaches to it when another
    /// process already runs it. Several processes may call this at once: a lock file serializes
    /// them. Blocking: call from `spawn_blocking` or before the runtime is busy.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        Self::start_inner(dir, false)
    }

    /// [`start`](Self::start) for a cluster whose contents are disposable (the test suite's
    /// shared cluster): checkpoints are frequent so a crash leaves little log to replay, commits
    /// do not wait for the disk, and a cluster that cannot start (a damaged data directory) is
    /// deleted and created again instead of failing every test.
    pub fn start_disposable(dir: &Path) -> Result<Self, Error> {
        Self::start_inner(dir, true)
    }

    fn start_inner(dir: &Path, disposable: bool) -> Result<Self, Error> {
        fs::create_dir_all(dir)
            .map_err(|e| embedded(format!("cannot create {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| embedded(format!("cannot resolve {}: {e}", dir.display())))?;
        let bin_dir = find_bin_dir()?;
        let run_as = if running_as_root() {
            Some(unprivileged_account()?)
        } else {
            None
        };

        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("cluster.lock"))
            .map_err(|e| {
                embedded(format!(
                    "cannot open the cluster lock in {}: {e}",
                    dir.display()
                ))
            })?;
        lock.lock()
            .map_err(|e| embedded(format!("cannot lock the cluster: {e}")))?;

        let pgdata = dir.join("pgdata");
        let socket_dir = socket_dir_for(&dir);
        let mut cluster = EmbeddedPostgres {
            bin_dir,
            pgdata,
            socket_dir,
            run_as,
            started_here: false,
            stopped: false,
            disposable,
        };
        if let Some(account) = run_as {
            // The cluster's owner must be able to reach its directory.
            chown(&dir, account)?;
        }
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        cluster.write_settings()?;
        if !cluster.is_running() {
            match cluster.pg_ctl_start() {
                Ok(()) => {}
                // Still replaying its log (or otherwise alive): never delete a running cluster.
                Err(e) if !disposable || cluster.is_running() => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        pgdata = %cluster.pgdata.display(),
                        "the disposable cluster does not start; creating it again"
                    );
                    fs::remove_dir_all(&cluster.pgdata).map_err(|e| {
                        embedded(format!("cannot remove {}: {e}", cluster.pgdata.display()))
                    })?;
                    cluster.initdb()?;
                    cluster.write_settings()?;
                    cluster.pg_ctl_start()?;
                }
            }
            cluster.started_here = true;
        }
        drop(lock);
        Ok(cluster)
    }

    /// Connection options for `database` on this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(SOCKET_PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// A `postgres://` URL for `database` (for tools such as psql or `cargo sqlx`).
    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{SOCKET_PORT}/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<(), Error> {
        let mut conn = self
            .connect_options("postgres")
            .connect()
            .await
            .map_err(Error::Unavailable)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                quote_ident(database)
            )))
            .execute(&mut conn)
            .await?;
        }
        conn.close().await.ok();
        Ok(())
    }

    /// The account the cluster runs as, when that is not the current one.
    pub fn run_as(&self) -> Option<Account> {
        self.run_as
    }

    /// The cluster's data directory.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Keeps the cluster running after this handle is dropped (the test suite shares one
    /// cluster between its processes).
    pub fn detach(mut self) {
        self.stopped = true;
    }

    /// Stops the cluster if this process started it (fast shutdown: open sessions are ended,
    /// committed work is kept).
    pub fn stop(mut self) -> Result<(), Error> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), Error> {
        if self.stopped || !self.started_here {
            self.stopped = true;
            return Ok(());
        }
        self.stopped = true;
        let out = self.run(
            self.bin("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "fast", "-w", "-t", "60"]),
        )?;
        check(out, "pg_ctl stop")
    }

    fn initdb(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.pgdata)
            .map_err(|e| embedded(format!("cannot create {}: {e}", self.pgdata.display())))?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700)).map_err(|e| {
            embedded(format!(
                "cannot set permissions on {}: {e}",
                self.pgdata.display()
            ))
        })?;
        if let Some(account) = self.run_as {
            chown(&self.pgdata, account)?;
        }
        let out = self.run(self.bin("initdb").arg("-D").arg(&self.pgdata).args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]))?;
        check(out, "initdb")?;
        let conf = self.pgdata.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| embedded(format!("cannot open {}: {e}", conf.display())))?;
        writeln!(
            file,
            "\n# Written by Portcullis on every start.\ninclude_if_exists = 'portcullis.conf'"
        )
        .map_err(|e| embedded(format!("cannot write {}: {e}", conf.display())))?;
        Ok(())
    }

    /// Settings that depend on where the cluster lives are rewritten on every start, so the
    /// data directory can be moved.
    fn write_settings(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.socket_dir)
            .and_then(|()| fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| embedded(format!("cannot prepare {}: {e}", self.socket_dir.display())))?;
        if let Some(account) = self.run_as {
            chown(&self.socket_dir, account)?;
        }
        let mut settings = format!(
            "listen_addresses = ''\nport = {SOCKET_PORT}\nunix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\nmax_connections = 200\nshared_buffers = 64MB\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        );
        if self.disposable {
            // Every test creates a database, and each creation writes the template through the
            // log: bound what a crash leaves to replay. Losing the last commits is acceptable
            // here (never corruption: fsync stays on).
            settings.push_str(
                "max_wal_size = 128MB\nmin_wal_size = 32MB\ncheckpoint_timeout = 60s\n\
                 synchronous_commit = off\n",
            );
        }
        let path = self.pgdata.join("portcullis.conf");
        fs::write(&path, settings)
            .map_err(|e| embedded(format!("cannot write {}: {e}", path.display())))?;
        if let Some(account) = self.run_as {
            chown(&path, account)?;
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.run(self.bin("pg_ctl").arg("status").arg("-D").arg(&self.pgdata))
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let log = self
            .pgdata
            .parent()
            .unwrap_or(&self.pgdata)
            .join("postgres.log");
        // The log file must be writable by the cluster's owner.
        File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| embedded(format!("cannot open {}: {e}", log.display())))?;
        if let Some(account) = self.run_as {
            chown(&log, account)?;
        }
        let out = self.run(
            self.bin("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", START_TIMEOUT_SECS]),
        )?;
        check(out, "pg_ctl start").map_err(|e| {
            let tail = fs::read_to_string(&log)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            embedded(format!("{e}\n{tail}"))
        })
    }

    fn bin(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(name));
        if let Some(account) = self.run_as {
            use std::os::unix::process::CommandExt as _;
            cmd.uid(account.uid).gid(account.gid);
            // HOME and the working directory of root are not the postgres user's.
            cmd.current_dir(self.pgdata.parent().unwrap_or(Path::new("/")));
            cmd.env("HOME", self.pgdata.parent().unwrap_or(Path::new("/")));
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    fn run(&self, cmd: &mut Command) -> Result<Output, Error> {
        cmd.output()
            .map_err(|e| embedded(format!("cannot run {:?}: {e}", cmd.get_program())))
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL cluster");
        }
    }
}

fn embedded(message: String) -> Error {
    Error::Embedded(message)
}

fn check(out: Output, what: &str) -> Result<(), Error> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    Err(embedded(format!(
        "{what} failed ({}): {}{}",
        out.status,
        stderr.trim(),
        stdout.trim()
    )))
}

/// Where the PostgreSQL server binaries are: the directory of `pg_ctl` on `PATH` (with `initdb`
/// beside it), else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, Error> {
    let has_tools = |dir: &Path| {
        dir.join("pg_ctl").is_file()
            && dir.join("initdb").is_file()
            && dir.join("postgres").is_file()
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let pg_ctl = dir.join("pg_ctl");
            if let Ok(real) = pg_ctl.canonicalize()
                && let Some(real_dir) = real.parent()
                && has_tools(real_dir)
            {
                return Ok(real_dir.to_path_buf());
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin).ok_or_else(|| {
        embedded(
            "no PostgreSQL server binaries found (looked for pg_ctl, initdb and postgres on PATH \
             and under /usr/lib/postgresql/*/bin). Install PostgreSQL (Debian/Ubuntu: \
             `apt-get install postgresql`; macOS: `brew install postgresql`), or set DATABASE_URL \
             to a PostgreSQL server you run yourself."
                .to_owned(),
        )
    })
}

fn running_as_root() -> bool {
    // The owner of /proc/self is the effective user of this process.
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The `postgres` account (as created by every distribution's PostgreSQL package).
fn unprivileged_account() -> Result<Account, Error> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == "postgres").then_some(())?;
            let _password = fields.next()?;
            Some(Account {
                uid: fields.next()?.parse().ok()?,
                gid: fields.next()?.parse().ok()?,
            })
        })
        .ok_or_else(|| {
            embedded(
                "PostgreSQL refuses to run as root, and there is no `postgres` user to run the \
                 embedded cluster as. Run Portcullis as an unprivileged user, create a `postgres` \
                 user, or set DATABASE_URL."
                    .to_owned(),
            )
        })
}

fn chown(path: &Path, account: Account) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid)).map_err(|e| {
        embedded(format!(
            "cannot give {} to the postgres user: {e}",
            path.display()
        ))
    })
}

fn socket_dir_for(dir: &Path) -> PathBuf {
    let preferred = dir.join("run");
    let socket_file_len = preferred.as_os_str().len() + "/.s.PGSQL.5432".len();
    if socket_file_len <= MAX_SOCKET_PATH {
        return preferred;
    }
    // Too long for a Unix socket: use a private directory under /tmp named after the data dir.
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    dir.hash(&mut hasher);
    std::env::temp_dir().join(format!("portcullis-pg-{:016x}", hasher.finish()))
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

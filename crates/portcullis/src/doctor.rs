//! `portcullis doctor`: checks what a process needs before it can serve, and says in plain words
//! what is wrong and what to do. Every check runs (one failure does not hide the next); the exit
//! code is 1 when any check failed, so a deployment script can gate on it.

use std::time::Duration;

use portcullis_store::crypto::SecretKey;

use crate::cli::ServerOpts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, &'static str, String)>,
}

impl Report {
    fn add(&mut self, level: Level, what: &'static str, text: impl Into<String>) {
        self.lines.push((level, what, text.into()));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (level, what, text) in &self.lines {
            let tag = match level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            out.push_str(&format!("{tag}  {what:<12} {text}\n"));
        }
        let failed = self.failed();
        let warned = self.lines.iter().filter(|l| l.0 == Level::Warn).count();
        out.push_str(&match (failed, warned) {
            (0, 0) => "Everything Portcullis needs is in place.\n".to_owned(),
            (0, w) => format!("Portcullis can run; {w} warning(s) above.\n"),
            (f, _) => format!("{f} problem(s) would stop Portcullis from working.\n"),
        });
        out
    }

    fn failed(&self) -> usize {
        self.lines.iter().filter(|l| l.0 == Level::Fail).count()
    }
}

/// Runs every check and prints the report; returns whether nothing failed.
pub fn run(opts: &ServerOpts, config_file: Option<&std::path::Path>) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report { lines: Vec::new() };
    match config_file {
        Some(file) => report.add(Level::Ok, "config", format!("read {}", file.display())),
        None => report.add(
            Level::Ok,
            "config",
            "flags and environment only (no --config file)",
        ),
    }
    secret_key(opts, &mut report);
    runtime.block_on(database(opts, &mut report));
    runtime.block_on(redis(opts, &mut report));
    public_url(opts, &mut report);
    listen(opts, &mut report);
    print!("{}", report.render());
    Ok(report.failed() == 0)
}

fn secret_key(opts: &ServerOpts, report: &mut Report) {
    match &opts.secret_key {
        Some(text) => match SecretKey::parse(text) {
            Ok(_) => report.add(Level::Ok, "secret key", "set, and long enough"),
            Err(e) => report.add(
                Level::Fail,
                "secret key",
                format!(
                    "PORTCULLIS_SECRET_KEY is unusable: {e}; make one with `openssl rand -base64 32`"
                ),
            ),
        },
        None => {
            let path = opts.secret_key_path();
            let kept = match std::fs::read_to_string(&path) {
                Ok(text) => match SecretKey::parse(&text) {
                    Ok(_) => format!("the key kept in {}", path.display()),
                    Err(e) => {
                        return report.add(
                            Level::Fail,
                            "secret key",
                            format!("{} holds no usable key: {e}", path.display()),
                        );
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    format!("a key generated at first start into {}", path.display())
                }
                Err(e) => {
                    return report.add(
                        Level::Fail,
                        "secret key",
                        format!("cannot read {}: {e}", path.display()),
                    );
                }
            };
            if opts.secret_key_file.is_some() {
                report.add(Level::Ok, "secret key", format!("using {kept}"));
            } else if opts.database.database_url.is_some() {
                report.add(
                    Level::Warn,
                    "secret key",
                    format!(
                        "not set: this process uses {kept}; every process sharing the database must have the same key (sessions, log-ins and upstream credentials), so set PORTCULLIS_SECRET_KEY"
                    ),
                );
            } else {
                report.add(Level::Ok, "secret key", format!("not set: using {kept}"));
            }
        }
    }
}

async fn database(opts: &ServerOpts, report: &mut Report) {
    let Some(url) = &opts.database.database_url else {
        match portcullis_store::embedded::find_bin_dir() {
            Ok(bin) => report.add(
                Level::Ok,
                "database",
                format!(
                    "DATABASE_URL is not set: the embedded PostgreSQL (binaries in {}) keeps its data in {}",
                    bin.display(),
                    opts.database.data_dir.join("postgres").display()
                ),
            ),
            Err(e) => report.add(
                Level::Fail,
                "database",
                format!(
                    "DATABASE_URL is not set and the embedded PostgreSQL cannot run: {e}; install PostgreSQL or set DATABASE_URL"
                ),
            ),
        }
        data_dir(opts, report);
        return;
    };
    let options = match crate::serve::sqlx_options(url) {
        Ok(o) => o,
        Err(e) => return report.add(Level::Fail, "database", e.to_string()),
    };
    let place = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await;
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            return report.add(
                Level::Fail,
                "database",
                format!("cannot connect to {place}: {e}"),
            );
        }
    };
    let version: Result<String, _> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await;
    let version = version.unwrap_or_else(|_| "?".into());
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&pool)
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => {
                pool.close().await;
                return report.add(
                    Level::Fail,
                    "database",
                    format!("PostgreSQL {version} at {place}, but the schema cannot be read: {e}"),
                );
            }
        };
    pool.close().await;
    let known: Vec<i64> = portcullis_store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    let pending = known.iter().filter(|v| !applied.contains(v)).count();
    let newer = applied.iter().filter(|v| !known.contains(v)).count();
    if newer > 0 {
        report.add(
            Level::Fail,
            "database",
            format!(
                "PostgreSQL {version} at {place} has {newer} migration(s) this binary does not know: it was migrated by a newer Portcullis; run that version"
            ),
        );
    } else if pending == 0 {
        report.add(
            Level::Ok,
            "database",
            format!("PostgreSQL {version} at {place}, schema up to date"),
        );
    } else if opts.no_migrate {
        report.add(
            Level::Fail,
            "database",
            format!(
                "PostgreSQL {version} at {place} has {pending} pending migration(s) and --no-migrate is set: run `portcullis migrate` first"
            ),
        );
    } else {
        report.add(
            Level::Ok,
            "database",
            format!(
                "PostgreSQL {version} at {place}; {pending} pending migration(s) will be applied at start"
            ),
        );
    }
}

/// The data directory must be writable for the embedded cluster, the generated key and spilled
/// activity events.
fn data_dir(opts: &ServerOpts, report: &mut Report) {
    let dir = &opts.database.data_dir;
    let probe = dir.join(".doctor-write-test");
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => report.add(
            Level::Ok,
            "data dir",
            format!("{} is writable", dir.display()),
        ),
        Err(e) => report.add(
            Level::Fail,
            "data dir",
            format!("{} is not writable: {e}", dir.display()),
        ),
    }
}

async fn redis(opts: &ServerOpts, report: &mut Report) {
    let Some(url) = &opts.redis_url else {
        return report.add(
            Level::Ok,
            "redis",
            "REDIS_URL is not set: rate limits are counted in each gateway process (set it when running more than one gateway)",
        );
    };
    // Never the URL itself: it may carry a password.
    let place = url::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379)
            )
        })
        .unwrap_or_else(|| "REDIS_URL".into());
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            return report.add(
                Level::Fail,
                "redis",
                format!("REDIS_URL is not a valid Redis URL ({:?})", e.kind()),
            );
        }
    };
    let ping = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => report.add(Level::Ok, "redis", format!("{place} answers")),
        Ok(Err(e)) => report.add(
            Level::Fail,
            "redis",
            format!("cannot reach Redis at {place}: {}", redis_reason(&e)),
        ),
        Err(_) => report.add(
            Level::Fail,
            "redis",
            format!("Redis at {place} did not answer within 3 s"),
        ),
    }
}

fn redis_reason(e: &redis::RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        format!("{:?}", e.kind())
    }
}

fn public_url(opts: &ServerOpts, report: &mut Report) {
    let Some(text) = &opts.public_url else {
        if opts.listen.ip().is_unspecified() {
            report.add(
                Level::Warn,
                "public URL",
                format!(
                    "not set while listening on every address ({}): gateway URLs will say http://{}, and any Host header is served; set PORTCULLIS_PUBLIC_URL",
                    opts.listen, opts.listen
                ),
            );
        } else {
            report.add(
                Level::Ok,
                "public URL",
                format!("not set: http://{} (fine on one machine)", opts.listen),
            );
        }
        return;
    };
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            return report.add(
                Level::Fail,
                "public URL",
                format!("{text:?} is not a URL: {e}"),
            );
        }
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return report.add(
            Level::Fail,
            "public URL",
            format!("{text} must be an http:// or https:// URL with a host"),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return report.add(
            Level::Fail,
            "public URL",
            format!("{text} must not have a query or a fragment"),
        );
    }
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.scheme() == "http" && !local {
        report.add(
            Level::Warn,
            "public URL",
            format!(
                "{text} is plain HTTP on a network: agent keys and session cookies would cross it in clear; serve it over HTTPS (a TLS proxy in front) and give the https:// URL"
            ),
        );
    } else {
        report.add(Level::Ok, "public URL", text.clone());
    }
}

fn listen(opts: &ServerOpts, report: &mut Report) {
    for (what, addr) in [("listen", opts.listen), ("admin", opts.admin_listen)] {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => report.add(Level::Ok, what, format!("{addr} is free")),
            // Not a failure: doctor is often run beside the process it checks.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.add(
                Level::Warn,
                what,
                format!("{addr} is already in use: fine if Portcullis is running there, otherwise another program holds it"),
            ),
            Err(e) => report.add(Level::Fail, what, format!("cannot listen on {addr}: {e}")),
        }
    }
}

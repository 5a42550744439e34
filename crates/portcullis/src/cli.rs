//! The command line. Every flag also reads an environment variable: `PORTCULLIS_` plus the
//! flag's name in capitals (`--listen` ↔ `PORTCULLIS_LISTEN`); `DATABASE_URL`, `REDIS_URL` and
//! `PORTCULLIS_SECRET_KEY` keep their conventional names. A TOML file (`--config`) can hold any
//! of them too, under the flag's name (`listen = "0.0.0.0:8080"`): see `config.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A policy gateway for the Model Context Protocol",
    long_about = "Portcullis sits between AI agents and MCP servers: every tool call is checked \
                  against a published policy before it reaches the server, and every decision is \
                  logged."
)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A TOML file of settings, named like the flags (`public_url = "https://…"`). A flag or an
    /// environment variable wins over the file; the file wins over the defaults.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the console and the gateway together on one port (self-hosted and development default).
    Serve(ServerOpts),
    /// Run the console (control plane) only.
    Console(ServerOpts),
    /// Run the gateway (data plane) only; scale it horizontally behind a load balancer.
    Gateway(ServerOpts),
    /// Apply pending database migrations, then exit (safe to run from several processes at once).
    Migrate(DatabaseOpts),
    /// Replace the secret key: re-seals every upstream credential under the new key in one
    /// transaction (and rewrites the key file when the current key came from it). Then restart
    /// every process with the new key: people log in again, MCP clients start new sessions.
    RotateKey(RotateKeyOpts),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check the database, Redis, the secret key, the public URL and the listen addresses, and say
    /// in plain words what is wrong; exits 1 if anything would stop Portcullis from working.
    Doctor(ServerOpts),
    /// Check and explain policy documents.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Classify MCP tools by risk: reads a tools/list result (or {"tools": [...]}) and prints each
    /// tool's category, risk and evidence.
    Classify(ClassifyArgs),
}

#[derive(Debug, Args)]
pub struct DatabaseOpts {
    /// PostgreSQL URL. Unset: run an embedded cluster from the machine's PostgreSQL binaries in
    /// the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where Portcullis keeps its files (the embedded database, a generated secret key, activity
    /// events waiting for the database).
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./.portcullis")]
    pub data_dir: PathBuf,
}

impl DatabaseOpts {
    pub fn normalized(mut self) -> DatabaseOpts {
        if self
            .database_url
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            self.database_url = None;
        }
        self
    }
}

#[derive(Debug, Args)]
pub struct ServerOpts {
    /// Address to listen on for HTTP (console pages, API, and MCP clients).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The URL people and MCP clients reach this instance at (default: http://{listen}).
    #[arg(long, env = "PORTCULLIS_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Address of the admin listener (health and Prometheus metrics; keep it private).
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub admin_listen: SocketAddr,

    /// Allow upstream MCP servers on loopback, private, link-local and metadata addresses
    /// (refused by default: a registered URL must not reach your internal network).
    #[arg(long, env = "PORTCULLIS_ALLOW_PRIVATE_UPSTREAMS")]
    pub allow_private_upstreams: bool,

    /// Allow stdio MCP servers, which spawn a local command (self-hosted only: it is remote code
    /// execution for anyone who can register a server). The console needs it to register one,
    /// a gateway to run one.
    #[arg(long, env = "PORTCULLIS_ALLOW_STDIO_SERVERS")]
    pub allow_stdio_servers: bool,

    /// Redis URL for rate-limit counters shared between gateway processes (unset: in memory).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// While Redis is unreachable, refuse calls that have rate limits instead of counting them
    /// in each gateway process (the default keeps calls flowing with per-process limits).
    #[arg(long, env = "PORTCULLIS_LIMITS_FAIL_CLOSED")]
    pub limits_fail_closed: bool,

    /// Secret key (at least 32 bytes, base64 or hex) for tokens, sessions and upstream
    /// credentials. Unset: generated once and kept in the data directory.
    #[arg(long, env = "PORTCULLIS_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// A file holding the secret key, generated there (mode 0600) if missing; processes sharing
    /// the file's volume agree on one key even when they start at once. Default:
    /// secret.key in the data directory. Ignored when --secret-key is given.
    #[arg(long, env = "PORTCULLIS_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Browser origins allowed to call the MCP endpoint, comma-separated (the public URL's
    /// origin is always allowed; requests without an Origin header, as MCP clients send them,
    /// are not affected).
    #[arg(long, env = "PORTCULLIS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Host names (host:port, as clients send them) the MCP endpoint answers to, comma-separated,
    /// besides the public URL's and, on a loopback address, localhost's: anything else is refused
    /// (DNS rebinding protection).
    #[arg(long, env = "PORTCULLIS_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Largest MCP request body accepted, in bytes (413 beyond).
    #[arg(long, env = "PORTCULLIS_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Timeout of every upstream call, in seconds (held approvals excepted).
    #[arg(long, env = "PORTCULLIS_UPSTREAM_TIMEOUT", default_value_t = 60)]
    pub upstream_timeout: u64,

    /// Close a stdio server's process (or a legacy SSE upstream's connection) after this many
    /// seconds without a call or an open stream; the next call starts it again.
    #[arg(long, env = "PORTCULLIS_UPSTREAM_IDLE_TIMEOUT", default_value_t = 300)]
    pub upstream_idle_timeout: u64,

    /// On SIGTERM or Ctrl-C: stop accepting, then give calls in flight this many seconds to
    /// finish (server-initiated streams end at once), then write the queued activity events.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Do not apply pending migrations at start.
    #[arg(long, env = "PORTCULLIS_NO_MIGRATE")]
    pub no_migrate: bool,

    #[command(flatten)]
    pub database: DatabaseOpts,
}

impl ServerOpts {
    /// An empty environment variable means "not set" (compose files write `VAR: ${VAR:-}`).
    pub fn normalized(mut self) -> ServerOpts {
        for value in [
            &mut self.public_url,
            &mut self.redis_url,
            &mut self.secret_key,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        self.database = self.database.normalized();
        self
    }

    /// The `Host` values to serve: the configured ones, the public URL's, and for a loopback
    /// listener the loopback names. Empty (any host) only when listening on every address with
    /// neither a public URL nor a list: then the operator is told to set one.
    pub fn allowed_hosts(&self, bound: SocketAddr) -> Vec<String> {
        let mut hosts = listed(&self.allowed_hosts);
        if let Some(url) = &self.public_url
            && let Some((_, rest)) = url.split_once("://")
        {
            hosts.push(rest.split('/').next().unwrap_or(rest).to_owned());
        }
        let port = bound.port();
        let ip = bound.ip();
        if ip.is_loopback() {
            hosts.extend([
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ]);
        } else if !ip.is_unspecified() {
            hosts.push(bound.to_string());
        }
        hosts
    }

    /// The extra origins allowed to call the gateway from a browser (`--allowed-origins`).
    pub fn allowed_origins(&self) -> Vec<String> {
        listed(&self.allowed_origins)
    }

    /// The origin (scheme, host, port) of the public URL.
    pub fn public_origin(&self) -> String {
        let url = self.public_url();
        match url.find("://") {
            Some(i) => match url[i + 3..].find('/') {
                Some(j) => url[..i + 3 + j].to_owned(),
                None => url,
            },
            None => url,
        }
    }

    /// Where the secret key is kept when it is not given directly.
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.database.data_dir.join("secret.key"))
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }
}

#[derive(Debug, Args)]
pub struct RotateKeyOpts {
    /// The key in use now (unset: the key file's).
    #[arg(long, env = "PORTCULLIS_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// The key file in use now, rewritten with the new key (default: secret.key in the data
    /// directory).
    #[arg(long, env = "PORTCULLIS_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// The new key (at least 32 bytes, base64 or hex; `openssl rand -base64 32`).
    #[arg(long, env = "PORTCULLIS_NEW_SECRET_KEY", hide_env_values = true)]
    pub new_secret_key: String,

    #[command(flatten)]
    pub database: DatabaseOpts,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, with where each value comes from (flag,
    /// environment, file, default) and secrets masked.
    Print(ServerOpts),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy documents: prints every problem with its JSON pointer; exits 1 if any
    /// document is invalid.
    Check {
        /// Policy documents (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the decision a policy makes for one call, and the rule that made it.
    Explain {
        /// A policy document (JSON).
        file: PathBuf,
        /// The tool being called.
        #[arg(long)]
        tool: String,
        /// The call's arguments, as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Treat the tool's definition as changed since the policy was published.
        #[arg(long)]
        changed: bool,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// A JSON file: a tools/list result, {"tools": [...]}, or a JSON-RPC response carrying one.
    pub file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A comma-separated list as given: entries trimmed, empty ones dropped. An empty variable
/// (`PORTCULLIS_ALLOWED_HOSTS=`, as a compose file's `${VAR:-}` gives) is no list at all, not
/// a list of one empty name that nothing matches.
fn listed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_server_flag_has_an_environment_variable() {
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "log_format" | "config") {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no environment variable"));
            let env = env.to_str().unwrap();
            let expected = match id {
                "database_url" => "DATABASE_URL".to_owned(),
                "redis_url" => "REDIS_URL".to_owned(),
                other => format!("PORTCULLIS_{}", other.to_uppercase()),
            };
            assert_eq!(env, expected, "--{id}");
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    fn opts(args: &[&str]) -> ServerOpts {
        let mut argv = vec!["portcullis", "serve"];
        argv.extend(args);
        match Cli::parse_from(argv).command {
            Command::Serve(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn allowed_hosts_follow_the_bound_address_and_the_public_url() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let hosts = opts(&["--listen", "127.0.0.1:0"]).allowed_hosts(bound);
        assert!(
            hosts.contains(&"127.0.0.1:41234".to_owned())
                && hosts.contains(&"localhost:41234".to_owned()),
            "{hosts:?}"
        );

        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(
            opts(&["--listen", "0.0.0.0:8080"])
                .allowed_hosts(any)
                .is_empty(),
            "no way to know the names"
        );
        let public = opts(&[
            "--listen",
            "0.0.0.0:8080",
            "--public-url",
            "https://mcp.example.com/",
            "--allowed-hosts",
            "10.0.0.5:8080",
        ])
        .allowed_hosts(any);
        assert_eq!(public, ["10.0.0.5:8080", "mcp.example.com"]);
        // Empty entries (an empty variable, a stray comma) are no entries.
        let empty = opts(&["--listen", "0.0.0.0:8080", "--allowed-hosts", ""]);
        assert!(
            empty.allowed_hosts(any).is_empty(),
            "{:?}",
            empty.allowed_hosts(any)
        );
        let spaced = opts(&[
            "--listen",
            "0.0.0.0:8080",
            "--allowed-hosts",
            " a.example.com , ,b.example.com",
            "--allowed-origins",
            ",https://app.example.com,",
        ]);
        assert_eq!(
            spaced.allowed_hosts(any),
            ["a.example.com", "b.example.com"]
        );
        assert_eq!(spaced.allowed_origins(), ["https://app.example.com"]);
    }
}

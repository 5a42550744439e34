//! Helpers shared by the end-to-end tests in `tests/`.
//!
//! - [`bench`]: what the benchmark binaries share.
//! - [`browser`]: headless Chromium through chromedriver, with screenshots.
//! - [`upstream`]: a real MCP server (rmcp, Streamable HTTP) to put behind the gateway.
//! - [`client`]: a real MCP client (rmcp, Streamable HTTP) to put in front of it.
//! - [`everything`]: `@modelcontextprotocol/server-everything` (Node), the reference MCP server.
//! - [`gateway`]: a running gateway on a fresh database.
//! - [`console`]: the console API and a gateway on one port, as `portcullis serve` runs them.
//! - [`process`]: the `portcullis` binary as separate processes sharing a database (a fleet).

use std::path::PathBuf;

pub mod bench;
pub mod browser;
pub mod client;
pub mod console;
pub mod everything;
pub mod fake_mcp;
pub mod gateway;
pub mod process;
pub mod upstream;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `shared/` folder beside the repository (design docs and fixtures).
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

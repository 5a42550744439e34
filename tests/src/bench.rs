//! Shared by the benchmark binaries (`src/bin/bench-*.rs`): the 50-rule policy, opening an MCP
//! session over raw HTTP, the gateway binary as a process of its own, and its memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// 50 rules: exact names, globs, conditions and limits; `echo` is decided by a rule with
/// conditions, so every measured call runs the condition code.
pub fn policy() -> Value {
    let mut tools = serde_json::Map::new();
    for i in 0..30 {
        tools.insert(
            format!("tool_{i:02}"),
            json!({"rate_limit": {"max": 1000, "window": "minute"}}),
        );
    }
    for i in 0..12 {
        tools.insert(
            format!("group_{i:02}_*"),
            json!({"action": "deny", "reason": "not for agents"}),
        );
    }
    for i in 0..7 {
        tools.insert(
            format!("refund_{i}"),
            json!({"deny_if": [{"conditions": [{"path": "args.amount", "op": "gt", "value": 100}]}]}),
        );
    }
    tools.insert(
        "echo".into(),
        json!({
            "require": [{"path": "args.text", "op": "exists"}],
            "deny_if": [{"conditions": [{"path": "args.text", "op": "regex", "value": "^DROP TABLE"}],
                         "on_deny": "no SQL"}],
        }),
    );
    json!({"version": "1", "default": "deny", "hide": ["delete_*", "admin_*"], "tools": tools})
}

/// Opens a session (initialize, then initialized) as an MCP client does; `None` when the server
/// gives no session id.
pub async fn open_session(http: &reqwest::Client, url: &str, key: Option<&str>) -> Option<String> {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("initialize");
    assert!(resp.status().is_success(), "initialize: {}", resp.status());
    let session = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    resp.bytes().await.ok();
    let mut ack = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    if let Some(k) = key {
        ack = ack.bearer_auth(k);
    }
    if let Some(s) = &session {
        ack = ack.header("mcp-session-id", s);
        ack = ack.header("mcp-protocol-version", "2025-06-18");
    }
    ack.send().await.expect("initialized").bytes().await.ok();
    session
}

/// Starts `portcullis gateway` from `bin` on a loopback port against `database_url`; answers the
/// process and the address it listens on. `GATEWAY_X=v` in the harness's environment sets `X=v`
/// for the gateway alone (e.g. `GATEWAY_TOKIO_WORKER_THREADS=1`).
pub fn spawn_gateway(bin: &str, database_url: &str) -> (Child, String) {
    let mut child = Command::new(bin)
        .args([
            "--log-format",
            "json",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-migrate",
            "--allow-private-upstreams",
        ])
        .env("DATABASE_URL", database_url)
        .env(
            "PORTCULLIS_SECRET_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("RUST_LOG", "warn,portcullis=info")
        // GATEWAY_X=v in the harness's environment sets X=v for the gateway alone (e.g.
        // GATEWAY_TOKIO_WORKER_THREADS=1).
        .envs(
            std::env::vars()
                .filter_map(|(k, v)| k.strip_prefix("GATEWAY_").map(|k| (k.to_owned(), v))),
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it with cargo build --release)",
                bin
            )
        });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listen = loop {
        let line = lines.next().expect("the gateway exited").unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["fields"]["message"] == "Portcullis is serving"
        {
            break v["fields"]["listen"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, listen)
}

/// A memory figure of a process, in KiB: `VmRSS` (now) or `VmHWM` (peak).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

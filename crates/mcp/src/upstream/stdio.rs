//! The stdio transport, client side: a local command speaking newline-delimited JSON-RPC on its
//! standard input and output (self-hosted only: registering one runs a command).
//!
//! The child gets a clean environment: only `PATH`, `HOME`, `LANG`, `TMPDIR` and the variables
//! configured for the server, never the gateway's own (its database URL, its secret key). Its
//! standard error is kept (the last 2 KiB) to explain a failure.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::channel::{ChannelClient, CloseFn, SendFn};
use super::{Discovery, Initialized, PostResponse, UpstreamError, list_all_tools};
use crate::jsonrpc::{Message, RequestId};
use crate::version::ProtocolVersion;

/// Variables of the gateway's environment a stdio server inherits; everything else is withheld.
pub const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];
/// Kept of the child's standard error, to explain a failure.
const STDERR_KEPT: usize = 2048;

/// How to start a stdio server.
#[derive(Clone)]
pub struct StdioConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Variables set for the child (typically credentials): never logged or printed by `Debug`.
    pub env: Vec<(String, String)>,
    /// The bound on each request, from writing it to reading its response.
    pub timeout: Duration,
    /// The bound on one message (one line).
    pub max_message_bytes: usize,
}

impl std::fmt::Debug for StdioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("StdioConfig")
            .field("command", &self.command.first())
            .field("env", &names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A running stdio server. Dropping it kills the process.
pub struct StdioClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Reads stderr into `stderr` until the child closes it.
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    timeout: Duration,
    max_message_bytes: usize,
}

impl std::fmt::Debug for StdioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioClient")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl StdioClient {
    /// Starts the command with a clean environment (see the module documentation).
    pub fn spawn(config: &StdioConfig) -> Result<StdioClient, UpstreamError> {
        let (child, stdin, stdout, stderr) = spawn_child(config)?;
        let kept = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = tokio::spawn(keep_tail(stderr, kept.clone(), None));
        Ok(StdioClient {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr: kept,
            stderr_task: Some(stderr_task),
            timeout: config.timeout,
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// Writes one message as a line.
    pub async fn send(&mut self, message: &Value) -> Result<(), UpstreamError> {
        let mut line = message.to_string();
        line.push('\n');
        let written = tokio::time::timeout(self.timeout, async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        })
        .await;
        match written {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(self.exited("closed its input").await),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends a request and reads messages until its response, answering `ping` and refusing
    /// other server requests (discovery offers no client capabilities); notifications are
    /// skipped. Answers the whole response message.
    pub async fn request(&mut self, message: &Value) -> Result<Value, UpstreamError> {
        let id: RequestId = serde_json::from_value(message["id"].clone())
            .map_err(|_| UpstreamError::Protocol("a request without an id".into()))?;
        self.send(message).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.read_line()).await {
                Err(_) => return Err(UpstreamError::Timeout(self.timeout)),
                Ok(line) => line?,
            };
            let value: Value = serde_json::from_slice(&line).map_err(|_| {
                UpstreamError::NotMcp(format!(
                    "it printed something that is not JSON-RPC: {}",
                    shorten(&String::from_utf8_lossy(&line))
                ))
            })?;
            match Message::from_value(value.clone()) {
                Ok(Message::Response(r)) if r.id.as_ref() == Some(&id) => return Ok(value),
                Ok(Message::Request(r)) => {
                    let answer = if r.method == "ping" {
                        json!({"jsonrpc": "2.0", "id": r.id, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": r.id,
                               "error": {"code": -32601, "message": "not supported during discovery"}})
                    };
                    self.send(&answer).await?;
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(UpstreamError::NotMcp(format!(
                        "it printed something that is not JSON-RPC: {}",
                        shorten(&String::from_utf8_lossy(&line))
                    )));
                }
            }
        }
    }

    /// Reads one line, refusing more than `max_message_bytes`; skips empty lines.
    async fn read_line(&mut self) -> Result<Vec<u8>, UpstreamError> {
        loop {
            let mut line = Vec::new();
            let limit = u64::try_from(self.max_message_bytes).unwrap_or(u64::MAX) + 1;
            let read = (&mut self.stdout)
                .take(limit)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| UpstreamError::Connect(io_words(&e)))?;
            if read == 0 {
                return Err(self.exited("stopped before answering").await);
            }
            if line.len() > self.max_message_bytes && line.last() != Some(&b'\n') {
                return Err(UpstreamError::TooLarge(self.max_message_bytes));
            }
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok(line);
            }
        }
    }

    /// The error for a child that went away: its exit status and the end of its stderr.
    async fn exited(&mut self, what: &str) -> UpstreamError {
        let status = exit_status(&mut self.child).await;
        exit_error(what, &status, self.stderr_task.take(), &self.stderr).await
    }

    /// Ends the process: closes its input, then kills it if it lingers.
    pub async fn close(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

type Pipes = (Child, ChildStdin, ChildStdout, tokio::process::ChildStderr);

/// Starts the command with a clean environment and piped standard streams.
fn spawn_child(config: &StdioConfig) -> Result<Pipes, UpstreamError> {
    let Some((program, args)) = config.command.split_first() else {
        return Err(UpstreamError::Config("the command is empty".into()));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    for (name, value) in &config.env {
        command.env(name, value);
    }
    let mut child = command.spawn().map_err(|e| {
        UpstreamError::Connect(format!("cannot start {program:?}: {}", io_words(&e)))
    })?;
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Ok((child, stdin, stdout, stderr)),
        _ => Err(UpstreamError::Connect(
            "the command's pipes are missing".into(),
        )),
    }
}

/// How long a stdio server gets to exit after its input is closed, and again after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts the command as a long-lived upstream shared by many requests (see
/// [`ChannelClient`]). Its stderr is logged line by line under `label` (and its end kept to
/// explain an exit); a line on stdout that is not JSON is logged and skipped. When the
/// process exits, requests in flight fail with its exit status and the end of its stderr.
/// [`ChannelClient::close`] closes its input, then sends SIGTERM, then SIGKILL, waiting
/// [`STOP_GRACE`] between steps.
pub fn spawn_channel(
    config: &StdioConfig,
    label: &str,
) -> Result<(ChannelClient, Option<u32>), UpstreamError> {
    let (child, stdin, stdout, stderr) = spawn_child(config)?;
    let pid = child.id();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let stderr_task = tokio::spawn(keep_tail(stderr, kept.clone(), Some(label.to_owned())));
    let stdin = Arc::new(tokio::sync::Mutex::new(Some(stdin)));
    let child = Arc::new(tokio::sync::Mutex::new(child));
    let timeout = config.timeout;
    let send: SendFn = {
        let stdin = stdin.clone();
        Arc::new(move |message: Value| {
            let stdin = stdin.clone();
            Box::pin(async move {
                let mut line = message.to_string();
                line.push('\n');
                let mut guard = stdin.lock().await;
                let Some(writer) = guard.as_mut() else {
                    return Err(UpstreamError::Connect("the command is stopping".into()));
                };
                let written = tokio::time::timeout(timeout, async {
                    writer.write_all(line.as_bytes()).await?;
                    writer.flush().await
                })
                .await;
                match written {
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                    Ok(Err(_)) => Err(UpstreamError::Connect(
                        "the command closed its input".into(),
                    )),
                    Ok(Ok(())) => Ok(()),
                }
            })
        })
    };
    let close: CloseFn = {
        let child = child.clone();
        Box::new(move || {
            Box::pin(async move {
                // Closing stdin is the polite request to stop.
                stdin.lock().await.take();
                let mut child = child.lock().await;
                if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
                    return;
                }
                if let Some(pid) = child
                    .id()
                    .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
                        return;
                    }
                }
                let _ = child.kill().await;
            })
        })
    };
    let client = ChannelClient::new(send, close, config.timeout, config.max_message_bytes);
    let reader = client.clone();
    let max = config.max_message_bytes;
    let label = label.to_owned();
    tokio::spawn(async move {
        let mut stdout = BufReader::new(stdout);
        let why = loop {
            let mut line = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX) + 1;
            match (&mut stdout).take(limit).read_until(b'\n', &mut line).await {
                Err(e) => break format!("its output broke: {}", io_words(&e)),
                Ok(0) => break "exited".to_owned(),
                Ok(_) => {}
            }
            if line.len() > max && line.last() != Some(&b'\n') {
                break format!("wrote a message over the {max}-byte limit");
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Value>(&line) {
                Ok(message) if message.is_object() => reader.receive(message),
                _ => tracing::warn!(
                    target: "portcullis::stdio",
                    server = %label,
                    "skipped a line that is not a JSON-RPC message: {}",
                    shorten(&String::from_utf8_lossy(&line))
                ),
            }
        };
        let status = {
            let mut child = child.lock().await;
            if why != "exited" {
                let _ = child.start_kill();
            }
            exit_status(&mut child).await
        };
        tracing::info!(target: "portcullis::stdio", server = %label, "stdio server stopped: {why}{status}");
        reader.ended(exit_error(&why, &status, Some(stderr_task), &kept).await);
    });
    Ok((client, pid))
}

/// " (exit status: N)" when the child exits within a second, else nothing.
async fn exit_status(child: &mut Child) -> String {
    tokio::time::timeout(Duration::from_secs(1), child.wait())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default()
}

/// The error for a child that went away: what happened, its exit status, and the end of its
/// stderr (once `stderr_task` has read everything it wrote, for at most a second).
async fn exit_error(
    what: &str,
    status: &str,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    kept: &Mutex<Vec<u8>>,
) -> UpstreamError {
    if let Some(task) = stderr_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    let stderr = String::from_utf8_lossy(&kept.lock().unwrap_or_else(|e| e.into_inner()))
        .trim()
        .to_owned();
    let tail = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {}", shorten(&stderr))
    };
    UpstreamError::Connect(format!("the command {what}{status}{tail}"))
}

/// Starts the command, initializes it, reads every page of `tools/list`, and ends it.
pub async fn discover_stdio(
    config: &StdioConfig,
    client_name: &str,
) -> Result<Discovery, UpstreamError> {
    let mut client = StdioClient::spawn(config)?;
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": ProtocolVersion::LATEST_HANDSHAKE.as_str(),
        "capabilities": {},
        "clientInfo": {"name": client_name, "version": env!("CARGO_PKG_VERSION")},
    }});
    let response = client.request(&initialize).await?;
    if let Some(error) = response.get("error") {
        return Err(UpstreamError::Rejected(
            serde_json::from_value(error.clone())
                .map_err(|_| UpstreamError::Protocol("a malformed error".into()))?,
        ));
    }
    let result = response.get("result").cloned().unwrap_or(Value::Null);
    let protocol_version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            UpstreamError::Protocol("the initialize result has no protocolVersion".into())
        })?
        .to_owned();
    client
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await?;
    let has_tools = result
        .get("capabilities")
        .is_some_and(|c| c.get("tools").is_some());
    let tools = if has_tools {
        let shared = tokio::sync::Mutex::new(&mut client);
        let shared = &shared;
        list_all_tools(
            |request| async move {
                let message = shared.lock().await.request(&request).await?;
                Ok(PostResponse::Json {
                    message,
                    session_id: None,
                })
            },
            "portcullis-discover",
        )
        .await
        .map(|(tools, _)| tools)
    } else {
        Ok(Vec::new())
    };
    client.close().await;
    Ok(Discovery {
        initialized: Initialized {
            result,
            session_id: None,
            protocol_version,
        },
        tools: tools?,
    })
}

/// Keeps the end of the child's stderr in `kept`; with `log`, also logs each line (at most
/// 2 KiB of it) under that label.
async fn keep_tail(
    stderr: tokio::process::ChildStderr,
    kept: Arc<Mutex<Vec<u8>>>,
    log: Option<String>,
) {
    let mut stderr = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = u64::try_from(STDERR_KEPT).unwrap_or(u64::MAX);
        let n = match (&mut stderr).take(limit).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(label) = &log {
            let line = String::from_utf8_lossy(&buf[..n]);
            let line = line.trim_end();
            if !line.is_empty() {
                tracing::info!(target: "portcullis::stdio", server = %label, "stderr: {line}");
            }
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEPT {
            let excess = kept.len() - STDERR_KEPT;
            kept.drain(..excess);
        }
    }
}

fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such program".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// At most 300 characters of `text`, on one line.
fn shorten(text: &str) -> String {
    let one_line = text.trim().replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(300) {
        None => one_line,
        Some((end, _)) => format!("{}…", &one_line[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, env: &[(&str, &str)]) -> StdioConfig {
        StdioConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: env
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024,
        }
    }

    /// A stdio "server" in sh: answers initialize and one tools/list page blindly, naming its
    /// tools after two environment variables.
    const SERVER: &str = r#"
read -r line
printf '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}}\n'
printf '{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"sh","version":"1"}}}\n'
read -r line
read -r line
printf '{"jsonrpc":"2.0","id":"portcullis-discover-0","result":{"tools":[{"name":"inherited_%s","inputSchema":{"type":"object"}},{"name":"given_%s","inputSchema":{"type":"object"}}]}}\n' "${CARGO_MANIFEST_DIR:-none}" "${GIVEN:-none}"
read -r line
"#;

    #[tokio::test]
    async fn discovers_over_stdio_with_a_clean_environment() {
        // cargo sets CARGO_MANIFEST_DIR for this test process: the child must not see it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let found = discover_stdio(&sh(SERVER, &[("GIVEN", "yes")]), "test")
            .await
            .unwrap();
        assert_eq!(found.initialized.protocol_version, "2025-06-18");
        assert_eq!(
            found.server_info(),
            Some(&json!({"name": "sh", "version": "1"}))
        );
        let names: Vec<&str> = found
            .tools
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["inherited_none", "given_yes"]);
    }

    #[tokio::test]
    async fn failures_say_what_happened() {
        let missing = discover_stdio(
            &StdioConfig {
                command: vec!["/nonexistent/mcp-server".into()],
                ..sh("", &[])
            },
            "test",
        )
        .await
        .unwrap_err();
        assert!(missing.to_string().contains("no such program"), "{missing}");

        let crashed = discover_stdio(&sh("echo 'boom: missing API_KEY' >&2; exit 3", &[]), "test")
            .await
            .unwrap_err();
        let text = crashed.to_string();
        assert!(
            text.contains("exit status: 3") && text.contains("boom: missing API_KEY"),
            "{text}"
        );

        let chatty = discover_stdio(
            &sh("read -r line; echo 'Server starting...'; sleep 5", &[]),
            "test",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&chatty, UpstreamError::NotMcp(m) if m.contains("Server starting...")),
            "{chatty}"
        );

        let silent = discover_stdio(
            &StdioConfig {
                timeout: Duration::from_millis(200),
                ..sh("read -r line; sleep 5", &[])
            },
            "test",
        )
        .await
        .unwrap_err();
        assert_eq!(silent, UpstreamError::Timeout(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn a_long_lived_server_skips_noise_and_answers_under_the_callers_id() {
        let script = r#"
echo 'Server starting...'
read -r line
printf '{"jsonrpc":"2.0","id":"portcullis-0","result":{"ok":true}}\n'
read -r line
"#;
        let (client, _) = spawn_channel(&sh(script, &[]), "test").unwrap();
        let answer = client
            .post(
                &json!({"jsonrpc": "2.0", "id": 41, "method": "tools/list"}),
                None,
                None,
            )
            .await
            .unwrap();
        let PostResponse::Json { message, .. } = answer else {
            panic!("a JSON answer")
        };
        assert_eq!(
            message,
            json!({"jsonrpc": "2.0", "id": 41, "result": {"ok": true}})
        );
        client.close().await;
    }

    #[tokio::test]
    async fn closing_a_server_that_ignores_sigterm_kills_it() {
        let (client, pid) = spawn_channel(
            &sh("trap '' TERM; while :; do sleep 0.05; done", &[]),
            "test",
        )
        .unwrap();
        let pid = pid.unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        client.close().await;
        assert!(client.is_closed());
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

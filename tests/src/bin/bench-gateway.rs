//! The gateway benchmark: `tools/call` through the gateway against the same upstream called
//! directly, in one run, at concurrency 1 and 32. See docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-tests --bin portcullis --bin bench-gateway
//! target/release/bench-gateway --gateway-bin target/release/portcullis --seconds 10
//! GATEWAY_TOKIO_WORKER_THREADS=1 target/release/bench-gateway ...   # settings for the gateway alone
//! ```
//!
//! The upstream is the rmcp test server (its `echo` tool) in this process; the gateway is the
//! real `portcullis gateway` binary in its own process (so its peak RSS can be read), on a fresh
//! database holding a 50-rule policy with globs and conditions. All three share the machine's
//! cores; ratios within one run are what to compare.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::upstream::TestUpstream;
use serde_json::{Value, json};

struct Args {
    gateway_bin: String,
    seconds: u64,
    concurrency: Vec<usize>,
}

fn args() -> Args {
    let mut args = Args {
        gateway_bin: "target/release/portcullis".into(),
        seconds: 10,
        concurrency: vec![1, 32],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gateway-bin" => args.gateway_bin = it.next().expect("--gateway-bin PATH"),
            "--seconds" => {
                args.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N")
            }
            "--concurrency" => {
                args.concurrency = it
                    .next()
                    .expect("--concurrency 1,32")
                    .split(',')
                    .map(|s| s.parse().expect("a number"))
                    .collect()
            }
            other => panic!("unknown argument {other}; see the file's doc comment"),
        }
    }
    args
}

/// 50 rules: exact names, globs, conditions and limits; `echo` is decided by a rule with
/// conditions, so every measured call runs the condition code.
fn policy() -> Value {
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

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

async fn open_session(http: &reqwest::Client, url: &str, key: Option<&str>) -> Option<String> {
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

async fn run(url: &str, key: Option<&str>, concurrency: usize, seconds: u64) -> Stats {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let mut sessions = Vec::new();
    for _ in 0..concurrency {
        sessions.push(open_session(&http, url, key).await);
    }
    // Warm up, then measure.
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let deadline = start + warmup + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (w, session) in sessions.into_iter().enumerate() {
        let http = http.clone();
        let url = url.to_owned();
        let key = key.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                  "params": {"name": "echo", "arguments": {"text": format!("w{w} n{n}")}}});
                let mut req = http
                    .post(&url)
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-06-18")
                    .json(&body);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                if let Some(s) = &session {
                    req = req.header("mcp-session-id", s);
                }
                let t = Instant::now();
                let ok = match req.send().await {
                    Ok(resp) if resp.status().is_success() => resp
                        .bytes()
                        .await
                        .map(|b| String::from_utf8_lossy(&b).contains(&format!("w{w} n{n}")))
                        .unwrap_or(false),
                    _ => false,
                };
                let elapsed = t.elapsed();
                if Instant::now() > start + warmup && Instant::now() < deadline {
                    if ok {
                        latencies.push(elapsed);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        rps: all.len() as f64 / seconds as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = args();
    // reqwest is built without a default crypto provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = TestUpstream::start().await;
    let doc = policy();
    let rules = doc["tools"].as_object().unwrap().len();
    let seeded = portcullis_tests::gateway::seed(&upstream.url, Some(doc)).await;

    let mut child = Command::new(&args.gateway_bin)
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
        .env("DATABASE_URL", seeded.db.url())
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
                args.gateway_bin
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
    let gateway_url = format!("http://{listen}/mcp/{}", seeded.server_id);

    println!(
        "policy: {rules} tool rules + 2 hide globs; {} s per run after 1 s warm-up\n",
        args.seconds
    );
    println!("| concurrency | path | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for &c in &args.concurrency {
        let direct = run(&upstream.url, None, c, args.seconds).await;
        let through = run(&gateway_url, Some(&seeded.agent_key), c, args.seconds).await;
        for (name, s) in [("direct", &direct), ("gateway", &through)] {
            println!(
                "| {c} | {name} | {:.0} | {:.0} µs | {:.0} µs | {} |",
                s.rps,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                s.errors
            );
        }
        summary.push((c, direct, through));
    }
    println!();
    for (c, direct, through) in &summary {
        println!(
            "concurrency {c}: added p50 {:.0} µs, throughput through the gateway {:.0}% of direct",
            (through.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6,
            100.0 * through.rps / direct.rps.max(1.0)
        );
    }
    println!(
        "gateway peak RSS: {:.1} MiB",
        peak_rss_kib(child.id()) as f64 / 1024.0
    );
    child.kill().ok();
    child.wait().ok();
}

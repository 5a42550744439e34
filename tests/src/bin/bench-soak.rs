//! The soak: 200 concurrent MCP sessions through one gateway for two minutes with a mixed
//! policy. Reports errors other than the refusals the policy intends, p50/p99 latency, and the
//! gateway's memory at the one-minute mark against the end. See docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-tests --bin portcullis --bin bench-soak
//! target/release/bench-soak --gateway-bin target/release/portcullis --sessions 200 --seconds 120
//! ```
//!
//! Each session calls in a loop: `echo` (allowed by a rule with conditions; 8 calls in 10),
//! `delete_image_set` (hidden: refused as "tool not available"), and `list_images` (no rule,
//! default deny: refused). A call whose answer is not the one its tool should get is an error.

use std::time::{Duration, Instant};

use portcullis_tests::bench::{memory_kib, open_session, policy, spawn_gateway};
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;

fn arg(name: &str, default: &str) -> String {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next().unwrap_or_else(|| default.to_owned());
        }
    }
    default.to_owned()
}

#[tokio::main]
async fn main() {
    let bin = arg("--gateway-bin", "target/release/portcullis");
    let sessions: usize = arg("--sessions", "200").parse().expect("--sessions N");
    let seconds: u64 = arg("--seconds", "120").parse().expect("--seconds N");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = TestUpstream::start().await;
    let seeded = portcullis_tests::gateway::seed(&upstream.url, Some(policy())).await;
    let (mut child, listen) = spawn_gateway(&bin, &seeded.db.url());
    let pid = child.id();
    let url = format!("http://{listen}/mcp/{}", seeded.server_id);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(sessions)
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(open_session(&http, &url, Some(&seeded.agent_key)).await);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for (w, session) in ids.into_iter().enumerate() {
        let (http, url, key) = (http.clone(), url.clone(), seeded.agent_key.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut refused, mut errors) = (Vec::new(), 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let (tool, args, expect) = match n % 10 {
                    0 => (
                        "delete_image_set",
                        json!({"name": "x"}),
                        "tool not available".to_owned(),
                    ),
                    5 => ("list_images", json!({}), "[POLICY DENIED]".to_owned()),
                    _ => (
                        "echo",
                        json!({"text": format!("w{w} n{n}")}),
                        format!("w{w} n{n}"),
                    ),
                };
                let mut req = http
                    .post(&url)
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-06-18")
                    .bearer_auth(&key)
                    .json(&json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                  "params": {"name": tool, "arguments": args}}));
                if let Some(s) = &session {
                    req = req.header("mcp-session-id", s);
                }
                let t = Instant::now();
                let answer = match req.send().await {
                    Ok(resp) if resp.status().is_success() => resp.text().await.ok(),
                    Ok(resp) => Some(format!("HTTP {}", resp.status())),
                    Err(e) => Some(format!("transport: {e}")),
                };
                latencies.push(t.elapsed());
                match answer {
                    Some(text) if text.contains(&expect) => {
                        if tool != "echo" {
                            refused += 1;
                        }
                    }
                    other => errors.push(format!("{tool}: {other:?}")),
                }
            }
            (latencies, refused, errors)
        }));
    }
    // Memory once a second; the figure at the one-minute mark and at the end.
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((start.elapsed(), memory_kib(pid, "VmRSS")));
    }
    let (mut all, mut refused, mut errors) = (Vec::new(), 0, Vec::new());
    for w in workers {
        let (l, r, e) = w.await.unwrap();
        all.extend(l);
        refused += r;
        errors.extend(e);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let at_minute = samples
        .iter()
        .find(|(t, _)| *t >= Duration::from_secs(60))
        .map(|(_, kib)| *kib)
        .unwrap_or_else(|| samples.first().map(|s| s.1).unwrap_or(0));
    let end = samples.last().map(|s| s.1).unwrap_or(0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("{sessions} sessions, {seconds} s, mixed calls (8 allowed, 1 hidden, 1 denied in 10)");
    println!(
        "calls: {} ({:.0}/s), refused as the policy intends: {refused}, errors: {}",
        all.len(),
        all.len() as f64 / seconds as f64,
        errors.len()
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "gateway RSS: {:.1} MiB at 1 min, {:.1} MiB at the end ({:+.1}%), peak {:.1} MiB",
        mib(at_minute),
        mib(end),
        100.0 * (end as f64 - at_minute as f64) / at_minute.max(1) as f64,
        mib(memory_kib(pid, "VmHWM"))
    );
    let samples_text: Vec<String> = samples
        .iter()
        .step_by(10)
        .map(|(t, kib)| format!("{}s {:.1}", t.as_secs(), mib(*kib)))
        .collect();
    println!("RSS every 10 s (MiB): {}", samples_text.join(", "));
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
    child.kill().ok();
    child.wait().ok();
}

//! The gateway benchmark: `tools/call` through the gateway against the same upstream called
//! directly, in one run, at concurrency 1 and 32. See docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-tests --bin portcullis --bin bench-gateway
//! target/release/bench-gateway --gateway-bin target/release/portcullis --seconds 10
//! GATEWAY_TOKIO_WORKER_THREADS=1 target/release/bench-gateway ...   # settings for the gateway alone
//! target/release/bench-gateway ... --nginx /usr/sbin/nginx   # also a bare nginx hop, for scale
//! ```
//!
//! With `--nginx`, a third path runs in the same run: the same upstream behind a plain nginx
//! reverse proxy (one worker, keep-alive to the upstream, no buffering, no logging): what one
//! HTTP hop costs on this machine, without any policy.
//!
//! The upstream is the rmcp test server (its `echo` tool) in this process; the gateway is the
//! real `portcullis gateway` binary in its own process (so its peak RSS can be read), on a fresh
//! database holding a 50-rule policy with globs and conditions. All three share the machine's
//! cores; ratios within one run are what to compare. The paths run interleaved, one second
//! each in turn (see [`run`]), so that the machine's drift over a run touches them alike.

use std::time::{Duration, Instant};

use portcullis_tests::bench::{memory_kib, open_session, policy};
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;

struct Args {
    gateway_bin: String,
    seconds: u64,
    concurrency: Vec<usize>,
    nginx: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        gateway_bin: "target/release/portcullis".into(),
        seconds: 10,
        concurrency: vec![1, 32],
        nginx: None,
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
            "--nginx" => args.nginx = Some(it.next().expect("--nginx PATH")),
            other => panic!("unknown argument {other}; see the file's doc comment"),
        }
    }
    args
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// One path to the upstream (direct, through the gateway, through nginx), with its own HTTP
/// client and one session per worker.
struct Target {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    sessions: Vec<Option<String>>,
    latencies: Vec<Duration>,
    errors: usize,
    calls: usize,
    measured: Duration,
}

impl Target {
    async fn open(url: &str, key: Option<&str>, concurrency: usize) -> Target {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let mut sessions = Vec::new();
        for _ in 0..concurrency {
            sessions.push(open_session(&http, url, key).await);
        }
        Target {
            http,
            url: url.to_owned(),
            key: key.map(str::to_owned),
            sessions,
            latencies: Vec::new(),
            errors: 0,
            calls: 0,
            measured: Duration::ZERO,
        }
    }

    /// Every worker calls in a closed loop for `length`; with `keep`, the slice counts.
    async fn slice(&mut self, length: Duration, keep: bool) {
        let start = Instant::now();
        let deadline = start + length;
        let mut tasks = Vec::new();
        for (w, session) in self.sessions.iter().cloned().enumerate() {
            let http = self.http.clone();
            let url = self.url.clone();
            let key = self.key.clone();
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
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            latencies.extend(l);
            errors += e;
        }
        if keep {
            self.calls += latencies.len();
            self.latencies.extend(latencies);
            self.errors += errors;
            // Until the last call of the slice ended: every counted call is inside it.
            self.measured += start.elapsed();
        }
    }

    fn stats(&mut self) -> Stats {
        self.latencies.sort();
        let all = &self.latencies;
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            rps: self.calls as f64 / self.measured.as_secs_f64().max(f64::EPSILON),
            p50: pct(0.50),
            p99: pct(0.99),
            errors: self.errors,
        }
    }
}

/// Runs the paths interleaved: a warm-up slice each, then `seconds` rounds of one 1 s slice
/// per path, the order rotating each round. The machine's speed drifts by more than the
/// effects measured here over a few seconds; interleaving gives each path the same share of
/// fast and slow moments, so the ratios of one run hold.
async fn run(targets: &mut [Target], seconds: u64) -> Vec<Stats> {
    let slice = Duration::from_secs(1);
    for t in targets.iter_mut() {
        t.slice(slice, false).await;
    }
    for round in 0..seconds as usize {
        for i in 0..targets.len() {
            let t = &mut targets[(round + i) % targets.len()];
            t.slice(slice, true).await;
        }
    }
    targets.iter_mut().map(Target::stats).collect()
}

/// A plain nginx reverse proxy in front of `upstream` (see the module documentation); killed
/// on drop.
struct Nginx {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn start_nginx(bin: &str, upstream: std::net::SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let port = portcullis_tests::process::free_port();
    let d = dir.path().display();
    let config = format!(
        r#"master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  upstream up {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {upstream};
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"#
    );
    std::fs::write(dir.path().join("nginx.conf"), config).expect("the nginx configuration");
    let child = std::process::Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("nginx starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        url: format!("http://127.0.0.1:{port}/mcp"),
        child,
        _dir: dir,
    }
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

    let (mut child, listen) =
        portcullis_tests::bench::spawn_gateway(&args.gateway_bin, &seeded.db.url());
    let gateway_url = format!("http://{listen}/mcp/{}", seeded.server_id);
    let nginx = args
        .nginx
        .as_deref()
        .map(|bin| start_nginx(bin, upstream.addr));

    println!(
        "policy: {rules} tool rules + 2 hide globs; per path {} s in 1 s slices interleaved with the others, after a 1 s warm-up\n",
        args.seconds
    );
    println!("| concurrency | path | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for &c in &args.concurrency {
        let mut targets = vec![
            Target::open(&upstream.url, None, c).await,
            Target::open(&gateway_url, Some(&seeded.agent_key), c).await,
        ];
        if let Some(n) = &nginx {
            targets.push(Target::open(&n.url, None, c).await);
        }
        let mut stats = run(&mut targets, args.seconds).await.into_iter();
        let direct = stats.next().expect("direct");
        let through = stats.next().expect("gateway");
        let hop = stats.next();
        let mut rows = vec![("direct", &direct), ("gateway", &through)];
        if let Some(h) = &hop {
            rows.push(("nginx hop", h));
        }
        for (name, s) in rows {
            println!(
                "| {c} | {name} | {:.0} | {:.0} µs | {:.0} µs | {} |",
                s.rps,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                s.errors
            );
        }
        summary.push((c, direct, through, hop));
    }
    println!();
    for (c, direct, through, hop) in &summary {
        let added = |s: &Stats| (s.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6;
        let ratio = |s: &Stats| 100.0 * s.rps / direct.rps.max(1.0);
        println!(
            "concurrency {c}: added p50 {:.0} µs, throughput through the gateway {:.0}% of direct",
            added(through),
            ratio(through)
        );
        if let Some(h) = hop {
            println!(
                "concurrency {c}: a bare nginx hop adds {:.0} µs at p50, {:.0}% of direct throughput",
                added(h),
                ratio(h)
            );
        }
    }
    println!(
        "gateway peak RSS: {:.1} MiB",
        memory_kib(child.id(), "VmHWM") as f64 / 1024.0
    );
    child.kill().ok();
    child.wait().ok();
}

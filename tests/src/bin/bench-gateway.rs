//! The gateway benchmark: `tools/call` through the gateway against the same upstream called
//! directly, in one run, at concurrency 1 and 32. See docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-tests --bin portcullis --bin bench-gateway
//! target/release/bench-gateway --gateway-bin target/release/portcullis --seconds 10
//! GATEWAY_TOKIO_WORKER_THREADS=1 target/release/bench-gateway ...   # settings for the gateway alone
//! target/release/bench-gateway ... --nginx /usr/sbin/nginx   # also a bare nginx hop, for scale
//! target/release/bench-gateway ... --bare-proxy   # also a bare axum + hyper hop, for scale
//! ```
//!
//! With `--nginx`, a third path runs in the same run: the same upstream behind a plain nginx
//! reverse proxy (one worker, keep-alive to the upstream, no buffering, no logging): what one
//! HTTP hop costs on this machine, without any policy.
//!
//! With `--bare-proxy`, another path: the same upstream behind a proxy built like the gateway
//! and doing nothing else (this binary, re-run as `bench-gateway --serve-bare-proxy ADDR`): one
//! single-threaded runtime per core accepting on a shared socket, axum serving, the request
//! read whole and forwarded by hyper-util's pooled client of that thread, the answer streamed
//! back, `TCP_NODELAY` on both sides (all as the gateway does). What the gateway's stack costs
//! before any of its own work.
//!
//! The upstream is the rmcp test server (its `echo` tool) in this process; the gateway is the
//! real `portcullis gateway` binary in its own process (so its peak RSS can be read), on a fresh
//! database holding a 50-rule policy with globs and conditions. All three share the machine's
//! cores; ratios within one run are what to compare. The paths run interleaved, one second
//! each in turn (see [`run`]), so that the machine's drift over a run touches them alike.
//!
//! CPU per call is also reported, as it moves far less from run to run than latency and
//! throughput: the CPU time of the gateway process (and of nginx) over its path's slices, and
//! that of the PostgreSQL cluster's processes (the activity log) over the gateway's slices,
//! divided by the calls of those slices (from `/proc`; PostgreSQL only on the embedded test
//! cluster, not with `DATABASE_URL`).

use std::time::{Duration, Instant};

use portcullis_tests::bench::{memory_kib, open_session, policy};
use portcullis_tests::upstream::TestUpstream;
use serde_json::json;

struct Args {
    gateway_bin: String,
    seconds: u64,
    concurrency: Vec<usize>,
    nginx: Option<String>,
    bare_proxy: bool,
}

fn args() -> Args {
    let mut args = Args {
        gateway_bin: "target/release/portcullis".into(),
        seconds: 10,
        concurrency: vec![1, 32],
        nginx: None,
        bare_proxy: false,
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
            "--bare-proxy" => args.bare_proxy = true,
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
    /// CPU per call of the path's own process (gateway, nginx), and of PostgreSQL.
    own_cpu: Option<Duration>,
    db_cpu: Option<Duration>,
}

/// The fields of `/proc/PID/stat` after the command name (in parentheses, which may hold
/// spaces): the state, then the parent's pid, …; empty once the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// CPU time (user and system, all threads) of process `pid` so far; zero once it is gone.
fn cpu_of(pid: u32) -> Duration {
    let fields = stat_fields(pid);
    // utime and stime, fields 14 and 15 of the line (11 and 12 after the name), in the clock
    // ticks of the kernel's user ABI (USER_HZ, 100 a second on Linux).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The processes of the embedded test cluster (its postmaster and every child), when this run
/// uses it.
fn database_pids() -> Vec<u32> {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return Vec::new();
    }
    let pidfile = portcullis_store::testing::shared_cluster_dir().join("pgdata/postmaster.pid");
    let Some(postmaster) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Vec::new();
    };
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = stat_fields(pid).get(1).and_then(|p| p.parse::<u32>().ok());
        if parent == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn cpu_of_all(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| cpu_of(p)).sum()
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
    /// The path's own process (gateway, nginx), whose CPU time its slices count.
    own: Option<u32>,
    own_cpu: Duration,
    /// Whether PostgreSQL's CPU time counts for this path (the gateway's activity log).
    counts_db: bool,
    /// `None` until a slice has found the database's processes.
    db_cpu: Option<Duration>,
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
            own: None,
            own_cpu: Duration::ZERO,
            counts_db: false,
            db_cpu: None,
        }
    }

    /// Counts `pid`'s CPU time in this path's slices, and PostgreSQL's with `db`.
    fn with_cpu(mut self, pid: u32, db: bool) -> Target {
        self.own = Some(pid);
        self.counts_db = db;
        self
    }

    /// Every worker calls in a closed loop for `length`; with `keep`, the slice counts.
    async fn slice(&mut self, length: Duration, keep: bool) {
        let db_pids = if self.counts_db {
            database_pids()
        } else {
            Vec::new()
        };
        let own_before = self.own.map(cpu_of).unwrap_or_default();
        let db_before = cpu_of_all(&db_pids);
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
            self.own_cpu += self
                .own
                .map(cpu_of)
                .unwrap_or_default()
                .saturating_sub(own_before);
            if !db_pids.is_empty() {
                *self.db_cpu.get_or_insert_default() +=
                    cpu_of_all(&db_pids).saturating_sub(db_before);
            }
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
        let per_call = |cpu: Duration| cpu / u32::try_from(self.calls.max(1)).unwrap_or(u32::MAX);
        Stats {
            rps: self.calls as f64 / self.measured.as_secs_f64().max(f64::EPSILON),
            p50: pct(0.50),
            p99: pct(0.99),
            errors: self.errors,
            own_cpu: self.own.map(|_| per_call(self.own_cpu)),
            db_cpu: self.db_cpu.map(per_call),
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

/// A plain nginx reverse proxy in front of `upstream` (see the module documentation).
fn start_nginx(bin: &str, upstream: std::net::SocketAddr) -> Hop {
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
    Hop {
        name: "nginx hop",
        summary: "a bare nginx hop",
        url: format!("http://127.0.0.1:{port}/mcp"),
        child,
        _dir: Some(dir),
    }
}

/// A child process (killed on drop) serving a path without policy, for scale: nginx, or this
/// binary as a bare proxy.
struct Hop {
    /// Its name in the table, and in the summary.
    name: &'static str,
    summary: &'static str,
    url: String,
    child: std::process::Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Starts this binary as a bare proxy in front of `upstream`, and reads the address it
/// listens on from its first line of output.
fn start_bare_proxy(upstream: std::net::SocketAddr) -> Hop {
    use std::io::BufRead;
    let child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["--serve-bare-proxy", &upstream.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the bare proxy starts");
    // Held from here: a failure below kills the child on drop.
    let mut hop = Hop {
        name: "bare proxy",
        summary: "a bare axum + hyper hop",
        url: String::new(),
        child,
        _dir: None,
    };
    let mut line = String::new();
    std::io::BufReader::new(hop.child.stdout.take().expect("its output"))
        .read_line(&mut line)
        .expect("the bare proxy's output");
    let listen: std::net::SocketAddr = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the bare proxy did not say where it listens: {line:?}"));
    hop.url = format!("http://{listen}/mcp");
    hop
}

/// The bare proxy (see the module documentation): serves until killed.
fn serve_bare_proxy(upstream: &str) -> ! {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    use axum::serve::ListenerExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking socket");
    println!("{}", listener.local_addr().expect("its address"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone().expect("a shared socket");
            let base = format!("http://{upstream}");
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    // As the gateway's upstream client: no Nagle delay on its connections.
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    let client = Client::builder(TokioExecutor::new())
                        .build::<_, axum::body::Body>(connector);
                    let app = axum::Router::new().fallback(move |request: Request| {
                        let client = client.clone();
                        let uri = format!(
                            "{base}{}",
                            request.uri().path_and_query().map_or("/", |p| p.as_str())
                        );
                        async move {
                            let (mut parts, body) = request.into_parts();
                            // Read whole, as the gateway does: headers and body go out in one
                            // write.
                            let Ok(body) = axum::body::to_bytes(body, 4 << 20).await else {
                                return axum::http::StatusCode::BAD_REQUEST.into_response();
                            };
                            parts.uri = uri.parse().expect("an upstream URI");
                            // As nginx's `proxy_set_header Host`: the client sets the upstream's.
                            parts.headers.remove(axum::http::header::HOST);
                            let body = axum::body::Body::from(body);
                            match client.request(Request::from_parts(parts, body)).await {
                                Ok(answer) => answer.map(axum::body::Body::new),
                                Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                            }
                        }
                    });
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio socket");
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, app).await.expect("serving");
                });
            })
        })
        .collect();
    for handle in handles {
        handle.join().ok();
    }
    std::process::exit(1)
}

fn main() {
    // The bare proxy is this binary re-run; it starts its own runtimes, and no other.
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve-bare-proxy") {
        serve_bare_proxy(&argv.next().expect("--serve-bare-proxy ADDR"));
    }
    let args = args();
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(bench(args));
}

async fn bench(args: Args) {
    // reqwest is built without a default crypto provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = TestUpstream::start().await;
    let doc = policy();
    let rules = doc["tools"].as_object().unwrap().len();
    let seeded = portcullis_tests::gateway::seed(&upstream.url, Some(doc)).await;

    let (mut child, listen) =
        portcullis_tests::bench::spawn_gateway(&args.gateway_bin, &seeded.db.url());
    let gateway_url = format!("http://{listen}/mcp/{}", seeded.server_id);
    let mut hops = Vec::new();
    if let Some(bin) = &args.nginx {
        hops.push(start_nginx(bin, upstream.addr));
    }
    if args.bare_proxy {
        hops.push(start_bare_proxy(upstream.addr));
    }

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
            Target::open(&gateway_url, Some(&seeded.agent_key), c)
                .await
                .with_cpu(child.id(), true),
        ];
        for hop in &hops {
            targets.push(
                Target::open(&hop.url, None, c)
                    .await
                    .with_cpu(hop.child.id(), false),
            );
        }
        let stats = run(&mut targets, args.seconds).await;
        let names = ["direct", "gateway"]
            .into_iter()
            .chain(hops.iter().map(|hop| hop.name));
        for (name, s) in names.zip(&stats) {
            println!(
                "| {c} | {name} | {:.0} | {:.0} µs | {:.0} µs | {} |",
                s.rps,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                s.errors
            );
        }
        summary.push((c, stats));
    }
    println!();
    let us = |d: Option<Duration>| {
        d.map_or("not measured".to_owned(), |d| {
            format!("{:.0} µs", d.as_secs_f64() * 1e6)
        })
    };
    for (c, stats) in &summary {
        let [direct, through, others @ ..] = stats.as_slice() else {
            unreachable!("direct and gateway are always measured")
        };
        let added = |s: &Stats| (s.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6;
        let ratio = |s: &Stats| 100.0 * s.rps / direct.rps.max(1.0);
        println!(
            "concurrency {c}: added p50 {:.0} µs, throughput through the gateway {:.0}% of direct",
            added(through),
            ratio(through)
        );
        for (hop, h) in hops.iter().zip(others) {
            println!(
                "concurrency {c}: {} adds {:.0} µs at p50, {:.0}% of direct throughput",
                hop.summary,
                added(h),
                ratio(h)
            );
        }
        print!(
            "concurrency {c}: CPU per call: gateway process {}, PostgreSQL {}",
            us(through.own_cpu),
            us(through.db_cpu)
        );
        for (hop, h) in hops.iter().zip(others) {
            print!(", {} process {}", hop.name, us(h.own_cpu));
        }
        println!();
    }
    println!(
        "gateway peak RSS: {:.1} MiB",
        memory_kib(child.id(), "VmHWM") as f64 / 1024.0
    );
    child.kill().ok();
    child.wait().ok();
}
